//! Limits for app processes and containers: one cgroup per app under a stator subtree,
//! with a CPU share (`cpu.weight` on v2, `cpu.shares` on v1) from the CPU it requests, an
//! optional CPU ceiling (`cpu.max` / `cpu.cfs_quota_us`), and a memory limit
//! (`memory.max` / `memory.limit_in_bytes`, swap off) whose breach the kernel answers with
//! an OOM kill that [`was_oom_killed`] recognises afterwards.
//!
//! Layout: `<hierarchy>/stator/agent-<agent pid>/<app>`, in the CPU hierarchy and (on a
//! v1 or hybrid machine, where memory is a hierarchy of its own) the memory hierarchy.
//! Each agent owns its `agent-<pid>` directory (several agents share a machine under
//! `stator up`), kills what is left in the directories of dead agents and removes them at
//! start, and removes its own at shutdown. A process joins its cgroups between fork and
//! exec (it writes `0` to each `cgroup.procs`), so everything it forks is inside too. A
//! container's runtime makes `<app>/container` below the app's cgroup (in every
//! hierarchy), so the limits hold for the container while the app's cgroup, which the
//! agent owns, outlives the container long enough to read its OOM counters.
//!
//! Shares are relative: they decide how CPU is split when the machine is busy, never
//! cap an idle one. The mapping is Kubernetes': `shares = millicores * 1024 / 1000`
//! (at least 2), and on v2 runc's conversion of shares to a weight.
//!
//! Where no writable CPU hierarchy exists (not root, a v2 tree without the cpu
//! controller, no cgroup file system), [`Cgroups::for_agent`] says why, the agent logs
//! one line, and processes run without shares or limits. Where only the memory
//! controller is missing, apps get shares and no memory limit (logged once).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Smallest `cpu.shares` the kernel accepts (v1).
pub const MIN_SHARES: u64 = 2;
/// Largest `cpu.shares` (v1).
pub const MAX_SHARES: u64 = 262_144;
/// Smallest `cpu.weight` (v2).
pub const MIN_WEIGHT: u64 = 1;
/// Largest `cpu.weight` (v2).
pub const MAX_WEIGHT: u64 = 10_000;
/// CFS period the CPU ceiling is expressed in (the kernel's and Kubernetes' default).
pub const CFS_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota the kernel accepts.
pub const MIN_CFS_QUOTA_US: u64 = 1_000;
/// Name of the subtree every agent's cgroups live under.
pub const SUBTREE: &str = "stator";
/// Name of the cgroup a container runtime makes inside an app's cgroup.
pub const CONTAINER_CGROUP: &str = "container";
/// Prefix of one agent's directory in the subtree (followed by its pid).
const AGENT_DIR_PREFIX: &str = "agent-";
/// Longest mountinfo file read (bounds the parse on a machine with many mounts).
const MAX_MOUNTINFO_BYTES: u64 = 4 * 1024 * 1024;
/// Longest a cgroup control file read here can be (counters and pid lists of one app).
const MAX_CONTROL_FILE_BYTES: u64 = 1024 * 1024;
/// How close (v1) the memory high-water mark must come to the limit to count as having
/// hit it: the kernel charges in batches of up to 64 pages.
const PEAK_SLACK_BYTES: u64 = 256 * 1024;
/// Tries to remove a cgroup whose last processes were just killed: they need a moment
/// to exit, after which rmdir succeeds.
const REMOVE_ATTEMPTS: u32 = 50;
/// Pause between those tries.
const REMOVE_RETRY_DELAY: Duration = Duration::from_millis(10);

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

/// CFS quota per [`CFS_PERIOD_US`] for a ceiling of `millicores` (Kubernetes'
/// MilliCPUToQuota).
pub fn quota_for_millis(millicores: u64) -> u64 {
    (millicores.saturating_mul(CFS_PERIOD_US) / 1000).max(MIN_CFS_QUOTA_US)
}

/// Which cgroup interface carries the CPU controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The unified hierarchy: `cpu.weight`, `cpu.max`, `memory.max`.
    V2,
    /// v1 hierarchies: `cpu.shares`, `cpu.cfs_quota_us`, `memory.limit_in_bytes`.
    V1,
}

/// What one app may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU request: the share.
    pub cpu_millis: u64,
    /// CPU ceiling (a quota); None: none.
    pub cpu_limit_millis: Option<u64>,
    /// Memory limit in MiB; 0: none.
    pub memory_mib: u64,
}

