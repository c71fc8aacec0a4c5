//! The container driver against runc: a busybox image built here runs as a stateless
//! instance and as a job, gets its port and environment, is OOM-killed past its memory
//! limit (reported as `OOMKilled`, then restarted), and start/stop cycles and an agent
//! restart leave no container, cgroup, mount or bundle behind.
//!
//! Needs root, runc, busybox-static and cgroups. Without them it prints `SKIPPED: <why>`
//! and passes, unless `STATOR_REQUIRE_ALL=1` (CI), where it fails.
//! `STATOR_CONTAINER_CYCLES=100` runs the leak check with 100 cycles (default 5).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stator_agent::cgroup::Cgroups;
use stator_agent::container::build::{busybox_rootfs, tar_directory, write_oci_layout};
use stator_agent::container::runtime::{mounts_under, CONTAINER_DIR};
use stator_agent::container::{ContainerRuntime, ImageRunConfig};
use stator_agent::driver::{InstanceSupervisor, STDERR_LOG_FILE, STDOUT_LOG_FILE};
use stator_api::agent::{
    InstanceAssignment, InstanceKind, InstanceState, InstanceStatus, REASON_OOM_KILLED,
};
use stator_api::container::ContainerSpec;
use tempfile::TempDir;

/// Longest any condition is awaited; far above what any step needs on a loaded machine.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Start/stop cycles of the leak check unless `STATOR_CONTAINER_CYCLES` says otherwise.
const DEFAULT_CYCLES: usize = 5;
/// A main process that leaves promptly on SIGTERM (PID 1 ignores it unless handled).
const SERVE_FOREVER: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";

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

/// Why containers cannot run here, if they cannot.
fn missing_prerequisite(runtime: &ContainerRuntime) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containers need root".into());
    }
    if let Err(why) = runtime.runc() {
        return Some(why);
    }
    if !Path::new(stator_agent::container::build::BUSYBOX_PATH).is_file() {
        return Some("busybox-static is not installed (apt-get install busybox-static)".into());
    }
    None
}

/// A supervisor with cgroups and a runtime, and a busybox image; None (after printing
/// SKIPPED) when the machine cannot run containers.
struct Fixture {
    data_dir: TempDir,
    _image_dir: TempDir,
    image: String,
    cgroups: Arc<Cgroups>,
    runtime: Arc<ContainerRuntime>,
    supervisor: InstanceSupervisor,
}

impl Fixture {
    fn new() -> Option<Self> {
        let data_dir = TempDir::new().unwrap();
        let runtime = Arc::new(ContainerRuntime::new(data_dir.path()));
        let cgroups = Cgroups::for_agent();
        let why = missing_prerequisite(&runtime).or_else(|| cgroups.as_ref().err().cloned());
        if let Some(why) = why {
            assert!(
                std::env::var("STATOR_REQUIRE_ALL").as_deref() != Ok("1"),
                "STATOR_REQUIRE_ALL=1 but containers cannot run: {why}"
            );
            println!("SKIPPED: {why}");
            return None;
        }
        let cgroups = Arc::new(cgroups.unwrap());
        let image_dir = TempDir::new().unwrap();
        let rootfs = image_dir.path().join("rootfs");
        busybox_rootfs(&rootfs).unwrap();
        let layout = image_dir.path().join("layout");
        let config = ImageRunConfig {
            cmd: vec!["sh".into(), "-c".into(), SERVE_FOREVER.into()],
            ..Default::default()
        };
        write_oci_layout(
            &layout,
            "test",
            &[tar_directory(&rootfs).unwrap()],
            &config,
            true,
        )
        .unwrap();
        let supervisor = InstanceSupervisor::new(data_dir.path().join("instances"))
            .with_cpu_cgroups(Some(cgroups.clone()))
            .with_containers(runtime.clone());
        Some(Self {
            image: format!("oci:{}:test", layout.display()),
            data_dir,
            _image_dir: image_dir,
            cgroups,
            runtime,
            supervisor,
        })
    }

