//! Keyspace commands over every partition of a service: `KEYS`, `SCAN`, `DBSIZE`,
//! `FLUSHALL`/`FLUSHDB` and `RANDOMKEY` are sent to each partition and the answers merged,
//! so a service of many partitions answers as one Redis does. The script cache and the
//! function libraries are per partition, so `SCRIPT LOAD|FLUSH` and `FUNCTION
//! LOAD|DELETE|FLUSH` are written to every partition (then `EVALSHA`/`FCALL` find them
//! wherever their keys live) and `SCRIPT EXISTS` answers 1 only where every partition
//! has the script.
//!
//! A `SCAN` cursor names the partition in its low [`SCAN_PARTITION_BITS`] bits and that
//! partition's own cursor in the rest: the scan walks partitions in slot order, each to its
//! end. A partition's cursor is a position in its key-hash order (every key whose hash is
//! at or past it is still to come), so the gateway may round it down to make room for the
//! partition bits: a few keys may come twice, none is skipped. Keys present for the whole
//! scan are returned at least once, as in Redis, as long as the partition count does not
//! change during the scan (a resize moves keys between partitions; a scan across one may
//! miss or repeat the moved keys).

use super::Backend;
use crate::map::ServiceRoutes;
use futures::future::join_all;
use rand::seq::SliceRandom;
use stator_api::spec::MAX_PARTITIONS;
use stator_kv::{encode_command, parse_reply, Value};
use stator_replication::RequestKind;
use std::sync::Arc;

/// Bits of a `SCAN` cursor naming the partition: enough for [`MAX_PARTITIONS`].
pub const SCAN_PARTITION_BITS: u32 = 10;
const PARTITION_MASK: u64 = (1 << SCAN_PARTITION_BITS) - 1;
const _: () = assert!(MAX_PARTITIONS <= 1 << SCAN_PARTITION_BITS);

/// A keyspace command to run on every partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FanOut {
    /// `KEYS pattern`: every partition's matches, concatenated.
    Keys(Vec<u8>),
    /// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`: one partition per step.
    Scan {
        /// The partition's index in the service's slot order.
        partition: usize,
        /// That partition's own cursor.
        inner: u64,
        /// `MATCH`, `COUNT`, `TYPE` and their values, as sent.
        options: Vec<Vec<u8>>,
    },
    /// `DBSIZE`: the sum.
    DbSize,
    /// `FLUSHALL`/`FLUSHDB [ASYNC|SYNC]`: a write on every partition.
    Flush(Vec<Vec<u8>>),
    /// `RANDOMKEY`: partitions in random order until one has a key.
    RandomKey,
    /// `SCRIPT LOAD|FLUSH`, `FUNCTION LOAD|DELETE|FLUSH`: a write on every partition;
    /// the first error, else the first partition's reply.
    Everywhere(Vec<Vec<u8>>),
    /// `SCRIPT EXISTS sha...`: 1 for a script every partition has.
    ScriptExists(Vec<Vec<u8>>),
}

