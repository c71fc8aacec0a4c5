//! Service and node-pool specs as users write them (TOML, YAML or JSON), with validation
//! whose errors name the field and the fix.
//!
//! A spec goes through two steps: [`parse_spec`] turns text into a [`ServiceSpec`]
//! (rejecting unknown fields and wrong types), then [`ServiceSpec::validate`] checks the
//! values against the limits below. Both steps return a [`SpecError`] whose message starts
//! with the field's path, e.g. `replicas: must be 1, 3, 5 or 7 (an odd number keeps a
//! majority), got 0`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::container::ContainerSpec;

/// Most partitions one service may declare: each partition is a Raft group with its own
/// heartbeats, so more than this per service costs more than it shards.
pub const MAX_PARTITIONS: u32 = 1024;
/// Replica counts a partition may have: odd, so a majority survives the loss of
/// `(replicas - 1) / 2` members; 7 already tolerates three failures.
pub const ALLOWED_REPLICAS: [u32; 4] = [1, 3, 5, 7];
/// Most instances of a stateless service, and most completions of a job: a bound on what
/// one spec can ask the scheduler for.
pub const MAX_INSTANCES: u32 = 1024;
/// Most retries of a failed job run before the job is marked failed.
pub const MAX_JOB_RETRIES: u32 = 100;
/// Shortest back-off between job retries: below this a crash loop spins the node.
pub const MIN_JOB_BACKOFF_MS: u64 = 10;
/// Longest back-off between job retries (one hour).
pub const MAX_JOB_BACKOFF_MS: u64 = 3_600_000;
/// Shortest Raft election timeout: below this a busy LAN triggers spurious elections.
pub const MIN_ELECTION_TIMEOUT_MS: u64 = 50;
/// Longest Raft election timeout: beyond a minute failover is slower than a StatefulSet's.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 60_000;
/// Longest service or pool name: a DNS label, so names can become host names.
pub const MAX_NAME_LEN: usize = 63;
/// Most CPU one replica or instance may request (1000 cores).
pub const MAX_CPU_MILLIS: u64 = 1_000_000;
/// Most memory one replica or instance may request (4 TiB).
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// Most arguments in a process command line.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Most environment variables in a process spec.
pub const MAX_ENV_VARS: usize = 256;
/// Most nodes one pool may hold.
pub const MAX_POOL_NODES: u32 = 100_000;
/// Shortest fsync interval of `durability = "periodic"`: below this, `disk` (fsync per
/// batch, with group commit) costs about the same and promises more.
pub const MIN_FSYNC_INTERVAL_MS: u64 = 10;
/// Longest fsync interval of `durability = "periodic"` (one minute of writes at risk).
pub const MAX_FSYNC_INTERVAL_MS: u64 = 60_000;
/// Fsync interval of `durability = "periodic"` when the spec does not say: Redis'
/// `appendfsync everysec`.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1_000;

/// Partitions of a replicated service when the spec does not say.
pub const DEFAULT_PARTITIONS: u32 = 1;
/// Replicas per partition when the spec does not say: tolerates one node loss.
pub const DEFAULT_REPLICAS: u32 = 3;
/// Raft election timeout when the spec does not say: tuned for a LAN, where heartbeats
/// take well under a millisecond, so failover stays far below a second. openraft waits
/// one leader lease (the timeout's upper bound, 1.25x this) plus the timeout before a
/// follower that knew a leader runs for election: about 2.3-2.5x this in all.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 100;
/// CPU requested when the spec does not say.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// Memory requested when the spec does not say.
pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// Retries of a job when the spec does not say.
pub const DEFAULT_JOB_RETRIES: u32 = 3;
/// Back-off before the first retry of a job when the spec does not say; it doubles per
/// retry up to [`MAX_JOB_BACKOFF_MS`].
pub const DEFAULT_JOB_BACKOFF_MS: u64 = 1_000;

/// What went wrong reading or checking a spec. Every message starts with what to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is not valid TOML/YAML/JSON for a spec: bad syntax, an unknown field, a
    /// wrong type or a missing required field. The message is the parser's, with location.
    #[error("{format} spec does not parse: {message}")]
    Parse {
        /// The format the text was read as.
        format: SpecFormat,
        /// The parser's message (names the field and the line where it can).
        message: String,
    },
    /// A field holds a value outside what stator accepts.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `replicas` or `app.process.command`.
        field: String,
        /// What was wrong and what to write instead.
        reason: String,
    },
}

impl SpecError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Text format of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecFormat {
    /// TOML, the format of the examples.
    Toml,
    /// YAML.
    Yaml,
    /// JSON (what the API stores and returns).
    Json,
    /// Guess: JSON when it starts with `{`, TOML when a line looks like `key = value`,
    /// YAML otherwise.
    Auto,
}

impl fmt::Display for SpecFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecFormat::Toml => "TOML",
            SpecFormat::Yaml => "YAML",
            SpecFormat::Json => "JSON",
            SpecFormat::Auto => "auto-detected",
        })
    }
}

impl SpecFormat {
    /// The format a file name's extension implies (`.toml`, `.yaml`/`.yml`, `.json`),
    /// [`SpecFormat::Auto`] for anything else.
    pub fn from_path(path: &str) -> SpecFormat {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".toml") {
            SpecFormat::Toml
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            SpecFormat::Yaml
        } else if lower.ends_with(".json") {
            SpecFormat::Json
        } else {
            SpecFormat::Auto
        }
    }

    /// Resolves [`SpecFormat::Auto`] by looking at the text.
    pub fn detect(self, text: &str) -> SpecFormat {
        if self != SpecFormat::Auto {
            return self;
        }
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            return SpecFormat::Json;
        }
        let looks_like_toml = text.lines().any(|line| {
            let line = line.trim();
            line.starts_with('[')
                || line
                    .split_once('=')
                    .is_some_and(|(key, _)| !key.trim().is_empty() && !key.contains(':'))
        });
        if looks_like_toml {
            SpecFormat::Toml
        } else {
            SpecFormat::Yaml
        }
    }
}

