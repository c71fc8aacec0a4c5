//! The client of stator's `/v1` API, shared by the CLI, `stator up`, chaos and the
//! benchmarks.
//!
//! # Layout
//! - [`api`]: [`Api`], an authenticated client of one server, and the `/v1/events`
//!   stream reader.
//! - [`context`]: context files (DESIGN section 8): where the API is and the token to use.

pub mod api;
pub mod context;

pub use api::Api;
pub use context::Context;
