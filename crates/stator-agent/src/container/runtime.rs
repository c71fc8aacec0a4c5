//! Runs containers with runc: a bundle per run (an overlay of the cached image plus the
//! generated OCI runtime config), `runc run` as the supervised child, `runc kill` and
//! `runc delete` to stop, and a sweep of everything a dead agent left behind.
//!
//! Per instance, under `<run_dir>/<id>/container/`: `bundle/config.json`,
//! `bundle/rootfs` (an overlay mount: the image read-only below, `upper/` and `work/`
//! above, so containers share one unpacked image and each sees its own writes). runc's
//! state lives under `<data dir>/runc` (its `--root`).
//!
//! # Isolation
//! Namespaces: pid, mount, ipc and uts. The network is the host's: the instance listens
//! on its `PORT` like a process would, the gateway and probes reach it on 127.0.0.1, and
//! no bridge, veth pair, IP allocation or port mapping is needed. A network namespace
//! per container would need all four (a CNI plugin's job) plus the agent reporting the
//! container's address instead of the node's. The process runs with no-new-privileges,
//! Docker's default capabilities minus `MKNOD`, `NET_RAW` and `SETFCAP`, Docker's masked
//! and read-only `/proc` paths, and, on request, a read-only root. Limits come from the
//! app's cgroup, which the container's cgroup sits inside (see [`crate::cgroup`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use serde_json::json;
use stator_api::container::{parse_user, ContainerSpec, ImageRef};
use tokio::process::Command;

use super::image::{Image, ImageCache, ImageRunConfig};
use crate::cgroup::Cgroups;

/// Environment variable naming the runc binary (else `runc` is looked up in `PATH`).
pub const RUNC_ENV: &str = "STATOR_RUNC";
/// Directory, under an instance's directory, of its container's bundle and overlay.
pub const CONTAINER_DIR: &str = "container";
/// `PATH` for images whose config sets none (Docker's default).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Capabilities a container keeps: Docker's defaults without `MKNOD`, `NET_RAW` (raw
/// sockets) and `SETFCAP`.
const CAPABILITIES: [&str; 11] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];
/// `/proc` and `/sys` paths hidden from containers (runc's defaults).
const MASKED_PATHS: [&str; 9] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
];
/// `/proc` paths containers see read-only (runc's defaults).
const READONLY_PATHS: [&str; 6] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/scsi",
];
/// Host files bound read-only into every container, so names resolve as on the host
/// (the container shares its network).
const HOST_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

/// The container runtime of one agent.
#[derive(Debug)]
pub struct ContainerRuntime {
    /// The runc binary; None: not installed (containers fail with a message saying so).
    runc: Option<PathBuf>,
    /// runc's `--root`.
    state_root: PathBuf,
    images: ImageCache,
    /// Where relative image paths are read from: the agent's working directory.
    base_dir: PathBuf,
}

/// A container ready to run: its bundle is written and its rootfs mounted.
#[derive(Debug)]
pub struct PreparedContainer {
    /// runc's name for it (the instance id).
    pub id: String,
    /// `<instance dir>/container`.
    pub dir: PathBuf,
    /// The image it runs.
    pub image: Image,
}

impl ContainerRuntime {
    /// A runtime keeping images under `data_dir/images` and runc's state under
    /// `data_dir/runc`.
    pub fn new(data_dir: &Path) -> Self {
        let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        Self {
            runc: find_runc(),
            state_root: data_dir.join("runc"),
            images: ImageCache::new(data_dir.join("images")),
            base_dir,
        }
    }

    /// The image cache.
    pub fn images(&self) -> &ImageCache {
        &self.images
    }

    /// runc's state directory (`--root`).
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// The runc binary, or why there is none.
    pub fn runc(&self) -> Result<&Path, String> {
        self.runc.as_deref().ok_or_else(|| {
            format!("runc is not installed: install it (apt-get install runc) or point {RUNC_ENV} at it")
        })
    }

    fn runc_command(&self) -> Result<std::process::Command, String> {
        let mut command = std::process::Command::new(self.runc()?);
        command.arg("--root").arg(&self.state_root);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(command)
    }

