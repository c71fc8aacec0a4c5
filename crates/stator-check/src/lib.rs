//! Checks that a run of stator behaved like a linearizable key-value store.
//!
//! Clients record every operation they issue with a [`Recorder`]; the history is written
//! as JSONL (DESIGN.md section 8) and checked per key against a register model.
//!
//! # Layout
//! - [`history`]: the history entry format ([`HistoryEntry`], [`Op`], [`Status`]) and the
//!   JSONL reader and writer.
//! - [`recorder`]: [`Recorder`], a cheap shared log concurrent client tasks append to.
//! - [`linearizability`]: [`check_history`], the Wing & Gong / Lowe search per key with a
//!   bounded effort, giving ok / anomaly (with the operations involved) / undetermined.
//! - [`lost_writes`]: [`lost_acked_writes`], acknowledged writes missing from a final read.
//! - [`error`]: the crate error type, [`CheckError`].

pub mod error;
pub mod history;
pub mod linearizability;
pub mod lost_writes;
pub mod recorder;

pub use error::CheckError;
pub use history::{read_file, read_jsonl, write_file, write_jsonl, HistoryEntry, Op, Status};
pub use linearizability::{
    check_history, check_history_with, Anomaly, KeyVerdict, Report, SearchLimits, Verdict,
};
pub use lost_writes::{lost_acked_writes, LostWrite};
pub use recorder::{PendingOp, Recorder};
