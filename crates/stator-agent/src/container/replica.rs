//! stator-sm/1 apps of replicated services inside containers: a [`Launcher`] for
//! [`stator_sm::host::ProcessMachine`] that starts the app with runc.
//!
//! The machine keeps doing what it does for a process (socket, snapshot + replay buffer,
//! restart with back-off, restore after a crash); only the start differs. Each start:
//! 1. removes what the previous start left (`runc delete --force`, the overlay), so a
//!    restart always recreates the container;
//! 2. creates the replica's cgroup with its limits (CPU share and ceiling, memory), so
//!    the container's cgroup, made by runc inside it, is bounded by them;
//! 3. prepares the bundle like an instance's, plus a read-write bind mount of the
//!    replica's socket directory at [`SOCKET_DIR_IN_CONTAINER`] and `STATOR_SM_SOCKET`
//!    etc. pointing at it (the socket and directory are handed to `app.container.user`
//!    when it is not root, so the app may connect), then returns `runc run` as the
//!    command to watch.
//!
//! Layout per replica, under the agent's replica run root:
//! `<service>-p<partition>/sm/` (socket and logs, the directory the app sees) and
//! `<service>-p<partition>/container/` (bundle, overlay upper and work dirs), so the
//! app never sees its own bundle, and the sweep at agent start ([`ContainerRuntime::
//! remove_stale`]) finds the container directory where it finds an instance's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use stator_api::container::{parse_user, ContainerSpec, MountSpec};
use stator_sm::host::{Launcher, ProcessMachineConfig, SOCKET_FILE};
use stator_sm::sdk::{ENV_PARTITION, ENV_REPLICA, ENV_SERVICE, ENV_SOCKET};
use stator_sm::SmError;
use tokio::process::Command;

use super::runtime::{ContainerRuntime, CONTAINER_DIR};
use crate::cgroup::{Cgroups, Limits};

/// Where the replica's socket directory appears inside the container.
pub const SOCKET_DIR_IN_CONTAINER: &str = "/run/stator-sm";
/// Name of the socket directory inside a replica's run directory.
pub const SOCKET_DIR: &str = "sm";

/// Starts one replica's app in a container (see the module doc).
#[derive(Debug)]
pub struct ContainerLauncher {
    runtime: Arc<ContainerRuntime>,
    spec: ContainerSpec,
    /// runc's name for the container and its cgroup's: `replica-<service id>-<partition>`.
    id: String,
    /// `<service>-p<partition>`: holds [`SOCKET_DIR`] and [`CONTAINER_DIR`].
    replica_dir: PathBuf,
    cgroups: Option<Arc<Cgroups>>,
    limits: Limits,
}

impl ContainerLauncher {
    /// A launcher for the replica whose files live in `replica_dir`, run as container
    /// (and cgroup) `id` with `limits`.
    pub fn new(
        runtime: Arc<ContainerRuntime>,
        spec: ContainerSpec,
        id: String,
        replica_dir: PathBuf,
        cgroups: Option<Arc<Cgroups>>,
        limits: Limits,
    ) -> Self {
        Self {
            runtime,
            spec,
            id,
            replica_dir,
            cgroups,
            limits,
        }
    }

    /// The run directory to give the machine: the socket directory the app sees.
    pub fn socket_dir(&self) -> PathBuf {
        self.replica_dir.join(SOCKET_DIR)
    }

    /// runc's name for the container.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Removes the container (killing what is left of it), its mounts and its bundle.
    /// Idempotent; blocking.
    pub fn remove(&self) {
        self.runtime.delete_blocking(&self.id);
        self.runtime.teardown(&self.replica_dir.join(CONTAINER_DIR));
    }

