//! CPU shares against the real cgroup file system: a spawned instance lands in its own
//! cgroup with the weight (v2) or shares (v1) of its CPU request, a resize changes the
//! share without a restart, and the cgroup goes when the instance does.
//!
//! Needs a writable CPU hierarchy (root). Without one it prints `SKIPPED: <why>` and
//! passes, unless `STATOR_REQUIRE_ALL=1` (CI, as root), where it fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stator_agent::cgroup::{shares_for_millis, weight_for_millis, Cgroups, Version};
use stator_agent::driver::InstanceSupervisor;
use stator_api::agent::{InstanceAssignment, InstanceKind};

/// Longest any condition is awaited; far above what any step needs on a loaded machine.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

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

fn share_file(cgroups: &Cgroups, id: &str) -> (std::path::PathBuf, fn(u64) -> u64) {
    match cgroups.version() {
        Version::V2 => (cgroups.dir_of(id).join("cpu.weight"), weight_for_millis),
        Version::V1 => (cgroups.dir_of(id).join("cpu.shares"), shares_for_millis),
    }
}

#[tokio::test]
async fn an_instance_runs_in_its_cgroup_with_its_cpu_share() {
    let cgroups = match Cgroups::for_agent() {
        Ok(cgroups) => Arc::new(cgroups),
        Err(why) => {
            assert!(
                std::env::var("STATOR_REQUIRE_ALL").as_deref() != Ok("1"),
                "STATOR_REQUIRE_ALL=1 but cgroups are unavailable: {why} (run as root)"
            );
            println!("SKIPPED: cgroups unavailable: {why}");
            return;
        }
    };
    let run_dir = tempfile::tempdir().unwrap();
    let work_dir = tempfile::tempdir().unwrap();
    let supervisor = InstanceSupervisor::new(run_dir.path().to_path_buf())
        .with_cpu_cgroups(Some(cgroups.clone()));
    let pid_file = work_dir.path().join("pid");
    let mut assignment = InstanceAssignment {
        id: "shares-0".into(),
        service: "shares".into(),
        kind: InstanceKind::Stateless,
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("echo $$ >> {}; exec sleep 60", pid_file.display()),
        ],
        env: BTreeMap::new(),
        working_dir: None,
        port: None,
        readiness: None,
        cpu_millis: 500,
        memory_mib: 64,
        cpu_limit_millis: None,
        container: None,
    };
    supervisor
        .reconcile(std::slice::from_ref(&assignment))
        .await;
    let pid: u32 = wait_for("the instance to write its pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;

    // In its own cgroup, under this process's agent directory.
    let expected = format!("/stator/agent-{}/shares-0", std::process::id());
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership.lines().any(|l| l.ends_with(&expected)),
        "{pid} is not in {expected}: {membership}"
    );
    let (file, share_of) = share_file(&cgroups, "shares-0");
    let read_share = || {
        std::fs::read_to_string(&file)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(read_share(), share_of(500));

    // A resize changes the share and keeps the process.
    assignment.cpu_millis = 2000;
    supervisor
        .reconcile(std::slice::from_ref(&assignment))
        .await;
    assert_eq!(read_share(), share_of(2000));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().lines().count(),
        1,
        "a resize must not restart the instance"
    );

    // Removed: the process stops and its cgroup goes.
    supervisor.reconcile(&[]).await;
    let dir = cgroups.dir_of("shares-0");
    wait_for("the instance's cgroup to be removed", || {
        (!dir.exists()).then_some(())
    })
    .await;
    supervisor.shutdown().await;
    cgroups.remove_all();
}
