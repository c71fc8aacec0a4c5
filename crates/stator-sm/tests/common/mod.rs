//! Helpers shared by the integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use stator_sm::host::{ProcessLimits, ProcessMachineConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Upper bound for one whole test, so a hung app fails the test instead of CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh, short run directory (socket paths must stay under 108 bytes).
pub fn run_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "stsm-{}-{}-{}",
        label,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// The built `counter` example, building it if this test run did not.
pub fn counter_binary() -> PathBuf {
    // Test binaries live in target/<profile>/deps; examples in target/<profile>/examples.
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let binary = profile_dir.join("examples").join("counter");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args(["build", "-p", "stator-sm", "--example", "counter"])
            .status()
            .expect("run cargo to build the counter example");
        assert!(status.success(), "building the counter example failed");
    }
    assert!(binary.exists(), "counter example not found at {binary:?}");
    binary
}

/// The real Python interpreter (not a version-manager shim), if one is installed.
pub fn python() -> Option<String> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys; assert sys.version_info >= (3, 9); print(sys.executable)",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8(output.stdout).ok()?.trim().to_string())
}

/// A config for `program args` in a fresh run directory.
pub fn config(label: &str, program: impl Into<String>, args: &[&str]) -> ProcessMachineConfig {
    ProcessMachineConfig {
        program: program.into(),
        args: args.iter().map(|arg| arg.to_string()).collect(),
        env: Vec::new(),
        working_dir: Some(workspace_root()),
        run_dir: run_dir(label),
        service: "test".to_string(),
        partition: 0,
        replica: 1,
        limits: ProcessLimits::default(),
    }
}

/// SIGKILLs `pid` the way an OOM killer or an operator would.
pub fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed");
}
