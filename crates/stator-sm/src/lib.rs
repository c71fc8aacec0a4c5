//! `stator-sm/1`: state machines in any language, run as processes beside the agent.
//!
//! The agent listens on a Unix socket per replica and starts the app with
//! `STATOR_SM_SOCKET` pointing at it; the app connects, both sides exchange the
//! `stator-sm/1\n` greeting, and the host sends APPLY / QUERY / SNAPSHOT / RESTORE
//! frames that the app answers with OK or ERROR. docs/PROTOCOL.md has every byte.
//!
//! # Layout
//! - [`frame`]: the wire format: handshake, limits, encoders and a sans-IO decoder
//!   shared by both sides.
//! - [`sdk`]: the app side for Rust: the [`sdk::App`] trait and the blocking
//!   [`sdk::serve_from_env`] loop (std only).
//! - [`host`] (feature `host`, on by default): [`host::ProcessMachine`], the agent's
//!   [`stator_api::app::StateMachine`] that spawns the app, forwards calls and
//!   restarts, restores and replays it after a crash; [`host::ProcessFactory`] builds
//!   one per group. A [`host::Launcher`] changes how the app starts (the agent's
//!   container driver runs it with runc, the socket directory bind-mounted in).
//! - [`error`]: [`SmError`], the crate's one error type.

pub mod error;
pub mod frame;
#[cfg(feature = "host")]
pub mod host;
pub mod sdk;

pub use error::SmError;
