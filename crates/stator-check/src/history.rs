//! The history format (one JSON object per line) and its reader and writer.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CheckError;

/// The operation a client invoked on a register key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Read the key; the entry's `value` is what was read (`None`: the key was missing).
    Get,
    /// Write the entry's `value` to the key.
    Set,
}

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Acknowledged: it took effect between call and return.
    Ok,
    /// Definitely not applied (e.g. rejected before being proposed).
    Fail,
    /// Timed out or the connection dropped: it may or may not take effect, at any time
    /// after the call. `return_ns` is `None`.
    Unknown,
}

/// One operation of one client: a line of a history file.
///
/// Rules: `ok` and `fail` entries have `return_ns >= call_ns`; `unknown` entries have
/// `return_ns: null`; a `set` has a `value`. Times are nanoseconds on one monotonic clock
/// shared by all clients of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Which client issued the operation.
    pub client: u64,
    /// Get or set.
    pub op: Op,
    /// The register key.
    pub key: String,
    /// Set: the value written. Get: the value read, `None` for a missing key.
    pub value: Option<String>,
    /// When the client sent the request.
    pub call_ns: u64,
    /// When the client got the answer; `None` for `unknown`.
    pub return_ns: Option<u64>,
    /// How it ended.
    pub status: Status,
}

impl HistoryEntry {
    /// Checks the format rules; `position` is used in the error.
    pub fn validate(&self, position: usize) -> Result<(), CheckError> {
        let invalid = |reason: String| CheckError::InvalidEntry { position, reason };
        match (self.status, self.return_ns) {
            (Status::Unknown, Some(_)) => {
                return Err(invalid("an unknown entry must have return_ns null".into()))
            }
            (Status::Ok | Status::Fail, None) => {
                return Err(invalid(format!(
                    "a {:?} entry needs return_ns; use status unknown if the answer never came",
                    self.status
                )))
            }
            (Status::Ok | Status::Fail, Some(return_ns)) if return_ns < self.call_ns => {
                return Err(invalid(format!(
                    "return_ns {return_ns} is before call_ns {}",
                    self.call_ns
                )))
            }
            _ => {}
        }
        if self.op == Op::Set && self.value.is_none() {
            return Err(invalid("a set needs the value it wrote".into()));
        }
        Ok(())
    }
}

/// Reads a JSONL history, validating every entry. Blank lines are skipped.
pub fn read_jsonl(reader: impl BufRead) -> Result<Vec<HistoryEntry>, CheckError> {
    let mut entries = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: HistoryEntry = serde_json::from_str(&line).map_err(|e| CheckError::Parse {
            line: index + 1,
            detail: e.to_string(),
        })?;
        entry.validate(index + 1)?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Writes entries as JSONL, one object per line.
pub fn write_jsonl(mut writer: impl Write, entries: &[HistoryEntry]) -> Result<(), CheckError> {
    for entry in entries {
        serde_json::to_writer(&mut writer, entry).map_err(std::io::Error::from)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    Ok(())
}

/// Reads a history file.
pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<HistoryEntry>, CheckError> {
    let file = std::fs::File::open(path)?;
    read_jsonl(std::io::BufReader::new(file))
}

/// Writes a history file, replacing it.
pub fn write_file(path: impl AsRef<Path>, entries: &[HistoryEntry]) -> Result<(), CheckError> {
    let file = std::fs::File::create(path)?;
    write_jsonl(std::io::BufWriter::new(file), entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_line_round_trips() {
        let line = r#"{"client":3,"op":"set","key":"k1","value":"v9","call_ns":10,"return_ns":20,"status":"ok"}"#;
        let entries = read_jsonl(line.as_bytes()).unwrap();
        assert_eq!(entries[0].op, Op::Set);
        assert_eq!(entries[0].return_ns, Some(20));
        let mut out = Vec::new();
        write_jsonl(&mut out, &entries).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{line}\n"));
    }

    #[test]
    fn unknown_and_missing_values_are_null() {
        let line = r#"{"client":1,"op":"get","key":"k","value":null,"call_ns":5,"return_ns":null,"status":"unknown"}"#;
        let entries = read_jsonl(line.as_bytes()).unwrap();
        assert_eq!(entries[0].value, None);
        assert_eq!(entries[0].status, Status::Unknown);
    }

    #[test]
    fn broken_rules_name_the_line() {
        let text = "\n{\"client\":1,\"op\":\"set\",\"key\":\"k\",\"value\":\"v\",\"call_ns\":5,\"return_ns\":null,\"status\":\"ok\"}\n";
        match read_jsonl(text.as_bytes()) {
            Err(CheckError::InvalidEntry { position: 2, .. }) => {}
            other => panic!("expected an invalid entry on line 2, got {other:?}"),
        }
        match read_jsonl("{not json".as_bytes()) {
            Err(CheckError::Parse { line: 1, .. }) => {}
            other => panic!("expected a parse error on line 1, got {other:?}"),
        }
    }
}
