//! The one error type of the checker.

/// Everything reading, writing or checking a history can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A history line is not a valid JSON entry.
    #[error(
        "history line {line}: {detail}; each line must be one JSON object like \
         {{\"client\":3,\"op\":\"set\",\"key\":\"k1\",\"value\":\"v9\",\"call_ns\":1,\
         \"return_ns\":2,\"status\":\"ok\"}}"
    )]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What the JSON parser reported.
        detail: String,
    },

    /// An entry parses but breaks a rule of the format (see [`crate::HistoryEntry`]).
    #[error("history entry {position}: {reason}; fix the recorder that wrote it")]
    InvalidEntry {
        /// 1-based line number (or position in the slice) of the entry.
        position: usize,
        /// Which rule was broken.
        reason: String,
    },

    /// Reading or writing the history file failed.
    #[error("history file IO failed: {0}; check the path and permissions")]
    Io(#[from] std::io::Error),
}