/// Reads a service spec from `text`. Unknown fields, wrong types and missing required
/// fields are errors; values are not checked here (call [`ServiceSpec::validate`]).
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<ServiceSpec, SpecError> {
    parse_document(text, format)
}

/// Reads a node-pool spec from `text`, like [`parse_spec`].
pub fn parse_node_pool(text: &str, format: SpecFormat) -> Result<NodePoolSpec, SpecError> {
    parse_document(text, format)
}

fn parse_document<T: for<'de> Deserialize<'de>>(
    text: &str,
    format: SpecFormat,
) -> Result<T, SpecError> {
    let format = format.detect(text);
    let parsed = match format {
        SpecFormat::Toml => toml::from_str(text).map_err(|e| one_line_toml_error(text, &e)),
        SpecFormat::Yaml => serde_yaml_ng::from_str(text).map_err(|e| e.to_string()),
        SpecFormat::Json | SpecFormat::Auto => {
            serde_json::from_str(text).map_err(|e| e.to_string())
        }
    };
    parsed.map_err(|message| SpecError::Parse {
        format,
        // One line even when the parser quotes a key or value that holds a line break.
        message: message.trim().replace('\r', "\\r").replace('\n', "\\n"),
    })
}

/// The toml crate renders an error as a source excerpt over several lines; errors are
/// one line (the CLI prints them as its one-line reason), so keep the location, the
/// offending line (which names the field) and the message.
fn one_line_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    let Some(span) = error.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    format!(
        "line {line}, column {column} (`{}`): {message}",
        text[line_start..line_end].trim()
    )
}

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

fn default_partitions() -> u32 {
    DEFAULT_PARTITIONS
}
fn default_replicas() -> u32 {
    DEFAULT_REPLICAS
}
fn default_instances() -> u32 {
    1
}
fn default_completions() -> u32 {
    1
}
fn default_retries() -> u32 {
    DEFAULT_JOB_RETRIES
}
fn default_backoff_ms() -> u64 {
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

fn validate_name(field: &str, name: &str) -> Result<(), SpecError> {
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

/// What a replica or instance runs.
///
/// Written as `{ builtin = "kv" }`, `{ process = { command = [...], env = {...},
/// working_dir = "..." } }` or `{ container = { image = "oci:DIR:TAG", ... } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAppSpec", into = "RawAppSpec")]
pub enum AppSpec {
    /// A state machine compiled into the agent, by name (`kv`).
    Builtin(String),
    /// An external process: a `stator-sm/1` state machine for replicated services, the
    /// program itself for stateless services and jobs.
    Process(ProcessSpec),
    /// An OCI image run by the agent's container driver (stateless services and jobs).
    Container(ContainerSpec),
}

/// Built-in state machines the agent ships.
pub const BUILTIN_APPS: [&str; 1] = ["kv"];

impl AppSpec {
    /// Whether this is the built-in kv store (the one the RESP endpoint speaks to).
    pub fn is_builtin_kv(&self) -> bool {
        matches!(self, AppSpec::Builtin(name) if name == "kv")
    }

    /// Whether this runs a program of its own (what stateless services and jobs need).
    pub fn is_process_or_container(&self) -> bool {
        matches!(self, AppSpec::Process(_) | AppSpec::Container(_))
    }

    fn validate(&self) -> Result<(), SpecError> {
        match self {
            AppSpec::Builtin(name) => {
                if !BUILTIN_APPS.contains(&name.as_str()) {
                    return Err(SpecError::invalid(
                        "app.builtin",
                        format!(
                            "unknown built-in app {name:?}; the built-ins are {BUILTIN_APPS:?}"
                        ),
                    ));
                }
                Ok(())
            }
            AppSpec::Process(process) => process.validate("app.process"),
            AppSpec::Container(container) => container.validate("app.container"),
        }
    }
}

/// The on-the-wire shape of [`AppSpec`]: a table with exactly one of two keys. Parsed
/// through this struct rather than a serde enum so TOML, YAML and JSON all accept the
/// same `{ builtin = ... }` shape and the error names the field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    builtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process: Option<ProcessSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<ContainerSpec>,
}

impl TryFrom<RawAppSpec> for AppSpec {
    type Error = String;
    fn try_from(raw: RawAppSpec) -> Result<Self, String> {
        match (raw.builtin, raw.process, raw.container) {
            (Some(name), None, None) => Ok(AppSpec::Builtin(name)),
            (None, Some(process), None) => Ok(AppSpec::Process(process)),
            (None, None, Some(container)) => Ok(AppSpec::Container(container)),
            _ => Err("app: set exactly one of `builtin` (e.g. app = { builtin = \"kv\" }), `process` (app = { process = { command = [\"...\"] } }) or `container` (app = { container = { image = \"oci:DIR:TAG\" } })".to_string()),
        }
    }
}

impl From<AppSpec> for RawAppSpec {
    fn from(app: AppSpec) -> Self {
        match app {
            AppSpec::Builtin(name) => RawAppSpec {
                builtin: Some(name),
                process: None,
                container: None,
            },
            AppSpec::Process(process) => RawAppSpec {
                builtin: None,
                process: Some(process),
                container: None,
            },
            AppSpec::Container(container) => RawAppSpec {
                builtin: None,
                process: None,
                container: Some(container),
            },
        }
    }
}

/// An external process to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Program and arguments; the program is looked up in `PATH` when it has no `/`.
    pub command: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Directory to start in; the agent's data directory for the instance when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

impl ProcessSpec {
    fn validate(&self, field: &str) -> Result<(), SpecError> {
        if self.command.is_empty() || self.command[0].trim().is_empty() {
            return Err(SpecError::invalid(
                format!("{field}.command"),
                "must name a program, e.g. command = [\"python3\", \"app.py\"]",
            ));
        }
        validate_command_and_env(field, &self.command, &self.env)?;
        if self.working_dir.as_deref() == Some("") {
            return Err(SpecError::invalid(
                format!("{field}.working_dir"),
                "must be a directory path, or left out",
            ));
        }
        Ok(())
    }
}

/// The limits every app that runs a command shares (processes and containers): the
/// argument count, the number of environment variables and their names.
pub(crate) fn validate_command_and_env(
    field: &str,
    command: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(), SpecError> {
    if command.len() > MAX_COMMAND_ARGS {
        return Err(SpecError::invalid(
            format!("{field}.command"),
            format!(
                "at most {MAX_COMMAND_ARGS} arguments, got {}",
                command.len()
            ),
        ));
    }
    if env.len() > MAX_ENV_VARS {
        return Err(SpecError::invalid(
            format!("{field}.env"),
            format!("at most {MAX_ENV_VARS} variables, got {}", env.len()),
        ));
    }
    for key in env.keys() {
        let valid = !key.is_empty()
            && !key.as_bytes()[0].is_ascii_digit()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(SpecError::invalid(
                format!("{field}.env"),
                format!("variable name {key:?} must be letters, digits and '_', not starting with a digit"),
            ));
        }
    }
    Ok(())
}

/// Where the gateway exposes a service. Addresses are `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeSpec {
    /// A RESP (Redis protocol) listener, for built-in kv services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<String>,
    /// An HTTP listener: the stator-sm/1 call route, or the round-robin proxy of a
    /// stateless service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Whether the RESP endpoint also speaks the Redis Cluster protocol (`CLUSTER SLOTS`
    /// and friends, with every agent serving its leaders' slots itself and answering
    /// `MOVED` for the rest). On unless set to `false`; needs `resp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<bool>,
    /// Who may talk to the data: a password for the RESP endpoint (`AUTH`) and the HTTP
    /// routes (`Authorization: Bearer`), and ACL users. None: anyone who can connect,
    /// subject to [`ExposeSpec::protected_mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Redis's protected mode: with no `auth`, clients from addresses other than loopback
    /// are refused (`DENIED`). On unless set to `false`.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub protected_mode: bool,
    /// TLS on the RESP endpoint (the gateway's and, in cluster mode, every agent's):
    /// clients connect with `redis-cli --tls --cacert ...`. None: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RespTlsSpec>,
}

