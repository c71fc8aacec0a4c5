//! Mutual TLS on the replica transport: a group replicates over it, and peers without a
//! certificate from the cluster's CA (another CA's, or plain TCP) are refused before
//! anything they send reaches a replica. Certificates are made here with rcgen.

use openraft::raft::VoteRequest;
use openraft::Vote;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use stator_replication::testing::{
    decode_reply, encode_op, InProcessCluster, RegisterFactory, RegisterOp, TEST_SECRET, WAIT,
};
use stator_replication::tls::TransportTls;
use stator_replication::transport::{Request, Response, Transport, TransportConfig};
use stator_replication::{
    ClientReply, ClientRequest, GroupId, GroupOptions, ReplicaClient, RequestKind, TlsConfig,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const GROUP: GroupId = GroupId(7 << 16);
/// Deadline of one attempt by a peer that should be refused: refusal is immediate, so
/// this only bounds a hang.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);
/// The term of the rogue's vote request: no replica reaches it by its own elections, so
/// a replica at or past it would have taken the rogue's vote.
const ROGUE_TERM: u64 = 1_000_000;

/// A CA and a directory to write PEM files into.
struct TestCa {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let dir = std::env::temp_dir().join(format!(
            "stator-tls-{}-{name}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa { dir, cert, key }
    }

    /// A node certificate for loopback signed by this CA, written next to the CA file.
    fn node(&self, name: &str) -> TlsConfig {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let config = TlsConfig {
            cert_pem_path: self.dir.join(format!("{name}.pem")),
            key_pem_path: self.dir.join(format!("{name}-key.pem")),
            ca_pem_path: self.dir.join("ca.pem"),
        };
        std::fs::write(&config.cert_pem_path, cert.pem()).unwrap();
        std::fs::write(&config.key_pem_path, key.serialize_pem()).unwrap();
        config
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_cluster(ca: &TestCa) -> InProcessCluster {
    let cluster =
        InProcessCluster::start_with_tls(3, Arc::new(RegisterFactory), Some(ca.node("host"))).await;
    cluster
        .create_group(GROUP, &[1, 2, 3], GroupOptions::default())
        .await;
    cluster.leader(GROUP).await;
    cluster
}

async fn write(client: &ReplicaClient, cluster: &InProcessCluster, key: &str, value: &str) {
    let addrs: Vec<String> = cluster.addrs.values().cloned().collect();
    let mut leader = None;
    client
        .execute(
            GROUP,
            &addrs,
            &mut leader,
            RequestKind::Write,
            encode_op(&RegisterOp::Set(key.into(), value.into())),
            WAIT,
        )
        .await
        .expect("write over mutual TLS");
}

/// The register values every replica agrees on.
async fn agreed_state(cluster: &InProcessCluster) -> std::collections::BTreeMap<String, String> {
    postcard::from_bytes(&cluster.converged_state(GROUP).await).expect("register snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_over_mutual_tls() {
    let ca = TestCa::new("cluster");
    let mut cluster = tls_cluster(&ca).await;
    let client = ReplicaClient::with_tls(TEST_SECRET, &ca.node("client")).unwrap();
    for i in 0..20 {
        write(&client, &cluster, &format!("k{i}"), &format!("v{i}")).await;
    }
    let state = agreed_state(&cluster).await;
    assert_eq!(state.len(), 20);
    assert_eq!(state["k7"], "v7");

    // Failover runs over TLS too: the survivors elect a leader and keep replicating.
    let old = cluster.leader(GROUP).await;
    cluster.kill(old).await;
    let new = cluster.leader(GROUP).await;
    assert_ne!(new, old);
    write(&client, &cluster, "after", "failover").await;
    let state = agreed_state(&cluster).await;
    assert_eq!(state["after"], "failover");
    let mut leader = None;
    let addrs: Vec<String> = cluster.addrs.values().cloned().collect();
    let read = client
        .execute(
            GROUP,
            &addrs,
            &mut leader,
            RequestKind::Read,
            encode_op(&RegisterOp::Get("k3".into())),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(decode_reply(&read).as_deref(), Some("v3"));
}

/// A transport speaking for node 9 with the right cluster secret, and `tls` (or none).
fn rogue(tls: Option<&TlsConfig>) -> Arc<Transport> {
    Transport::new(TransportConfig {
        node_id: 9,
        listen_addr: "127.0.0.1:1".into(),
        cluster_secret: TEST_SECRET.into(),
        filter: None,
        tls: tls.map(|t| TransportTls::load(t).unwrap()),
    })
}

/// Sends what would disrupt or change the group if it got through: a vote request with a
/// far higher term, an order to start an election, and a write. Each must be refused.
async fn assert_refused(peer: &Transport, cluster: &InProcessCluster) {
    let write = ClientRequest {
        client_id: 99,
        seq: 1,
        kind: RequestKind::Write,
        payload: encode_op(&RegisterOp::Set("rogue".into(), "written".into())),
    };
    for addr in cluster.addrs.values() {
        let requests = [
            Request::Vote(GROUP, VoteRequest::new(Vote::new(ROGUE_TERM, 9), None)),
            Request::Elect(GROUP),
            Request::Client(GROUP, write.clone()),
        ];
        for request in requests {
            let err = peer
                .call(addr, request, REFUSED_WITHIN)
                .await
                .expect_err("a peer without the cluster CA's certificate must be refused");
            eprintln!("refused as expected: {err}");
            assert!(
                matches!(
                    err,
                    stator_replication::transport::TransportError::Unreachable { .. }
                ),
                "refused at connect, not timed out: {err}"
            );
        }
    }
}

/// The rogue's vote request never reached a replica. (Its order to elect cannot be told
/// apart from an election a loaded machine starts by itself, so terms may still move.)
fn assert_rogue_vote_not_seen(cluster: &InProcessCluster) {
    for host in cluster.hosts.values() {
        let term = host.status(GROUP).unwrap().term;
        assert!(term < ROGUE_TERM, "a replica took the rogue's term: {term}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_cas_certificate_is_refused_and_changes_nothing() {
    let ca = TestCa::new("cluster");
    let cluster = tls_cluster(&ca).await;
    let client = ReplicaClient::with_tls(TEST_SECRET, &ca.node("client")).unwrap();
    write(&client, &cluster, "k", "before").await;
    let leader = cluster.leader(GROUP).await;

    // The same kind of peer with a certificate from the cluster's CA gets answers, so
    // what follows fails because of the certificate alone.
    let read = ClientRequest {
        client_id: 0,
        seq: 0,
        kind: RequestKind::Read,
        payload: encode_op(&RegisterOp::Get("k".into())),
    };
    let reply = rogue(Some(&ca.node("friend")))
        .call(
            &cluster.addrs[&leader],
            Request::Client(GROUP, read),
            REFUSED_WITHIN,
        )
        .await
        .expect("a peer with the cluster CA's certificate is answered");
    assert!(
        matches!(reply, Response::Client(ClientReply::Ok(_))),
        "{reply:?}"
    );

    let other_ca = TestCa::new("other");
    let mut impostor = other_ca.node("impostor");
    // The impostor trusts the cluster's CA as well as its own, so only the hosts' check
    // of its client certificate can stop it.
    let both_cas = other_ca.dir.join("both-cas.pem");
    std::fs::write(
        &both_cas,
        format!("{}{}", ca.cert.pem(), other_ca.cert.pem()),
    )
    .unwrap();
    impostor.ca_pem_path = both_cas;
    assert_refused(&rogue(Some(&impostor)), &cluster).await;
    let impostor_client = ReplicaClient::with_tls(TEST_SECRET, &impostor).unwrap();
    let addrs: Vec<String> = cluster.addrs.values().cloned().collect();
    let err = impostor_client
        .execute(
            GROUP,
            &addrs,
            &mut None,
            RequestKind::Write,
            encode_op(&RegisterOp::Set("k".into(), "impostor".into())),
            Duration::from_secs(2),
        )
        .await
        .expect_err("an impostor client is refused");
    assert!(err.to_string().contains("no answer"), "{err}");

    // Nothing it sent reached a replica: no rogue write, the value intact, no election.
    write(&client, &cluster, "k2", "after").await;
    let state = agreed_state(&cluster).await;
    assert_eq!(state.get("rogue"), None);
    assert_eq!(state["k"], "before");
    assert_eq!(state["k2"], "after");
    assert_rogue_vote_not_seen(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_peers_refuse_each_other() {
    let ca = TestCa::new("cluster");
    let cluster = tls_cluster(&ca).await;

    // A plaintext peer with the right secret cannot talk to TLS hosts.
    assert_refused(&rogue(None), &cluster).await;
    let plain_client = ReplicaClient::new(TEST_SECRET);
    let addrs: Vec<String> = cluster.addrs.values().cloned().collect();
    assert!(plain_client
        .execute(
            GROUP,
            &addrs,
            &mut None,
            RequestKind::Write,
            encode_op(&RegisterOp::Set("rogue".into(), "plain".into())),
            Duration::from_secs(2),
        )
        .await
        .is_err());

    // Nor can a TLS peer talk to a plaintext host: it expects a TLS server.
    let plain = InProcessCluster::start(1, Arc::new(RegisterFactory)).await;
    let tls_peer = rogue(Some(&ca.node("dialer")));
    let err = tls_peer
        .call(&plain.addrs[&1], Request::Elect(GROUP), REFUSED_WITHIN)
        .await
        .expect_err("a TLS dialer refuses a plaintext listener");
    assert!(
        matches!(
            err,
            stator_replication::transport::TransportError::Unreachable { .. }
        ),
        "{err}"
    );

    let client = ReplicaClient::with_tls(TEST_SECRET, &ca.node("client")).unwrap();
    write(&client, &cluster, "k", "ok").await;
    let state = agreed_state(&cluster).await;
    assert_eq!(state.get("rogue"), None);
    assert_eq!(state["k"], "ok");
    assert_rogue_vote_not_seen(&cluster);
}
