//! Agent settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Everything an agent needs to join a cluster.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server base URLs, tried in order (`http://127.0.0.1:7070`).
    pub server_urls: Vec<String>,
    /// The cluster's join token.
    pub join_token: String,
    /// Node name, unique in the cluster.
    pub name: String,
    /// Failure domain.
    pub zone: String,
    /// Node pool.
    pub pool: String,
    /// CPU capacity offered, millicores.
    pub cpu_millis: u64,
    /// Memory capacity offered, MiB.
    pub memory_mib: u64,
    /// Price per hour of this machine, for cost-aware placement.
    pub price_per_hour: f64,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Where the replica transport listens; loopback unless configured.
    pub listen: String,
    /// Where process logs, sockets and run files go.
    pub data_dir: PathBuf,
    /// Mutual TLS on the replica transport (`None`: the cluster secret alone).
    pub tls: Option<stator_replication::TlsConfig>,
}

impl AgentConfig {
    /// A config with the defaults: loopback, zone `default`, 4 cores, 8 GiB.
    pub fn new(
        server_urls: Vec<String>,
        join_token: String,
        name: String,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            server_urls,
            join_token,
            name,
            zone: "default".into(),
            pool: "default".into(),
            cpu_millis: 4_000,
            memory_mib: 8_192,
            price_per_hour: 0.0,
            labels: BTreeMap::new(),
            listen: "127.0.0.1:0".into(),
            data_dir,
            tls: None,
        }
    }
}
