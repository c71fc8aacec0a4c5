//! `MULTI ... EXEC` as one log entry: the `STATOR.EXEC` encoding and its checks.
//!
//! A gateway queues a client's commands between `MULTI` and `EXEC` itself, and sends the
//! whole transaction as ONE command (so one log entry, applied atomically on every replica):
//!
//! ```text
//! STATOR.EXEC <watched> [<key> <version>]... [<argc> <arg>...]...
//! ```
//!
//! `<watched>` counts the `(key, version)` pairs that follow; `<version>` is what
//! `STATOR.VERSION key...` (a read, answered with one integer per key, 0 for a missing key)
//! returned when the client ran `WATCH`. Each queued command follows as its argument count
//! and its arguments. Build it with [`encode_exec`]; check each command as it is queued with
//! [`queued_command_error`] (Redis answers such errors at once and then fails `EXEC` with
//! `EXECABORT`).
//!
//! Replies, as Redis gives them to `EXEC`: an array with one reply per queued command
//! (runtime errors such as `WRONGTYPE` are elements, the rest still run); the null array if
//! a watched key's version changed (it was written, deleted or expired since `WATCH`); or
//! `EXECABORT Transaction discarded because of previous errors.` if a queued command is
//! unknown or has the wrong arity (the gateway should have refused it already).
//!
//! The same encoding with no watched keys and only reads may also be sent as a **query**
//! (a linearizable or stale read, not a log entry): a pipeline batch of reads, answered in
//! one pass over the applied state with the same array of replies, so a router sends a
//! connection's pipelined `GET`s to a partition as one read instead of one each.
//!
//! One difference from Redis: a key that was missing at `WATCH`, then created and deleted
//! again before `EXEC`, reads as unchanged (versions live on keys, and the key is gone).

use crate::command::lookup;
use crate::resp::{parse_i64_strict, Value};
use std::ops::Range;

/// The name of the transaction command.
pub const EXEC_COMMAND: &str = "STATOR.EXEC";
/// The read that returns the versions `WATCH` remembers.
pub const VERSION_COMMAND: &str = "STATOR.VERSION";
/// Most commands one transaction may carry.
pub const MAX_QUEUED_COMMANDS: usize = 64 * 1024;

/// Commands an [`ExecLayout`] keeps without a heap allocation: room for a 16-command
/// pipeline by the two-arguments-per-command bound `parse` reserves with.
const EXEC_INLINE_COMMANDS: usize = 32;

/// Where the watched keys and queued commands sit in a `STATOR.EXEC` argument list.
#[derive(Debug)]
pub(crate) struct ExecLayout {
    /// Index of each watched key in argv, with the version it had at `WATCH`.
    pub(crate) watched: Vec<(usize, u64)>,
    /// The argv range of each queued command; up to [`EXEC_INLINE_COMMANDS`] on the stack
    /// (a layout is parsed per `STATOR.EXEC` entry on every replica).
    pub(crate) commands: smallvec::SmallVec<[Range<usize>; EXEC_INLINE_COMMANDS]>,
}

impl ExecLayout {
    /// Parses the layout, or `None` if the argument list is malformed.
    pub(crate) fn parse<A: AsRef<[u8]>>(argv: &[A]) -> Option<ExecLayout> {
        let watched_count = usize::try_from(parse_i64_strict(argv.get(1)?.as_ref())?).ok()?;
        let mut at = 2;
        let mut watched = Vec::new();
        for _ in 0..watched_count {
            argv.get(at)?;
            let version = u64::try_from(parse_i64_strict(argv.get(at + 1)?.as_ref())?).ok()?;
            watched.push((at, version));
            at += 2;
        }
        // Each command takes at least two arguments (its count and its name): room for as
        // many as could follow, so a pipelined batch's layout is no allocation (up to
        // `EXEC_INLINE_COMMANDS`) or one, instead of a growth per power of two (~3 % of
        // the agents' CPU in cluster-mode pipelined SET, docs/BENCHMARKS.md session 16).
        let mut commands = smallvec::SmallVec::with_capacity(
            (argv.len().saturating_sub(at) / 2).min(MAX_QUEUED_COMMANDS),
        );
        while at < argv.len() {
            if commands.len() >= MAX_QUEUED_COMMANDS {
                return None;
            }
            let argc = usize::try_from(parse_i64_strict(argv[at].as_ref())?).ok()?;
            if argc == 0 || at + 1 + argc > argv.len() {
                return None;
            }
            commands.push(at + 1..at + 1 + argc);
            at += 1 + argc;
        }
        Some(ExecLayout { watched, commands })
    }
}

/// Builds the `STATOR.EXEC` argument list for a transaction.
pub fn encode_exec(watched: &[(Vec<u8>, u64)], queued: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let mut argv = vec![
        EXEC_COMMAND.as_bytes().to_vec(),
        watched.len().to_string().into_bytes(),
    ];
    for (key, version) in watched {
        argv.push(key.clone());
        argv.push(version.to_string().into_bytes());
    }
    for command in queued {
        argv.push(command.len().to_string().into_bytes());
        argv.extend(command.iter().cloned());
    }
    argv
}

/// The error Redis answers when `argv` is queued inside `MULTI` (unknown command or wrong
/// arity), or `None` if it may be queued. Commands that cannot run inside a transaction
/// (`STATOR.EXEC` itself) are refused too.
pub fn queued_command_error<A: AsRef<[u8]>>(argv: &[A]) -> Option<Value> {
    let name = argv.first()?.as_ref();
    let Some(spec) = lookup(name) else {
        return Some(crate::machine::unknown_command(argv));
    };
    if spec.command == crate::command::Command::StatorExec {
        return Some(Value::error("ERR MULTI calls can not be nested"));
    }
    if !spec.arity_ok(argv.len()) {
        return Some(crate::machine::wrong_arity(spec.name));
    }
    spec.subcommand_error(argv).map(Value::error)
}

/// The reply to a `STATOR.EXEC` whose arguments do not follow its layout.
pub(crate) const MALFORMED_EXEC: &str = "ERR malformed STATOR.EXEC: expected <watched> [<key> <version>]... [<argc> <arg>...]...; build it with stator_kv::encode_exec";

/// Redis' reply to `EXEC` after a queueing error.
pub(crate) const EXEC_ABORT: &str = "EXECABORT Transaction discarded because of previous errors.";