/// `expose.tls`: the certificate the RESP endpoint presents. Like passwords, the files
/// are read where the endpoint runs: on every gateway host and, in cluster mode, every
/// agent hosting a replica, so the certificate must name every address clients dial
/// (the gateway's and each agent's `--advertise-host`) as a subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespTlsSpec {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

impl Default for ExposeSpec {
    fn default() -> Self {
        Self {
            resp: None,
            http: None,
            cluster: None,
            auth: None,
            protected_mode: true,
            tls: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Longest ACL user name, as a bound on hostile specs.
pub const MAX_ACL_USER_NAME_BYTES: usize = 64;

/// Most ACL users one service may define.
pub const MAX_ACL_USERS: usize = 64;

/// `expose.auth`: the service's password and ACL users. Secrets stay out of the spec:
/// each is a path to a file holding it (one line; a trailing newline is ignored) that
/// must be readable on every host running a gateway and, where cluster mode is on
/// (`expose.cluster`), on every agent hosting a replica of the service: each agent's
/// cluster listener asks for the same credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// The `default` user's password (`AUTH <password>`), also the HTTP bearer token.
    pub password_file: String,
    /// More users (`AUTH <user> <password>`) with narrower rights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<AclUserSpec>,
}

/// One ACL user of `expose.auth.users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclUserSpec {
    /// The user name (`AUTH <name> <password>`); not `default`.
    pub name: String,
    /// File holding the user's password.
    pub password_file: String,
    /// Redis ACL command rules applied in order: `+@all`, `-@all`, `+@read`, `+@write`,
    /// `+get`, `-flushall`, `allcommands`, `nocommands`. Empty: no command.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Key glob patterns the user may touch (`user:*`); `*` for every key. Empty: none.
    #[serde(default)]
    pub keys: Vec<String>,
}

impl AuthSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if self.password_file.trim().is_empty() {
            return Err(SpecError::invalid(
                "expose.auth.password_file",
                "must be the path of a file holding the password",
            ));
        }
        if self.users.len() > MAX_ACL_USERS {
            return Err(SpecError::invalid(
                "expose.auth.users",
                format!("at most {MAX_ACL_USERS} users, got {}", self.users.len()),
            ));
        }
        for (index, user) in self.users.iter().enumerate() {
            let field = format!("expose.auth.users[{index}]");
            let name_ok = !user.name.is_empty()
                && user.name.len() <= MAX_ACL_USER_NAME_BYTES
                && user.name.bytes().all(|b| b.is_ascii_graphic());
            if !name_ok {
                return Err(SpecError::invalid(
                    format!("{field}.name"),
                    format!("must be 1 to {MAX_ACL_USER_NAME_BYTES} printable characters without spaces, got {:?}", user.name),
                ));
            }
            if user.name == "default" {
                return Err(SpecError::invalid(
                    format!("{field}.name"),
                    "`default` is the user of expose.auth.password_file; pick another name",
                ));
            }
            if self.users[..index].iter().any(|u| u.name == user.name) {
                return Err(SpecError::invalid(
                    format!("{field}.name"),
                    format!("user {:?} is defined twice", user.name),
                ));
            }
            if user.password_file.trim().is_empty() {
                return Err(SpecError::invalid(
                    format!("{field}.password_file"),
                    "must be the path of a file holding the user's password",
                ));
            }
            for rule in &user.commands {
                let known = matches!(rule.as_str(), "allcommands" | "nocommands")
                    || ((rule.starts_with('+') || rule.starts_with('-')) && rule.len() > 1);
                if !known {
                    return Err(SpecError::invalid(
                        format!("{field}.commands"),
                        format!("rule {rule:?} is not understood; use +<command>, -<command>, +@<category>, -@<category>, allcommands or nocommands"),
                    ));
                }
            }
            if let Some(empty) = user.keys.iter().find(|k| k.is_empty()) {
                return Err(SpecError::invalid(
                    format!("{field}.keys"),
                    format!("pattern {empty:?} is empty; use \"*\" for every key"),
                ));
            }
        }
        Ok(())
    }
}

