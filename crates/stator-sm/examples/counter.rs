//! A counter app for `stator-sm/1`, written with the Rust SDK.
//!
//! Commands are ASCII signed integers (`+5`, `-2`, `7`) added to the counter; the reply
//! and every query answer is the counter in decimal. A command that is not a number
//! gets the reply `error: ...` and leaves the state alone: a client's bad input must
//! never crash a deterministic app.
//!
//! Run it under stator with `app = { process = { command = ["path/to/counter"] } }`,
//! or by hand against a host socket with `STATOR_SM_SOCKET=/path/sm.sock counter`.

use stator_sm::sdk::{serve_from_env, App};

/// The whole state: one number and the number of commands applied.
#[derive(Debug, Default)]
struct Counter {
    value: i64,
    applied: u64,
}

/// Snapshot layout: value i64 big-endian, then applied u64 big-endian.
const SNAPSHOT_BYTES: usize = 16;

impl App for Counter {
    fn apply(&mut self, _index: u64, _time_ms: u64, command: &[u8]) -> Vec<u8> {
        let parsed = std::str::from_utf8(command)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok());
        match parsed {
            Some(delta) => {
                self.value = self.value.wrapping_add(delta);
                self.applied += 1;
                self.value.to_string().into_bytes()
            }
            None => format!("error: command {command:?} is not an integer").into_bytes(),
        }
    }

    fn query(&self, _time_ms: u64, request: &[u8]) -> Vec<u8> {
        match request {
            b"applied" => self.applied.to_string().into_bytes(),
            _ => self.value.to_string().into_bytes(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(SNAPSHOT_BYTES);
        bytes.extend_from_slice(&self.value.to_be_bytes());
        bytes.extend_from_slice(&self.applied.to_be_bytes());
        bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        if snapshot.len() != SNAPSHOT_BYTES {
            return Err(format!(
                "counter snapshot must be {SNAPSHOT_BYTES} bytes, got {}",
                snapshot.len()
            ));
        }
        let (value, applied) = snapshot.split_at(8);
        self.value = i64::from_be_bytes(value.try_into().expect("8 bytes"));
        self.applied = u64::from_be_bytes(applied.try_into().expect("8 bytes"));
        Ok(())
    }
}

fn main() {
    if let Err(error) = serve_from_env(Counter::default()) {
        eprintln!("counter: {error}");
        std::process::exit(1);
    }
}
