//! CPU shares for app processes: one cgroup per process under a stator subtree, with
//! `cpu.weight` (cgroup v2) or `cpu.shares` (v1) set from the CPU it requests.
//!
//! Layout: `<cpu hierarchy>/stator/agent-<agent pid>/<instance id>`. Each agent owns its
//! `agent-<pid>` directory (several agents share a machine under `stator up`), removes
//! the directories of dead agents it finds at start, and removes its own at shutdown.
//! A process joins its cgroup between fork and exec (it writes `0` to `cgroup.procs`),
//! so everything it forks is inside too.
//!
//! Shares are relative: they decide how CPU is split when the machine is busy, never
//! cap an idle one. The mapping is Kubernetes': `shares = millicores * 1024 / 1000`
//! (at least 2), and on v2 runc's conversion of shares to a weight.
//!
//! Where no writable CPU hierarchy exists (not root, a v2 tree without the cpu
//! controller, no cgroup file system), [`CpuCgroups::for_agent`] says why, the agent logs
//! one line, and processes run without shares.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Smallest `cpu.shares` the kernel accepts (v1).
pub const MIN_SHARES: u64 = 2;
/// Largest `cpu.shares` (v1).
pub const MAX_SHARES: u64 = 262_144;
/// Smallest `cpu.weight` (v2).
pub const MIN_WEIGHT: u64 = 1;
/// Largest `cpu.weight` (v2).
pub const MAX_WEIGHT: u64 = 10_000;
/// Name of the subtree every agent's cgroups live under.
pub const SUBTREE: &str = "stator";
/// Prefix of one agent's directory in the subtree (followed by its pid).
const AGENT_DIR_PREFIX: &str = "agent-";
/// Longest mountinfo file read (bounds the parse on a machine with many mounts).
const MAX_MOUNTINFO_BYTES: u64 = 4 * 1024 * 1024;

