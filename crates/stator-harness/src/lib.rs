//! Running stator and its baselines as local processes: the mechanics `stator up`,
//! `stator chaos` and `stator bench` share, written once.
//!
//! # Layout
//! - [`etcd`]: a real N-member etcd on loopback whose members can be killed and started
//!   again, and calls to etcd's v3 JSON gateway.
//! - [`servers`]: the benchmarks' baselines: etcd with default timing, Redis with a
//!   replica (killed on drop).
//! - [`supervisor`]: child processes kept running, restarted after a delay when they
//!   exit (`stator up`'s agents, chaos's servers, gateway and agents).
//! - [`resp`]: [`resp::Connection`], the one RESP client (bounded replies, pipelining).
//! - [`pace`]: [`pace::PacedLoad`], requests on a fixed schedule with latency from the
//!   scheduled time and missed ticks counted (the failover and migration benchmarks,
//!   chaos's clients).
//! - [`process`]: process lookups in `/proc` (agents of a parent, a process's age,
//!   whether it is stopped).
//! - [`testkit`]: re-exported `stator-testkit`, the launchers that depend on nothing of
//!   stator (a blocking `redis-server` for stator-kv's own tests and examples).
//! - this file: free ports, programs on PATH, the shutdown signal, restart delays.

pub mod etcd;
pub mod pace;
pub mod process;
pub mod resp;
pub mod servers;
pub mod supervisor;

pub use stator_testkit as testkit;

use std::time::Duration;

/// How long a dead agent stays down before its supervisor starts it again: longer than
/// the server's heartbeat grace, so the cluster first sees the node as lost and heals.
/// `stator up` and chaos both restart agents after it.
pub const AGENT_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Finds a free loopback port by binding port 0 and releasing it.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether `program` is on PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
