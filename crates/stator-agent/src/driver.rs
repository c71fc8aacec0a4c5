//! The process driver: runs stateless instances and jobs as supervised child processes.
//!
//! [`InstanceSupervisor::reconcile`] is level-triggered: it receives the node's complete
//! list of [`InstanceAssignment`]s, starts what is listed and not running, and stops what
//! runs and is no longer listed (or is listed with a changed assignment, which is then
//! started afresh). Calling it twice with the same list changes nothing.
//!
//! One tokio task owns each instance: its child process, its restart back-off and its
//! [`InstanceStatus`]. The supervisor keeps only a registry of handles (a control channel
//! and a watch of the status), so nothing else touches an instance's state.
//!
//! # Rules
//! - **Stateless** instances are restarted whenever they exit, after a capped exponential
//!   back-off ([`RESTART_BACKOFF_INITIAL_MS`] doubling up to [`RESTART_BACKOFF_MAX_MS`],
//!   reset after a run of [`HEALTHY_RUN_RESET_MS`]).
//! - **Jobs** run once per assignment id. Exit 0 ends `succeeded`, anything else (or a
//!   failure to start) ends `failed` with the exit code in the status; the agent never
//!   reruns a job. Retries with back-off are the server's decision: it issues a new
//!   assignment with a new id (`<service>-<n>-<attempt>`). A finished job keeps reporting
//!   its final status for as long as it stays assigned.
//! - **State**: `starting` (not spawned yet, or waiting to restart) -> `running` (process
//!   alive) -> `ready` (readiness probe passes, or there is none). A ready instance falls
//!   back to `running` after [`PROBE_FAILURE_THRESHOLD`] failed probes in a row.
//! - **Stopping** sends SIGTERM to the instance's process group, then SIGKILL after
//!   [`STOP_GRACE_MS`]. `reconcile` does not wait for stops, so a stubborn process never
//!   delays the agent's heartbeat; an id assigned again while its old process is still
//!   stopping starts only once that process is gone.
//! - **No orphans**: each child leads its own process group (stops reach its children
//!   too), is killed if its handle is dropped, and on Linux gets SIGKILL from the kernel
//!   when the agent dies (`PR_SET_PDEATHSIG`), even by SIGKILL.
//! - **Environment**: the agent's own, plus the assignment's `env`, plus
//!   `STATOR_SERVICE`, `STATOR_INSTANCE` and, when a port is assigned, `PORT`. The working
//!   directory is the assignment's, or the agent's when none is given.
//! - **Logs**: stdout and stderr are appended to `<run_dir>/<id>/stdout.log` and
//!   `stderr.log`; a file over [`MAX_LOG_BYTES`] is rotated to `*.log.1` at the next start.
//! - **CPU shares**: with [`InstanceSupervisor::with_cpu_cgroups`], each instance runs
//!   in its own cgroup (see [`crate::cgroup`]) whose share follows `cpu_millis`; a change
//!   of `cpu_millis` alone updates the share without a restart. `memory_mib` is not
//!   enforced.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stator_api::agent::{
    InstanceAssignment, InstanceKind, InstanceState, InstanceStatus, REASON_COMPLETED,
    REASON_ERROR, REASON_OOM_KILLED,
};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cgroup::{self, Cgroups, Limits, MemoryEvents};
use crate::container::{ContainerRuntime, PreparedContainer};
use crate::probe::{self, describe_exit, ProbeTarget, PROBE_FAILURE_THRESHOLD, PROBE_PERIOD_MS};

/// First restart delay of a crashed stateless instance: quick, since most crashes of a
/// real-time service are one-off and its clients are waiting.
pub const RESTART_BACKOFF_INITIAL_MS: u64 = 100;

/// Longest restart delay: a crash-looping instance costs at most one start per 10 s.
pub const RESTART_BACKOFF_MAX_MS: u64 = 10_000;

