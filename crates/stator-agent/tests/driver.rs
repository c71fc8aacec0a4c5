//! The process driver against real processes: restarts, jobs, stops, logs, readiness.
//!
//! Every wait is a poll loop with a generous deadline; no test asserts how long anything
//! took.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use stator_agent::driver::{InstanceSupervisor, STDERR_LOG_FILE, STDOUT_LOG_FILE};
use stator_api::agent::{InstanceAssignment, InstanceKind, InstanceState, InstanceStatus};
use stator_api::spec::{ExecProbe, HttpProbe, Probe, TcpProbe};
use tempfile::TempDir;

/// Longest any condition is awaited; far above what any step needs on a loaded machine.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A run dir for the supervisor and a scratch dir the instances work in.
struct Fixture {
    run_dir: TempDir,
    work_dir: TempDir,
    supervisor: InstanceSupervisor,
}

impl Fixture {
    fn new() -> Self {
        let run_dir = TempDir::new().unwrap();
        let work_dir = TempDir::new().unwrap();
        let supervisor = InstanceSupervisor::new(run_dir.path().to_path_buf());
        Self {
            run_dir,
            work_dir,
            supervisor,
        }
    }

    /// A `sh -c script` instance working in the scratch dir.
    fn shell(&self, id: &str, kind: InstanceKind, script: &str) -> InstanceAssignment {
        self.command(id, kind, &["sh", "-c", script])
    }

    fn command(&self, id: &str, kind: InstanceKind, command: &[&str]) -> InstanceAssignment {
        assignment(id, kind, command, self.work_dir.path())
    }

    fn status(&self, id: &str) -> Option<InstanceStatus> {
        self.supervisor
            .statuses()
            .into_iter()
            .find(|status| status.id == id)
    }

    /// Polls until `check` accepts the status of `id`, and returns that status.
    async fn wait_status(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&InstanceStatus) -> bool,
    ) -> InstanceStatus {
        wait_for(what, || self.status(id).filter(|status| check(status))).await
    }

    fn work_file(&self, name: &str) -> std::path::PathBuf {
        self.work_dir.path().join(name)
    }
}

/// An instance of service `svc` running `command` in `working_dir`.
fn assignment(
    id: &str,
    kind: InstanceKind,
    command: &[&str],
    working_dir: &Path,
) -> InstanceAssignment {
    InstanceAssignment {
        id: id.into(),
        service: "svc".into(),
        kind,
        command: command.iter().map(|part| part.to_string()).collect(),
        env: BTreeMap::new(),
        working_dir: Some(working_dir.display().to_string()),
        port: None,
        readiness: None,
        cpu_millis: 100,
        memory_mib: 64,
        cpu_limit_millis: None,
        container: None,
    }
}

/// Polls `probe` until it yields a value, panicking with `what` after [`WAIT_LIMIT`].
async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {WAIT_LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The pids written, one per line, by instances running `echo $$ >> file`.
fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// True while `pid` runs. A zombie counts as gone: an orphaned grandchild waits for
/// init to reap it, which the test does not control.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn kill_9(pid: i32) {
    // SAFETY: plain kill(2) on a process this test started.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_server(fixture: &Fixture, id: &str, port: u16) -> InstanceAssignment {
    let mut assignment = fixture.command(
        id,
        InstanceKind::Stateless,
        &[
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ],
    );
    assignment.port = Some(port);
    assignment
}

#[tokio::test]
async fn stateless_instance_restarts_after_kill_9() {
    let fixture = Fixture::new();
    let pids = fixture.work_file("pids");
    let web = fixture.shell(
        "web-0",
        InstanceKind::Stateless,
        "echo $$ >> pids; exec sleep 1000",
    );
    fixture.supervisor.reconcile(&[web]).await;

    let first = wait_for("the first pid", || pids_in(&pids).first().copied()).await;
    let status = fixture
        .wait_status("web-0", "ready", |s| s.state == InstanceState::Ready)
        .await;
    assert_eq!(status.restarts, 0);

    kill_9(first);
    let second = wait_for("a second pid", || pids_in(&pids).get(1).copied()).await;
    assert_ne!(first, second);
    assert!(!alive(first), "the killed process is gone");
    let status = fixture
        .wait_status("web-0", "ready after the restart", |s| {
            s.state == InstanceState::Ready && s.restarts == 1
        })
        .await;
    assert_eq!(status.exit_code, None, "killed by a signal, no exit code");

    fixture.supervisor.shutdown().await;
    assert!(!alive(second), "shutdown waits until the process is gone");
}

