//! Shared by the gateway's integration tests: a 3-host kv cluster, a partition map the
//! test drives, a gateway on loopback, and a RESP client (the harness's `Connection`).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use stator_api::ids::GroupId;
use stator_api::slot::partition_ranges;
use stator_api::spec::ServiceKind;
use stator_gateway::{GatewayConfig, GatewayHandle, PartitionMap, PartitionRoute, ServiceRoutes};
use stator_harness::resp::Connection;
use stator_kv::Value;
use stator_replication::testing::{InProcessCluster, TEST_SECRET};
use stator_replication::GroupOptions;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Service id of the test kv service.
pub const SERVICE_ID: u64 = 1;
/// Its name.
pub const SERVICE: &str = "sessions";
/// Bound on anything a test waits for; tests assert behaviour, never speed.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Setup {
    pub cluster: InProcessCluster,
    pub gateway: GatewayHandle,
    pub map_tx: watch::Sender<Arc<PartitionMap>>,
    pub resp_addr: std::net::SocketAddr,
    pub partitions: u32,
}

pub fn group(partition: u32) -> GroupId {
    GroupId::new(SERVICE_ID, partition)
}

/// A map of the kv service over `partitions` groups on every host of `cluster`, with no
/// leader known, so the gateway discovers leaders itself.
pub fn kv_map(
    cluster: &InProcessCluster,
    partitions: u32,
    extra: Vec<ServiceRoutes>,
) -> PartitionMap {
    let mut members: Vec<String> = cluster.addrs.values().cloned().collect();
    members.sort();
    let routes = ServiceRoutes {
        name: SERVICE.into(),
        kind: ServiceKind::Replicated,
        builtin_kv: true,
        resp_listen: Some("127.0.0.1:0".into()),
        auth: None,
        protected_mode: true,
        tls: None,
        cluster: false,
        partitions: partition_ranges(partitions)
            .into_iter()
            .enumerate()
            .map(|(index, slots)| PartitionRoute {
                partition: index as u32,
                group: group(index as u32),
                slots,
                leader_addr: None,
                member_addrs: members.clone(),
                leader_id: None,
                resp_nodes: Vec::new(),
            })
            .collect(),
        instances: Vec::new(),
    };
    let mut services = BTreeMap::new();
    services.insert(SERVICE.to_string(), Arc::new(routes));
    for service in extra {
        services.insert(service.name.clone(), Arc::new(service));
    }
    PartitionMap { services }
}

/// 3 hosts, `partitions` kv groups on all of them, a gateway with a RESP listener.
pub async fn setup(partitions: u32, http: bool) -> Setup {
    let cluster = InProcessCluster::start(3, Arc::new(stator_kv::KvFactory)).await;
    for partition in 0..partitions {
        cluster
            .create_group(group(partition), &[1, 2, 3], GroupOptions::default())
            .await;
    }
    for partition in 0..partitions {
        cluster.leader(group(partition)).await;
    }
    let (map_tx, map_rx) = watch::channel(Arc::new(kv_map(&cluster, partitions, Vec::new())));
    let mut config = GatewayConfig::new(Vec::new(), "unused", TEST_SECRET);
    config.request_timeout_ms = 15_000;
    if http {
        config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    let gateway = stator_gateway::start_with_map(config, map_rx)
        .await
        .expect("gateway starts");
    let resp_addr = gateway
        .wait_for_resp(SERVICE, WAIT)
        .await
        .expect("RESP listener comes up");
    Setup {
        cluster,
        gateway,
        map_tx,
        resp_addr,
        partitions,
    }
}

/// The harness's RESP [`Connection`], with the tests' manners: every failure panics,
/// every read is bounded by [`WAIT`].
pub struct Resp {
    connection: Connection,
}

impl Resp {
    pub async fn connect(addr: std::net::SocketAddr) -> Resp {
        Resp {
            connection: Connection::connect_timeout(addr, WAIT)
                .await
                .expect("connect to the gateway"),
        }
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.connection.send_raw(bytes).await.expect("write");
    }

    /// Sends one command without waiting.
    pub async fn send(&mut self, argv: &[&str]) {
        self.connection.send(argv).await.expect("write");
    }

    /// Reads one reply; `None` when the server closed the connection (or reset it).
    pub async fn read(&mut self) -> Option<Value> {
        let reply = tokio::time::timeout(WAIT, self.connection.read_reply())
            .await
            .expect("a reply within the test bound");
        match reply {
            Ok(value) => value,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                panic!("well-formed reply: {e}")
            }
            Err(_) => None,
        }
    }

    /// Sends one command and reads its reply.
    pub async fn call(&mut self, argv: &[&str]) -> Value {
        self.send(argv).await;
        self.read().await.expect("connection open")
    }
}

pub fn bulk(s: &str) -> Value {
    Value::bulk(s)
}

pub fn error_text(value: &Value) -> String {
    match value {
        Value::Error(text) => text.clone(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}
