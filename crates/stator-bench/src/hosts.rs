//! In-process replication hosts for the benchmarks, each on its own thread and
//! single-threaded runtime (as agents are separate processes, a host's Raft tasks do not
//! share a scheduler with the client driving it).
//!
//! `STATOR_BENCH_HOST_THREADS=N` (N >= 1) runs each host on a multi-threaded runtime with
//! N workers instead, as `stator up` runs an agent (`max(1, cores / agents)` workers), for
//! A/Bs of the two in one binary.
//!
//! [`HostThreads::start`] starts the hosts and hands back their handles;
//! [`HostThreads::run_on_all`] runs setup (creating and bootstrapping groups) on a host's own
//! runtime, so the tasks it spawns live there. Dropping [`HostThreads`] shuts every host
//! down and joins its thread.

use anyhow::Context as _;
use stator_replication::{
    ClientError, GroupId, Host, HostConfig, NodeId, ReplicaClient, RequestKind,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

/// The benchmarks' one write: `SET key value` on the kv group `group` through its leader,
/// found from `members` and remembered in `leader` between calls. Returns the RESP reply.
pub(crate) async fn kv_set(
    client: &ReplicaClient,
    group: GroupId,
    members: &[String],
    leader: &mut Option<String>,
    (key, value): (&str, &[u8]),
    deadline: std::time::Duration,
) -> Result<Vec<u8>, ClientError> {
    let command = stator_kv::encode_command(&[b"SET".as_slice(), key.as_bytes(), value]);
    client
        .execute(
            group,
            members,
            leader,
            RequestKind::Write,
            command,
            deadline,
        )
        .await
}

/// Work sent to a host's thread, run there with the host.
type Job = Box<dyn FnOnce(Host) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Hosts on their own threads; shut down and joined on drop.
pub(crate) struct HostThreads {
    /// Each host's job queue; closing it shuts the host down.
    jobs: BTreeMap<NodeId, tokio::sync::mpsc::UnboundedSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each host's thread id, for its CPU and page-fault counters.
    tids: BTreeMap<NodeId, i32>,
}

impl HostThreads {
    /// Starts hosts `1..=count` on loopback with `secret`, durable under
    /// `data_root/<node id>` when a root is given; returns them with their handles.
    pub(crate) async fn start(
        count: u64,
        secret: &str,
        data_root: Option<&std::path::Path>,
    ) -> anyhow::Result<(HostThreads, BTreeMap<NodeId, Host>)> {
        let mut threads = HostThreads {
            jobs: BTreeMap::new(),
            threads: Vec::new(),
            tids: BTreeMap::new(),
        };
        let mut started = Vec::new();
        for node_id in 1..=count {
            let config = HostConfig {
                node_id,
                listen_addr: "127.0.0.1:0".into(),
                cluster_secret: secret.to_string(),
                filter: None,
                tls: None,
                data_dir: data_root.map(|root| root.join(node_id.to_string())),
                learner_catchup_bytes_per_sec:
                    stator_replication::pacing::DEFAULT_LEARNER_CATCHUP_BYTES_PER_SEC,
            };
            let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
            let (host_tx, host_rx) = tokio::sync::oneshot::channel();
            threads.jobs.insert(node_id, jobs_tx);
            threads.threads.push(std::thread::spawn(move || {
                host_thread(config, host_tx, jobs_rx)
            }));
            started.push((node_id, host_rx));
        }
        let mut hosts = BTreeMap::new();
        for (node_id, host_rx) in started {
            let (host, tid) = host_rx
                .await
                .with_context(|| format!("host {node_id}'s thread died"))?
                .with_context(|| format!("starting host {node_id} on loopback"))?;
            hosts.insert(node_id, host);
            threads.tids.insert(node_id, tid);
        }
        Ok((threads, hosts))
    }

    /// Each host's thread counters now (see [`crate::threadstat`]); hosts whose counters
    /// cannot be read are left out.
    pub(crate) fn counters(&self) -> BTreeMap<NodeId, crate::threadstat::Counters> {
        self.tids
            .iter()
            .filter_map(|(id, tid)| Some((*id, crate::threadstat::read(*tid)?)))
            .collect()
    }

    /// Each host's thread id (to find its samples in a profile).
    pub(crate) fn tids(&self) -> &BTreeMap<NodeId, i32> {
        &self.tids
    }

    /// Lowers host `node_id`'s thread to nice level `nice` (a diagnostic: see
    /// `STATOR_BENCH_DESTINATION_NICE` in [`crate::migration`]).
    pub(crate) fn renice(&self, node_id: NodeId, nice: i32) -> anyhow::Result<()> {
        let tid = *self
            .tids
            .get(&node_id)
            .with_context(|| format!("no host {node_id}"))?;
        // SAFETY: setpriority takes plain integers; on Linux a thread id names one thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
        anyhow::ensure!(
            rc == 0,
            "renicing host {node_id}'s thread: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Runs `job` on every host's runtime at once; the first error, if any.
    pub(crate) async fn run_on_all<F, Fut>(&self, job: F) -> anyhow::Result<()>
    where
        F: Fn(NodeId, Host) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + 'static,
    {
        let mut running = Vec::new();
        for &node_id in self.jobs.keys() {
            let job = job.clone();
            running.push((
                node_id,
                self.submit(node_id, move |host| job(node_id, host))?,
            ));
        }
        for (node_id, done) in running {
            done.await
                .with_context(|| format!("host {node_id}'s thread died running a job"))??;
        }
        Ok(())
    }

    /// Queues `job` on host `node_id`'s thread; the receiver gets its result.
    fn submit<T, F, Fut>(
        &self,
        node_id: NodeId,
        job: F,
    ) -> anyhow::Result<tokio::sync::oneshot::Receiver<T>>
    where
        T: Send + 'static,
        F: FnOnce(Host) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |host| {
            Box::pin(async move {
                let _ = done_tx.send(job(host).await);
            })
        });
        self.jobs
            .get(&node_id)
            .with_context(|| format!("no host {node_id}"))?
            .send(job)
            .ok()
            .with_context(|| format!("host {node_id}'s thread has stopped"))?;
        Ok(done_rx)
    }
}

impl Drop for HostThreads {
    fn drop(&mut self) {
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Workers per host runtime from `STATOR_BENCH_HOST_THREADS` (see the module doc);
/// `None`: a single-threaded runtime on the host's own thread.
fn host_worker_threads() -> Option<usize> {
    std::env::var("STATOR_BENCH_HOST_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n >= 1)
}

/// One host's thread: start it, report it, run jobs until the queue closes, shut down.
fn host_thread(
    config: HostConfig,
    host_tx: tokio::sync::oneshot::Sender<anyhow::Result<(Host, i32)>>,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>,
) {
    let mut builder = match host_worker_threads() {
        Some(workers) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(workers);
            b
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = host_tx.send(Err(e.into()));
            return;
        }
    };
    rt.block_on(async move {
        let host = match Host::start(config).await {
            Ok(host) => host,
            Err(e) => {
                let _ = host_tx.send(Err(anyhow::anyhow!("{e}")));
                return;
            }
        };
        let tid = crate::threadstat::current_tid();
        if host_tx.send(Ok((host.clone(), tid))).is_err() {
            host.shutdown().await;
            return;
        }
        while let Some(job) = jobs.recv().await {
            job(host.clone()).await;
        }
        host.shutdown().await;
    });
}
