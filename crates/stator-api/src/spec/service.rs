//! The service spec: [`ServiceSpec`], its kind, durability and validation.

use super::*;

/// What a service is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// Stateful: `partitions` Raft groups of `replicas` members each; only leaders answer.
    #[default]
    Replicated,
    /// `instances` identical processes behind a round-robin proxy, replaced when lost.
    Stateless,
    /// Runs to completion `completions` times, retried with back-off on failure.
    Job,
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceKind::Replicated => "replicated",
            ServiceKind::Stateless => "stateless",
            ServiceKind::Job => "job",
        })
    }
}

/// A service as the user declares it. See DESIGN section 8 for the example this accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name: a DNS label (`[a-z0-9-]`, starting with a letter).
    pub name: String,
    /// What the service is; `replicated` when absent.
    #[serde(default)]
    pub kind: ServiceKind,
    /// Replicated only: number of partitions (shards), each owning a slot range.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Replicated only: members per partition group.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// What each replica or instance runs.
    pub app: AppSpec,
    /// Where the gateway exposes the service.
    #[serde(default)]
    pub expose: ExposeSpec,
    /// What each replica or instance requests from its node.
    #[serde(default)]
    pub resources: ResourceSpec,
    /// How replicas are spread and which policy scores nodes.
    #[serde(default)]
    pub placement: PlacementSpec,
    /// Latency target, read by the autoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<QosSpec>,
    /// Stateless only: number of instances.
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Stateless only: the port each instance listens on (passed as `PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Stateless only: when an instance counts as ready for traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Job only: successful runs needed for the job to succeed.
    #[serde(default = "default_completions")]
    pub completions: u32,
    /// Job only: failed runs retried before the job is failed.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Job only: delay before the first retry, doubled per retry.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Replicated only: Raft election timeout; [`DEFAULT_ELECTION_TIMEOUT_MS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<u64>,
    /// Replicated only: where replicas keep their Raft log, vote and snapshots
    /// ([`Durability`]); `memory` when absent.
    #[serde(default, skip_serializing_if = "Durability::is_memory")]
    pub durability: Durability,
    /// Replicated with `durability = "periodic"` only: the longest time between two
    /// fsyncs of a replica's log; [`DEFAULT_FSYNC_INTERVAL_MS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync_interval_ms: Option<u64>,
    /// Replicated `builtin = "kv"` only: the data each replica may hold before writes
    /// that grow it are refused with Redis' OOM error (the `noeviction` policy); absent
    /// or `"0"` for no budget. Fixed for the service's life: every replica must refuse the
    /// same writes, so it cannot follow `resources.memory` (which the autoscaler resizes).
    /// See [`ServiceSpec::kv_maxmemory_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxmemory: Option<MemoryMib>,
}

/// Where a replicated service's replicas keep their Raft log, vote and snapshots, and
/// what an acknowledged write survives.
///
/// | mode | an acknowledged write survives |
/// |---|---|
/// | `memory` | the loss of a minority of each partition's members (replication is the durability); a whole-cluster restart comes back empty |
/// | `periodic` | as `memory`, plus a whole-cluster restart, except the writes of the last `fsync_interval_ms` before the crash |
/// | `disk` | anything that leaves the disks readable: every replica fsyncs before it acknowledges an append (one fsync per batch of entries) |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Log, vote and snapshots in memory; a restarted replica rejoins empty.
    #[default]
    Memory,
    /// On disk, fsynced at most every `fsync_interval_ms` (the vote and snapshots at once).
    Periodic,
    /// On disk, fsynced before every acknowledgement (group commit: one fsync per batch).
    Disk,
}

impl Durability {
    /// Whether this is the in-memory default.
    pub fn is_memory(&self) -> bool {
        *self == Durability::Memory
    }

    /// Whether replicas keep their log on disk.
    pub fn is_durable(&self) -> bool {
        !self.is_memory()
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Memory => "memory",
            Durability::Periodic => "periodic",
            Durability::Disk => "disk",
        })
    }
}

pub(super) fn default_partitions() -> u32 {
    DEFAULT_PARTITIONS
}
pub(super) fn default_replicas() -> u32 {
    DEFAULT_REPLICAS
}
pub(super) fn default_instances() -> u32 {
    1
}
pub(super) fn default_completions() -> u32 {
    1
}
pub(super) fn default_retries() -> u32 {
    DEFAULT_JOB_RETRIES
}
pub(super) fn default_backoff_ms() -> u64 {
    DEFAULT_JOB_BACKOFF_MS
}