    /// Removes what an earlier agent on this data dir left: its containers (killed), the
    /// overlay mounts and the bundles under `run_dir`. Blocking; run at start.
    pub fn remove_stale(&self, run_dir: &Path) {
        if self.runc.is_some() {
            for id in self.list() {
                tracing::info!(%id, "removing a container left by an earlier agent");
                self.delete_blocking(&id);
            }
        }
        for mount_point in mounts_under(run_dir) {
            unmount(&mount_point);
        }
        if let Ok(entries) = fs::read_dir(run_dir) {
            for entry in entries.flatten() {
                let dir = entry.path().join(CONTAINER_DIR);
                if dir.exists() {
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
    }

    /// The ids of the containers runc knows in this agent's state root.
    pub fn list(&self) -> Vec<String> {
        let Ok(mut command) = self.runc_command() else {
            return Vec::new();
        };
        match command.args(["list", "--quiet"]).output() {
            Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Unpacks (or finds) the image, mounts the rootfs and writes the bundle for a run
    /// of container `id` (an instance id, or a replica's cgroup name: runc's name for
    /// the container, its hostname and its cgroup's). Blocking (image unpacking is file
    /// IO).
    pub fn prepare(
        &self,
        id: &str,
        container: &ContainerSpec,
        instance_dir: &Path,
        env: &BTreeMap<String, String>,
        cgroups: Option<&Arc<Cgroups>>,
    ) -> Result<PreparedContainer, String> {
        self.runc()?;
        let image_ref = ImageRef::parse(&container.image)
            .map_err(|reason| format!("app.container.image: {reason}"))?;
        let image = self
            .images
            .prepare(&image_ref, &self.base_dir)
            .map_err(|error| format!("image {image_ref}: {error}"))?;
        let dir = instance_dir.join(CONTAINER_DIR);
        // A run that ended without cleanup (the agent died) left its bundle.
        self.teardown(&dir);
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        let upper = dir.join("upper");
        let work = dir.join("work");
        for path in [&rootfs, &upper, &work] {
            fs::create_dir_all(path).map_err(|e| {
                format!(
                    "cannot create {}: {e} (check that the agent's data dir is writable)",
                    path.display()
                )
            })?;
        }
        mount_overlay(&image.rootfs, &upper, &work, &rootfs)?;
        let config = runtime_config(id, container, &image.config, env, cgroups)
            .inspect_err(|_| self.teardown(&dir))?;
        let path = bundle.join("config.json");
        config
            .save(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
            .inspect_err(|_| self.teardown(&dir))?;
        Ok(PreparedContainer {
            id: id.to_string(),
            dir,
            image,
        })
    }

    /// The `runc run` command of a prepared container (the caller sets stdio and spawns
    /// it). runc stays in the foreground, forwards signals to the container and exits
    /// with its status (128 + the signal when killed).
    pub fn run_command(&self, prepared: &PreparedContainer) -> Result<Command, String> {
        let mut command = Command::new(self.runc()?);
        command
            .arg("--root")
            .arg(&self.state_root)
            .arg("run")
            .arg("--bundle")
            .arg(prepared.dir.join("bundle"))
            .arg("--no-new-keyring")
            .arg(&prepared.id);
        Ok(command)
    }

    /// Sends `signal` (e.g. `KILL`) to the container's processes.
    pub async fn kill(&self, id: &str, signal: &str) {
        let Ok(runc) = self.runc() else { return };
        let result = Command::new(runc)
            .arg("--root")
            .arg(&self.state_root)
            .args(["kill", id, signal])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if let Err(error) = result {
            tracing::warn!(%id, %error, "runc kill failed");
        }
    }

    /// Forgets the container (killing what is left of it); a no-op for an unknown id.
    pub fn delete_blocking(&self, id: &str) {
        let Ok(mut command) = self.runc_command() else {
            return;
        };
        match command.args(["delete", "--force", id]).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                if !stderr.contains("does not exist") {
                    tracing::debug!(%id, %stderr, "runc delete failed");
                }
            }
            Err(error) => tracing::warn!(%id, %error, "runc delete failed"),
        }
    }

    /// Unmounts and removes a run's bundle and overlay (`<instance dir>/container`).
    pub fn teardown(&self, container_dir: &Path) {
        let rootfs = container_dir.join("bundle/rootfs");
        for mount_point in mounts_under(&rootfs) {
            unmount(&mount_point);
        }
        unmount(&rootfs);
        match fs::remove_dir_all(container_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %container_dir.display(), "cannot remove a container's files: {e}")
            }
        }
    }
}

/// `STATOR_RUNC`, else `runc` in `PATH`.
fn find_runc() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(RUNC_ENV) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("runc"))
        .find(|candidate| candidate.is_file())
}

/// Mounts an overlay of `lower` (read-only) and `upper` at `target`, or, where overlayfs
/// is unavailable (e.g. the data dir is itself on an overlay), copies `lower` there.
fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<(), String> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let c = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("path {} holds a NUL byte", path.display()))
    };
    let source = c(Path::new("overlay"))?;
    let target_c = c(target)?;
    let options_c = std::ffi::CString::new(options)
        .map_err(|_| "overlay options hold a NUL byte".to_string())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            c"overlay".as_ptr(),
            0,
            options_c.as_ptr().cast(),
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    tracing::warn!(%error, "overlayfs unavailable; copying the image for this container");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(format!("{}/.", lower.display()))
        .arg(target)
        .status()
        .map_err(|e| format!("cannot copy the image into {}: {e}", target.display()))?;
    if !status.success() {
        return Err(format!(
            "cannot mount an overlay at {} ({error}) nor copy the image there",
            target.display()
        ));
    }
    Ok(())
}

/// Detaches the mount at `target` (a no-op when nothing is mounted there).
fn unmount(target: &Path) {
    let Ok(path) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; EINVAL (not a mount point) is ignored.
    unsafe {
        libc::umount2(path.as_ptr(), libc::MNT_DETACH);
    }
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(&dir))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found
}