/// `cpu.shares` for a request of `millicores` (Kubernetes' MilliCPUToShares).
pub fn shares_for_millis(millicores: u64) -> u64 {
    (millicores.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// `cpu.weight` for a request of `millicores`: the shares mapped onto 1..10000 as runc
/// does (`1 + (shares - 2) * 9999 / 262142`).
pub fn weight_for_millis(millicores: u64) -> u64 {
    let shares = shares_for_millis(millicores);
    (MIN_WEIGHT + (shares - MIN_SHARES) * (MAX_WEIGHT - MIN_WEIGHT) / (MAX_SHARES - MIN_SHARES))
        .clamp(MIN_WEIGHT, MAX_WEIGHT)
}

/// Which cgroup interface carries the CPU controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The unified hierarchy: `cpu.weight`.
    V2,
    /// A v1 hierarchy with the cpu controller: `cpu.shares`.
    V1,
}

/// The agent's CPU cgroups.
#[derive(Debug, Clone)]
pub struct CpuCgroups {
    version: Version,
    /// `<hierarchy>/stator/agent-<pid>`.
    agent_dir: PathBuf,
}

impl CpuCgroups {
    /// Finds a writable CPU hierarchy and makes this agent's directory in it; the error
    /// says why there is none.
    pub fn for_agent() -> Result<Self, String> {
        let mountinfo = read_mountinfo()?;
        let (version, root) = cpu_hierarchy(&mountinfo)
            .ok_or_else(|| "no cgroup2 hierarchy with the cpu controller and no cgroup v1 cpu hierarchy is mounted".to_string())?;
        let subtree = root.join(SUBTREE);
        if version == Version::V2 {
            enable_cpu_controller(&root)?;
        }
        make_dir(&subtree)?;
        if version == Version::V2 {
            enable_cpu_controller(&subtree)?;
        }
        remove_dead_agents(&subtree);
        let agent_dir = subtree.join(format!("{AGENT_DIR_PREFIX}{}", std::process::id()));
        make_dir(&agent_dir)?;
        if version == Version::V2 {
            enable_cpu_controller(&agent_dir)?;
        }
        Ok(CpuCgroups { version, agent_dir })
    }

    /// Which interface is in use.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The cgroup directory of process `name` (an instance id).
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.agent_dir.join(name)
    }

    /// Creates (or keeps) the cgroup of `name` with the share for `millicores`; returns
    /// the path of its `cgroup.procs`, to join between fork and exec.
    pub fn create(&self, name: &str, millicores: u64) -> Result<CString, String> {
        let dir = self.dir_of(name);
        make_dir(&dir)?;
        self.set_cpu(name, millicores)?;
        CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|_| format!("cgroup path {} holds a NUL byte", dir.display()))
    }

    /// Sets the share of `name` for `millicores` (a resize).
    pub fn set_cpu(&self, name: &str, millicores: u64) -> Result<(), String> {
        let (file, value) = match self.version {
            Version::V2 => ("cpu.weight", weight_for_millis(millicores)),
            Version::V1 => ("cpu.shares", shares_for_millis(millicores)),
        };
        let path = self.dir_of(name).join(file);
        fs::write(&path, value.to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Moves the running process `pid` (and only it: what it forked before stays) into
    /// the cgroup of `name`, for processes the agent does not spawn itself.
    pub fn move_process(&self, name: &str, pid: u32) -> Result<(), String> {
        let path = self.dir_of(name).join("cgroup.procs");
        fs::write(&path, pid.to_string())
            .map_err(|e| format!("cannot move {pid} into {}: {e}", path.display()))
    }

    /// Removes the cgroup of `name` once its processes are gone (a no-op if it is not
    /// there).
    pub fn remove(&self, name: &str) {
        remove_dir(&self.dir_of(name));
    }

    /// Removes this agent's directory and whatever empty cgroups are left in it.
    pub fn remove_all(&self) {
        remove_tree(&self.agent_dir);
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`. Runs
/// between fork and exec: only async-signal-safe calls, no allocation. Errors are
/// ignored: the process then runs without its share (the cgroup was checked just
/// before).
pub fn join_in_child(procs: &CString) {
    // SAFETY: open/write/close are async-signal-safe; the path and buffer outlive them.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

fn read_mountinfo() -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open("/proc/self/mountinfo")
        .and_then(|f| f.take(MAX_MOUNTINFO_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(text)
}

/// The hierarchy to use: cgroup2 when its root offers the cpu controller, else a v1
/// hierarchy whose options include `cpu`.
fn cpu_hierarchy(mountinfo: &str) -> Option<(Version, PathBuf)> {
    let mut v1 = None;
    for line in mountinfo.lines() {
        // `... mount_point options ... - fstype source super_options`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut right = right.split_whitespace();
        let fstype = right.next().unwrap_or_default();
        let super_options = right.nth(1).unwrap_or_default();
        let mount_point = PathBuf::from(mount_point);
        match fstype {
            "cgroup2" => {
                let controllers =
                    fs::read_to_string(mount_point.join("cgroup.controllers")).unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "cpu") {
                    return Some((Version::V2, mount_point));
                }
            }
            "cgroup" if super_options.split(',').any(|o| o == "cpu") => {
                v1.get_or_insert((Version::V1, mount_point));
            }
            _ => {}
        }
    }
    v1
}

fn enable_cpu_controller(dir: &Path) -> Result<(), String> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    fs::write(&control, "+cpu").map_err(|e| {
        format!(
            "cannot enable the cpu controller in {}: {e}",
            control.display()
        )
    })
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

/// rmdir of a cgroup; one still holding a process (EBUSY) stays.
fn remove_dir(dir: &Path) {
    match fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::debug!(dir = %dir.display(), "cgroup not removed: {e}"),
    }
}

/// Removes the empty cgroups under `dir`, then `dir` (cgroup files cannot be deleted;
/// rmdir of an empty cgroup removes them).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    remove_dir(dir);
}

/// Removes the directories of agents whose process is gone (killed with -9).
fn remove_dead_agents(subtree: &Path) {
    let Ok(entries) = fs::read_dir(subtree) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(AGENT_DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_tree(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millicores_map_to_shares_as_kubernetes_does() {
        assert_eq!(shares_for_millis(0), MIN_SHARES);
        assert_eq!(shares_for_millis(1), MIN_SHARES);
        assert_eq!(shares_for_millis(250), 256);
        assert_eq!(shares_for_millis(1000), 1024);
        assert_eq!(shares_for_millis(4000), 4096);
        assert_eq!(shares_for_millis(u64::MAX), MAX_SHARES);
    }

    #[test]
    fn shares_map_to_weights_as_runc_does() {
        assert_eq!(weight_for_millis(0), MIN_WEIGHT);
        // runc: 1 + (1024 - 2) * 9999 / 262142 = 39.
        assert_eq!(weight_for_millis(1000), 39);
        assert_eq!(weight_for_millis(u64::MAX), MAX_WEIGHT);
        // More CPU never means less weight.
        let weights: Vec<u64> = (0..100).map(|i| weight_for_millis(i * 500)).collect();
        assert!(weights.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn finds_the_cpu_hierarchy_in_mountinfo() {
        let v1 = "35 25 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:14 - cgroup cgroup rw,cpu\n\
                  36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:15 - cgroup cgroup rw,memory\n";
        assert_eq!(
            cpu_hierarchy(v1),
            Some((Version::V1, PathBuf::from("/sys/fs/cgroup/cpu")))
        );
        let none = "36 25 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cpu_hierarchy(none), None);
    }
}