/// A run at least this long counts as healthy and resets the back-off to its start.
pub const HEALTHY_RUN_RESET_MS: u64 = 10_000;

/// Time between SIGTERM and SIGKILL when stopping: long enough to flush and close
/// connections, short enough that a drain or redeploy is not held up for long.
pub const STOP_GRACE_MS: u64 = 5_000;

/// Size at which an instance's log file is rotated (checked at each start), so a chatty
/// crash-looping process cannot fill the disk.
pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// Longest instance id accepted; ids name directories, and real ones are short.
pub const MAX_INSTANCE_ID_BYTES: usize = 200;

/// File, under the instance's directory, that receives its stdout.
pub const STDOUT_LOG_FILE: &str = "stdout.log";

/// File, under the instance's directory, that receives its stderr.
pub const STDERR_LOG_FILE: &str = "stderr.log";

/// Control messages queued per instance; only a stop is ever sent, so a few suffice.
const CONTROL_QUEUE_CAPACITY: usize = 4;

/// Supervises the node's stateless instances and jobs.
///
/// Dropping it closes every instance's control channel, which each task reads as a stop;
/// [`InstanceSupervisor::shutdown`] is the orderly path that also waits for the processes.
pub struct InstanceSupervisor {
    run_dir: PathBuf,
    /// Where instances get their CPU share and limits; None: not enforced.
    cgroups: Option<Arc<Cgroups>>,
    /// Runs `container` instances; None: they fail saying the agent has no runtime.
    containers: Option<Arc<ContainerRuntime>>,
    /// A std mutex: it is never held across an await, only to add or take handles.
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// Assigned instances (running, restarting or finished jobs), by id.
    assigned: HashMap<String, InstanceHandle>,
    /// Tasks stopping an instance that is no longer assigned, by id.
    stopping: HashMap<String, JoinHandle<()>>,
    /// Set by [`InstanceSupervisor::shutdown`]; nothing starts afterwards.
    shut_down: bool,
}

/// The registry's view of one instance; the instance's task owns everything else.
struct InstanceHandle {
    assignment: InstanceAssignment,
    /// The CPU share the instance's task applies at each (re)start.
    cpu_millis: Arc<AtomicU64>,
    control: mpsc::Sender<Control>,
    status: watch::Receiver<InstanceStatus>,
    task: JoinHandle<()>,
}

impl InstanceHandle {
    /// Asks the task to stop its process and hands back the task to await.
    fn stop(self) -> JoinHandle<()> {
        // A full queue already holds a stop, and a closed one means the task has ended:
        // either way nothing is lost. Dropping `control` also reads as a stop.
        let _ = self.control.try_send(Control::Stop);
        self.task
    }
}

/// Messages to an instance's task.
#[derive(Debug)]
enum Control {
    /// Stop the process (SIGTERM, then SIGKILL after the grace) and end the task.
    Stop,
}

impl InstanceSupervisor {
    /// A supervisor keeping each instance's logs under `run_dir/<instance id>/`.
    pub fn new(run_dir: PathBuf) -> Self {
        Self {
            run_dir,
            cgroups: None,
            containers: None,
            registry: Mutex::new(Registry::default()),
        }
    }

    /// Runs each instance in its own cgroup of `cgroups`, with a CPU share from its
    /// `cpu_millis` (None: shares are not enforced).
    pub fn with_cpu_cgroups(mut self, cgroups: Option<Arc<Cgroups>>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// Runs `container` instances with `runtime`. Removes first whatever containers,
    /// mounts and bundles an earlier agent on the same run dir left behind.
    pub fn with_containers(mut self, runtime: Arc<ContainerRuntime>) -> Self {
        runtime.remove_stale(&self.run_dir);
        self.containers = Some(runtime);
        self
    }

    /// Where the instance `id` keeps its logs.
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.run_dir.join(id)
    }

