//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong speaking `stator-sm/1`, on either side of the socket.
#[derive(Debug, thiserror::Error)]
pub enum SmError {
    /// A frame's length prefix is larger than [`crate::frame::MAX_FRAME_BYTES`]; the
    /// peer is broken or the state is too big for one frame (use more partitions).
    #[error("frame of {length_bytes} bytes exceeds the {max_bytes}-byte limit; the peer is broken or its state is too large for one frame (split the service into more partitions)")]
    FrameTooLarge {
        /// The length the prefix announced (or the encoder was asked to write).
        length_bytes: u64,
        /// The limit in force.
        max_bytes: u32,
    },
    /// A frame's length prefix is zero, so it has not even a type byte.
    #[error("empty frame (length 0): every frame needs at least a type byte; the peer is broken")]
    EmptyFrame,
    /// A frame's type byte is not one the receiver may get.
    #[error("unknown frame type 0x{type_byte:02x} where a {expected} frame was expected; the peer is broken or speaks another protocol version")]
    UnknownFrameType {
        /// The byte that was received.
        type_byte: u8,
        /// Which kind of frame the receiver was waiting for ("request" or "response").
        expected: &'static str,
    },
    /// A frame is too short for the fixed fields of its type.
    #[error("{frame} frame has {body_bytes} body bytes but needs at least {minimum_bytes}; the peer is broken")]
    FrameTooShort {
        /// The frame's name, e.g. `APPLY`.
        frame: &'static str,
        /// Body bytes received (after the type byte).
        body_bytes: usize,
        /// Body bytes the fixed fields need.
        minimum_bytes: usize,
    },
    /// A frame type that takes no body came with one.
    #[error(
        "{frame} frame must have an empty body but has {body_bytes} bytes; the peer is broken"
    )]
    UnexpectedBody {
        /// The frame's name, e.g. `SNAPSHOT`.
        frame: &'static str,
        /// Body bytes received.
        body_bytes: usize,
    },
    /// The peer's greeting was not `stator-sm/1\n`.
    #[error(
        "bad handshake: expected {expected:?}, got {received:?}; the app must speak stator-sm/1"
    )]
    BadHandshake {
        /// What this side speaks.
        expected: String,
        /// What arrived, lossily decoded.
        received: String,
    },
    /// Reading or writing the socket failed, or the peer closed it mid-frame.
    #[error("socket error while {context}: {source}")]
    Io {
        /// What was being done, e.g. "reading a response".
        context: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The peer did not answer in time.
    #[error("timed out after {after_ms} ms while {context}; the app is hung or overloaded")]
    Timeout {
        /// What was being waited for.
        context: &'static str,
        /// How long was waited.
        after_ms: u64,
    },
    /// The app process exited (or was killed) before it connected.
    #[error("app exited before connecting ({status}); see its stderr log in the run directory")]
    AppExited {
        /// The exit status as the OS reports it.
        status: String,
    },
    /// The app program could not be started at all.
    #[error(
        "cannot start app program {program:?}: {source}; check the command and working directory"
    )]
    Spawn {
        /// The program that was run.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The launcher could not prepare the app's start (e.g. its container image is bad
    /// or the container runtime is missing); the message says what to fix.
    #[error("cannot launch the app: {message}")]
    Launch {
        /// What went wrong and what to do.
        message: String,
    },
    /// The app answered a request with an ERROR frame.
    #[error("app failed {request}: {message}")]
    AppReported {
        /// The request, e.g. `APPLY index 7`.
        request: String,
        /// The app's message.
        message: String,
    },
    /// A replayed APPLY answered differently than the first time, so the app is not
    /// deterministic and its state after a restart cannot be trusted.
    #[error("app is not deterministic: replaying entry {index} after a restart failed: {message}")]
    NotDeterministic {
        /// The replayed log index.
        index: u64,
        /// What went wrong.
        message: String,
    },
    /// The app crashed more often than the restart budget allows.
    #[error("app crashed {restarts} times within {window_s} s (budget exhausted), last failure: {last}; the replica stops")]
    RestartBudgetExhausted {
        /// Restarts counted in the window.
        restarts: u32,
        /// The window's length.
        window_s: u64,
        /// The failure that broke the budget.
        last: String,
    },
    /// A replica's machine failed earlier and refuses further calls.
    #[error("app was stopped after an earlier failure: {reason}")]
    Stopped {
        /// The earlier failure.
        reason: String,
    },
    /// A required environment variable is missing or not valid.
    #[error("environment variable {name} is missing or invalid; the app must be started by a stator agent (or set it by hand)")]
    MissingEnv {
        /// The variable's name.
        name: &'static str,
    },
    /// The socket path does not fit in a Unix socket address.
    #[error("socket path {path:?} is {length_bytes} bytes, over the {max_bytes}-byte limit of a Unix socket address; use a shorter run directory")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        length_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
}

impl SmError {
    /// True when the failure lives in the app process (it died, closed the socket, hung
    /// or never connected), so restarting it and replaying its state can cure it.
    /// Protocol violations and errors the app reports are not: a deterministic app
    /// would repeat them.
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            SmError::Io { .. } | SmError::Timeout { .. } | SmError::AppExited { .. }
        )
    }

    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> SmError {
        move |source| SmError::Io { context, source }
    }
}

#[cfg(feature = "host")]
impl From<SmError> for stator_api::app::AppError {
    fn from(error: SmError) -> Self {
        use stator_api::app::AppError;
        match error {
            SmError::Io { .. }
            | SmError::Timeout { .. }
            | SmError::AppExited { .. }
            | SmError::Spawn { .. }
            | SmError::Launch { .. }
            | SmError::RestartBudgetExhausted { .. }
            | SmError::Stopped { .. }
            | SmError::SocketPathTooLong { .. }
            | SmError::MissingEnv { .. } => AppError::Unavailable(error.to_string()),
            _ => AppError::Protocol(error.to_string()),
        }
    }
}
