//! [`Supervisor`]: child processes kept running, each started again a while after it
//! exits, as a machine that reboots. `stator up` supervises its agents with it and chaos
//! its servers, gateway and agents.
//!
//! One task owns the checking ([`Supervisor::run`]); the list sits behind a std mutex
//! because nothing awaits while holding it (every change is a push, a remove or a
//! non-blocking `try_wait`), so the local node provider can add and release agents from
//! its own tasks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How often [`Supervisor::run`] looks for exited processes.
pub const SUPERVISE_INTERVAL: Duration = Duration::from_millis(100);

/// How to start one supervised process, again and again.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// Unique among the supervisor's processes; also how messages name it.
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set on top of this process's own.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr are appended.
    pub log: PathBuf,
    /// Where the running pid is written, if anywhere (scripts find a process to kill).
    pub pid_file: Option<PathBuf>,
    /// How long the process stays down after it exits before it is started again.
    pub restart_delay: Duration,
}

/// Starts `spec`'s program: output appended to its log, stdin closed, killed when the
/// `Child` is dropped and (through `PR_SET_PDEATHSIG`) when this process dies, so a
/// crashed parent leaves nothing running.
pub fn spawn(spec: &ProcessSpec) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening {}", spec.log.display()))?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child
    // when this process dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spec.name))?;
    if let (Some(path), Some(pid)) = (&spec.pid_file, child.id()) {
        std::fs::write(path, pid.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(child)
}

/// Sends SIGTERM (and SIGCONT, in case it is paused) to `child`, waits up to `grace`,
/// then kills it.
pub async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
            libc::kill(pid as i32, libc::SIGCONT);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// One supervised process.
struct Supervised {
    spec: ProcessSpec,
    /// The running process; `None` while it waits for its restart.
    child: Option<Child>,
    /// When to start it again; `None` while it runs, or once a restart failed.
    restart_at: Option<Instant>,
}

/// Child processes kept running. Cheap to clone: clones share the list.
#[derive(Clone)]
pub struct Supervisor {
    procs: Arc<Mutex<Vec<Supervised>>>,
    /// Prefix of the supervisor's messages (`up`, `chaos`).
    label: &'static str,
}

impl Supervisor {
    /// An empty supervisor whose messages start with `label`.
    pub fn new(label: &'static str) -> Supervisor {
        Supervisor {
            procs: Arc::new(Mutex::new(Vec::new())),
            label,
        }
    }

    /// Locks the list. A std mutex: nothing awaits while holding it; each change is one
    /// push, remove or field update, so the list stays consistent after a panic.
    fn lock(&self) -> MutexGuard<'_, Vec<Supervised>> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `spec` now and keeps it running.
    pub fn start(&self, spec: ProcessSpec) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.lock().iter().any(|p| p.spec.name == spec.name),
            "{} is supervised already",
            spec.name
        );
        let child = spawn(&spec)?;
        self.lock().push(Supervised {
            spec,
            child: Some(child),
            restart_at: None,
        });
        Ok(())
    }

    /// Takes `name` out of supervision (it is not started again); returns its process if
    /// it runs, for the caller to stop.
    pub fn remove(&self, name: &str) -> Option<Option<Child>> {
        let mut procs = self.lock();
        let index = procs.iter().position(|p| p.spec.name == name)?;
        Some(procs.remove(index).child)
    }

    /// The names of the supervised processes, in the order they were started.
    pub fn names(&self) -> Vec<String> {
        self.lock().iter().map(|p| p.spec.name.clone()).collect()
    }

    /// The pid of `name`, if it runs now.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.lock()
            .iter()
            .find(|p| p.spec.name == name)
            .and_then(|p| p.child.as_ref())
            .and_then(Child::id)
    }

    /// The running processes' pids by name, those whose name `keep` accepts.
    pub fn pids(&self, keep: impl Fn(&str) -> bool) -> BTreeMap<String, u32> {
        self.lock()
            .iter()
            .filter(|p| keep(&p.spec.name))
            .filter_map(|p| Some((p.spec.name.clone(), p.child.as_ref()?.id()?)))
            .collect()
    }

    /// Whether `name` runs now (not exited, not waiting for its restart).
    pub fn is_running(&self, name: &str) -> bool {
        self.lock()
            .iter_mut()
            .find(|p| p.spec.name == name)
            .and_then(|p| p.child.as_mut())
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether `name` is down for good: it exited and starting it again failed.
    pub fn gave_up(&self, name: &str) -> bool {
        self.lock()
            .iter()
            .any(|p| p.spec.name == name && p.child.is_none() && p.restart_at.is_none())
    }

    /// One pass: notes exited processes and starts those whose restart delay is over.
    pub fn check(&self) {
        let now = Instant::now();
        for proc in self.lock().iter_mut() {
            if let Some(child) = proc.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!(
                        "{}: {} exited ({status}); starting it again in {:?}",
                        self.label, proc.spec.name, proc.spec.restart_delay
                    );
                    proc.child = None;
                    proc.restart_at = Some(now + proc.spec.restart_delay);
                }
            } else if proc.restart_at.is_some_and(|t| now >= t) {
                proc.restart_at = None;
                match spawn(&proc.spec) {
                    Ok(child) => proc.child = Some(child),
                    Err(e) => eprintln!(
                        "{}: cannot start {} again: {e:#}",
                        self.label, proc.spec.name
                    ),
                }
            }
        }
    }

    /// SIGKILLs, back to back under one lock, every running process whose name `keep`
    /// accepts, and starts each again `restart_delay` later (its own delay is not used
    /// this once): a power cut and reboot of those machines. Returns the killed pids by
    /// name. The killed processes are reaped by the runtime.
    pub fn kill_and_restart(
        &self,
        keep: impl Fn(&str) -> bool,
        restart_delay: Duration,
    ) -> BTreeMap<String, u32> {
        let mut killed = BTreeMap::new();
        let restart_at = Instant::now() + restart_delay;
        for proc in self.lock().iter_mut().filter(|p| keep(&p.spec.name)) {
            let Some(mut child) = proc.child.take() else {
                continue;
            };
            if let Some(pid) = child.id() {
                // `start_kill` sends SIGKILL and does not wait: every process of the
                // batch dies within microseconds of the first.
                if child.start_kill().is_ok() {
                    killed.insert(proc.spec.name.clone(), pid);
                }
            }
            proc.restart_at = Some(restart_at);
        }
        killed
    }

    /// Checks every [`SUPERVISE_INTERVAL`] until the task is aborted.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(SUPERVISE_INTERVAL);
        loop {
            ticker.tick().await;
            self.check();
        }
    }

    /// Takes every process out of supervision and stops them together: SIGTERM (and
    /// SIGCONT), then SIGKILL for those still running after `grace`.
    pub async fn stop_all(&self, grace: Duration) {
        let mut children: Vec<Child> = std::mem::take(&mut *self.lock())
            .into_iter()
            .filter_map(|p| p.child)
            .collect();
        let deadline = Instant::now() + grace;
        for child in &children {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child; SIGCONT too, in case it is paused.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                    libc::kill(pid as i32, libc::SIGCONT);
                }
            }
        }
        for child in &mut children {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &std::path::Path, name: &str, seconds: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            program: "sleep".into(),
            args: vec![seconds.into()],
            env: Vec::new(),
            log: dir.join(format!("{name}.log")),
            pid_file: Some(dir.join(format!("{name}.pid"))),
            restart_delay: Duration::from_millis(200),
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_killed_process_is_started_again_after_its_delay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let supervisor = Supervisor::new("test");
        supervisor
            .start(sleeper(dir.path(), "a", "30"))
            .expect("start");
        let first = supervisor.pid("a").expect("running");
        let written = std::fs::read_to_string(dir.path().join("a.pid")).expect("pid file");
        assert_eq!(written, first.to_string());
        let task = tokio::spawn(supervisor.clone().run());
        // SAFETY: kill(2) of the child this test started.
        unsafe { libc::kill(first as i32, libc::SIGKILL) };
        wait_for("the restart", || {
            supervisor.pid("a").is_some_and(|pid| pid != first) && supervisor.is_running("a")
        })
        .await;
        task.abort();
        supervisor.stop_all(Duration::from_secs(5)).await;
        assert!(supervisor.names().is_empty());
    }

    #[tokio::test]
    async fn a_removed_process_is_not_started_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let supervisor = Supervisor::new("test");
        supervisor
            .start(sleeper(dir.path(), "a", "30"))
            .expect("start");
        supervisor
            .start(sleeper(dir.path(), "b", "30"))
            .expect("start");
        assert!(supervisor.start(sleeper(dir.path(), "b", "30")).is_err());
        let mut child = supervisor
            .remove("a")
            .expect("supervised")
            .expect("running");
        terminate(&mut child, Duration::from_secs(5)).await;
        supervisor.check();
        assert_eq!(supervisor.names(), vec!["b".to_string()]);
        assert_eq!(supervisor.pids(|_| true).len(), 1);
        supervisor.stop_all(Duration::from_secs(5)).await;
    }
}