    /// Moves the running set toward `desired`, the node's complete list of instances:
    /// starts the missing ones, stops those no longer listed and restarts those whose
    /// assignment changed. Returns without waiting for processes to stop.
    pub async fn reconcile(&self, desired: &[InstanceAssignment]) {
        let mut registry = self.lock();
        if registry.shut_down {
            tracing::debug!("instance supervisor is shut down; ignoring assignments");
            return;
        }
        registry.stopping.retain(|_, task| !task.is_finished());

        let mut wanted: BTreeMap<&str, &InstanceAssignment> = BTreeMap::new();
        for assignment in desired {
            if wanted.insert(&assignment.id, assignment).is_some() {
                tracing::warn!(id = %assignment.id, "instance assigned twice; running the last copy");
            }
        }

        // A new CPU share alone is a resize: update the cgroup, keep the process.
        for (id, handle) in registry.assigned.iter_mut() {
            let Some(&want) = wanted.get(id.as_str()) else {
                continue;
            };
            if want.cpu_millis != handle.assignment.cpu_millis
                && same_but_cpu(want, &handle.assignment)
            {
                handle.assignment.cpu_millis = want.cpu_millis;
                handle.cpu_millis.store(want.cpu_millis, Ordering::Relaxed);
                if let Some(cgroups) = &self.cgroups {
                    match cgroups.set_cpu(id, want.cpu_millis) {
                        Ok(()) => {
                            tracing::info!(%id, cpu_millis = want.cpu_millis, "instance CPU share resized")
                        }
                        Err(error) => tracing::warn!(%id, %error, "cannot resize the CPU share"),
                    }
                }
            }
        }
        let gone: Vec<String> = registry
            .assigned
            .iter()
            .filter(|(id, handle)| wanted.get(id.as_str()) != Some(&&handle.assignment))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let handle = registry.assigned.remove(&id).expect("id listed just above");
            if wanted.contains_key(id.as_str()) {
                tracing::info!(%id, "assignment changed; restarting the instance");
            } else {
                tracing::info!(%id, "instance no longer assigned; stopping it");
            }
            let task = handle.stop();
            registry.stopping.insert(id, task);
        }

        for (id, assignment) in wanted {
            if registry.assigned.contains_key(id) {
                continue;
            }
            let previous = registry.stopping.remove(id);
            let handle = self.start(assignment.clone(), previous);
            registry.assigned.insert(id.to_string(), handle);
        }
    }

    /// The status of every assigned instance, sorted by id.
    pub fn statuses(&self) -> Vec<InstanceStatus> {
        let registry = self.lock();
        let mut statuses: Vec<InstanceStatus> = registry
            .assigned
            .values()
            .map(|handle| handle.status.borrow().clone())
            .collect();
        statuses.sort_by(|a, b| a.id.cmp(&b.id));
        statuses
    }

    /// Stops every instance and waits until all their processes are gone (at most about
    /// [`STOP_GRACE_MS`]). Later calls to `reconcile` start nothing.
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut registry = self.lock();
            registry.shut_down = true;
            let stopping = std::mem::take(&mut registry.stopping).into_values();
            let assigned = std::mem::take(&mut registry.assigned).into_values();
            stopping.chain(assigned.map(InstanceHandle::stop)).collect()
        };
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "an instance task panicked while stopping");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry stays consistent even if a holder panicked: each change is a
        // single insert or remove.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start(
        &self,
        assignment: InstanceAssignment,
        previous: Option<JoinHandle<()>>,
    ) -> InstanceHandle {
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_CAPACITY);
        let (status_tx, status_rx) = watch::channel(InstanceStatus {
            id: assignment.id.clone(),
            service: assignment.service.clone(),
            state: InstanceState::Starting,
            restarts: 0,
            exit_code: None,
            message: None,
            reason: None,
            oom_kills: 0,
        });
        let cpu_millis = Arc::new(AtomicU64::new(assignment.cpu_millis));
        let task = InstanceTask {
            instance_dir: self.instance_dir(&assignment.id),
            assignment: assignment.clone(),
            control: control_rx,
            status: status_tx,
            cgroups: self.cgroups.clone(),
            containers: self.containers.clone(),
            cpu_millis: cpu_millis.clone(),
        };
        InstanceHandle {
            assignment,
            cpu_millis,
            control: control_tx,
            status: status_rx,
            task: tokio::spawn(task.run(previous)),
        }
    }
}