    fn run_dir(&self) -> PathBuf {
        self.data_dir.path().join("instances")
    }

    fn container(&self, id: &str, kind: InstanceKind, script: &str) -> InstanceAssignment {
        InstanceAssignment {
            id: id.into(),
            service: "svc".into(),
            kind,
            command: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            port: Some(18_080),
            readiness: None,
            cpu_millis: 100,
            memory_mib: 32,
            cpu_limit_millis: None,
            container: Some(ContainerSpec {
                image: self.image.clone(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
                ..Default::default()
            }),
        }
    }

    fn status(&self, id: &str) -> Option<InstanceStatus> {
        self.supervisor
            .statuses()
            .into_iter()
            .find(|status| status.id == id)
    }

    async fn wait_status(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&InstanceStatus) -> bool,
    ) -> InstanceStatus {
        let what = format!("{what} (the status of {id} then: {:?})", self.status(id));
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(status) = self.status(id).filter(|status| check(status)) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up after {WAIT_LIMIT:?} waiting for {what}; now {:?}, stderr {:?}",
                self.status(id),
                std::fs::read_to_string(self.run_dir().join(id).join(STDERR_LOG_FILE))
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn log(&self, id: &str) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.run_dir().join(id).join(name)).unwrap_or_default()
        };
        let stderr = read(STDERR_LOG_FILE);
        assert!(!stderr.contains("runc run failed"), "{id}: {stderr}");
        read(STDOUT_LOG_FILE)
    }

    /// What is left of `id`'s container: runc's record, cgroups, mounts, bundle.
    fn leftovers(&self, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        if self.runtime.list().iter().any(|known| known == id) {
            left.push(format!("runc still knows {id}"));
        }
        if self.cgroups.exists_anywhere(id) {
            left.push(format!("a cgroup of {id}"));
        }
        let mounts = mounts_under(&self.run_dir());
        if !mounts.is_empty() {
            left.push(format!("mounts {mounts:?}"));
        }
        if self.run_dir().join(id).join(CONTAINER_DIR).exists() {
            left.push(format!("the bundle of {id}"));
        }
        left
    }
}

#[tokio::test]
async fn a_container_runs_a_service_and_a_job_with_its_environment() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let web = fixture.container(
        "web-0",
        InstanceKind::Stateless,
        &format!("echo \"$GREETING on $PORT as $(id -u) in $(hostname)\"; {SERVE_FOREVER}"),
    );
    let job_ok = fixture.container("batch-0-0", InstanceKind::Job, "echo done; exit 0");
    let job_bad = fixture.container("batch-1-0", InstanceKind::Job, "exit 3");
    fixture
        .supervisor
        .reconcile(&[web.clone(), job_ok.clone(), job_bad.clone()])
        .await;
    fixture
        .wait_status("web-0", "the service to be ready", |s| {
            s.state == InstanceState::Ready
        })
        .await;
    wait_for("the service's greeting", || {
        fixture
            .log("web-0")
            .contains("hello on 18080 as 0 in web-0")
            .then_some(())
    })
    .await;
    let ok = fixture
        .wait_status("batch-0-0", "the job to succeed", |s| {
            s.state == InstanceState::Succeeded
        })
        .await;
    assert_eq!(ok.exit_code, Some(0));
    assert!(fixture.log("batch-0-0").contains("done"));
    let bad = fixture
        .wait_status("batch-1-0", "the job to fail", |s| {
            s.state == InstanceState::Failed
        })
        .await;
    assert_eq!(bad.exit_code, Some(3));
    assert_eq!(bad.reason.as_deref(), Some("Error"));

    fixture.supervisor.reconcile(&[]).await;
    fixture.supervisor.shutdown().await;
    for id in ["web-0", "batch-0-0", "batch-1-0"] {
        let left = fixture.leftovers(id);
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[tokio::test]
async fn a_container_past_its_memory_limit_is_oom_killed_and_restarted() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    if !fixture.cgroups.limits_memory() {
        assert!(
            std::env::var("STATOR_REQUIRE_ALL").as_deref() != Ok("1"),
            "STATOR_REQUIRE_ALL=1 but there is no memory cgroup controller"
        );
        println!("SKIPPED: no memory cgroup controller");
        return;
    }
    // dd's 64 MiB buffer is far past the 32 MiB limit.
    let hog = fixture.container(
        "hog-0",
        InstanceKind::Stateless,
        "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    let calm = fixture.container("calm-0", InstanceKind::Stateless, SERVE_FOREVER);
    fixture
        .supervisor
        .reconcile(&[hog.clone(), calm.clone()])
        .await;
    let status = fixture
        .wait_status("hog-0", "an OOM kill to be reported", |s| {
            s.reason.as_deref() == Some(REASON_OOM_KILLED)
        })
        .await;
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("memory limit of 32 MiB"),
        "{status:?}"
    );
    fixture
        .wait_status("hog-0", "the hog to be restarted", |s| s.restarts >= 1)
        .await;
    // The neighbour never noticed.
    let calm = fixture.status("calm-0").unwrap();
    assert_eq!(calm.state, InstanceState::Ready);
    assert_eq!(calm.restarts, 0);
    fixture.supervisor.shutdown().await;
}