    /// An app running as another user (`app.container.user`) must be able to connect:
    /// the socket (made by the agent) and its directory become that user's.
    fn hand_socket_to_user(&self, config: &ProcessMachineConfig) -> Result<(), SmError> {
        let Some(user) = &self.spec.user else {
            return Ok(());
        };
        let (uid, gid) = parse_user(user).map_err(|reason| SmError::Launch {
            message: format!("app.container.user: {reason}"),
        })?;
        if uid == 0 {
            return Ok(());
        }
        for path in [config.run_dir.clone(), config.socket_path()] {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| SmError::Launch {
                message: format!(
                    "cannot give {} to uid {uid} (app.container.user): {e}",
                    path.display()
                ),
            })?;
        }
        Ok(())
    }

    /// The container as the app sees it: the spec's, plus the socket directory mount.
    fn container_spec(&self, config: &ProcessMachineConfig) -> ContainerSpec {
        let mut spec = self.spec.clone();
        spec.mounts.push(MountSpec {
            source: config.run_dir.display().to_string(),
            target: SOCKET_DIR_IN_CONTAINER.to_string(),
            read_only: false,
        });
        spec
    }

    /// The `STATOR_*` variables, as the app sees them inside.
    fn environment(config: &ProcessMachineConfig) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                ENV_SOCKET.to_string(),
                format!("{SOCKET_DIR_IN_CONTAINER}/{SOCKET_FILE}"),
            ),
            (ENV_SERVICE.to_string(), config.service.clone()),
            (ENV_PARTITION.to_string(), config.partition.to_string()),
            (ENV_REPLICA.to_string(), config.replica.to_string()),
        ])
    }
}

#[async_trait]
impl Launcher for ContainerLauncher {
    async fn command(&self, config: &ProcessMachineConfig) -> Result<Command, SmError> {
        let runtime = self.runtime.clone();
        let (id, replica_dir, cgroups, limits) = (
            self.id.clone(),
            self.replica_dir.clone(),
            self.cgroups.clone(),
            self.limits,
        );
        let (spec, env) = (self.container_spec(config), Self::environment(config));
        self.hand_socket_to_user(config)?;
        let prepared = tokio::task::spawn_blocking(move || {
            // A container of the previous start may still be known to runc.
            runtime.delete_blocking(&id);
            if let Some(cgroups) = &cgroups {
                if let Err(error) = cgroups.create_limited(&id, &limits) {
                    tracing::warn!(%id, %error, "replica app runs without its limits");
                }
            }
            runtime
                .prepare(&id, &spec, &replica_dir, &env, cgroups.as_ref())
                .map(|prepared| (runtime, prepared))
        })
        .await
        .map_err(|e| SmError::Launch {
            message: format!("preparing the container panicked: {e}"),
        })?;
        let (runtime, prepared) = prepared.map_err(|message| SmError::Launch { message })?;
        runtime.run_command(&prepared).map_err(|message| {
            runtime.teardown(&prepared.dir);
            SmError::Launch { message }
        })
    }

    fn cleanup(&self, _config: &ProcessMachineConfig) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_sees_its_socket_directory_and_the_stator_variables() {
        let launcher = ContainerLauncher::new(
            Arc::new(ContainerRuntime::new(std::path::Path::new("/nonexistent"))),
            ContainerSpec {
                image: "oci:img:1".into(),
                ..Default::default()
            },
            "replica-7-0".into(),
            PathBuf::from("/data/replicas/room-p0"),
            None,
            Limits::default(),
        );
        let config = ProcessMachineConfig {
            program: "python3".into(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            run_dir: launcher.socket_dir(),
            service: "room".into(),
            partition: 0,
            replica: 3,
            limits: Default::default(),
        };
        let spec = launcher.container_spec(&config);
        let mount = spec.mounts.last().unwrap();
        assert_eq!(mount.source, "/data/replicas/room-p0/sm");
        assert_eq!(mount.target, SOCKET_DIR_IN_CONTAINER);
        assert!(!mount.read_only);
        let env = ContainerLauncher::environment(&config);
        assert_eq!(env[ENV_SOCKET], "/run/stator-sm/sm.sock");
        assert_eq!(env[ENV_SERVICE], "room");
        assert_eq!(env[ENV_REPLICA], "3");
    }
}
