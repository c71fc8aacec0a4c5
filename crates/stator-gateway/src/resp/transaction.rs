//! `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH` on one connection.
//!
//! The connection queues the commands between `MULTI` and `EXEC` and checks each as it
//! comes (unknown commands, keys in another partition: answered at once, then `EXEC` fails
//! with `EXECABORT`, as Redis does). `EXEC` sends the whole transaction to the partition's
//! leader as ONE write, `STATOR.EXEC`, which the kv machine applies as one log entry on
//! every replica (the encoding is the kv machine's, see `stator_kv::transaction`).
//!
//! `WATCH` reads each key's version (`STATOR.VERSION`, a linearizable read) and `EXEC`
//! carries the versions: the machine refuses the transaction (null reply) if any watched
//! key changed since, whoever changed it through whichever gateway.

use super::local::Dispatch;
use crate::map::ServiceRoutes;
use stator_api::slot::key_slot;
use stator_kv::{command_keys, command_kind, encode_command, encode_exec, CommandKind, Value};

/// The kv machine's transaction command.
pub use stator_kv::transaction::EXEC_COMMAND;

/// The kv machine's version read for `WATCH` (`stator_kv::transaction::VERSION_COMMAND`).
pub const VERSION_COMMAND: &str = "STATOR.VERSION";

/// Most commands one transaction may queue (the kv machine's own limit).
pub const MAX_QUEUED_COMMANDS: usize = 64 * 1024;

/// Most keys one connection may watch at once.
pub const MAX_WATCHED_KEYS: usize = 4096;

const EXEC_ABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

const CROSS_PARTITION: &str = "CROSSSLOT Keys in request don't hash to the same slot; every key of a transaction (watched keys too) must live in one partition: put a {hash tag} in the keys to keep them together";

/// A connection's transaction state.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    /// Between `MULTI` and `EXEC`/`DISCARD`.
    open: bool,
    /// A queued command was refused: `EXEC` answers `EXECABORT`.
    dirty: bool,
    queued: Vec<Vec<Vec<u8>>>,
    /// Watched keys with the versions read at `WATCH`.
    pub(crate) watched: Vec<(Vec<u8>, u64)>,
    /// The partition index every key so far lives in, and the first key's slot.
    target: Option<(usize, u16)>,
}

impl Transaction {
    /// Ties the transaction to the partition of `keys`; false if one is elsewhere.
    fn claim(&mut self, keys: &[&[u8]], service: Option<&ServiceRoutes>) -> bool {
        let Some(service) = service else {
            return keys.is_empty();
        };
        for key in keys {
            let slot = key_slot(key);
            let Some(partition) = service.route_index(slot) else {
                return false;
            };
            match self.target {
                None => self.target = Some((partition, slot)),
                Some((owner, _)) if owner == partition => {}
                Some(_) => return false,
            }
        }
        true
    }

    fn reset(&mut self) {
        *self = Transaction::default();
    }
}

/// What a transaction command needs done beyond a reply.
#[derive(Debug, PartialEq)]
pub(crate) enum TxWork {
    /// Read these keys' versions (`STATOR.VERSION`) from the partition owning `slot`;
    /// the connection then records them as watched.
    Watch {
        /// Slot of the keys (one partition).
        slot: u16,
        /// The keys, in order.
        keys: Vec<Vec<u8>>,
        /// The encoded version read.
        payload: Vec<u8>,
    },
    /// Send the encoded `STATOR.EXEC` as one write to the partition owning `slot`.
    Exec {
        /// Slot of the transaction's first key.
        slot: u16,
        /// The encoded transaction.
        payload: Vec<u8>,
    },
}

fn reply(value: Value) -> Dispatch {
    Dispatch::Reply(value.to_bytes())
}

fn error(message: impl Into<String>) -> Dispatch {
    reply(Value::error(message))
}

fn is(argv: &[Vec<u8>], name: &str) -> bool {
    argv[0].eq_ignore_ascii_case(name.as_bytes())
}

/// Whether `argv` (`EXEC`, `WATCH`) is sent alone: the connection must hold it until every
/// earlier command is answered, and only then call [`intercept`], which changes the
/// transaction state.
pub(crate) fn waits_for_earlier(argv: &[Vec<u8>]) -> bool {
    is(argv, "exec") || is(argv, "watch")
}

