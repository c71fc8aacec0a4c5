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
//! - [`resp`]: RESP2 codec: incremental command parser (arrays and inline; a log entry's
//!   array also into slices of its bytes, with no copy per argument), reply
//!   parser (and `reply_len`, which only measures a reply, for cutting a batch's replies
//!   apart without building values), reply and command encoders, and the limits that
//!   keep hostile input bounded.
//! - [`command`]: the command table: read/write kind, arity, key positions (fixed ranges,
//!   `numkeys` forms such as ZUNIONSTORE and SINTERCARD, and `STATOR.EXEC`'s watched and
//!   queued keys), and the slot of a command's keys (routing and `CROSSSLOT`).
//! - `types`: what a key holds (`Data`: string, hash, list, set, sorted
//!   set), each with O(1) byte accounting, and the entry-seeded random generator.
//! - `keyspace`: the map of keys to values (foldhash, randomly seeded) with its expiry
//!   index, byte accounting and per-key write versions (what `WATCH` compares). A plain
//!   SET costs one hash lookup: lazy expiry is skipped while no key is past its expiry,
//!   and the insert uses the entry API with the key the command brought. Keys of up to
//!   22 bytes (`key`: `Key`) and string values of up to 14 bytes
//!   (`Str::Inline`) live inside the table's slot, so such a SET touches no heap memory.
//! - `key_table`: the keyspace's table, 256 hashbrown tables picked by hash bits (a
//!   resize moves 1/256 of the keys), with batch prefetch, and frozen for a snapshot
//!   without a walk: a write to a table the snapshot has not encoded yet encodes it for
//!   the snapshot first (`Hold`), so nothing is copied.
//! - [`machine`]: [`KvMachine`]: dispatch, string commands, expiry.
//! - `ops`: the other commands, one file per type (`hash`, `list`, `set`, `zset`,
//!   `strings`, `keys` for keyspace commands and transactions, `sort` for SORT and
//!   SORT_RO, `script` for EVAL, SCRIPT,
//!   FUNCTION and FCALL with the script cache and libraries) plus shared helpers (SCAN
//!   cursors, Redis' glob matcher, `%.17g` doubles, LMPOP/ZMPOP arguments).
//! - [`script_acl`]: `STATOR.ACLKEYS`, a script command carrying the caller's ACL key
//!   patterns and command rules (`RIGHTS`), which every `redis.call` of the script is
//!   checked against; the ACL categories, shared with the gateway.
//! - [`scripting`]: the Lua 5.1 sandbox (mlua, vendored Lua): one VM per run, Redis' Lua
//!   <-> RESP conversions, the `redis` library, the instruction and memory limits.
//! - `cjson`: the `cjson` (lua-cjson 2.1.0) and `bit` (Lua BitOp) libraries scripts see,
//!   with Redis' JSON text, number formatting and error messages.
//! - `binlibs`: the `cmsgpack` (lua-cmsgpack 0.4.0) and `struct` (lua-struct) libraries,
//!   with Redis' bytes, numbers, error texts and stack limits.
//! - [`budget`]: `maxmemory` with the `noeviction` policy: [`budget::MemoryBudget`] and
//!   Redis' OOM reply, decided in apply from the machine's own byte accounting.
//! - [`transaction`]: `MULTI ... EXEC` as one `STATOR.EXEC` entry: [`encode_exec`],
//!   [`queued_command_error`]; the same encoding is a pipeline batch (applied by
//!   `KvMachine::apply_exec_entry` without copying its layout; a plain `SET key value`
//!   in it straight from the entry's bytes, a same-size overwrite with no allocation)
//!   and, with reads only, a batch of reads answered as one query.
//! - `snapshot`: the snapshot byte format (version 3 with types and scripts; versions 2
//!   and 1 still read); `capture` takes a frozen table under the replica's lock, the walk
//!   and the sort by key run after, off it.
//! - `app`: [`KvMachine`] as a [`stator_api::app::StateMachine`], and [`KvFactory`].
//! - [`notify`]: keyspace notifications: `notify-keyspace-events` flags, the Redis event
//!   of each applied command, and [`notify::NotifyingKv`], a machine that reports them to
//!   a sink (the agent publishes a leader's events on the pub/sub bus).
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
//! # Scripting (EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, SCRIPT, FUNCTION, FCALL, FCALL_RO)
//! A script runs inside the state machine, as part of applying its log entry, on every
//! replica: it sees the partition's keys and its `redis.call`s are ordinary commands
//! applied at the entry's time. The contract:
//! - **Keys and routing.** EVAL, EVALSHA and FCALL name their keys in the `numkeys` form
//!   (the command table's `numkeys_index`), so a router sends the script to the partition
//!   of its KEYS. When a script declares KEYS, every key its `redis.call`s name must hash
//!   to the slot of one of them (so it lives in that partition); a script with no KEYS
//!   may name any key of the partition it was sent to.
//! - **Determinism.** Each run gets a fresh Lua VM (nothing leaks between scripts, and a
//!   replica restored from a snapshot runs them exactly as one that applied every entry);
//!   no `os`, `io`, `loadfile`, `dofile`, `print`, `require`, `coroutine`; `math.random`
//!   is seeded from the entry; globals cannot be created or read when missing (as Redis
//!   7). Iterating a table keyed by tables or functions, or printing such a value, shows
//!   addresses that differ between replicas: scripts must not let that reach a write.
//! - **Limits.** [`scripting::MAX_SCRIPT_INSTRUCTIONS`] Lua instructions per run, counted
//!   by a hook, not timed, so every replica stops a runaway script at the same point with
//!   [`scripting::INSTRUCTION_LIMIT_ERROR`] (a `BUSY` error; `pcall` cannot catch it;
//!   writes made before stay applied, as when a Redis script fails);
//!   [`scripting::MAX_SCRIPT_MEMORY_BYTES`] of Lua memory; [`MAX_CACHED_SCRIPTS`] cached
//!   scripts and [`MAX_FUNCTION_LIBRARIES`] libraries per partition.
//! - **Libraries.** `redis`, `cjson` (lua-cjson 2.1.0's texts and errors), `bit` (Lua
//!   BitOp), `cmsgpack` (lua-cmsgpack 0.4.0), `struct` (lua-struct), `string`, `table`,
//!   `math`: the codecs are pure functions of their arguments, so replicas agree.
//! - **ACL.** A script command wrapped in `STATOR.ACLKEYS` ([`script_acl`]) runs with
//!   every `redis.call` limited to the caller's command rules and key patterns, on every
//!   replica, with Redis 7's script ACL errors.
//! - **State.** The script cache (SCRIPT LOAD, and every EVAL that compiled) and the
//!   function libraries are machine state and travel in snapshots. They are per partition:
//!   EVALSHA on a partition that never saw the script answers `NOSCRIPT`, as a Redis
//!   Cluster node does; a router may fall back to EVAL, or send SCRIPT LOAD / FUNCTION
//!   LOAD to every partition. EVAL_RO, EVALSHA_RO and FCALL_RO are reads (answered by
//!   `query`, never cached); the `_RO` forms and `no-writes` functions refuse writes.
//!
//! # Blocking commands (the gateway's contract)
//! BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN, BZPOPMAX, BLMPOP and BZMPOP are writes. Applied, each pops at
//! once if one of its keys has data (answering as Redis does when it unblocks), and
//! otherwise answers the null array at once: the reply Redis gives at the timeout, and the
//! "would block" outcome. A gateway serving a blocking command should: send it; on a null
//! array, if the client's timeout (the last argument; the first for BLMPOP and BZMPOP; `0` = forever) has not
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
mod binlibs;
pub mod budget;
mod cjson;
pub mod command;
mod key;
mod key_table;
mod keyspace;
pub mod machine;
pub mod notify;
mod ops;
pub mod resp;
pub mod script_acl;
pub mod scripting;
mod snapshot;
pub mod transaction;
mod types;

pub use app::KvFactory;
pub use command::{
    command_info, command_keys, command_kind, command_slot, command_table, CommandInfo,
    CommandKind, KeySlot,
};
pub use machine::KvMachine;
pub use ops::{MAX_CACHED_SCRIPTS, MAX_FUNCTION_LIBRARIES};
pub use resp::{encode_command, parse_command, parse_reply, Argv, RespError, Value};
pub use script_acl::{
    command_in_category, encode_script_acl, encode_script_rights, is_script_command, runs_script,
    CommandRights,
};
pub use transaction::{encode_exec, queued_command_error};