#[tokio::test]
async fn start_stop_cycles_and_an_agent_restart_leave_nothing_behind() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let cycles: usize = std::env::var("STATOR_CONTAINER_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    let web = fixture.container("cycle-0", InstanceKind::Stateless, SERVE_FOREVER);
    for cycle in 0..cycles {
        fixture
            .supervisor
            .reconcile(std::slice::from_ref(&web))
            .await;
        fixture
            .wait_status("cycle-0", "the container to be ready", |s| {
                s.state == InstanceState::Ready
            })
            .await;
        fixture.supervisor.reconcile(&[]).await;
        wait_for(&format!("cycle {cycle} to leave nothing behind"), || {
            (fixture.status("cycle-0").is_none() && fixture.leftovers("cycle-0").is_empty())
                .then_some(())
        })
        .await;
    }

    // An agent that died with its container running: runc was SIGKILLed, the container
    // and its mounts stay. Start one that way, then "restart the agent" on the same
    // data dir.
    let orphan = fixture.container("orphan-0", InstanceKind::Stateless, SERVE_FOREVER);
    let instance_dir = fixture.run_dir().join("orphan-0");
    let prepared = fixture
        .runtime
        .prepare(
            &orphan.id,
            orphan.container.as_ref().unwrap(),
            &instance_dir,
            &BTreeMap::new(),
            Some(&fixture.cgroups),
        )
        .unwrap();
    let mut runc = fixture.runtime.run_command(&prepared).unwrap();
    let mut child = runc
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the orphan to run", || {
        fixture
            .runtime
            .list()
            .contains(&"orphan-0".to_string())
            .then_some(())
    })
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(
        !fixture.leftovers("orphan-0").is_empty(),
        "the orphan should outlive runc"
    );

    let restarted = InstanceSupervisor::new(fixture.run_dir())
        .with_containers(Arc::new(ContainerRuntime::new(fixture.data_dir.path())));
    fixture.cgroups.remove("orphan-0");
    let left = fixture.leftovers("orphan-0");
    assert!(
        left.is_empty(),
        "after an agent restart, left behind: {left:?}"
    );
    restarted.shutdown().await;
    fixture.supervisor.shutdown().await;
}