fn arity_error(name: &str) -> Value {
    Value::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// `Some` when `argv` is a keyspace command: the work, or the error reply for bad syntax.
pub(crate) fn classify(argv: &[Vec<u8>]) -> Option<Result<FanOut, Value>> {
    let name = argv[0].as_slice();
    if !(4..=9).contains(&name.len()) {
        return None;
    }
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let fan = if is("keys") {
        match argv {
            [_, pattern] => Ok(FanOut::Keys(pattern.clone())),
            _ => Err(arity_error("keys")),
        }
    } else if is("scan") {
        scan(argv)
    } else if is("dbsize") {
        match argv {
            [_] => Ok(FanOut::DbSize),
            _ => Err(arity_error("dbsize")),
        }
    } else if is("flushall") || is("flushdb") {
        match argv {
            [_] => Ok(FanOut::Flush(argv.to_vec())),
            [_, mode]
                if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") =>
            {
                Ok(FanOut::Flush(argv.to_vec()))
            }
            _ => Err(Value::error("ERR syntax error")),
        }
    } else if is("script") || is("function") {
        let sub = argv.get(1)?;
        let sub_is = |n: &str| sub.eq_ignore_ascii_case(n.as_bytes());
        if is("script") && sub_is("exists") {
            Ok(FanOut::ScriptExists(argv.to_vec()))
        } else if (is("script") && (sub_is("load") || sub_is("flush")))
            || (is("function") && (sub_is("load") || sub_is("delete") || sub_is("flush")))
        {
            Ok(FanOut::Everywhere(argv.to_vec()))
        } else {
            // LIST, STATS, HELP, KILL: any one partition answers.
            return None;
        }
    } else if is("randomkey") {
        match argv {
            [_] => Ok(FanOut::RandomKey),
            _ => Err(arity_error("randomkey")),
        }
    } else {
        return None;
    };
    Some(fan)
}

fn scan(argv: &[Vec<u8>]) -> Result<FanOut, Value> {
    if argv.len() < 2 {
        return Err(arity_error("scan"));
    }
    let cursor: u64 = std::str::from_utf8(&argv[1])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Value::error("ERR invalid cursor"))?;
    let options = argv[2..].to_vec();
    let mut index = 0;
    while index < options.len() {
        let option = &options[index];
        let Some(value) = options.get(index + 1) else {
            return Err(Value::error("ERR syntax error"));
        };
        if option.eq_ignore_ascii_case(b"count") {
            let count = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| Value::error("ERR value is not an integer or out of range"))?;
            if count < 1 {
                return Err(Value::error("ERR syntax error"));
            }
        } else if !option.eq_ignore_ascii_case(b"match") && !option.eq_ignore_ascii_case(b"type") {
            return Err(Value::error("ERR syntax error"));
        }
        index += 2;
    }
    Ok(FanOut::Scan {
        partition: (cursor & PARTITION_MASK) as usize,
        inner: cursor & !PARTITION_MASK,
        options,
    })
}

/// Runs `fan` on the partitions of `routes` and returns the merged reply.
pub(crate) async fn run<B: Backend>(
    backend: &B,
    routes: &Arc<ServiceRoutes>,
    fan: FanOut,
) -> Vec<u8> {
    match merge(backend, routes, fan).await {
        Ok(value) | Err(value) => value.to_bytes(),
    }
}

async fn merge<B: Backend>(
    backend: &B,
    routes: &Arc<ServiceRoutes>,
    fan: FanOut,
) -> Result<Value, Value> {
    let all: Vec<usize> = (0..routes.partitions.len()).collect();
    match fan {
        FanOut::Keys(pattern) => {
            let command = encode_command(&[b"KEYS".as_slice(), &pattern]);
            let mut keys = Vec::new();
            for reply in ask(backend, routes, &all, RequestKind::Read, &command).await? {
                keys.extend(array(reply)?);
            }
            Ok(Value::Array(Some(keys)))
        }
        FanOut::DbSize => {
            let command = encode_command(&["DBSIZE"]);
            let mut total = 0i64;
            for reply in ask(backend, routes, &all, RequestKind::Read, &command).await? {
                match reply {
                    Value::Integer(n) => total += n,
                    other => return Err(unexpected("DBSIZE", &other)),
                }
            }
            Ok(Value::Integer(total))
        }
        FanOut::Flush(argv) => {
            let command = encode_command(&argv);
            for reply in ask(backend, routes, &all, RequestKind::Write, &command).await? {
                if reply != Value::ok() {
                    return Err(unexpected("FLUSHALL", &reply));
                }
            }
            Ok(Value::ok())
        }
        FanOut::Everywhere(argv) => {
            let command = encode_command(&argv);
            let replies = ask(backend, routes, &all, RequestKind::Write, &command).await?;
            let first_error = replies
                .iter()
                .find(|reply| matches!(reply, Value::Error(_)))
                .cloned();
            match first_error {
                Some(error) => Err(error),
                None => replies
                    .into_iter()
                    .next()
                    .ok_or_else(|| Value::error("ERR the service has no partitions")),
            }
        }
        FanOut::ScriptExists(argv) => script_exists(backend, routes, &all, &argv).await,
        FanOut::RandomKey => random_key(backend, routes, all).await,
        FanOut::Scan {
            partition,
            inner,
            options,
        } => scan_partition(backend, routes, partition, inner, options).await,
    }
}