/// Memory counters of an app's cgroup, read before and after a run to tell an OOM kill
/// from other deaths (see [`was_oom_killed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Processes the kernel's OOM killer killed in this cgroup (v1 `memory.oom_control`
    /// `oom_kill`: only those inside the cgroup itself; v2 `memory.events` `oom_kill`:
    /// the whole subtree).
    pub oom_kills: u64,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events` `max`),
    /// counted in this cgroup for its whole subtree.
    pub limit_hits: u64,
}

/// Whether a run that ended between the `before` and `after` readings was OOM-killed:
/// the kernel counted an OOM kill, or (for a container, whose processes sit in a child
/// cgroup that v1 counts kills in and the runtime removes) the app died of SIGKILL that
/// the agent did not send while its memory hit the limit.
pub fn was_oom_killed(before: MemoryEvents, after: MemoryEvents, died_of_sigkill: bool) -> bool {
    after.oom_kills > before.oom_kills || (died_of_sigkill && after.limit_hits > before.limit_hits)
}

/// The agent's cgroups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// `<cpu hierarchy>/stator/agent-<pid>`.
    agent_dir: PathBuf,
    /// `<memory hierarchy>/stator/agent-<pid>` (the same as `agent_dir` on v2); None:
    /// no memory controller, so no memory limits.
    memory_agent_dir: Option<PathBuf>,
    /// The mount point of every cgroup hierarchy, for cleanup: a container runtime
    /// makes its cgroups in all of them.
    hierarchies: Vec<PathBuf>,
}

impl Cgroups {
    /// Finds a writable CPU hierarchy (and the memory one) and makes this agent's
    /// directory in them; the error says why there is none. Kills and removes what dead
    /// agents left behind.
    pub fn for_agent() -> Result<Self, String> {
        let mountinfo = read_mountinfo()?;
        let (version, root) = cpu_hierarchy(&mountinfo)
            .ok_or_else(|| "no cgroup2 hierarchy with the cpu controller and no cgroup v1 cpu hierarchy is mounted".to_string())?;
        let hierarchies = all_hierarchies(&mountinfo);
        for hierarchy in &hierarchies {
            remove_dead_agents(&hierarchy.join(SUBTREE));
        }
        let agent_name = format!("{AGENT_DIR_PREFIX}{}", std::process::id());
        let agent_dir = match version {
            Version::V2 => make_v2_agent_dir(&root, &agent_name)?,
            Version::V1 => make_agent_dir(&root, &agent_name)?,
        };
        let memory_agent_dir = match version {
            // make_v2_agent_dir enabled memory where the root offers it.
            Version::V2 => {
                let enabled = fs::read_to_string(agent_dir.join("cgroup.subtree_control"))
                    .unwrap_or_default();
                enabled
                    .split_whitespace()
                    .any(|c| c == "memory")
                    .then(|| agent_dir.clone())
            }
            Version::V1 => match v1_hierarchy(&mountinfo, "memory") {
                Some(memory_root) => match make_agent_dir(&memory_root, &agent_name) {
                    Ok(dir) => Some(dir),
                    Err(why) => {
                        tracing::warn!("memory limits not enforced: {why}");
                        None
                    }
                },
                None => None,
            },
        };
        if memory_agent_dir.is_none() {
            tracing::warn!("no writable memory cgroup controller: memory limits not enforced");
        }
        Ok(Cgroups {
            version,
            agent_dir,
            memory_agent_dir,
            hierarchies,
        })
    }

    /// Which interface is in use.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether memory limits are enforced.
    pub fn limits_memory(&self) -> bool {
        self.memory_agent_dir.is_some()
    }

    /// The CPU cgroup directory of app `name` (an instance id).
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.agent_dir.join(name)
    }

    /// The memory cgroup directory of app `name`, if memory is limited.
    pub fn memory_dir_of(&self, name: &str) -> Option<PathBuf> {
        self.memory_agent_dir.as_ref().map(|dir| dir.join(name))
    }

    /// The cgroup path (relative to each hierarchy's root) a container runtime should
    /// make for app `name`'s container: inside the app's cgroup, so its limits apply.
    pub fn container_path_of(&self, name: &str) -> String {
        format!(
            "/{SUBTREE}/{}/{name}/{CONTAINER_CGROUP}",
            self.agent_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    }

    /// Creates (or keeps) the cgroup of `name` with the share for `millicores`; returns
    /// the path of its `cgroup.procs`, to join between fork and exec.
    pub fn create(&self, name: &str, millicores: u64) -> Result<CString, String> {
        let dir = self.dir_of(name);
        make_dir(&dir)?;
        self.set_cpu(name, millicores)?;
        procs_path(&dir)
    }

    /// Creates (or keeps) the cgroups of `name` with `limits`; returns the
    /// `cgroup.procs` files to join between fork and exec (one per hierarchy).
    pub fn create_limited(&self, name: &str, limits: &Limits) -> Result<Vec<CString>, String> {
        let mut procs = vec![self.create(name, limits.cpu_millis)?];
        self.set_cpu_limit(name, limits.cpu_limit_millis)?;
        if let Some(memory_dir) = self.memory_dir_of(name) {
            if memory_dir != self.dir_of(name) {
                make_dir(&memory_dir)?;
                procs.push(procs_path(&memory_dir)?);
            }
            self.set_memory_limit(&memory_dir, limits.memory_mib)?;
        }
        Ok(procs)
    }

    /// Sets the share of `name` for `millicores` (a resize).
    pub fn set_cpu(&self, name: &str, millicores: u64) -> Result<(), String> {
        let (file, value) = match self.version {
            Version::V2 => ("cpu.weight", weight_for_millis(millicores)),
            Version::V1 => ("cpu.shares", shares_for_millis(millicores)),
        };
        write_control(&self.dir_of(name).join(file), &value.to_string())
    }

    /// Sets (or lifts, with None) the CPU ceiling of `name`.
    pub fn set_cpu_limit(&self, name: &str, millicores: Option<u64>) -> Result<(), String> {
        let dir = self.dir_of(name);
        match self.version {
            Version::V2 => {
                let quota =
                    millicores.map_or("max".to_string(), |m| quota_for_millis(m).to_string());
                write_control(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))
            }
            Version::V1 => {
                write_control(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                let quota =
                    millicores.map_or("-1".to_string(), |m| quota_for_millis(m).to_string());
                write_control(&dir.join("cpu.cfs_quota_us"), &quota)
            }
        }
    }

    fn set_memory_limit(&self, memory_dir: &Path, memory_mib: u64) -> Result<(), String> {
        let bytes = memory_mib.saturating_mul(1024 * 1024);
        match self.version {
            Version::V2 => {
                let limit = if memory_mib == 0 {
                    "max".to_string()
                } else {
                    bytes.to_string()
                };
                write_control(&memory_dir.join("memory.max"), &limit)?;
                // Swap would turn an OOM kill into a crawl; absent without swap support.
                let swap = memory_dir.join("memory.swap.max");
                if swap.exists() {
                    write_control(&swap, "0")?;
                }
                Ok(())
            }
            Version::V1 => {
                let limit = if memory_mib == 0 {
                    "-1".to_string()
                } else {
                    bytes.to_string()
                };
                let memsw = memory_dir.join("memory.memsw.limit_in_bytes");
                // memsw must stay >= the limit: lower it after, raise it before.
                if memsw.exists() && memory_mib == 0 {
                    write_control(&memsw, &limit)?;
                }
                write_control(&memory_dir.join("memory.limit_in_bytes"), &limit)?;
                if memsw.exists() && memory_mib != 0 {
                    write_control(&memsw, &limit)?;
                }
                // A new run starts a new high-water mark (see `memory_events`).
                write_control(&memory_dir.join("memory.max_usage_in_bytes"), "0")
            }
        }
    }

    /// The memory counters of `name` (zeros where memory is not limited or the cgroup is
    /// gone).
    pub fn memory_events(&self, name: &str) -> MemoryEvents {
        let Some(dir) = self.memory_dir_of(name) else {
            return MemoryEvents::default();
        };
        match self.version {
            Version::V2 => {
                let events = read_control(&dir.join("memory.events"));
                MemoryEvents {
                    oom_kills: keyed_counter(&events, "oom_kill"),
                    limit_hits: keyed_counter(&events, "max"),
                }
            }
            Version::V1 => {
                let number = |file: &str| -> u64 {
                    read_control(&dir.join(file)).trim().parse().unwrap_or(0)
                };
                // failcnt stays 0 on some kernels (6.x), so the high-water mark, reset
                // at each start, also counts: usage that reached the limit is a hit.
                let limit = number("memory.limit_in_bytes");
                let peak_at_limit = limit > 0
                    && limit < u64::MAX / 2
                    && number("memory.max_usage_in_bytes").saturating_add(PEAK_SLACK_BYTES)
                        >= limit;
                MemoryEvents {
                    oom_kills: keyed_counter(
                        &read_control(&dir.join("memory.oom_control")),
                        "oom_kill",
                    ),
                    limit_hits: number("memory.failcnt").saturating_add(u64::from(peak_at_limit)),
                }
            }
        }
    }

    /// Moves the running process `pid` (and only it: what it forked before stays) into
    /// the CPU cgroup of `name`, for processes the agent does not spawn itself.
    pub fn move_process(&self, name: &str, pid: u32) -> Result<(), String> {
        let path = self.dir_of(name).join("cgroup.procs");
        fs::write(&path, pid.to_string())
            .map_err(|e| format!("cannot move {pid} into {}: {e}", path.display()))
    }

    /// Removes the cgroups of `name` in every hierarchy once its processes are gone (a
    /// no-op where they are not there; one still holding a process stays).
    pub fn remove(&self, name: &str) {
        for dir in self.dirs_of_everywhere(name) {
            remove_tree(&dir);
        }
    }

    /// Names of the cgroups directly under this agent's directory, in any hierarchy.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let agent_name = self.agent_dir.file_name().unwrap_or_default();
        self.hierarchies
            .iter()
            .filter_map(|hierarchy| fs::read_dir(hierarchy.join(SUBTREE).join(agent_name)).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
            .collect()
    }

    /// SIGKILLs whatever runs in the cgroups of `name` and removes them (a no-op where
    /// they are not there; one whose processes have not exited yet stays).
    pub fn kill_and_remove(&self, name: &str) {
        for dir in self.dirs_of_everywhere(name) {
            kill_tree(&dir);
            remove_tree(&dir);
        }
    }

    /// Whether any hierarchy still holds a cgroup of `name` (for leak checks).
    pub fn exists_anywhere(&self, name: &str) -> bool {
        self.dirs_of_everywhere(name).iter().any(|dir| dir.exists())
    }

    /// Removes this agent's directories and whatever empty cgroups are left in them.
    pub fn remove_all(&self) {
        let agent_name = self.agent_dir.file_name().unwrap_or_default();
        for hierarchy in &self.hierarchies {
            remove_tree(&hierarchy.join(SUBTREE).join(agent_name));
        }
    }

    fn dirs_of_everywhere(&self, name: &str) -> Vec<PathBuf> {
        let agent_name = self.agent_dir.file_name().unwrap_or_default();
        self.hierarchies
            .iter()
            .map(|hierarchy| hierarchy.join(SUBTREE).join(agent_name).join(name))
            .collect()
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files are `procs`.
/// Runs between fork and exec: only async-signal-safe calls, no allocation. Errors are
/// ignored: the process then runs without its limits (the cgroups were checked just
/// before).
pub fn join_in_child(procs: &[CString]) {
    for file in procs {
        // SAFETY: open/write/close are async-signal-safe; the path and buffer outlive them.
        unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    }
}

fn procs_path(dir: &Path) -> Result<CString, String> {
    CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
        .map_err(|_| format!("cgroup path {} holds a NUL byte", dir.display()))
}

fn write_control(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

fn read_control(path: &Path) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(file) = fs::File::open(path) {
        let _ = file.take(MAX_CONTROL_FILE_BYTES).read_to_string(&mut text);
    }
    text
}

/// The value of `key` in a `key value` per line control file (0 when absent).
fn keyed_counter(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(name, _)| *name == key)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

fn read_mountinfo() -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open("/proc/self/mountinfo")
        .and_then(|f| f.take(MAX_MOUNTINFO_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(text)
}

/// `(mount point, fstype, super options)` of each cgroup mount in mountinfo.
fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = (PathBuf, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        // `... mount_point options ... - fstype source super_options`
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        let mut right = right.split_whitespace();
        let fstype = right.next().unwrap_or_default();
        let super_options = right.nth(1).unwrap_or_default();
        matches!(fstype, "cgroup" | "cgroup2")
            .then(|| (PathBuf::from(mount_point), fstype, super_options))
    })
}

/// The hierarchy to use: cgroup2 when its root offers the cpu controller, else a v1
/// hierarchy whose options include `cpu`.
fn cpu_hierarchy(mountinfo: &str) -> Option<(Version, PathBuf)> {
    let mut v1 = None;
    for (mount_point, fstype, super_options) in cgroup_mounts(mountinfo) {
        if fstype == "cgroup2" {
            let controllers =
                fs::read_to_string(mount_point.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "cpu") {
                return Some((Version::V2, mount_point));
            }
        } else if super_options.split(',').any(|o| o == "cpu") {
            v1.get_or_insert((Version::V1, mount_point));
        }
    }
    v1
}

/// The v1 hierarchy whose options include `controller`.
fn v1_hierarchy(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    cgroup_mounts(mountinfo)
        .find(|(_, fstype, options)| {
            *fstype == "cgroup" && options.split(',').any(|o| o == controller)
        })
        .map(|(mount_point, _, _)| mount_point)
}

/// Every cgroup hierarchy's mount point (each once).
fn all_hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = cgroup_mounts(mountinfo)
        .map(|(mount_point, _, _)| mount_point)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// `root/stator/<agent>` on v1.
fn make_agent_dir(root: &Path, agent_name: &str) -> Result<PathBuf, String> {
    let subtree = root.join(SUBTREE);
    make_dir(&subtree)?;
    let agent_dir = subtree.join(agent_name);
    make_dir(&agent_dir)?;
    Ok(agent_dir)
}

/// `root/stator/<agent>` on v2, with cpu (required) and memory (where offered) enabled
/// for the children of each level.
fn make_v2_agent_dir(root: &Path, agent_name: &str) -> Result<PathBuf, String> {
    let subtree = root.join(SUBTREE);
    let agent_dir = subtree.join(agent_name);
    enable_controllers(root)?;
    make_dir(&subtree)?;
    enable_controllers(&subtree)?;
    make_dir(&agent_dir)?;
    enable_controllers(&agent_dir)?;
    Ok(agent_dir)
}

/// Enables cpu (an error when impossible) and memory (best effort) for `dir`'s children.
fn enable_controllers(dir: &Path) -> Result<(), String> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "cpu") {
        fs::write(&control, "+cpu").map_err(|e| {
            format!(
                "cannot enable the cpu controller in {}: {e}",
                control.display()
            )
        })?;
    }
    if !enabled.split_whitespace().any(|c| c == "memory") {
        if let Err(e) = fs::write(&control, "+memory") {
            tracing::debug!(control = %control.display(), "memory controller not enabled: {e}");
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

/// rmdir of a cgroup; one still holding a process (EBUSY) stays.
fn remove_dir(dir: &Path) -> bool {
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), "cgroup not removed: {e}");
            false
        }
    }
}

/// Removes the empty cgroups under `dir`, then `dir` (cgroup files cannot be deleted;
/// rmdir of an empty cgroup removes them).
fn remove_tree(dir: &Path) -> bool {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    remove_dir(dir)
}

/// SIGKILLs every process in `dir` and its children (the leftovers of a dead agent:
/// containers survive their runtime's death).
fn kill_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                kill_tree(&entry.path());
            }
        }
    }
    for pid in read_control(&dir.join("cgroup.procs"))
        .lines()
        .filter_map(|line| line.trim().parse::<libc::pid_t>().ok())
    {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Kills what the agents whose process is gone (killed with -9) left behind, and
/// removes their directories.
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
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        kill_tree(&dir);
        for _ in 0..REMOVE_ATTEMPTS {
            if remove_tree(&dir) {
                break;
            }
            std::thread::sleep(REMOVE_RETRY_DELAY);
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
    fn quota_follows_kubernetes() {
        assert_eq!(quota_for_millis(500), 50_000);
        assert_eq!(quota_for_millis(2000), 200_000);
        assert_eq!(quota_for_millis(0), MIN_CFS_QUOTA_US);
    }

    #[test]
    fn an_oom_kill_is_told_from_other_deaths() {
        let before = MemoryEvents {
            oom_kills: 1,
            limit_hits: 10,
        };
        // The kernel counted a kill (a process in the app's own cgroup).
        assert!(was_oom_killed(
            before,
            MemoryEvents {
                oom_kills: 2,
                limit_hits: 11
            },
            false
        ));
        // A container: SIGKILL while at the limit, counted only in the child cgroup.
        assert!(was_oom_killed(
            before,
            MemoryEvents {
                oom_kills: 1,
                limit_hits: 12
            },
            true
        ));
        // SIGKILL from someone else, memory never at the limit.
        assert!(!was_oom_killed(before, before, true));
        // At the limit (page cache reclaimed) but exited by itself.
        assert!(!was_oom_killed(
            before,
            MemoryEvents {
                oom_kills: 1,
                limit_hits: 50
            },
            false
        ));
    }

    #[test]
    fn reads_keyed_counters() {
        let events = "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n";
        assert_eq!(keyed_counter(events, "oom_kill"), 2);
        assert_eq!(keyed_counter(events, "max"), 7);
        assert_eq!(keyed_counter(events, "absent"), 0);
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
        assert_eq!(
            v1_hierarchy(v1, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(all_hierarchies(v1).len(), 2);
    }
}