/// Capped exponential back-off between restarts. Time is an input, never read here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RestartBackoff {
    next_delay_ms: u64,
}

impl RestartBackoff {
    fn new() -> Self {
        Self {
            next_delay_ms: RESTART_BACKOFF_INITIAL_MS,
        }
    }

    /// The delay before the next start, given how long the run that just ended lasted.
    fn delay_after_run_ms(&mut self, run_ms: u64) -> u64 {
        if run_ms >= HEALTHY_RUN_RESET_MS {
            self.next_delay_ms = RESTART_BACKOFF_INITIAL_MS;
        }
        let delay_ms = self.next_delay_ms;
        self.next_delay_ms = delay_ms.saturating_mul(2).min(RESTART_BACKOFF_MAX_MS);
        delay_ms
    }
}

/// Checks that `id` can name a directory under the run dir and nothing else.
fn validate_instance_id(id: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_BYTES {
        return Err(format!(
            "instance id {id:?} must be 1 to {MAX_INSTANCE_ID_BYTES} bytes long"
        ));
    }
    if id.starts_with('.') || !id.chars().all(allowed) {
        return Err(format!(
            "instance id {id:?} may only hold letters, digits, '-', '_' and '.', and must not start with '.'"
        ));
    }
    Ok(())
}

/// How one run of the process ended.
enum RunOutcome {
    /// A stop was requested and the process is gone.
    Stopped,
    /// The process exited by itself; true when the kernel killed it for passing its
    /// memory limit.
    Exited(ExitStatus, bool),
    /// The process could not be started or waited for.
    Failed(String),
}

/// The task that owns one instance.
struct InstanceTask {
    assignment: InstanceAssignment,
    instance_dir: PathBuf,
    control: mpsc::Receiver<Control>,
    status: watch::Sender<InstanceStatus>,
    cgroups: Option<Arc<Cgroups>>,
    containers: Option<Arc<ContainerRuntime>>,
    /// The current CPU share (a resize updates it while the process runs).
    cpu_millis: Arc<AtomicU64>,
}

impl InstanceTask {
    async fn run(self, previous: Option<JoinHandle<()>>) {
        let cgroups = self.cgroups.clone();
        let id = self.assignment.id.clone();
        self.run_until_done(previous).await;
        // The process is gone: its cgroup can go too.
        if let Some(cgroups) = cgroups {
            if validate_instance_id(&id).is_ok() {
                cgroups.remove(&id);
            }
        }
    }