/// SCRIPT EXISTS on every partition: a script exists where every partition has it.
async fn script_exists<B: Backend>(
    backend: &B,
    routes: &Arc<ServiceRoutes>,
    all: &[usize],
    argv: &[Vec<u8>],
) -> Result<Value, Value> {
    let command = encode_command(argv);
    let mut everywhere: Option<Vec<Value>> = None;
    // The kv command table files all of SCRIPT as a write (LOAD and FLUSH change
    // the cache), so EXISTS goes through the log too.
    for reply in ask(backend, routes, all, RequestKind::Write, &command).await? {
        let flags = array(reply)?;
        everywhere = Some(match everywhere {
            None => flags,
            Some(so_far) => so_far
                .into_iter()
                .zip(flags)
                .map(|(a, b)| match (a, b) {
                    (Value::Integer(a), Value::Integer(b)) => Value::Integer(a.min(b)),
                    (error @ Value::Error(_), _) | (_, error @ Value::Error(_)) => error,
                    (other, _) => other,
                })
                .collect(),
        });
    }
    Ok(Value::Array(Some(everywhere.unwrap_or_default())))
}

/// RANDOMKEY from the partitions in a random order, until one has a key.
async fn random_key<B: Backend>(
    backend: &B,
    routes: &Arc<ServiceRoutes>,
    all: Vec<usize>,
) -> Result<Value, Value> {
    let command = encode_command(&["RANDOMKEY"]);
    let mut order = all;
    order.shuffle(&mut rand::thread_rng());
    for partition in order {
        let reply = ask(backend, routes, &[partition], RequestKind::Read, &command).await?;
        match reply.into_iter().next() {
            Some(Value::Bulk(None)) => continue,
            Some(key @ Value::Bulk(Some(_))) => return Ok(key),
            Some(other) => return Err(unexpected("RANDOMKEY", &other)),
            None => unreachable!("one partition asked, one reply"),
        }
    }
    Ok(Value::Bulk(None))
}

/// One SCAN step on `partition`; the cursor returned names the partition (low bits)
/// and where in it to go on.
async fn scan_partition<B: Backend>(
    backend: &B,
    routes: &Arc<ServiceRoutes>,
    partition: usize,
    inner: u64,
    options: Vec<Vec<u8>>,
) -> Result<Value, Value> {
    if partition >= routes.partitions.len() {
        // A cursor from before a resize, or made up: the scan is over.
        return Ok(scan_reply(0, Vec::new()));
    }
    let mut argv = vec![b"SCAN".to_vec(), inner.to_string().into_bytes()];
    argv.extend(options);
    let command = encode_command(&argv);
    let reply = ask(backend, routes, &[partition], RequestKind::Read, &command).await?;
    let (next_inner, keys) = match reply.into_iter().next() {
        Some(Value::Array(Some(parts))) if parts.len() == 2 => {
            let mut parts = parts.into_iter();
            let cursor = parts.next().expect("two parts");
            let keys = array(parts.next().expect("two parts"))?;
            let cursor = match &cursor {
                Value::Bulk(Some(text)) => std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok()),
                _ => None,
            };
            let Some(cursor) = cursor else {
                return Err(Value::error(
                    "ERR a partition answered SCAN with a cursor that is not a number",
                ));
            };
            (cursor, keys)
        }
        Some(other) => return Err(unexpected("SCAN", &other)),
        None => unreachable!("one partition asked, one reply"),
    };
    let next = if next_inner != 0 {
        // Rounded down (keys between come again, none is skipped); a cursor below
        // 2^10 would round to "start of the partition", so it rounds up instead (a
        // key hash that small is a 1 in 2^54 event).
        (next_inner & !PARTITION_MASK).max(PARTITION_MASK + 1) | partition as u64
    } else if partition + 1 < routes.partitions.len() {
        (partition + 1) as u64
    } else {
        0
    };
    Ok(scan_reply(next, keys))
}

