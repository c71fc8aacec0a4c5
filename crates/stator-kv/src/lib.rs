//! The built-in Redis-compatible `kv` state machine (`app = { builtin = "kv" }`).
//!
//! Clients speak RESP to a gateway or leader; each write becomes one log entry holding the
//! RESP command, applied by every replica of the partition with the leader's clock. The
//! machine speaks Redis 7.0 over strings, hashes, lists, sets and sorted sets, with
//! keyspace commands, expiry and transactions; `docs/COMPATIBILITY.md` lists every command
//! family and each known difference, and `tests/differential.rs` checks replies against a
//! real `redis-server` command by command.
//!
//! # Layout
//! - [`resp`]: RESP2 codec: incremental command parser (arrays and inline), reply
//!   parser, reply and command encoders, and the limits that keep hostile input bounded.
//! - [`command`]: the command table: read/write kind, arity, key positions (fixed ranges,
//!   `numkeys` forms such as ZUNIONSTORE and SINTERCARD, and `STATOR.EXEC`'s watched and
//!   queued keys), and the slot of a command's keys (routing and `CROSSSLOT`).
//! - `types`: what a key holds (`Data`: string, hash, list, set, sorted
//!   set), each with O(1) byte accounting, and the entry-seeded random generator.
//! - `keyspace`: the map of keys to values with its expiry index, byte accounting and
//!   per-key write versions (what `WATCH` compares).
//! - [`machine`]: [`KvMachine`]: dispatch, string commands, expiry.
//! - `ops`: the other commands, one file per type (`hash`, `list`, `set`, `zset`,
//!   `strings`, `keys` for keyspace commands and transactions) plus shared helpers (SCAN
//!   cursors, Redis' glob matcher, `%.17g` doubles).
//! - [`budget`]: `maxmemory` with the `noeviction` policy: [`budget::MemoryBudget`] and
//!   Redis' OOM reply, decided in apply from the machine's own byte accounting.
//! - [`transaction`]: `MULTI ... EXEC` as one `STATOR.EXEC` entry: [`encode_exec`],
//!   [`queued_command_error`].
//! - `snapshot`: the snapshot byte format (version 2 with types; version 1 still read).
//! - `app`: [`KvMachine`] as a [`stator_api::app::StateMachine`], and [`KvFactory`].
//!
//! # Determinism
//! Every replica applies the same entries and must end identical. Time is the entry's
//! leader-stamped `time_ms`; randomness (SPOP) comes from a generator seeded with the
//! entry's index and time; hash fields and set members live in insertion-ordered maps whose
//! order depends only on the operations applied, and snapshots keep that order, so a
//! replica restored from a snapshot draws the same members as one that applied every entry.
//! Read-only random commands (SRANDMEMBER, HRANDFIELD, ZRANDMEMBER, RANDOMKEY) are answered
//! by one replica and need no agreement.
//!
//! # Blocking commands (the gateway's contract)
//! BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN and BZPOPMAX are writes. Applied, each pops at
//! once if one of its keys has data (answering as Redis does when it unblocks), and
//! otherwise answers the null array at once: the reply Redis gives at the timeout, and the
//! "would block" outcome. A gateway serving a blocking command should: send it; on a null
//! array, if the client's timeout (the last argument for most; `0` = forever) has not
//! passed, wait until a write touches one of the keys (or poll, e.g. every 50-100 ms, or
//! when the partition's applied index moves) and send it again; answer the null array at
//! the deadline. Because every attempt is an ordinary log entry, the wait survives a leader
//! failover: the gateway simply retries against the new leader. Inside `STATOR.EXEC` the
//! blocking forms never wait (BLMOVE and BRPOPLPUSH then answer a null bulk, as LMOVE).
//!
//! # Transactions
//! See [`transaction`]: `WATCH` reads `STATOR.VERSION key...`; `EXEC` sends one
//! `STATOR.EXEC <watched> [<key> <version>]... [<argc> <arg>...]...` entry, built with
//! [`encode_exec`]; commands are checked as they are queued with [`queued_command_error`].

mod app;
pub mod budget;
pub mod command;
mod keyspace;
pub mod machine;
mod ops;
pub mod resp;
mod snapshot;
pub mod transaction;
mod types;

pub use app::KvFactory;
pub use command::{
    command_info, command_keys, command_kind, command_slot, command_table, CommandInfo,
    CommandKind, KeySlot,
};
pub use machine::KvMachine;
pub use resp::{encode_command, parse_command, parse_reply, Argv, RespError, Value};
pub use transaction::{encode_exec, queued_command_error};