impl ExposeSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(tls) = &self.tls {
            if self.resp.is_none() {
                return Err(SpecError::invalid(
                    "expose.tls",
                    "encrypts the RESP endpoint: set expose.resp too, or remove tls",
                ));
            }
            for (field, path) in [
                ("expose.tls.cert_file", &tls.cert_file),
                ("expose.tls.key_file", &tls.key_file),
            ] {
                if path.trim().is_empty() {
                    return Err(SpecError::invalid(
                        field,
                        "must be the path of a PEM file on every gateway and agent host",
                    ));
                }
            }
        }
        for (field, value) in [("expose.resp", &self.resp), ("expose.http", &self.http)] {
            if let Some(addr) = value {
                if addr.parse::<SocketAddr>().is_err() {
                    return Err(SpecError::invalid(
                        field,
                        format!(
                            "must be an IP address and port like \"127.0.0.1:6380\", got {addr:?}"
                        ),
                    ));
                }
            }
        }
        if self.cluster.is_some() && self.resp.is_none() {
            return Err(SpecError::invalid(
                "expose.cluster",
                "switches the Redis Cluster protocol of the RESP endpoint: set expose.resp too, or remove cluster",
            ));
        }
        if self.resp.is_some() && self.resp == self.http {
            return Err(SpecError::invalid(
                "expose.http",
                "must differ from expose.resp: one port serves one protocol",
            ));
        }
        Ok(())
    }

    /// Whether the RESP endpoint serves the Redis Cluster protocol: it exists and the spec
    /// did not turn cluster mode off.
    pub fn cluster_enabled(&self) -> bool {
        self.resp.is_some() && self.cluster != Some(false)
    }

    /// The RESP address, parsed (validation guarantees it parses).
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp.as_deref().and_then(|addr| addr.parse().ok())
    }

    /// The HTTP address, parsed (validation guarantees it parses).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_deref().and_then(|addr| addr.parse().ok())
    }
}

/// What one replica or instance requests, in Kubernetes quantities
/// (`cpu = "250m"`, `memory = "128Mi"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// CPU: `"250m"` (millicores), `"1"`, `"0.5"` or a number of cores.
    #[serde(default = "default_cpu")]
    pub cpu: CpuMillis,
    /// Memory: `"128Mi"`, `"1Gi"`, `"512M"`, or bytes; rounded up to whole MiB. Also the
    /// limit: a process or container that allocates past it is OOM-killed and restarted.
    #[serde(default = "default_memory")]
    pub memory: MemoryMib,
    /// CPU ceiling (a CFS quota), at least `cpu`; none when absent, so an app may burst
    /// into idle CPU while `cpu` still weighs its share when the node is busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<CpuMillis>,
}

fn default_cpu() -> CpuMillis {
    CpuMillis(DEFAULT_CPU_MILLIS)
}
fn default_memory() -> MemoryMib {
    MemoryMib(DEFAULT_MEMORY_MIB)
}

impl Default for ResourceSpec {
    fn default() -> Self {
        ResourceSpec {
            cpu: default_cpu(),
            memory: default_memory(),
            cpu_limit: None,
        }
    }
}

