//! The one error type of the server, and how each maps to an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use stator_api::agent::{ErrorBody, UNKNOWN_NODE_ERROR};
use stator_api::spec::SpecError;
use stator_store::StoreError;

/// Everything a server call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request has no valid bearer token.
    #[error("missing or wrong bearer token: send `Authorization: Bearer <token>` with the {which} token from the server's data directory")]
    Unauthorized {
        /// Which token the route wants (`API` or `join`).
        which: &'static str,
    },
    /// A spec did not parse, or a field's value is not accepted.
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// The request body is malformed (not the expected JSON, too large, wrong type).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The named object does not exist.
    #[error("{kind} {name:?} not found; list them with GET /v1/{kind}s")]
    NotFound {
        /// `service` or `node`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A heartbeat for a node id the server does not know or declared lost.
    #[error("{UNKNOWN_NODE_ERROR} {0}: it was declared lost or never registered; stop every replica and register again")]
    UnknownNode(u64),
    /// The change is valid on its own but not from the current state.
    #[error("{field}: {reason}")]
    Conflict {
        /// The field that may not change.
        field: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be decoded: the data directory holds something this
    /// server did not write.
    #[error("stored record {key} is corrupt ({detail}); restore the data directory from a backup or remove the key")]
    CorruptRecord {
        /// The key.
        key: String,
        /// The decoder's message.
        detail: String,
    },
    /// Reading or writing the data directory (tokens) failed.
    #[error("data directory {path}: {source}; check that it exists and is writable by this user")]
    DataDir {
        /// The file or directory.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// `--advertise` is not a URL other servers can forward calls to.
    #[error("--advertise {url:?}: {reason}; give this server's URL as others reach it, e.g. http://10.0.0.1:7070")]
    BadAdvertiseUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick a free address with --listen")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// Several servers share the store and none holds the controller lease right now
    /// (an election is under way, or the holder just stopped).
    #[error("no server holds the controller lease right now (an election is under way); retry in a few seconds")]
    NoLeader,
    /// This server forwards to the controller holder, which did not answer.
    #[error("the server holding the controller lease ({leader}) does not answer: {detail}; retry in a few seconds or call another server")]
    LeaderUnreachable {
        /// The holder's URL.
        leader: String,
        /// What went wrong.
        detail: String,
    },
    /// A forwarded request reached a server that does not hold the lease either (the
    /// lease moved while it was in flight); it is not forwarded twice.
    #[error(
        "the request was forwarded to a server that no longer holds the controller lease; retry"
    )]
    ForwardedTooFar,
    /// Two servers given different tokens share one store.
    #[error("the {which} token given to this server differs from the one the cluster already uses (stored in the store); give every server the same token, or none to adopt the cluster's")]
    TokenMismatch {
        /// `API` or `join`.
        which: &'static str,
    },
    /// The controller task is gone (the server is shutting down).
    #[error("the server is shutting down; retry against a running server")]
    ShuttingDown,
}

impl ServerError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ServerError::Spec(SpecError::Parse { .. }) | ServerError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ServerError::Spec(SpecError::Invalid { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            ServerError::NotFound { .. } | ServerError::UnknownNode(_) => StatusCode::NOT_FOUND,
            ServerError::Conflict { .. } => StatusCode::CONFLICT,
            ServerError::ShuttingDown
            | ServerError::NoLeader
            | ServerError::ForwardedTooFar
            | ServerError::LeaderUnreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // This server's controller was deposed mid-call: the new holder will answer.
            ServerError::Store(StoreError::Fenced { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::TokenMismatch { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ServerError::Store(_)
            | ServerError::CorruptRecord { .. }
            | ServerError::DataDir { .. }
            | ServerError::Bind { .. }
            | ServerError::BadAdvertiseUrl { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
