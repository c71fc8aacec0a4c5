//! A `stator up` cluster run as a child of the benchmark, for the benchmarks that need
//! real agents (failover, idle partitions).
//!
//! `up` is this same binary; its agents are its own children, so a SIGKILL of one is a
//! real node failure, and they die with `up` (their death signal) if the benchmark dies.

use super::free_port;
use anyhow::{bail, Context as _};
use serde_json::Value;
use stator_client::{Api, Context};
use stator_harness::resp::Connection;
use stator_harness::supervisor::ProcessSpec;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// SIGTERM to SIGKILL when stopping `up` (it stops its agents first).
const UP_STOP_GRACE: Duration = Duration::from_secs(15);
/// How often the API is polled while waiting for health.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a starting cluster (its context file, the gateway's RESP port) is checked.
const START_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What to start.
pub(crate) struct UpOptions {
    /// Agents `up` starts.
    pub nodes: usize,
    /// Heartbeat grace after which the server declares a node lost.
    pub node_grace_ms: u64,
    /// The benchmark's service (a kv service exposed on the gateway's RESP endpoint).
    pub service: String,
    /// The spec's lines after `name`, `expose` and `app` (partitions, replicas, ...).
    pub spec_lines: String,
    /// Apply the spec with `up -f` (true), or later with [`UpCluster::apply`].
    pub apply_at_start: bool,
    /// How long `up` may take to write its context, and the gateway to answer.
    pub start_timeout: Duration,
    /// Extra environment of `up` (and so of its agents).
    pub env: Vec<(String, String)>,
}

/// The running cluster.
pub(crate) struct UpCluster {
    child: tokio::process::Child,
    api: Api,
    /// The service's RESP endpoint on the gateway.
    pub resp_addr: String,
    service: String,
    spec: PathBuf,
    dir: tempfile::TempDir,
}

impl UpCluster {
    /// Starts `up` and waits for its context (API address and token).
    pub async fn start(opts: &UpOptions) -> anyhow::Result<UpCluster> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("cluster");
        let resp_addr = format!("127.0.0.1:{}", free_port()?);
        let spec = dir.path().join(format!("{}.toml", opts.service));
        std::fs::write(
            &spec,
            format!(
                "name = \"{}\"\napp = {{ builtin = \"kv\" }}\nexpose = {{ resp = \"{resp_addr}\" }}\n{}",
                opts.service, opts.spec_lines
            ),
        )?;
        let mut args = vec![
            "up".to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--nodes".into(),
            opts.nodes.to_string(),
            "--api".into(),
            "127.0.0.1:0".into(),
            "--gateway-http".into(),
            "127.0.0.1:0".into(),
            "--node-grace-ms".into(),
            opts.node_grace_ms.to_string(),
        ];
        if opts.apply_at_start {
            args.extend(["-f".to_string(), spec.display().to_string()]);
        }
        let log = dir.path().join("up.log");
        let mut child = stator_harness::supervisor::spawn(&ProcessSpec {
            name: "`stator up`".into(),
            program: std::env::current_exe()?,
            args,
            // `up` makes its context the user's current one; keep the user's untouched.
            env: std::iter::once(("HOME".to_string(), dir.path().display().to_string()))
                .chain(opts.env.iter().cloned())
                .collect(),
            log: log.clone(),
            pid_file: None,
            restart_delay: Duration::ZERO,
        })?;
        let started = Instant::now();
        let context_file = data_dir.join("context");
        let ctx: Context = loop {
            if let Some(status) = child.try_wait()? {
                bail!("`stator up` exited ({status}); see {}", log.display());
            }
            if let Ok(text) = std::fs::read_to_string(&context_file) {
                if let Ok(ctx) = serde_json::from_str(&text) {
                    break ctx;
                }
            }
            if started.elapsed() > opts.start_timeout {
                bail!(
                    "`stator up` wrote no context within {:?}; see {}",
                    opts.start_timeout,
                    log.display()
                );
            }
            tokio::time::sleep(START_POLL_INTERVAL).await;
        };
        Ok(UpCluster {
            child,
            api: Api::new(&ctx)?,
            resp_addr,
            service: opts.service.clone(),
            spec,
            dir,
        })
    }

    /// Creates the service (what `stator apply -f` does).
    pub async fn apply(&self) -> anyhow::Result<()> {
        let text = std::fs::read(&self.spec)?;
        self.api
            .put_raw(
                &format!("/v1/services/{}", self.service),
                "application/toml",
                text,
            )
            .await
            .with_context(|| format!("applying {}", self.spec.display()))?;
        Ok(())
    }

    /// `up`'s log, for error messages.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("up.log")
    }

    /// The service's partitions as the API reports them.
    pub async fn partitions(&self) -> anyhow::Result<Vec<Value>> {
        self.api
            .get(&format!("/v1/partitions?service={}", self.service))
            .await
    }

    /// Registered nodes that are ready.
    pub async fn ready_nodes(&self) -> anyhow::Result<usize> {
        self.api.ready_nodes().await
    }

    /// Waits until `nodes` nodes are ready and every partition has a leader and its
    /// replication factor, with no member on `gone`.
    pub async fn wait_healthy(
        &self,
        nodes: usize,
        gone: Option<&Value>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let parts = self.partitions().await.unwrap_or_default();
            if !parts.is_empty()
                && partitions_healthy(&parts, gone)
                && self.ready_nodes().await.unwrap_or(0) >= nodes
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "cluster not healthy within {timeout:?}; partitions: {}",
                    serde_json::to_string(&parts)?
                );
            }
            tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
        }
    }

    /// Waits until the gateway answers PING on the service's RESP endpoint (it opens the
    /// listener once it has seen the service).
    pub async fn wait_resp(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(mut conn) = Connection::connect(self.resp_addr.as_str()).await {
                if conn.call(&["PING"]).await.is_ok_and(|r| !r.is_error()) {
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                bail!(
                    "the gateway's RESP endpoint {} never answered; see {}",
                    self.resp_addr,
                    self.log().display()
                );
            }
            tokio::time::sleep(START_POLL_INTERVAL).await;
        }
    }

    /// The pid of the running agent named `name` (see [`UpCluster::agent_pids`]).
    pub fn agent_pid(&self, name: &str) -> anyhow::Result<i32> {
        match self.agent_pids()?.get(name) {
            Some(pid) => Ok(*pid as i32),
            None => bail!("no running agent named {name} under `stator up`; is its node lost or restarting? see its agent.log"),
        }
    }

    /// Every running agent of `up`, by node name: the children of `up` that run
    /// `stator agent --name NODE`, from `/proc` (the one source [`UpCluster::agent_pid`]
    /// reads too).
    pub fn agent_pids(&self) -> anyhow::Result<std::collections::BTreeMap<String, u32>> {
        let up_pid = self.child.id().context("`stator up` has exited")?;
        Ok(stator_harness::process::child_agent_pids(up_pid))
    }

    /// Stops `up` with SIGTERM (it stops its agents), then SIGKILL if it lingers.
    pub async fn stop(mut self) {
        stator_harness::supervisor::terminate(&mut self.child, UP_STOP_GRACE).await;
    }
}

/// Every partition has a leader and its replication factor, every member is alive, and
/// none is on `gone`.
pub(crate) fn partitions_healthy(parts: &[Value], gone: Option<&Value>) -> bool {
    parts.iter().all(|p| {
        p["replication_factor_met"] == true
            && !p["leader"].is_null()
            && p["members"].as_array().is_some_and(|members| {
                members
                    .iter()
                    .all(|m| m["alive"] == true && Some(&m["node_id"]) != gone)
            })
    })
}
