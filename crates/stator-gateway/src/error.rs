//! The gateway's one error type.

use std::net::SocketAddr;

/// What went wrong in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot work; the message names the field.
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// A listener could not bind its address.
    #[error("cannot listen on {addr}: {source}; pick a free address or stop what holds it")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No server URL answered the partition-map query.
    #[error("no stator server answered ({tried} URL(s) tried, last error: {last}); check --server and the API token")]
    ServerUnreachable {
        /// How many URLs were tried.
        tried: usize,
        /// The last failure seen.
        last: String,
    },
    /// The HTTP server stopped with an error.
    #[error("HTTP listener on {addr} failed: {source}")]
    Http {
        /// Where it listened.
        addr: SocketAddr,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Results of the gateway.
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;