/// The OCI runtime config of one run, checked against the OCI types.
fn runtime_config(
    id: &str,
    container: &ContainerSpec,
    image: &ImageRunConfig,
    extra_env: &BTreeMap<String, String>,
    cgroups: Option<&Arc<Cgroups>>,
) -> Result<oci_spec::runtime::Spec, String> {
    let args: Vec<String> = if container.command.is_empty() {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    } else {
        container.command.clone()
    };
    if args.is_empty() {
        return Err(format!(
            "image {} sets no entrypoint or cmd: set app.container.command",
            container.image
        ));
    }
    let (uid, gid) = match (&container.user, &image.user) {
        (Some(user), _) => parse_user(user).map_err(|reason| format!("app.container.user: {reason}"))?,
        (None, Some(user)) if user == "root" => (0, 0),
        (None, Some(user)) => parse_user(user).map_err(|_| {
            format!("the image runs as user {user:?}, a name stator cannot resolve: set app.container.user = \"UID:GID\"")
        })?,
        (None, None) => (0, 0),
    };
    let mut env: Vec<String> = image.env.clone();
    if !env.iter().any(|var| var.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    for (key, value) in extra_env.iter().chain(&container.env) {
        env.retain(|var| !var.starts_with(&format!("{key}=")));
        env.push(format!("{key}={value}"));
    }
    let cwd = container
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    for file in HOST_FILES {
        if Path::new(file).is_file() {
            mounts.push(json!({"destination": file, "type": "bind", "source": file,
                               "options": ["rbind", "ro", "nosuid", "nodev"]}));
        }
    }
    for mount in &container.mounts {
        let mode = if mount.read_only { "ro" } else { "rw" };
        mounts.push(
            json!({"destination": mount.target, "type": "bind", "source": mount.source,
                           "options": ["rbind", mode]}),
        );
    }
    let capabilities: Vec<&str> = CAPABILITIES.to_vec();
    let mut linux = json!({
        "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    if let Some(cgroups) = cgroups {
        linux["cgroupsPath"] = json!(cgroups.container_path_of(id));
    }
    let document = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": capabilities, "effective": capabilities, "permitted": capabilities,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": container.read_only_rootfs},
        "hostname": id,
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(document)
        .map_err(|e| format!("generated an invalid OCI runtime config: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::container::MountSpec;

    #[test]
    fn the_runtime_config_isolates_and_follows_the_spec() {
        let container = ContainerSpec {
            image: "oci:img:1".into(),
            env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
            read_only_rootfs: true,
            mounts: vec![MountSpec {
                source: "/srv".into(),
                target: "/data".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        let image = ImageRunConfig {
            entrypoint: vec!["/bin/httpd".into()],
            cmd: vec!["-f".into()],
            env: vec!["GREETING=image".into()],
            working_dir: Some("/www".into()),
            user: Some("1000".into()),
        };
        let env = BTreeMap::from([("PORT".to_string(), "8080".to_string())]);
        let spec = runtime_config("web-0", &container, &image, &env, None).unwrap();
        let value = serde_json::to_value(&spec).unwrap();
        assert_eq!(value["process"]["args"], json!(["/bin/httpd", "-f"]));
        assert_eq!(value["process"]["cwd"], json!("/www"));
        assert_eq!(value["process"]["user"]["uid"], json!(1000));
        assert_eq!(value["process"]["noNewPrivileges"], json!(true));
        assert_eq!(value["root"]["readonly"], json!(true));
        let env: Vec<String> = serde_json::from_value(value["process"]["env"].clone()).unwrap();
        assert!(env.contains(&"GREETING=hi".to_string()), "{env:?}");
        assert!(env.contains(&"PORT=8080".to_string()));
        assert!(env.iter().any(|var| var.starts_with("PATH=")));
        let namespaces = value["linux"]["namespaces"].to_string();
        assert!(!namespaces.contains("network"), "host network by default");
        for kind in ["pid", "mount", "ipc", "uts"] {
            assert!(namespaces.contains(kind), "{kind} namespace missing");
        }
        let caps = value["process"]["capabilities"]["bounding"].to_string();
        assert!(!caps.contains("CAP_SYS_ADMIN") && !caps.contains("CAP_NET_RAW"));
        assert!(value["mounts"].to_string().contains("/data"));
    }

    #[test]
    fn an_image_without_a_command_or_with_a_named_user_is_refused() {
        let container = ContainerSpec {
            image: "oci:img:1".into(),
            ..Default::default()
        };
        let error = runtime_config(
            "web-0",
            &container,
            &ImageRunConfig::default(),
            &BTreeMap::new(),
            None,
        )
        .unwrap_err();
        assert!(error.contains("app.container.command"), "{error}");
        let image = ImageRunConfig {
            cmd: vec!["sh".into()],
            user: Some("nobody".into()),
            ..Default::default()
        };
        let error =
            runtime_config("web-0", &container, &image, &BTreeMap::new(), None).unwrap_err();
        assert!(error.contains("app.container.user"), "{error}");
    }
}