    async fn run_until_done(mut self, previous: Option<JoinHandle<()>>) {
        if let Some(previous) = previous {
            // The same id is still stopping: its port and log files are not free yet.
            let _ = previous.await;
        }
        if let Err(reason) = validate_instance_id(&self.assignment.id) {
            tracing::warn!(id = %self.assignment.id, %reason, "refusing instance");
            self.update(|status| {
                status.state = InstanceState::Failed;
                status.message = Some(reason);
            });
            return;
        }
        let mut backoff = RestartBackoff::new();
        loop {
            let started_at = Instant::now();
            let outcome = match self.start_run().await {
                Ok(run) => self.supervise(run).await,
                Err(reason) => RunOutcome::Failed(reason),
            };
            let run_ms = u64::try_from(started_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            let id = &self.assignment.id;
            let (exit_code, what, started, reason) = match outcome {
                RunOutcome::Stopped => return,
                RunOutcome::Exited(exit, true) => (
                    exit.code(),
                    format!(
                        "{REASON_OOM_KILLED}: {} and was killed for passing its memory limit of {} MiB",
                        describe_exit(exit),
                        self.assignment.memory_mib
                    ),
                    true,
                    REASON_OOM_KILLED,
                ),
                RunOutcome::Exited(exit, false) => (
                    exit.code(),
                    describe_exit(exit),
                    true,
                    if exit.success() { REASON_COMPLETED } else { REASON_ERROR },
                ),
                RunOutcome::Failed(reason) => (None, reason, false, REASON_ERROR),
            };
            let oom_killed = reason == REASON_OOM_KILLED;
            if oom_killed {
                tracing::warn!(%id, memory_mib = self.assignment.memory_mib, "instance OOM-killed");
            }
            self.update(|status| {
                status.reason = Some(reason.to_string());
                status.oom_kills = status.oom_kills.saturating_add(u32::from(oom_killed));
            });
            if self.assignment.kind == InstanceKind::Job {
                let succeeded = exit_code == Some(0);
                tracing::info!(%id, succeeded, "job {what}");
                self.update(|status| {
                    status.exit_code = exit_code;
                    if succeeded {
                        status.state = InstanceState::Succeeded;
                        status.message = None;
                    } else {
                        status.state = InstanceState::Failed;
                        status.message = Some(format!("job {what}"));
                    }
                });
                return;
            }
            let delay_ms = backoff.delay_after_run_ms(run_ms);
            tracing::info!(%id, delay_ms, "instance {what}; restarting");
            self.update(|status| {
                status.exit_code = exit_code;
                // A process that never started is a failure the operator must fix; one
                // that exited is merely on its way back.
                status.state = if started {
                    InstanceState::Starting
                } else {
                    InstanceState::Failed
                };
                status.message = Some(format!("{what}; restarting in {delay_ms} ms"));
            });
            if self.stop_requested_within(delay_ms).await {
                return;
            }
            self.update(|status| status.restarts = status.restarts.saturating_add(1));
        }
    }

    fn update(&self, change: impl FnOnce(&mut InstanceStatus)) {
        self.status.send_modify(change);
    }

    /// Waits `delay_ms`; true when a stop arrives first.
    async fn stop_requested_within(&mut self, delay_ms: u64) -> bool {
        tokio::select! {
            // Any message, or a closed channel, means stop.
            _ = self.control.recv() => true,
            () = tokio::time::sleep(Duration::from_millis(delay_ms)) => false,
        }
    }

    /// The environment an instance (and its exec probe) gets beyond the agent's own.
    fn instance_env(&self) -> BTreeMap<String, String> {
        let assignment = &self.assignment;
        let mut env = assignment.env.clone();
        env.insert("STATOR_SERVICE".into(), assignment.service.clone());
        env.insert("STATOR_INSTANCE".into(), assignment.id.clone());
        if let Some(port) = assignment.port {
            env.insert("PORT".into(), port.to_string());
        }
        env
    }

    /// The limits the instance's cgroups get.
    fn limits(&self) -> Limits {
        Limits {
            cpu_millis: self.cpu_millis.load(Ordering::Relaxed),
            cpu_limit_millis: self.assignment.cpu_limit_millis,
            memory_mib: self.assignment.memory_mib,
        }
    }

    /// Starts one run: the process, or (for a container) the image, bundle and `runc
    /// run`.
    async fn start_run(&self) -> Result<Run, String> {
        let assignment = &self.assignment;
        let stdout = open_log(&self.instance_dir, STDOUT_LOG_FILE)?;
        let stderr = open_log(&self.instance_dir, STDERR_LOG_FILE)?;
        let cgroup_procs = self.cgroups.as_ref().and_then(|cgroups| {
            cgroups
                .create_limited(&assignment.id, &self.limits())
                .map_err(|error| tracing::warn!(id = %assignment.id, %error, "instance runs without its limits"))
                .ok()
        });
        let memory_before = self
            .cgroups
            .as_ref()
            .map(|cgroups| cgroups.memory_events(&assignment.id))
            .unwrap_or_default();
        let (mut command, container, cgroup_procs) = match &assignment.container {
            Some(spec) => {
                let runtime = self.containers.clone().ok_or_else(|| {
                    "this agent runs no containers (it has no container runtime)".to_string()
                })?;
                let (spec, assignment_copy, dir, env, cgroups) = (
                    spec.clone(),
                    assignment.clone(),
                    self.instance_dir.clone(),
                    self.instance_env(),
                    self.cgroups.clone(),
                );
                let task_runtime = runtime.clone();
                let prepared = tokio::task::spawn_blocking(move || {
                    task_runtime.prepare(&assignment_copy.id, &spec, &dir, &env, cgroups.as_ref())
                })
                .await
                .map_err(|e| format!("preparing the container panicked: {e}"))??;
                let command = match runtime.run_command(&prepared) {
                    Ok(command) => command,
                    Err(reason) => {
                        runtime.teardown(&prepared.dir);
                        return Err(reason);
                    }
                };
                // runc itself stays outside the app's cgroups: the container gets its
                // own cgroup inside them.
                (command, Some((runtime, prepared)), None)
            }
            None => {
                let (program, args) = assignment
                    .command
                    .split_first()
                    .ok_or_else(|| "the command is empty: give a program to run".to_string())?;
                let mut command = Command::new(program);
                command.args(args).envs(self.instance_env());
                if let Some(dir) = &assignment.working_dir {
                    command.current_dir(dir);
                }
                (command, None, cgroup_procs)
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            // Its own process group, so a stop reaches whatever the program forks.
            .process_group(0);
        let agent_pid = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls (prctl, getppid, open, write, close) without allocating.
        unsafe {
            command.pre_exec(move || {
                if let Some(procs) = &cgroup_procs {
                    cgroup::join_in_child(procs);
                }
                die_with_agent(agent_pid)
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                if let Some((runtime, prepared)) = &container {
                    runtime.teardown(&prepared.dir);
                }
                return Err(match &assignment.container {
                    Some(_) => format!("could not start runc: {error}"),
                    None => format!(
                        "could not start {:?}: {error} (check the command and working_dir {:?})",
                        assignment.command.first(),
                        assignment.working_dir
                    ),
                });
            }
        };
        match &container {
            Some((_, prepared)) => tracing::info!(
                id = %assignment.id, pid = child.id(), image = %prepared.image.digest,
                unpacked_now = prepared.image.unpacked_now, "container started"
            ),
            None => tracing::info!(id = %assignment.id, pid = child.id(), "instance started"),
        }
        Ok(Run {
            child,
            container,
            memory_before,
        })
    }

    /// Whether a run that ended with `exit` was OOM-killed.
    fn oom_killed(&self, memory_before: MemoryEvents, exit: ExitStatus) -> bool {
        let Some(cgroups) = &self.cgroups else {
            return false;
        };
        // runc reports a container killed by a signal as 128 + the signal.
        let died_of_sigkill =
            exit.signal() == Some(libc::SIGKILL) || exit.code() == Some(128 + libc::SIGKILL);
        cgroup::was_oom_killed(
            memory_before,
            cgroups.memory_events(&self.assignment.id),
            died_of_sigkill,
        )
    }

    /// Watches a started process: probes readiness until it exits or a stop arrives.
    async fn supervise(&mut self, run: Run) -> RunOutcome {
        let Run {
            mut child,
            container,
            memory_before,
        } = run;
        let outcome = self
            .watch(&mut child, container.as_ref(), memory_before)
            .await;
        if let Some((runtime, prepared)) = container {
            // Forget the container and unmount its rootfs, off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                runtime.delete_blocking(&prepared.id);
                runtime.teardown(&prepared.dir);
            })
            .await;
        }
        outcome
    }

    async fn watch(
        &mut self,
        child: &mut Child,
        container: Option<&(Arc<ContainerRuntime>, PreparedContainer)>,
        memory_before: MemoryEvents,
    ) -> RunOutcome {
        let Some(pid) = child.id() else {
            return RunOutcome::Failed("the process vanished right after it started".into());
        };
        let readiness = self.assignment.readiness.clone();
        let target = ProbeTarget {
            port: self.assignment.port,
            working_dir: self.assignment.working_dir.as_ref().map(PathBuf::from),
            env: self.instance_env(),
        };
        self.update(|status| {
            status.state = if readiness.is_some() {
                InstanceState::Running
            } else {
                InstanceState::Ready
            };
            status.message = None;
        });
        let mut failures_in_a_row = 0_u32;
        let mut next_probe_at = Instant::now();
        loop {
            let probe_once = async {
                tokio::time::sleep_until(next_probe_at).await;
                match &readiness {
                    Some(probe) => probe::check(probe, &target).await,
                    None => Ok(()),
                }
            };
            tokio::select! {
                // A stop wins over an exit or a probe result ready at the same moment.
                biased;
                _ = self.control.recv() => {
                    match container {
                        Some((runtime, _)) => stop_container(runtime, child, pid, &self.assignment.id).await,
                        None => stop_process(child, pid, &self.assignment.id).await,
                    }
                    return RunOutcome::Stopped;
                }
                exit = child.wait() => {
                    // Sweep what the program left behind in its group, so a restart
                    // does not find its port still held by an orphan.
                    signal_group(pid, libc::SIGKILL);
                    return match exit {
                        Ok(exit) => RunOutcome::Exited(exit, self.oom_killed(memory_before, exit)),
                        Err(error) => RunOutcome::Failed(format!("could not wait for the process: {error}")),
                    };
                }
                result = probe_once, if readiness.is_some() => {
                    next_probe_at = Instant::now() + Duration::from_millis(PROBE_PERIOD_MS);
                    match result {
                        Ok(()) => {
                            failures_in_a_row = 0;
                            self.update(|status| {
                                status.state = InstanceState::Ready;
                                status.message = None;
                            });
                        }
                        Err(error) => {
                            failures_in_a_row = failures_in_a_row.saturating_add(1);
                            let still_ready = failures_in_a_row < PROBE_FAILURE_THRESHOLD;
                            self.update(|status| {
                                if status.state == InstanceState::Ready && !still_ready {
                                    status.state = InstanceState::Running;
                                }
                                status.message = Some(format!("readiness probe failed: {error}"));
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Whether two assignments differ at most in their CPU share.
fn same_but_cpu(a: &InstanceAssignment, b: &InstanceAssignment) -> bool {
    let mut b = b.clone();
    b.cpu_millis = a.cpu_millis;
    *a == b
}

/// One run of an instance.
struct Run {
    /// The process, or `runc run` for a container.
    child: Child,
    /// The container's runtime and bundle, to stop and remove it.
    container: Option<(Arc<ContainerRuntime>, PreparedContainer)>,
    /// The memory counters before the run, to recognise an OOM kill after it.
    memory_before: MemoryEvents,
}

/// SIGTERM to the container's main process (runc forwards it), SIGKILL to all of it
/// after [`STOP_GRACE_MS`], then reaps runc. A main process that is PID 1 of its
/// namespace only sees SIGTERM if it handles it (as under Docker).
async fn stop_container(runtime: &ContainerRuntime, child: &mut Child, pid: u32, id: &str) {
    runtime.kill(id, "TERM").await;
    let grace = Duration::from_millis(STOP_GRACE_MS);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(%id, grace_ms = STOP_GRACE_MS, "container ignored SIGTERM; killing it");
        runtime.kill(id, "KILL").await;
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            // runc itself is stuck; the delete that follows removes the container.
            signal_group(pid, libc::SIGKILL);
        }
    }
    if let Err(error) = child.wait().await {
        tracing::error!(%id, pid, %error, "could not reap runc");
    }
    tracing::info!(%id, "container stopped");
}

/// SIGTERM to the group, SIGKILL after [`STOP_GRACE_MS`], then reaps the process.
async fn stop_process(child: &mut Child, pid: u32, id: &str) {
    signal_group(pid, libc::SIGTERM);
    let grace = Duration::from_millis(STOP_GRACE_MS);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(%id, pid, grace_ms = STOP_GRACE_MS, "instance ignored SIGTERM; killing it");
    }
    // Also reaches children that outlived a leader which did exit on SIGTERM.
    signal_group(pid, libc::SIGKILL);
    if let Err(error) = child.wait().await {
        tracing::error!(%id, pid, %error, "could not reap a killed instance");
    }
    tracing::info!(%id, pid, "instance stopped");
}

/// Sends `signal` to the process group led by `pid`.
///
/// Sending after the leader was reaped is safe in practice: a pid is not reused while a
/// process group with that id still has members, and an empty group just gives ESRCH.
fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        panic!("pid {pid} does not fit in pid_t");
    };
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
    // group. Failures (ESRCH: the group is already empty) need no handling.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Runs in the child between fork and exec: ask the kernel to SIGKILL it when the agent
/// dies, and give up if the agent died before that request took effect.
///
/// The kernel's trigger is the death of the forking *thread*; tokio forks from its worker
/// threads, which live as long as the runtime, i.e. the agent.
fn die_with_agent(agent_pid: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl and getppid are async-signal-safe system calls.
        let result = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let parent = unsafe { libc::getppid() };
        if u32::try_from(parent).ok() != Some(agent_pid) {
            // Not io::Error::other: that allocates, which is not allowed after fork.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = agent_pid;
    Ok(())
}

/// Opens `dir/name` for appending, creating the directory and rotating an oversized file.
fn open_log(dir: &Path, name: &str) -> Result<File, String> {
    let path = dir.join(name);
    let describe = |what: &str, error: io::Error| {
        format!(
            "could not {what} {}: {error} (check that the agent's run dir is writable)",
            path.display()
        )
    };
    fs::create_dir_all(dir).map_err(|error| describe("create the directory of", error))?;
    if fs::metadata(&path).is_ok_and(|meta| meta.len() > MAX_LOG_BYTES) {
        let rotated = dir.join(format!("{name}.1"));
        fs::rename(&path, &rotated).map_err(|error| describe("rotate", error))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|error| describe("open", error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = RestartBackoff::new();
        let delays: Vec<u64> = (0..10).map(|_| backoff.delay_after_run_ms(0)).collect();
        assert_eq!(&delays[..4], &[100, 200, 400, 800]);
        assert!(delays.windows(2).all(|pair| pair[1] >= pair[0]));
        assert_eq!(*delays.last().unwrap(), RESTART_BACKOFF_MAX_MS);
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let mut backoff = RestartBackoff::new();
        for _ in 0..5 {
            backoff.delay_after_run_ms(0);
        }
        assert_eq!(
            backoff.delay_after_run_ms(HEALTHY_RUN_RESET_MS),
            RESTART_BACKOFF_INITIAL_MS
        );
        assert_eq!(
            backoff.delay_after_run_ms(0),
            2 * RESTART_BACKOFF_INITIAL_MS
        );
    }

    #[test]
    fn instance_ids_must_stay_inside_the_run_dir() {
        assert!(validate_instance_id("web-0").is_ok());
        assert!(validate_instance_id("batch_1-2.retry").is_ok());
        for bad in ["", "..", "../etc", "a/b", ".hidden", "sp ace"] {
            assert!(validate_instance_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_instance_id(&"x".repeat(MAX_INSTANCE_ID_BYTES + 1)).is_err());
    }
}
