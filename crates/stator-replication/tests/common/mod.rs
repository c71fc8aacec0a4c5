//! A register workload that records a history, shared by the cluster tests.

#![allow(dead_code)] // reason: each test binary uses a different subset

use rand::Rng;
use stator_check::{check_history, lost_acked_writes, Recorder, Verdict};
use stator_replication::testing::{decode_reply, encode_op, RegisterOp, TEST_SECRET};
use stator_replication::{ClientError, GroupId, ReplicaClient, RequestKind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Keys the clients fight over: few, so operations conflict.
pub const KEYS: usize = 4;
/// Deadline of one operation before it is recorded as unknown.
pub const OP_DEADLINE: Duration = Duration::from_secs(2);

/// Addresses clients may try; tests update it as members change.
pub type Members = Arc<RwLock<Vec<String>>>;

/// Runs `clients` concurrent clients doing random get/set until `stop` is set.
pub fn spawn_workload(
    group: GroupId,
    members: Members,
    clients: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (1..=clients)
        .map(|client| {
            let (members, recorder, stop) = (members.clone(), recorder.clone(), stop.clone());
            tokio::spawn(async move {
                let rpc = ReplicaClient::new(TEST_SECRET);
                let mut leader = None;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}", rand::thread_rng().gen_range(0..KEYS));
                    let addrs = members.read().unwrap().clone();
                    n += 1;
                    if rand::thread_rng().gen_bool(0.5) {
                        let value = format!("c{client}-{n}");
                        let pending = recorder.set(client, key.clone(), value.clone());
                        let op = encode_op(&RegisterOp::Set(key, value));
                        match rpc
                            .execute(
                                group,
                                &addrs,
                                &mut leader,
                                RequestKind::Write,
                                op,
                                OP_DEADLINE,
                            )
                            .await
                        {
                            Ok(_) => pending.ok(),
                            Err(ClientError::StaleSequence { .. }) => pending.fail(),
                            Err(ClientError::Timeout { .. }) => pending.unknown(),
                        }
                    } else {
                        let pending = recorder.get(client, key.clone());
                        let op = encode_op(&RegisterOp::Get(key));
                        match rpc
                            .execute(
                                group,
                                &addrs,
                                &mut leader,
                                RequestKind::Read,
                                op,
                                OP_DEADLINE,
                            )
                            .await
                        {
                            Ok(bytes) => pending.ok_read(decode_reply(&bytes)),
                            Err(_) => pending.fail(), // a read that got no answer changed nothing
                        }
                    }
                }
                n
            })
        })
        .collect()
}

/// Reads every key once, linearizably, after the run.
pub async fn final_values(group: GroupId, members: &Members) -> BTreeMap<String, Option<String>> {
    let rpc = ReplicaClient::new(TEST_SECRET);
    let mut leader = None;
    let mut out = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let addrs = members.read().unwrap().clone();
        let op = encode_op(&RegisterOp::Get(key.clone()));
        let bytes = rpc
            .execute(
                group,
                &addrs,
                &mut leader,
                RequestKind::Read,
                op,
                Duration::from_secs(20),
            )
            .await
            .expect("final read after healing");
        out.insert(key, decode_reply(&bytes));
    }
    out
}

/// Asserts the history is linearizable and no acknowledged write was lost; returns the
/// number of acknowledged operations.
pub async fn assert_history_ok(recorder: &Recorder, group: GroupId, members: &Members) -> usize {
    let finals = final_values(group, members).await;
    let history = recorder.entries();
    let report = check_history(&history).expect("well-formed history");
    let anomalies: Vec<_> = report
        .anomalies()
        .map(|(k, a)| format!("{k}: {}", a.explanation))
        .collect();
    assert_eq!(
        report.verdict,
        Verdict::Ok,
        "history not linearizable: {anomalies:?}"
    );
    let lost = lost_acked_writes(&history, &finals);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    history
        .iter()
        .filter(|e| e.status == stator_check::Status::Ok)
        .count()
}

/// Writes `key = value` in `group` through any of `members`; panics naming the key when
/// it is not acknowledged within `deadline`.
pub async fn set_register(
    client: &ReplicaClient,
    group: GroupId,
    members: &[String],
    key: &str,
    value: &str,
    deadline: Duration,
) {
    let mut leader = None;
    client
        .execute(
            group,
            members,
            &mut leader,
            RequestKind::Write,
            encode_op(&RegisterOp::Set(key.into(), value.into())),
            deadline,
        )
        .await
        .unwrap_or_else(|e| panic!("set {key}: {e}"));
}

/// Reads `key` in `group` (linearizably) through any of `members`; panics naming the key
/// when it gets no answer within `deadline`.
pub async fn get_register(
    client: &ReplicaClient,
    group: GroupId,
    members: &[String],
    key: &str,
    deadline: Duration,
) -> Option<String> {
    let mut leader = None;
    let reply = client
        .execute(
            group,
            members,
            &mut leader,
            RequestKind::Read,
            encode_op(&RegisterOp::Get(key.into())),
            deadline,
        )
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    decode_reply(&reply)
}