impl ResourceSpec {
    /// CPU in millicores.
    pub fn cpu_millis(&self) -> u64 {
        self.cpu.0
    }
    /// Memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.memory.0
    }
    /// CPU ceiling in millicores, if any.
    pub fn cpu_limit_millis(&self) -> Option<u64> {
        self.cpu_limit.map(|limit| limit.0)
    }

    fn validate(&self, field: &str) -> Result<(), SpecError> {
        if self.cpu.0 == 0 || self.cpu.0 > MAX_CPU_MILLIS {
            return Err(SpecError::invalid(
                format!("{field}.cpu"),
                format!(
                    "must be between 1m and {}, got {}",
                    MAX_CPU_MILLIS / 1000,
                    self.cpu
                ),
            ));
        }
        if self.memory.0 == 0 || self.memory.0 > MAX_MEMORY_MIB {
            return Err(SpecError::invalid(
                format!("{field}.memory"),
                format!(
                    "must be between 1Mi and {}Gi, got {}",
                    MAX_MEMORY_MIB / 1024,
                    self.memory
                ),
            ));
        }
        if let Some(limit) = self.cpu_limit {
            if limit.0 < self.cpu.0 || limit.0 > MAX_CPU_MILLIS {
                return Err(SpecError::invalid(
                    format!("{field}.cpu_limit"),
                    format!(
                        "must be at least the request cpu = {} and at most {}, got {limit}",
                        self.cpu,
                        MAX_CPU_MILLIS / 1000
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A CPU quantity in millicores. Reads Kubernetes syntax, writes `"<n>m"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuMillis(pub u64);

impl fmt::Display for CpuMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.0)
    }
}

/// A memory quantity in MiB. Reads Kubernetes syntax, writes `"<n>Mi"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemoryMib(pub u64);

impl fmt::Display for MemoryMib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Mi", self.0)
    }
}

/// Parses a Kubernetes CPU quantity (`"250m"`, `"2"`, `"0.5"`) into millicores.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("CPU quantity {text:?} is not like \"250m\", \"1\" or \"0.5\"");
    if let Some(millis) = text.strip_suffix('m') {
        return millis.parse::<u64>().map_err(|_| bad());
    }
    let cores: f64 = text.parse().map_err(|_| bad())?;
    cores_to_millis(cores).ok_or_else(bad)
}

fn cores_to_millis(cores: f64) -> Option<u64> {
    if !cores.is_finite() || cores < 0.0 || cores > u64::MAX as f64 / 1000.0 {
        return None;
    }
    Some((cores * 1000.0).ceil() as u64)
}

/// Parses a Kubernetes memory quantity (`"128Mi"`, `"1Gi"`, `"512M"`, `"1e9"`, bytes)
/// into MiB, rounding up.
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    const SUFFIXES: [(&str, f64); 10] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let text = text.trim();
    let bad = || format!("memory quantity {text:?} is not like \"128Mi\", \"1Gi\" or \"512M\"");
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, multiplier)| text.strip_suffix(suffix).map(|n| (n, *multiplier)))
        .unwrap_or((text, 1.0));
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    bytes_to_mib(value * multiplier).ok_or_else(bad)
}

fn bytes_to_mib(bytes: f64) -> Option<u64> {
    if !bytes.is_finite() || bytes < 0.0 {
        return None;
    }
    let mib = (bytes / 1_048_576.0).ceil();
    (mib <= u64::MAX as f64).then_some(mib as u64)
}

/// A quantity as written: a string (`"250m"`) or a bare number (cores, or bytes).
#[derive(Deserialize)]
#[serde(untagged)]
enum QuantityText {
    Text(String),
    Integer(u64),
    Float(f64),
}

impl<'de> Deserialize<'de> for CpuMillis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let millis = match QuantityText::deserialize(deserializer)? {
            QuantityText::Text(text) => parse_cpu_millis(&text),
            QuantityText::Integer(cores) => cores
                .checked_mul(1000)
                .ok_or_else(|| format!("CPU quantity {cores} cores is too large")),
            QuantityText::Float(cores) => {
                cores_to_millis(cores).ok_or_else(|| format!("CPU quantity {cores} is not valid"))
            }
        };
        millis.map(CpuMillis).map_err(serde::de::Error::custom)
    }
}

impl Serialize for CpuMillis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemoryMib {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mib = match QuantityText::deserialize(deserializer)? {
            QuantityText::Text(text) => parse_memory_mib(&text),
            QuantityText::Integer(bytes) => {
                bytes_to_mib(bytes as f64).ok_or_else(|| format!("memory {bytes} is not valid"))
            }
            QuantityText::Float(bytes) => {
                bytes_to_mib(bytes).ok_or_else(|| format!("memory {bytes} is not valid"))
            }
        };
        mib.map(MemoryMib).map_err(serde::de::Error::custom)
    }
}

impl Serialize for MemoryMib {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Placement preferences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    /// The failure domain no two replicas of a partition may share.
    #[serde(default)]
    pub spread: SpreadOver,
    /// How candidate nodes are scored.
    #[serde(default)]
    pub policy: PlacementPolicy,
}

/// The failure domain replicas of one partition are spread over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpreadOver {
    /// Distinct nodes (works on one machine).
    #[default]
    Node,
    /// Distinct zones (survives a zone outage; needs as many zones as replicas).
    Zone,
}

/// How candidate nodes are scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementPolicy {
    /// Least allocated first (Kubernetes default scoring).
    #[default]
    Spread,
    /// Cheapest price per unit of resource first (best fit).
    Cost,
}

/// Quality-of-service targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosSpec {
    /// Target p99 request latency at the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_latency_ms: Option<u64>,
}

/// How an agent decides an instance is ready for traffic.
///
/// Written as `{ tcp = { port = 8080 } }`, `{ http = { port = 8080, path = "/healthz" } }`
/// or `{ exec = { command = ["check.sh"] } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawProbe", into = "RawProbe")]
pub enum Probe {
    /// Ready when a TCP connection to `port` on the instance's host succeeds.
    Tcp(TcpProbe),
    /// Ready when `GET http://127.0.0.1:<port><path>` answers 2xx.
    Http(HttpProbe),
    /// Ready when `command` exits with status 0.
    Exec(ExecProbe),
}

/// A TCP readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// Port to connect to; the service's `port` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// An HTTP readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// Port to query; the service's `port` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path to GET, starting with `/`.
    #[serde(default = "default_probe_path")]
    pub path: String,
}

fn default_probe_path() -> String {
    "/".to_string()
}

/// An exec readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProbe {
    /// Program and arguments, run in the instance's working directory.
    pub command: Vec<String>,
}