/// Handles `argv` if it is a transaction command or arrives inside `MULTI`.
pub(crate) fn intercept(
    argv: &[Vec<u8>],
    tx: &mut Transaction,
    service: Option<&ServiceRoutes>,
) -> Option<Dispatch> {
    if is(argv, "quit") {
        return None;
    }
    if is(argv, "multi") {
        if argv.len() != 1 {
            return Some(error("ERR wrong number of arguments for 'multi' command"));
        }
        if tx.open {
            return Some(error("ERR MULTI calls can not be nested"));
        }
        tx.open = true;
        return Some(reply(Value::ok()));
    }
    if is(argv, "exec") {
        if argv.len() != 1 {
            return Some(error("ERR wrong number of arguments for 'exec' command"));
        }
        if !tx.open {
            return Some(error("ERR EXEC without MULTI"));
        }
        let dirty = tx.dirty;
        let (queued, watched, target) = (
            std::mem::take(&mut tx.queued),
            std::mem::take(&mut tx.watched),
            tx.target,
        );
        tx.reset();
        if dirty {
            return Some(error(EXEC_ABORT));
        }
        if queued.is_empty() && watched.is_empty() {
            return Some(reply(Value::Array(Some(Vec::new()))));
        }
        let slot = match (target, service) {
            (Some((_, slot)), _) => slot,
            // Only keyless commands (PING, ECHO): any partition answers them.
            (None, Some(service)) => match service.partitions.first() {
                Some(first) => first.slots.start,
                None => {
                    return Some(error(
                        "CLUSTERDOWN the service has no partition yet; retry shortly",
                    ))
                }
            },
            (None, None) => return Some(error(
                "CLUSTERDOWN the service is not in the partition map (deleted, or not applied yet)",
            )),
        };
        return Some(Dispatch::Transaction(TxWork::Exec {
            slot,
            payload: encode_command(&encode_exec(&watched, &queued)),
        }));
    }
    if is(argv, "discard") {
        if argv.len() != 1 {
            return Some(error("ERR wrong number of arguments for 'discard' command"));
        }
        if !tx.open {
            return Some(error("ERR DISCARD without MULTI"));
        }
        tx.reset();
        return Some(reply(Value::ok()));
    }
    if is(argv, "watch") {
        if argv.len() < 2 {
            return Some(error("ERR wrong number of arguments for 'watch' command"));
        }
        if tx.open {
            return Some(error("ERR WATCH inside MULTI is not allowed"));
        }
        if tx.watched.len() + argv.len() - 1 > MAX_WATCHED_KEYS {
            return Some(error(format!(
                "ERR a connection may watch at most {MAX_WATCHED_KEYS} keys; UNWATCH first"
            )));
        }
        let keys: Vec<&[u8]> = argv[1..].iter().map(Vec::as_slice).collect();
        if !tx.claim(&keys, service) {
            return Some(error(CROSS_PARTITION));
        }
        let mut version = vec![VERSION_COMMAND.as_bytes().to_vec()];
        version.extend(argv[1..].iter().cloned());
        return Some(Dispatch::Transaction(TxWork::Watch {
            slot: key_slot(&argv[1]),
            keys: argv[1..].to_vec(),
            payload: encode_command(&version),
        }));
    }
    if is(argv, "unwatch") {
        if argv.len() != 1 {
            return Some(error("ERR wrong number of arguments for 'unwatch' command"));
        }
        if !tx.open {
            tx.watched.clear();
            tx.target = None;
        }
        return Some(reply(Value::ok()));
    }
    if !tx.open {
        return None;
    }
    // Inside MULTI: queue, or refuse and poison the transaction.
    if let Some(refusal) = queue_error(argv, tx, service) {
        tx.dirty = true;
        return Some(error(refusal));
    }
    if tx.queued.len() >= MAX_QUEUED_COMMANDS {
        tx.dirty = true;
        return Some(error(format!(
            "ERR a transaction may queue at most {MAX_QUEUED_COMMANDS} commands"
        )));
    }
    tx.queued.push(argv.to_vec());
    Some(reply(Value::Simple("QUEUED".into())))
}