impl ServiceSpec {
    /// Checks every value against stator's limits. The error names the first bad field.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        self.app.validate()?;
        self.expose.validate()?;
        self.resources.validate("resources")?;
        if let Some(qos) = &self.qos {
            if qos.p99_latency_ms == Some(0) {
                return Err(SpecError::invalid(
                    "qos.p99_latency_ms",
                    "must be at least 1, or left out for no latency target",
                ));
            }
        }
        match self.kind {
            ServiceKind::Replicated => self.validate_replicated(),
            ServiceKind::Stateless => self.validate_stateless(),
            ServiceKind::Job => self.validate_job(),
        }
    }

    fn validate_replicated(&self) -> Result<(), SpecError> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(SpecError::invalid(
                "partitions",
                format!(
                    "must be between 1 and {MAX_PARTITIONS}, got {}",
                    self.partitions
                ),
            ));
        }
        if !ALLOWED_REPLICAS.contains(&self.replicas) {
            return Err(SpecError::invalid(
                "replicas",
                format!(
                    "must be 1, 3, 5 or 7 (an odd number keeps a majority), got {}",
                    self.replicas
                ),
            ));
        }
        if let Some(timeout_ms) = self.election_timeout_ms {
            if !(MIN_ELECTION_TIMEOUT_MS..=MAX_ELECTION_TIMEOUT_MS).contains(&timeout_ms) {
                return Err(SpecError::invalid(
                    "election_timeout_ms",
                    format!(
                        "must be between {MIN_ELECTION_TIMEOUT_MS} and {MAX_ELECTION_TIMEOUT_MS}, got {timeout_ms}"
                    ),
                ));
            }
        }
        if let Some(interval_ms) = self.fsync_interval_ms {
            if self.durability != Durability::Periodic {
                return Err(SpecError::invalid(
                    "fsync_interval_ms",
                    format!(
                        "applies to durability = \"periodic\" only, this service is {:?}; remove it or set durability = \"periodic\"",
                        self.durability.to_string()
                    ),
                ));
            }
            if !(MIN_FSYNC_INTERVAL_MS..=MAX_FSYNC_INTERVAL_MS).contains(&interval_ms) {
                return Err(SpecError::invalid(
                    "fsync_interval_ms",
                    format!(
                        "must be between {MIN_FSYNC_INTERVAL_MS} and {MAX_FSYNC_INTERVAL_MS}, got {interval_ms} (for an fsync before every acknowledgement use durability = \"disk\")"
                    ),
                ));
            }
        }
        if self.maxmemory.is_some() && !self.app.is_builtin_kv() {
            return Err(SpecError::invalid(
                "maxmemory",
                "is the budget of the built-in kv app only; remove it, or use resources.memory to limit a process or container app",
            ));
        }
        if self.expose.resp.is_some() && !self.app.is_builtin_kv() {
            return Err(SpecError::invalid(
                "expose.resp",
                "the RESP endpoint serves the built-in kv app only; use app = { builtin = \"kv\" } or expose.http",
            ));
        }
        self.reject_fields_of_other_kinds()
    }

    fn validate_stateless(&self) -> Result<(), SpecError> {
        if !self.app.is_process_or_container() {
            return Err(SpecError::invalid(
                "app",
                "a stateless service runs a process or a container: use app = { process = { command = [\"...\"] } } or app = { container = { image = \"oci:DIR:TAG\" } }",
            ));
        }
        if self.instances == 0 || self.instances > MAX_INSTANCES {
            return Err(SpecError::invalid(
                "instances",
                format!(
                    "must be between 1 and {MAX_INSTANCES}, got {}",
                    self.instances
                ),
            ));
        }
        if self.port == Some(0) {
            return Err(SpecError::invalid(
                "port",
                "must be a port between 1 and 65535, or left out",
            ));
        }
        if self.expose.resp.is_some() {
            return Err(SpecError::invalid(
                "expose.resp",
                "only replicated kv services speak RESP; use expose.http for a stateless service",
            ));
        }
        if self.expose.http.is_some() && self.port.is_none() {
            return Err(SpecError::invalid(
                "port",
                "expose.http proxies to each instance's port: set port = <the port your process listens on>",
            ));
        }
        if let Some(probe) = &self.readiness {
            probe.validate("readiness")?;
        }
        self.reject_fields_of_other_kinds()
    }

    fn validate_job(&self) -> Result<(), SpecError> {
        if !self.app.is_process_or_container() {
            return Err(SpecError::invalid(
                "app",
                "a job runs a process or a container: use app = { process = { command = [\"...\"] } } or app = { container = { image = \"oci:DIR:TAG\" } }",
            ));
        }
        if self.completions == 0 || self.completions > MAX_INSTANCES {
            return Err(SpecError::invalid(
                "completions",
                format!(
                    "must be between 1 and {MAX_INSTANCES}, got {}",
                    self.completions
                ),
            ));
        }
        if self.retries > MAX_JOB_RETRIES {
            return Err(SpecError::invalid(
                "retries",
                format!("must be at most {MAX_JOB_RETRIES}, got {}", self.retries),
            ));
        }
        if !(MIN_JOB_BACKOFF_MS..=MAX_JOB_BACKOFF_MS).contains(&self.backoff_ms) {
            return Err(SpecError::invalid(
                "backoff_ms",
                format!(
                    "must be between {MIN_JOB_BACKOFF_MS} and {MAX_JOB_BACKOFF_MS}, got {}",
                    self.backoff_ms
                ),
            ));
        }
        if self.expose.resp.is_some() || self.expose.http.is_some() {
            return Err(SpecError::invalid(
                "expose",
                "a job serves no traffic; remove expose",
            ));
        }
        self.reject_fields_of_other_kinds()
    }

    /// Fields with no meaning for this kind are errors rather than silently ignored, so a
    /// user who wrote `replicas` on a stateless service learns it should be `instances`.
    fn reject_fields_of_other_kinds(&self) -> Result<(), SpecError> {
        let kind = self.kind;
        let misplaced = |field: &str, belongs_to: &str| {
            SpecError::invalid(
                field,
                format!("applies to {belongs_to} services only, this one is {kind}; remove it"),
            )
        };
        if kind != ServiceKind::Replicated {
            if self.partitions != DEFAULT_PARTITIONS {
                return Err(misplaced("partitions", "replicated"));
            }
            if self.replicas != DEFAULT_REPLICAS {
                return Err(misplaced("replicas", "replicated"));
            }
            if self.election_timeout_ms.is_some() {
                return Err(misplaced("election_timeout_ms", "replicated"));
            }
            if self.durability.is_durable() {
                return Err(misplaced("durability", "replicated"));
            }
            if self.fsync_interval_ms.is_some() {
                return Err(misplaced("fsync_interval_ms", "replicated"));
            }
            if self.maxmemory.is_some() {
                return Err(misplaced("maxmemory", "replicated"));
            }
        }
        if kind != ServiceKind::Stateless {
            if self.instances != default_instances() {
                return Err(misplaced("instances", "stateless"));
            }
            if self.port.is_some() {
                return Err(misplaced("port", "stateless"));
            }
            if self.readiness.is_some() {
                return Err(misplaced("readiness", "stateless"));
            }
        }
        if kind != ServiceKind::Job {
            if self.completions != default_completions() {
                return Err(misplaced("completions", "job"));
            }
            if self.retries != DEFAULT_JOB_RETRIES {
                return Err(misplaced("retries", "job"));
            }
            if self.backoff_ms != DEFAULT_JOB_BACKOFF_MS {
                return Err(misplaced("backoff_ms", "job"));
            }
        }
        Ok(())
    }

    /// The data budget of each replica of a built-in kv service, in bytes: `maxmemory`;
    /// 0 (no budget) when it is absent or `"0"`, and for other apps.
    pub fn kv_maxmemory_bytes(&self) -> u64 {
        if !self.app.is_builtin_kv() {
            return 0;
        }
        let mib = self.maxmemory.map_or(0, |m| m.0);
        mib.saturating_mul(1024 * 1024)
    }

    /// The fsync interval of a `periodic` service (0 for the other modes).
    pub fn fsync_interval_ms(&self) -> u64 {
        match self.durability {
            Durability::Periodic => self.fsync_interval_ms.unwrap_or(DEFAULT_FSYNC_INTERVAL_MS),
            Durability::Memory | Durability::Disk => 0,
        }
    }

    /// The election timeout replicas should use.
    pub fn election_timeout_ms(&self) -> u64 {
        self.election_timeout_ms
            .unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS)
    }
}

pub(super) fn validate_name(field: &str, name: &str) -> Result<(), SpecError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let starts_with_letter = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    let ends_well = !name.ends_with('-');
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !valid_chars
        || !starts_with_letter
        || !ends_well
    {
        return Err(SpecError::invalid(
            field,
            format!(
                "must be 1 to {MAX_NAME_LEN} lowercase letters, digits or '-', starting with a letter and not ending with '-' (a DNS label), got {name:?}"
            ),
        ));
    }
    Ok(())
}
