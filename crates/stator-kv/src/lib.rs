//! The built-in Redis-compatible `kv` state machine (`app = { builtin = "kv" }`).
//!
//! Clients speak RESP to a gateway or leader; each write becomes one log entry holding the
//! RESP command, applied by every replica of the partition with the leader's clock.
//!
//! # Layout
//! - [`resp`]: RESP2 codec: incremental command parser (arrays and inline), reply
//!   parser, reply and command encoders, and the limits that keep hostile input bounded.
//! - [`command`]: the command table: read/write kind, arity, key positions, and the
//!   slot of a command's keys (for routing and `CROSSSLOT` checks before forwarding).
//! - `keyspace`: the map of keys to values with its expiry index and byte accounting.
//! - [`machine`]: [`KvMachine`], Redis string-command semantics with deterministic expiry.
//! - `snapshot`: the snapshot byte format.
//! - `app`: [`KvMachine`] as a [`stator_api::app::StateMachine`], and [`KvFactory`].

mod app;
pub mod command;
mod keyspace;
pub mod machine;
pub mod resp;
mod snapshot;

pub use app::KvFactory;
pub use command::{
    command_info, command_keys, command_kind, command_slot, command_table, CommandInfo,
    CommandKind, KeySlot,
};
pub use machine::KvMachine;
pub use resp::{encode_command, parse_command, parse_reply, Argv, RespError, Value};