impl Probe {
    fn validate(&self, field: &str) -> Result<(), SpecError> {
        match self {
            Probe::Tcp(TcpProbe { port: Some(0) })
            | Probe::Http(HttpProbe { port: Some(0), .. }) => Err(SpecError::invalid(
                format!("{field}.port"),
                "must be between 1 and 65535, or left out to use the service's port",
            )),
            Probe::Http(HttpProbe { path, .. }) if !path.starts_with('/') => {
                Err(SpecError::invalid(
                    format!("{field}.http.path"),
                    format!("must start with '/', got {path:?}"),
                ))
            }
            Probe::Exec(ExecProbe { command })
                if command.is_empty() || command.len() > MAX_COMMAND_ARGS =>
            {
                Err(SpecError::invalid(
                    format!("{field}.exec.command"),
                    format!("must name a program and at most {MAX_COMMAND_ARGS} arguments"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// On-the-wire shape of [`Probe`]: exactly one key, like [`AppSpec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<ExecProbe>,
}

impl TryFrom<RawProbe> for Probe {
    type Error = String;
    fn try_from(raw: RawProbe) -> Result<Self, String> {
        match (raw.tcp, raw.http, raw.exec) {
            (Some(tcp), None, None) => Ok(Probe::Tcp(tcp)),
            (None, Some(http), None) => Ok(Probe::Http(http)),
            (None, None, Some(exec)) => Ok(Probe::Exec(exec)),
            _ => Err("readiness: set exactly one of `tcp`, `http` or `exec`, e.g. readiness = { tcp = { port = 8080 } }".to_string()),
        }
    }
}

impl From<Probe> for RawProbe {
    fn from(probe: Probe) -> Self {
        let mut raw = RawProbe {
            tcp: None,
            http: None,
            exec: None,
        };
        match probe {
            Probe::Tcp(tcp) => raw.tcp = Some(tcp),
            Probe::Http(http) => raw.http = Some(http),
            Probe::Exec(exec) => raw.exec = Some(exec),
        }
        raw
    }
}

/// A kind of node that can be provisioned (read by the autoscaler and the simulator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePoolSpec {
    /// Unique pool name (a DNS label).
    pub name: String,
    /// CPU of one node.
    pub cpu: CpuMillis,
    /// Memory of one node.
    pub memory: MemoryMib,
    /// What one node costs per hour, in USD.
    pub price_per_hour: f64,
    /// Seconds from asking for a node to its agent registering.
    #[serde(default)]
    pub boot_delay_s: u64,
    /// Fewest nodes the pool keeps.
    #[serde(default)]
    pub min: u32,
    /// Most nodes the pool may hold.
    pub max: u32,
}

impl NodePoolSpec {
    /// Checks every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        if self.cpu.0 == 0 {
            return Err(SpecError::invalid(
                "cpu",
                "must be more than 0, e.g. cpu = \"4\"",
            ));
        }
        if self.memory.0 == 0 {
            return Err(SpecError::invalid(
                "memory",
                "must be more than 0, e.g. memory = \"16Gi\"",
            ));
        }
        if !self.price_per_hour.is_finite() || self.price_per_hour < 0.0 {
            return Err(SpecError::invalid(
                "price_per_hour",
                format!(
                    "must be a non-negative number of USD, got {}",
                    self.price_per_hour
                ),
            ));
        }
        if self.max == 0 || self.max > MAX_POOL_NODES {
            return Err(SpecError::invalid(
                "max",
                format!("must be between 1 and {MAX_POOL_NODES}, got {}", self.max),
            ));
        }
        if self.min > self.max {
            return Err(SpecError::invalid(
                "min",
                format!("must be at most max ({}), got {}", self.max, self.min),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
name = "sessions"
kind = "replicated"
partitions = 8
replicas = 3
app = { builtin = "kv" }
expose = { resp = "127.0.0.1:6380" }
resources = { cpu = "250m", memory = "128Mi" }
placement = { spread = "zone" }
qos = { p99_latency_ms = 5 }
"#;

    fn invalid_field(result: Result<(), SpecError>) -> String {
        match result {
            Err(SpecError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn kv_budget_comes_from_maxmemory_only_and_only_kv_takes_it() {
        let budget = |extra: &str| {
            let spec = parse_spec(&format!("{DESIGN_EXAMPLE}{extra}"), SpecFormat::Auto).unwrap();
            spec.validate().unwrap();
            spec.kv_maxmemory_bytes()
        };
        assert_eq!(budget(""), 0, "no budget unless asked for");
        assert_eq!(budget("maxmemory = \"16Mi\"\n"), 16 * 1024 * 1024);
        assert_eq!(budget("maxmemory = \"0\"\n"), 0, "0: no budget");
        let process = "name = \"r\"\nkind = \"replicated\"\nmaxmemory = \"1Mi\"\n\
                       app = { process = { command = [\"app\"] } }\n";
        let spec = parse_spec(process, SpecFormat::Auto).unwrap();
        assert_eq!(invalid_field(spec.validate()), "maxmemory");
        let stateless = "name = \"w\"\nkind = \"stateless\"\nmaxmemory = \"1Mi\"\n\
                         app = { process = { command = [\"app\"] } }\n";
        let spec = parse_spec(stateless, SpecFormat::Auto).unwrap();
        assert_eq!(invalid_field(spec.validate()), "maxmemory");
    }

    #[test]
    fn replicated_services_may_run_container_apps() {
        let text = "name = \"rooms\"\nkind = \"replicated\"\n\
                    app = { container = { image = \"oci:img:1\", command = [\"/app\"] } }\n";
        let spec = parse_spec(text, SpecFormat::Auto).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.kv_maxmemory_bytes(), 0);
    }

    #[test]
    fn accepts_the_design_example() {
        let spec = parse_spec(DESIGN_EXAMPLE, SpecFormat::Auto).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.name, "sessions");
        assert_eq!(spec.kind, ServiceKind::Replicated);
        assert_eq!(spec.partitions, 8);
        assert_eq!(spec.replicas, 3);
        assert!(spec.app.is_builtin_kv());
        assert_eq!(
            spec.expose.resp_addr(),
            Some("127.0.0.1:6380".parse().unwrap())
        );
        assert_eq!(spec.resources.cpu_millis(), 250);
        assert_eq!(spec.resources.memory_mib(), 128);
        assert_eq!(spec.placement.spread, SpreadOver::Zone);
        assert_eq!(spec.qos.unwrap().p99_latency_ms, Some(5));
    }

    #[test]
    fn durability_defaults_to_memory_and_validates_the_periodic_interval() {
        let spec = parse_spec(DESIGN_EXAMPLE, SpecFormat::Auto).unwrap();
        assert_eq!(spec.durability, Durability::Memory);
        assert_eq!(spec.fsync_interval_ms(), 0);
        let with = |extra: &str| {
            let text = format!("{DESIGN_EXAMPLE}\n{extra}\n");
            parse_spec(&text, SpecFormat::Toml).and_then(|s| s.validate().map(|()| s))
        };
        let disk = with("durability = \"disk\"").unwrap();
        assert_eq!(disk.durability, Durability::Disk);
        let periodic = with("durability = \"periodic\"").unwrap();
        assert_eq!(periodic.fsync_interval_ms(), DEFAULT_FSYNC_INTERVAL_MS);
        let tuned = with("durability = \"periodic\"\nfsync_interval_ms = 200").unwrap();
        assert_eq!(tuned.fsync_interval_ms(), 200);
        let err = with("durability = \"periodic\"\nfsync_interval_ms = 1").unwrap_err();
        assert!(err.to_string().starts_with("fsync_interval_ms:"), "{err}");
        let err = with("durability = \"disk\"\nfsync_interval_ms = 100").unwrap_err();
        assert!(
            err.to_string().contains("durability = \"periodic\""),
            "{err}"
        );
        let err = with("durability = \"always\"").unwrap_err();
        assert!(err.to_string().contains("durability"), "{err}");
        // JSON round trip keeps the mode; memory is left out.
        let json = serde_json::to_string(&disk).unwrap();
        assert!(json.contains("\"durability\":\"disk\""), "{json}");
        assert!(!serde_json::to_string(&spec).unwrap().contains("durability"));
    }

    #[test]
    fn yaml_and_json_read_the_same_spec() {
        let yaml = r#"
name: sessions
kind: replicated
partitions: 8
replicas: 3
app: { builtin: kv }
expose: { resp: "127.0.0.1:6380" }
resources: { cpu: 250m, memory: 128Mi }
placement: { spread: zone }
qos: { p99_latency_ms: 5 }
"#;
        let toml_spec = parse_spec(DESIGN_EXAMPLE, SpecFormat::Toml).unwrap();
        let yaml_spec = parse_spec(yaml, SpecFormat::Auto).unwrap();
        assert_eq!(toml_spec, yaml_spec);
        let json = serde_json::to_string(&toml_spec).unwrap();
        assert_eq!(parse_spec(&json, SpecFormat::Auto).unwrap(), toml_spec);
    }

    #[test]
    fn reads_process_apps_and_probes_in_every_format() {
        let toml_text = r#"
name = "web"
kind = "stateless"
instances = 3
port = 8080
app = { process = { command = ["python3", "-m", "http.server", "8080"], env = { A = "1" }, working_dir = "/tmp" } }
readiness = { http = { path = "/" } }
expose = { http = "127.0.0.1:8088" }
"#;
        let spec = parse_spec(toml_text, SpecFormat::Auto).unwrap();
        spec.validate().unwrap();
        let AppSpec::Process(process) = &spec.app else {
            panic!("expected a process app")
        };
        assert_eq!(process.command[0], "python3");
        assert_eq!(process.env["A"], "1");
        assert!(matches!(spec.readiness, Some(Probe::Http(_))));
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(parse_spec(&yaml, SpecFormat::Yaml).unwrap(), spec);
    }

    #[test]
    fn rejects_unknown_fields_and_wrong_types_naming_them() {
        let unknown = DESIGN_EXAMPLE.replace("replicas = 3", "replicas = 3\nreplica = 3");
        let err = parse_spec(&unknown, SpecFormat::Toml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("replica"), "{err}");
        let wrong_type = DESIGN_EXAMPLE.replace("partitions = 8", "partitions = \"eight\"");
        let err = parse_spec(&wrong_type, SpecFormat::Toml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitions"), "{err}");
        let both_apps = DESIGN_EXAMPLE.replace(
            "app = { builtin = \"kv\" }",
            "app = { builtin = \"kv\", process = { command = [\"x\"] } }",
        );
        let err = parse_spec(&both_apps, SpecFormat::Toml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one"), "{err}");
        let yaml_unknown = "name: a\napp: { builtin: kv }\nbogus: 1\n";
        let err = parse_spec(yaml_unknown, SpecFormat::Yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn validation_names_the_field_and_the_fix() {
        let base = parse_spec(DESIGN_EXAMPLE, SpecFormat::Toml).unwrap();
        let mut spec = base.clone();
        spec.replicas = 0;
        assert_eq!(
            spec.validate().unwrap_err().to_string(),
            "replicas: must be 1, 3, 5 or 7 (an odd number keeps a majority), got 0"
        );
        spec = base.clone();
        spec.partitions = 1_000_000_000;
        assert_eq!(
            spec.validate().unwrap_err().to_string(),
            "partitions: must be between 1 and 1024, got 1000000000"
        );
        spec = base.clone();
        spec.name = "Bad_Name".into();
        assert_eq!(invalid_field(spec.validate()), "name");
        spec = base.clone();
        spec.expose.resp = Some("nowhere".into());
        assert_eq!(invalid_field(spec.validate()), "expose.resp");
        spec = base.clone();
        spec.expose.tls = Some(RespTlsSpec {
            cert_file: "/etc/stator/kv.pem".into(),
            key_file: "".into(),
        });
        spec.expose.resp = Some("127.0.0.1:6380".into());
        assert_eq!(invalid_field(spec.validate()), "expose.tls.key_file");
        spec.expose.resp = None;
        spec.expose.cluster = None;
        assert_eq!(invalid_field(spec.validate()), "expose.tls");
        spec = base.clone();
        spec.expose.auth = Some(AuthSpec {
            password_file: " ".into(),
            users: Vec::new(),
        });
        assert_eq!(invalid_field(spec.validate()), "expose.auth.password_file");
        spec = base.clone();
        spec.expose.auth = Some(AuthSpec {
            password_file: "/etc/stator/kv.pass".into(),
            users: vec![AclUserSpec {
                name: "default".into(),
                password_file: "/etc/stator/app.pass".into(),
                commands: vec!["+@read".into()],
                keys: vec!["user:*".into()],
            }],
        });
        assert_eq!(invalid_field(spec.validate()), "expose.auth.users[0].name");
        if let Some(auth) = spec.expose.auth.as_mut() {
            auth.users[0].name = "app".into();
            auth.users[0].commands.push("get".into());
        }
        assert_eq!(
            invalid_field(spec.validate()),
            "expose.auth.users[0].commands"
        );
        spec = base.clone();
        assert!(
            spec.expose.cluster_enabled(),
            "cluster mode is on by default"
        );
        spec.expose.cluster = Some(false);
        spec.validate().unwrap();
        assert!(!spec.expose.cluster_enabled());
        spec.expose.resp = None;
        assert_eq!(invalid_field(spec.validate()), "expose.cluster");
        spec = base.clone();
        spec.election_timeout_ms = Some(1);
        assert_eq!(invalid_field(spec.validate()), "election_timeout_ms");
        spec = base.clone();
        spec.app = AppSpec::Builtin("nope".into());
        assert_eq!(invalid_field(spec.validate()), "app.builtin");
        spec = base.clone();
        spec.instances = 4;
        assert_eq!(invalid_field(spec.validate()), "instances");
        spec = base;
        spec.kind = ServiceKind::Job;
        spec.app = AppSpec::Process(ProcessSpec::default());
        spec.expose = ExposeSpec::default();
        assert_eq!(invalid_field(spec.validate()), "app.process.command");
    }

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse_cpu_millis("250m"), Ok(250));
        assert_eq!(parse_cpu_millis("1"), Ok(1000));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2.25"), Ok(2250));
        assert!(parse_cpu_millis("fast").is_err());
        assert!(parse_cpu_millis("-1").is_err());
        assert_eq!(parse_memory_mib("128Mi"), Ok(128));
        assert_eq!(parse_memory_mib("1Gi"), Ok(1024));
        assert_eq!(parse_memory_mib("1.5Gi"), Ok(1536));
        assert_eq!(parse_memory_mib("512M"), Ok(489));
        assert_eq!(parse_memory_mib("1Ki"), Ok(1));
        assert_eq!(parse_memory_mib("134217728"), Ok(128));
        assert!(parse_memory_mib("lots").is_err());
        let spec = parse_spec(
            "name = \"a\"\napp = { builtin = \"kv\" }\nresources = { cpu = 2, memory = 1073741824 }",
            SpecFormat::Toml,
        )
        .unwrap();
        assert_eq!(spec.resources.cpu_millis(), 2000);
        assert_eq!(spec.resources.memory_mib(), 1024);
        let err = parse_spec(
            "name = \"a\"\napp = { builtin = \"kv\" }\nresources = { cpu = \"fast\" }",
            SpecFormat::Toml,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CPU quantity"), "{err}");
    }

    #[test]
    fn jobs_take_their_own_fields_only() {
        let job = parse_spec(
            "name = \"batch\"\nkind = \"job\"\ncompletions = 2\nretries = 1\nbackoff_ms = 100\napp = { process = { command = [\"true\"] } }",
            SpecFormat::Auto,
        )
        .unwrap();
        job.validate().unwrap();
        let mut bad = job.clone();
        bad.retries = 1000;
        assert_eq!(invalid_field(bad.validate()), "retries");
        bad = job;
        bad.port = Some(80);
        assert_eq!(invalid_field(bad.validate()), "port");
    }

    #[test]
    fn node_pools_validate() {
        let pool = parse_node_pool(
            "name = \"small\"\ncpu = \"4\"\nmemory = \"16Gi\"\nprice_per_hour = 0.17\nboot_delay_s = 60\nmin = 0\nmax = 10",
            SpecFormat::Auto,
        )
        .unwrap();
        pool.validate().unwrap();
        assert_eq!(pool.cpu, CpuMillis(4000));
        assert_eq!(pool.memory, MemoryMib(16384));
        let mut bad = pool;
        bad.min = 11;
        assert_eq!(invalid_field(bad.validate()), "min");
    }

    #[test]
    fn detects_formats() {
        assert_eq!(SpecFormat::Auto.detect("{\"name\":1}"), SpecFormat::Json);
        assert_eq!(SpecFormat::Auto.detect("name = \"x\""), SpecFormat::Toml);
        assert_eq!(
            SpecFormat::Auto.detect("name: x\nenv: {a: \"b=c\"}"),
            SpecFormat::Yaml
        );
        assert_eq!(SpecFormat::from_path("a/b.yml"), SpecFormat::Yaml);
    }
}