/// Benchmark, behind `STATOR_CONTAINER_BENCH=1` (see docs/BENCHMARKS.md): start of a
/// cached few-MiB image until the container's first output, beside the same command as a
/// plain process; first unpack of a ~50 MiB image, beside GNU tar unpacking the same
/// layer. Prints one JSON line; asserts nothing about the figures.
#[tokio::test]
async fn bench_container_start_and_unpack() {
    if std::env::var("STATOR_CONTAINER_BENCH").as_deref() != Ok("1") {
        println!("SKIPPED: set STATOR_CONTAINER_BENCH=1 to run the container benchmark");
        return;
    }
    let Some(fixture) = Fixture::new() else {
        return;
    };
    const RUNS: usize = 10;
    let median = |mut samples: Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };

    // A few MiB: busybox plus 4 MiB of noise, so the image is not trivially small.
    let image_dir = TempDir::new().unwrap();
    let rootfs = image_dir.path().join("rootfs");
    busybox_rootfs(&rootfs).unwrap();
    let noise: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(rootfs.join("noise"), &noise).unwrap();
    let layout = image_dir.path().join("layout");
    write_oci_layout(
        &layout,
        "few",
        &[tar_directory(&rootfs).unwrap()],
        &ImageRunConfig::default(),
        true,
    )
    .unwrap();
    let image = format!("oci:{}:few", layout.display());

    let mut container_ms = Vec::new();
    let mut process_ms = Vec::new();
    for run in 0..=RUNS {
        for as_container in [true, false] {
            let id = format!("start-{run}-{as_container}");
            let mut assignment = fixture.container(
                &id,
                InstanceKind::Stateless,
                &format!("echo up; {SERVE_FOREVER}"),
            );
            if as_container {
                assignment.container.as_mut().unwrap().image = image.clone();
            } else {
                assignment.command = assignment.container.take().unwrap().command;
            }
            let started = std::time::Instant::now();
            fixture
                .supervisor
                .reconcile(std::slice::from_ref(&assignment))
                .await;
            wait_for("the first output", || {
                fixture.log(&id).contains("up").then_some(())
            })
            .await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            // Run 0 unpacks the image: not a cached start.
            if run > 0 {
                if as_container {
                    container_ms.push(ms)
                } else {
                    process_ms.push(ms)
                }
            }
            fixture.supervisor.reconcile(&[]).await;
            wait_for("the stop", || fixture.status(&id).is_none().then_some(())).await;
        }
    }

    // ~50 MiB, incompressible: the unpack is bound by hashing, gunzip and writes.
    let big = image_dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let random: Vec<u8> = (0..50u32 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(big.join("data"), &random).unwrap();
    let layer = tar_directory(&big).unwrap();
    let big_layout = image_dir.path().join("big-layout");
    write_oci_layout(
        &big_layout,
        "big",
        std::slice::from_ref(&layer),
        &ImageRunConfig::default(),
        true,
    )
    .unwrap();
    let gz = image_dir.path().join("layer.tar.gz");
    std::fs::write(&gz, stator_agent::container::build::gzip(&layer).unwrap()).unwrap();
    let cache = stator_agent::container::ImageCache::new(image_dir.path().join("cache"));
    let reference =
        stator_api::container::ImageRef::parse(&format!("oci:{}:big", big_layout.display()))
            .unwrap();
    let started = std::time::Instant::now();
    let unpacked = cache.prepare(&reference, Path::new("/")).unwrap();
    let unpack_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(unpacked.unpacked_now);
    let tar_dir = image_dir.path().join("tar-out");
    std::fs::create_dir_all(&tar_dir).unwrap();
    let started = std::time::Instant::now();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&gz)
        .arg("-C")
        .arg(&tar_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let tar_ms = started.elapsed().as_secs_f64() * 1000.0;

    let container_p50 = median(container_ms);
    let process_p50 = median(process_ms);
    println!(
        "{}",
        serde_json::json!({
            "cached_start": {
                "image_bytes": noise.len() + std::fs::metadata(rootfs.join("bin/busybox")).unwrap().len() as usize,
                "runs": RUNS,
                "container_p50_ms": container_p50,
                "process_p50_ms": process_p50,
                "ratio_container_to_process": container_p50 / process_p50,
            },
            "first_unpack": {
                "layer_bytes": layer.len(),
                "stator_ms": unpack_ms,
                "gnu_tar_xzf_ms": tar_ms,
                "ratio_stator_to_tar": unpack_ms / tar_ms,
            },
        })
    );
    fixture.supervisor.shutdown().await;
}