fn scan_reply(cursor: u64, keys: Vec<Value>) -> Value {
    Value::Array(Some(vec![
        Value::bulk(cursor.to_string()),
        Value::Array(Some(keys)),
    ]))
}

fn array(value: Value) -> Result<Vec<Value>, Value> {
    match value {
        Value::Array(Some(items)) => Ok(items),
        other => Err(unexpected("a keyspace command", &other)),
    }
}

/// A partition's error passes through as it is; anything else unexpected is named.
fn unexpected(command: &str, reply: &Value) -> Value {
    match reply {
        Value::Error(_) => reply.clone(),
        other => Value::error(format!(
            "ERR a partition answered {command} with {other:?}, not what the gateway expects"
        )),
    }
}

/// Sends `command` to each of `partitions` at once; their replies in order, or the first
/// failure as the reply to give.
async fn ask<B: Backend>(
    backend: &B,
    routes: &Arc<ServiceRoutes>,
    partitions: &[usize],
    kind: RequestKind,
    command: &[u8],
) -> Result<Vec<Value>, Value> {
    let answers = join_all(partitions.iter().map(|&index| {
        let route = &routes.partitions[index];
        async move {
            // Any slot of the partition routes the command there.
            let reply = backend
                .execute(
                    routes.clone(),
                    index,
                    route.slots.start,
                    kind,
                    command.to_vec(),
                )
                .await;
            match parse_reply(&reply) {
                Ok(Some((value, _))) => value,
                _ => Value::error(format!(
                    "ERR partition {} sent a reply the gateway cannot parse",
                    route.partition
                )),
            }
        }
    }))
    .await;
    if let Some(error) = answers.iter().find(|a| a.is_error()) {
        return Err(error.clone());
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn classifies_keyspace_commands() {
        assert_eq!(classify(&argv(&["GET", "k"])), None);
        assert_eq!(
            classify(&argv(&["keys", "user:*"])),
            Some(Ok(FanOut::Keys(b"user:*".to_vec())))
        );
        assert_eq!(classify(&argv(&["DBSIZE"])), Some(Ok(FanOut::DbSize)));
        assert_eq!(
            classify(&argv(&["FLUSHALL", "ASYNC"])),
            Some(Ok(FanOut::Flush(argv(&["FLUSHALL", "ASYNC"]))))
        );
        assert_eq!(
            classify(&argv(&["FLUSHDB", "LATER"])),
            Some(Err(Value::error("ERR syntax error")))
        );
        assert_eq!(
            classify(&argv(&["SCAN", "x"])),
            Some(Err(Value::error("ERR invalid cursor")))
        );
        assert_eq!(
            classify(&argv(&["SCAN", "0", "COUNT", "0"])),
            Some(Err(Value::error("ERR syntax error")))
        );
        assert_eq!(
            classify(&argv(&["SCAN", "0", "MATCH"])),
            Some(Err(Value::error("ERR syntax error")))
        );
    }

    #[test]
    fn scan_cursor_names_partition_and_inner_cursor() {
        let cursor = (37u64 << SCAN_PARTITION_BITS) | 5;
        assert_eq!(
            classify(&argv(&[
                "SCAN",
                &cursor.to_string(),
                "MATCH",
                "a*",
                "COUNT",
                "10"
            ])),
            Some(Ok(FanOut::Scan {
                partition: 5,
                inner: 37 << SCAN_PARTITION_BITS,
                options: argv(&["MATCH", "a*", "COUNT", "10"]),
            }))
        );
    }
}