fn queue_error(
    argv: &[Vec<u8>],
    tx: &mut Transaction,
    service: Option<&ServiceRoutes>,
) -> Option<String> {
    let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
    let partitions = service.map_or(0, |s| s.partitions.len());
    let keyspace_wide = matches!(
        name.as_str(),
        "keys" | "scan" | "dbsize" | "flushall" | "flushdb" | "randomkey"
    );
    if keyspace_wide && partitions > 1 {
        return Some(format!(
            "ERR '{name}' covers every partition and cannot run inside MULTI on a service of {partitions} partitions"
        ));
    }
    if command_kind(argv) == CommandKind::Unknown {
        let mut message = format!(
            "ERR unknown command '{}', with args beginning with: ",
            String::from_utf8_lossy(&argv[0])
        );
        for arg in &argv[1..] {
            message.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
        }
        return Some(message);
    }
    if !tx.claim(&command_keys(argv), service) {
        return Some(CROSS_PARTITION.into());
    }
    None
}

/// The versions in a `STATOR.VERSION` reply, one per key; the error reply otherwise.
pub(crate) fn parse_versions(reply: &Value, keys: usize) -> Result<Vec<u64>, Value> {
    match reply {
        Value::Array(Some(items)) if items.len() == keys => items
            .iter()
            .map(|item| match item {
                Value::Integer(version) if *version >= 0 => Ok(*version as u64),
                _ => Err(Value::error("ERR a partition answered WATCH with a version that is not a number")),
            })
            .collect(),
        Value::Error(_) => Err(reply.clone()),
        other => Err(Value::error(format!(
            "ERR a partition answered WATCH with {other:?}; is the kv machine older than the gateway?"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn text(d: Option<Dispatch>) -> String {
        match d {
            Some(Dispatch::Reply(b)) => String::from_utf8(b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn queues_between_multi_and_exec() {
        let mut tx = Transaction::default();
        assert_eq!(intercept(&argv(&["GET", "k"]), &mut tx, None), None);
        assert_eq!(
            text(intercept(&argv(&["EXEC"]), &mut tx, None)),
            "-ERR EXEC without MULTI\r\n"
        );
        assert_eq!(text(intercept(&argv(&["MULTI"]), &mut tx, None)), "+OK\r\n");
        assert_eq!(
            text(intercept(&argv(&["MULTI"]), &mut tx, None)),
            "-ERR MULTI calls can not be nested\r\n"
        );
        assert_eq!(
            text(intercept(&argv(&["PING"]), &mut tx, None)),
            "+QUEUED\r\n"
        );
        assert_eq!(
            text(intercept(&argv(&["WATCH", "k"]), &mut tx, None)),
            "-ERR WATCH inside MULTI is not allowed\r\n"
        );
        match intercept(&argv(&["EXEC"]), &mut tx, None) {
            Some(Dispatch::Reply(bytes)) => assert!(String::from_utf8(bytes)
                .unwrap()
                .starts_with("-CLUSTERDOWN")),
            other => panic!("{other:?}"),
        }
        assert!(!tx.open, "EXEC ends the transaction");
    }

    #[test]
    fn a_refused_command_aborts_exec() {
        let mut tx = Transaction::default();
        intercept(&argv(&["MULTI"]), &mut tx, None);
        assert!(text(intercept(&argv(&["NOSUCH", "x"]), &mut tx, None))
            .starts_with("-ERR unknown command 'NOSUCH'"));
        assert_eq!(
            text(intercept(&argv(&["EXEC"]), &mut tx, None)),
            format!("-{EXEC_ABORT}\r\n")
        );
        intercept(&argv(&["MULTI"]), &mut tx, None);
        assert_eq!(
            text(intercept(&argv(&["DISCARD"]), &mut tx, None)),
            "+OK\r\n"
        );
        assert_eq!(
            text(intercept(&argv(&["DISCARD"]), &mut tx, None)),
            "-ERR DISCARD without MULTI\r\n"
        );
    }

    #[test]
    fn encodes_the_kv_machine_transaction() {
        assert_eq!(
            encode_exec(
                &[(b"w".to_vec(), 7)],
                &[argv(&["SET", "a", "1"]), argv(&["INCR", "a"])]
            ),
            argv(&[
                "STATOR.EXEC",
                "1",
                "w",
                "7",
                "3",
                "SET",
                "a",
                "1",
                "2",
                "INCR",
                "a"
            ])
        );
        assert_eq!(
            parse_versions(
                &Value::Array(Some(vec![Value::Integer(0), Value::Integer(4)])),
                2
            ),
            Ok(vec![0, 4])
        );
    }
}