#[tokio::test]
async fn a_crash_looping_instance_keeps_being_restarted() {
    let fixture = Fixture::new();
    let flaky = fixture.shell(
        "flaky-0",
        InstanceKind::Stateless,
        "echo run >> runs; exit 7",
    );
    fixture.supervisor.reconcile(&[flaky]).await;
    let status = fixture
        .wait_status("flaky-0", "three restarts", |s| s.restarts >= 3)
        .await;
    assert_eq!(status.service, "svc");
    let status = fixture
        .wait_status("flaky-0", "an exit code", |s| s.exit_code.is_some())
        .await;
    assert_eq!(status.exit_code, Some(7));
    fixture.supervisor.shutdown().await;
}

#[tokio::test]
async fn a_job_exiting_zero_succeeds_and_is_not_run_again() {
    let fixture = Fixture::new();
    let job = fixture.shell("batch-0-0", InstanceKind::Job, "echo run >> runs");
    fixture
        .supervisor
        .reconcile(std::slice::from_ref(&job))
        .await;
    let status = fixture
        .wait_status("batch-0-0", "success", |s| {
            s.state == InstanceState::Succeeded
        })
        .await;
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(status.restarts, 0);

    // Level-triggered: the same assignment again must not rerun a finished job.
    for _ in 0..3 {
        fixture
            .supervisor
            .reconcile(std::slice::from_ref(&job))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = std::fs::read_to_string(fixture.work_file("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the job ran once: {runs:?}");
    let status = fixture.status("batch-0-0").unwrap();
    assert_eq!(status.state, InstanceState::Succeeded);
    assert_eq!(status.restarts, 0);
}

#[tokio::test]
async fn a_failing_job_reports_failed_with_its_exit_code() {
    let fixture = Fixture::new();
    let job = fixture.shell("batch-1-0", InstanceKind::Job, "echo run >> runs; exit 3");
    fixture.supervisor.reconcile(&[job]).await;
    let status = fixture
        .wait_status("batch-1-0", "failure", |s| s.state == InstanceState::Failed)
        .await;
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.restarts, 0, "the agent never reruns a job");
    let message = status.message.unwrap_or_default();
    assert!(message.contains("code 3"), "{message}");
    let runs = std::fs::read_to_string(fixture.work_file("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1);
}

#[tokio::test]
async fn a_program_that_cannot_start_is_reported() {
    let fixture = Fixture::new();
    let job = fixture.command(
        "missing-0-0",
        InstanceKind::Job,
        &["/nonexistent/stator-test-program"],
    );
    let web = fixture.command(
        "missing-0",
        InstanceKind::Stateless,
        &["/nonexistent/stator-test-program"],
    );
    fixture.supervisor.reconcile(&[job, web]).await;
    for id in ["missing-0-0", "missing-0"] {
        let status = fixture
            .wait_status(id, "a start failure", |s| s.state == InstanceState::Failed)
            .await;
        let message = status.message.unwrap_or_default();
        assert!(message.contains("could not start"), "{message}");
    }
    fixture.supervisor.shutdown().await;
}

#[tokio::test]
async fn removing_an_instance_stops_its_process() {
    let fixture = Fixture::new();
    let pids = fixture.work_file("pids");
    let web = fixture.shell(
        "web-1",
        InstanceKind::Stateless,
        "echo $$ >> pids; exec sleep 1000",
    );
    fixture.supervisor.reconcile(&[web]).await;
    let pid = wait_for("the pid", || pids_in(&pids).first().copied()).await;
    assert!(alive(pid));

    fixture.supervisor.reconcile(&[]).await;
    assert!(fixture.supervisor.statuses().is_empty());
    wait_for("the process to be gone", || (!alive(pid)).then_some(())).await;
    assert_eq!(
        pids_in(&pids).len(),
        1,
        "a removed instance is not restarted"
    );
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_with_its_children() {
    let fixture = Fixture::new();
    let pids = fixture.work_file("pids");
    // The shell and its `sleep` children ignore SIGTERM; only SIGKILL to the group ends
    // them all.
    let stubborn = fixture.shell(
        "stubborn-0",
        InstanceKind::Stateless,
        "trap '' TERM; echo $$ >> pids; sleep 1000 & echo $! >> pids; wait",
    );
    fixture.supervisor.reconcile(&[stubborn]).await;
    let group = wait_for("both pids", || {
        let found = pids_in(&pids);
        (found.len() == 2).then_some(found)
    })
    .await;

    fixture.supervisor.shutdown().await;
    let (leader, child) = (group[0], group[1]);
    assert!(!alive(leader), "shutdown waits for the process it started");
    // The kernel delivers the group's SIGKILL to the grandchild on its own schedule.
    wait_for("the child to be gone", || (!alive(child)).then_some(())).await;
}

#[tokio::test]
async fn a_changed_assignment_restarts_the_instance() {
    let fixture = Fixture::new();
    let pids = fixture.work_file("pids");
    let mut web = fixture.shell(
        "web-2",
        InstanceKind::Stateless,
        "echo $$ >> pids; exec sleep 1000",
    );
    fixture
        .supervisor
        .reconcile(std::slice::from_ref(&web))
        .await;
    let first = wait_for("the first pid", || pids_in(&pids).first().copied()).await;

    web.env.insert("VERSION".into(), "2".into());
    fixture
        .supervisor
        .reconcile(std::slice::from_ref(&web))
        .await;
    let second = wait_for("a second pid", || pids_in(&pids).get(1).copied()).await;
    assert!(
        !alive(first),
        "the old process stopped before the new one started"
    );
    assert!(alive(second));
    let status = fixture.status("web-2").unwrap();
    assert_eq!(status.restarts, 0, "a new assignment starts a fresh count");
    fixture.supervisor.shutdown().await;
}

#[tokio::test]
async fn output_lands_in_log_files_and_the_environment_is_set() {
    let fixture = Fixture::new();
    let port = free_port();
    let mut web = fixture.shell(
        "web-3",
        InstanceKind::Stateless,
        "echo \"service=$STATOR_SERVICE instance=$STATOR_INSTANCE port=$PORT greeting=$GREETING dir=$(pwd)\"; \
         echo oops >&2; exec sleep 1000",
    );
    web.port = Some(port);
    web.env.insert("GREETING".into(), "hello".into());
    fixture.supervisor.reconcile(&[web]).await;

    let instance_dir = fixture.supervisor.instance_dir("web-3");
    assert_eq!(instance_dir, fixture.run_dir.path().join("web-3"));
    let stdout = wait_for("a line in stdout.log", || {
        std::fs::read_to_string(instance_dir.join(STDOUT_LOG_FILE))
            .ok()
            .filter(|text| text.ends_with('\n'))
    })
    .await;
    let work_dir = fixture.work_dir.path().canonicalize().unwrap();
    assert_eq!(
        stdout.trim(),
        format!(
            "service=svc instance=web-3 port={port} greeting=hello dir={}",
            work_dir.display()
        )
    );
    let stderr = wait_for("a line in stderr.log", || {
        std::fs::read_to_string(instance_dir.join(STDERR_LOG_FILE))
            .ok()
            .filter(|text| text.ends_with('\n'))
    })
    .await;
    assert_eq!(stderr, "oops\n");
    fixture.supervisor.shutdown().await;
}

#[tokio::test]
async fn tcp_readiness_waits_for_the_listener() {
    let fixture = Fixture::new();
    let port = free_port();
    let mut web = http_server(&fixture, "web-4", port);
    web.readiness = Some(Probe::Tcp(TcpProbe { port: None }));
    fixture.supervisor.reconcile(&[web]).await;
    let status = fixture
        .wait_status("web-4", "ready", |s| s.state == InstanceState::Ready)
        .await;
    assert_eq!(status.message, None);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("ready means it accepts");
    fixture.supervisor.shutdown().await;
}

#[tokio::test]
async fn http_readiness_needs_a_2xx_answer() {
    let fixture = Fixture::new();
    let (good_port, bad_port) = (free_port(), free_port());
    let mut good = http_server(&fixture, "web-5", good_port);
    good.readiness = Some(Probe::Http(HttpProbe {
        port: None,
        path: "/".into(),
    }));
    let mut bad = http_server(&fixture, "web-6", bad_port);
    bad.readiness = Some(Probe::Http(HttpProbe {
        port: None,
        path: "/no-such-page".into(),
    }));
    fixture.supervisor.reconcile(&[good, bad]).await;

    fixture
        .wait_status("web-5", "ready", |s| s.state == InstanceState::Ready)
        .await;
    let status = fixture
        .wait_status("web-6", "a 404 from the probe", |s| {
            s.message.as_deref().is_some_and(|m| m.contains("404"))
        })
        .await;
    assert_eq!(status.state, InstanceState::Running, "alive but not ready");
    fixture.supervisor.shutdown().await;
}

#[tokio::test]
async fn exec_readiness_follows_the_command() {
    let fixture = Fixture::new();
    let mut worker = fixture.shell("worker-0", InstanceKind::Stateless, "exec sleep 1000");
    worker.readiness = Some(Probe::Exec(ExecProbe {
        command: vec!["test".into(), "-f".into(), "ready".into()],
    }));
    fixture.supervisor.reconcile(&[worker]).await;

    let status = fixture
        .wait_status("worker-0", "a failed probe", |s| s.message.is_some())
        .await;
    assert_eq!(status.state, InstanceState::Running);
    let message = status.message.unwrap();
    assert!(message.contains("readiness probe failed"), "{message}");

    std::fs::write(fixture.work_file("ready"), b"").unwrap();
    let status = fixture
        .wait_status("worker-0", "ready", |s| s.state == InstanceState::Ready)
        .await;
    assert_eq!(status.message, None);
    fixture.supervisor.shutdown().await;
}

/// Set only in the helper process of [`instances_die_with_a_killed_agent`].
const HELPER_DIR_VAR: &str = "STATOR_TEST_AGENT_HELPER_DIR";

/// Plays a stator agent in a child process: starts one instance and waits to be killed.
/// Without [`HELPER_DIR_VAR`] (a normal test run) it does nothing.
#[tokio::test]
async fn helper_agent_process() {
    let Ok(dir) = std::env::var(HELPER_DIR_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let supervisor = InstanceSupervisor::new(dir.join("run"));
    let web = assignment(
        "orphan-0",
        InstanceKind::Stateless,
        &["sh", "-c", "echo $$ >> pids; exec sleep 1000"],
        dir,
    );
    supervisor.reconcile(&[web]).await;
    tokio::time::sleep(WAIT_LIMIT).await;
}

#[tokio::test]
async fn instances_die_with_a_killed_agent() {
    let dir = TempDir::new().unwrap();
    let mut agent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_agent_process", "--test-threads=1"])
        .env(HELPER_DIR_VAR, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pids = dir.path().join("pids");
    let instance = wait_for("the helper's instance", || pids_in(&pids).first().copied()).await;
    assert!(alive(instance));

    agent.kill().unwrap(); // SIGKILL: the agent gets no chance to clean up.
    agent.wait().unwrap();
    wait_for("the orphaned instance to die", || {
        (!alive(instance)).then_some(())
    })
    .await;
}
