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
    /// IP the cluster-mode RESP listeners bind; `None`: the host of `listen`.
    pub resp_host: Option<String>,
    /// Host advertised for them (in `MOVED`, `CLUSTER SLOTS`, `/v1/partitions`); `None`:
    /// the bind host, or 127.0.0.1 when that is a wildcard.
    pub advertise_host: Option<String>,
    /// Ports the RESP listeners may use (one per kv service), inclusive; `None`: any.
    pub resp_ports: Option<(u16, u16)>,
    /// Bytes per second this node's leaders feed new replicas (learners) catching up, all
    /// partitions together; 0: unlimited (see `stator_replication::pacing`).
    pub learner_catchup_bytes_per_sec: u64,
}

impl AgentConfig {
    /// Where the cluster-mode RESP listeners bind and what they advertise.
    pub fn resp_config(&self) -> crate::resp::RespConfig {
        let listen_host = self
            .listen
            .rsplit_once(':')
            .map_or(self.listen.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let bind_host = self.resp_host.clone().unwrap_or(listen_host);
        let advertise_host = self.advertise_host.clone().unwrap_or_else(|| {
            let wildcard = bind_host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified());
            if wildcard {
                "127.0.0.1".into()
            } else {
                bind_host.clone()
            }
        });
        crate::resp::RespConfig {
            bind_host,
            advertise_host,
            port_range: self.resp_ports,
        }
    }

    /// Where the pub/sub bus listens: the replica transport's host (loopback unless
    /// configured), any free port; advertised with `advertise_host` when set.
    pub fn bus_config(
        &self,
        node_id: stator_api::ids::NodeId,
        cluster_secret: &str,
    ) -> stator_gateway::bus::BusConfig {
        let host = self
            .listen
            .rsplit_once(':')
            .map_or(self.listen.as_str(), |(host, _)| host);
        stator_gateway::bus::BusConfig {
            listen: format!("{host}:0"),
            advertise_host: self.advertise_host.clone(),
            kind: stator_api::pubsub::BusPeerKind::Agent,
            node_id: Some(node_id),
            cluster_secret: cluster_secret.to_string(),
        }
    }

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
            resp_host: None,
            advertise_host: None,
            resp_ports: None,
            learner_catchup_bytes_per_sec:
                stator_replication::pacing::DEFAULT_LEARNER_CATCHUP_BYTES_PER_SEC,
        }
    }
}
