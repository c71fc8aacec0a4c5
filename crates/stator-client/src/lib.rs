//! The client of stator's `/v1` API, shared by the CLI, `stator up`, chaos, the
//! benchmarks, the agent and the gateway.
//!
//! # Layout
//! - [`api`]: [`Api`], an authenticated client of one server, and the `/v1/events`
//!   stream reader.
//! - [`failover`]: [`FailoverClient`], the one HTTP client of the server API over
//!   several URLs with failover, which the agent, the gateway and [`Api`] share.
//! - [`context`]: context files (DESIGN section 8): where the API is and the token to use.

pub mod api;
pub mod context;
pub mod failover;

pub use api::Api;
pub use context::Context;
pub use failover::{CallError, FailoverClient, FailoverOn};
