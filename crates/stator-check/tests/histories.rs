//! Known-good and known-bad histories, and random histories from a real register.

use std::collections::BTreeMap;

use proptest::prelude::*;
use stator_check::{
    check_history, check_history_with, lost_acked_writes, read_jsonl, write_jsonl, HistoryEntry,
    KeyVerdict, Op, SearchLimits, Status, Verdict,
};

const KEY: &str = "k1";

fn entry(
    client: u64,
    op: Op,
    value: Option<&str>,
    call_ns: u64,
    return_ns: Option<u64>,
    status: Status,
) -> HistoryEntry {
    HistoryEntry {
        client,
        op,
        key: KEY.to_string(),
        value: value.map(str::to_string),
        call_ns,
        return_ns,
        status,
    }
}

fn set_ok(client: u64, value: &str, call_ns: u64, return_ns: u64) -> HistoryEntry {
    entry(
        client,
        Op::Set,
        Some(value),
        call_ns,
        Some(return_ns),
        Status::Ok,
    )
}

fn set_fail(client: u64, value: &str, call_ns: u64, return_ns: u64) -> HistoryEntry {
    entry(
        client,
        Op::Set,
        Some(value),
        call_ns,
        Some(return_ns),
        Status::Fail,
    )
}

fn set_unknown(client: u64, value: &str, call_ns: u64) -> HistoryEntry {
    entry(client, Op::Set, Some(value), call_ns, None, Status::Unknown)
}

fn get_ok(client: u64, value: Option<&str>, call_ns: u64, return_ns: u64) -> HistoryEntry {
    entry(client, Op::Get, value, call_ns, Some(return_ns), Status::Ok)
}

fn verdict(history: &[HistoryEntry]) -> Verdict {
    check_history(history).expect("well-formed history").verdict
}

/// The anomaly of `KEY`, failing the test if there is none.
fn anomaly_ops(history: &[HistoryEntry]) -> Vec<HistoryEntry> {
    let report = check_history(history).unwrap();
    assert_eq!(report.verdict, Verdict::Anomaly, "{report:#?}");
    match &report.keys[KEY] {
        KeyVerdict::Anomaly(anomaly) => {
            assert!(!anomaly.explanation.is_empty());
            anomaly.ops.clone()
        }
        other => panic!("expected an anomaly on {KEY}, got {other:?}"),
    }
}

#[test]
fn sequential_history_is_ok() {
    let history = [
        get_ok(1, None, 0, 10),
        set_ok(1, "v1", 20, 30),
        get_ok(2, Some("v1"), 40, 50),
        set_ok(2, "v2", 60, 70),
        get_ok(1, Some("v2"), 80, 90),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn concurrent_overlapping_history_is_ok() {
    // v2 may take effect before v1 since both writes overlap; reads in between see v2,
    // reads after see v1.
    let history = [
        set_ok(1, "v1", 0, 100),
        set_ok(2, "v2", 5, 95),
        get_ok(3, None, 1, 4),
        get_ok(3, Some("v2"), 10, 20),
        get_ok(4, Some("v1"), 30, 40),
        get_ok(3, Some("v1"), 50, 60),
        get_ok(4, Some("v1"), 110, 120),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn operations_touching_at_the_same_instant_count_as_concurrent() {
    let history = [set_ok(1, "v1", 0, 10), get_ok(2, None, 10, 20)];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn stale_read_after_an_acknowledged_write_is_an_anomaly() {
    let history = [
        set_ok(1, "v1", 0, 10),
        set_ok(1, "v2", 20, 30),
        get_ok(2, Some("v1"), 40, 50),
    ];
    let ops = anomaly_ops(&history);
    assert_eq!(ops[0], history[2], "the stale read is named first");
    assert_eq!(ops[1], history[1], "then the write the register held");
}

#[test]
fn read_of_a_value_never_written_is_an_anomaly() {
    let history = [set_ok(1, "v1", 0, 10), get_ok(2, Some("ghost"), 20, 30)];
    assert_eq!(anomaly_ops(&history), [history[1].clone()]);
}

#[test]
fn lost_write_is_an_anomaly() {
    let history = [set_ok(1, "v1", 0, 10), get_ok(2, None, 20, 30)];
    let ops = anomaly_ops(&history);
    assert_eq!(ops[0], history[1]);
    let finals = BTreeMap::from([(KEY.to_string(), None)]);
    let lost = lost_acked_writes(&history, &finals);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].write, history[0]);
}

#[test]
fn new_then_old_read_inversion_is_an_anomaly() {
    // Once a read saw v2, a later read must not see v1 again.
    let history = [
        set_ok(1, "v1", 0, 10),
        set_ok(1, "v2", 20, 100),
        get_ok(2, Some("v2"), 30, 40),
        get_ok(3, Some("v1"), 50, 60),
    ];
    anomaly_ops(&history);
}

#[test]
fn unknown_write_that_appears_later_is_ok() {
    let history = [
        set_unknown(1, "v1", 0),
        get_ok(2, None, 100, 110),
        get_ok(2, Some("v1"), 200, 210),
        get_ok(3, Some("v1"), 300, 310),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn unknown_write_that_never_appears_is_ok() {
    let history = [
        set_ok(1, "v1", 0, 10),
        set_unknown(1, "v2", 20),
        get_ok(2, Some("v1"), 100, 110),
        get_ok(2, Some("v1"), 200, 210),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_call() {
    let history = [get_ok(2, Some("v1"), 0, 10), set_unknown(1, "v1", 20)];
    anomaly_ops(&history);
}

#[test]
fn failed_write_whose_value_appears_is_an_anomaly() {
    let history = [set_fail(1, "v1", 0, 10), get_ok(2, Some("v1"), 20, 30)];
    assert_eq!(anomaly_ops(&history), [history[1].clone()]);
}

#[test]
fn unanswered_reads_are_ignored() {
    let history = [
        set_ok(1, "v1", 0, 10),
        entry(2, Op::Get, None, 20, None, Status::Unknown),
        entry(2, Op::Get, Some("junk"), 30, Some(40), Status::Fail),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn keys_are_judged_independently() {
    let mut other = set_ok(1, "v1", 0, 10);
    other.key = "k2".to_string();
    let history = [other, set_ok(1, "v1", 0, 10), get_ok(2, None, 20, 30)];
    let report = check_history(&history).unwrap();
    assert_eq!(report.verdict, Verdict::Anomaly);
    assert_eq!(report.keys["k2"], KeyVerdict::Ok);
    assert_eq!(report.anomalies().count(), 1);
}

#[test]
fn exhausted_search_is_undetermined_never_ok() {
    let history = [
        set_ok(1, "v1", 0, 100),
        set_ok(2, "v2", 0, 100),
        get_ok(3, Some("v1"), 0, 100),
    ];
    let limits = SearchLimits {
        max_steps: 1,
        ..SearchLimits::default()
    };
    let report = check_history_with(&history, limits).unwrap();
    assert_eq!(report.verdict, Verdict::Undetermined);
    assert!(matches!(report.keys[KEY], KeyVerdict::Undetermined { .. }));
}

#[test]
fn malformed_entries_are_rejected() {
    let mut broken = set_ok(1, "v1", 10, 5);
    assert!(check_history(std::slice::from_ref(&broken)).is_err());
    broken = set_unknown(1, "v1", 0);
    broken.return_ns = Some(3);
    assert!(check_history(&[broken]).is_err());
}

#[test]
fn lost_writes_ignore_writes_that_may_have_been_overwritten() {
    let history = [
        set_ok(1, "v1", 0, 10),
        // Concurrent with v3: could be ordered after it.
        set_ok(2, "v2", 20, 50),
        set_ok(3, "v3", 30, 40),
        // Called later, status unknown: may have overwritten everything.
        set_unknown(4, "v4", 60),
    ];
    let finals = BTreeMap::from([(KEY.to_string(), Some("v3".to_string()))]);
    assert!(lost_acked_writes(&history, &finals).is_empty());
    let finals = BTreeMap::from([(KEY.to_string(), Some("v0".to_string()))]);
    assert!(lost_acked_writes(&history, &finals).is_empty());
    // Without the unknown write, v2 and v3 could each be last, so neither is lost.
    assert!(lost_acked_writes(&history[..3], &finals).is_empty());
    // A lone last write that the final read does not show is lost.
    let lost = lost_acked_writes(&history[..1], &finals);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].final_value.as_deref(), Some("v0"));
    // Keys without a final read are not judged.
    assert!(lost_acked_writes(&history[..1], &BTreeMap::new()).is_empty());
}

/// One generated operation, before timing and results are worked out.
#[derive(Debug, Clone)]
struct PlannedOp {
    is_set: bool,
    key: usize,
    gap_ns: u64,
    duration_ns: u64,
    /// Where in [call, return] it takes effect, in percent.
    effect_percent: u64,
    /// 0..=7: ok; 8: unknown and applied; 9: unknown and not applied; 10: fail.
    fate: u8,
}

fn planned_op() -> impl Strategy<Value = PlannedOp> {
    (
        any::<bool>(),
        0..2usize,
        0..50u64,
        1..100u64,
        0..=100u64,
        0..=10u8,
    )
        .prop_map(
            |(is_set, key, gap_ns, duration_ns, effect_percent, fate)| PlannedOp {
                is_set,
                key,
                gap_ns,
                duration_ns,
                effect_percent,
                fate,
            },
        )
}

/// Runs the planned ops of each client (sequential per client, concurrent across them)
/// against a real register map, applying each at a point inside its call..return window.
fn simulate(clients: &[Vec<PlannedOp>]) -> Vec<HistoryEntry> {
    struct Timed {
        entry: HistoryEntry,
        effect_ns: u64,
        applied: bool,
    }
    let mut timed = Vec::new();
    let mut serial = 0;
    for (client, plan) in clients.iter().enumerate() {
        let mut now_ns = 0;
        for op in plan {
            let call_ns = now_ns + op.gap_ns;
            let return_ns = call_ns + op.duration_ns;
            now_ns = return_ns;
            serial += 1;
            let (status, applied) = match op.fate {
                0..=7 => (Status::Ok, true),
                8 => (Status::Unknown, true),
                9 => (Status::Unknown, false),
                _ => (Status::Fail, false),
            };
            timed.push(Timed {
                entry: HistoryEntry {
                    client: client as u64,
                    op: if op.is_set { Op::Set } else { Op::Get },
                    key: format!("k{}", op.key),
                    value: op.is_set.then(|| format!("v{serial}")),
                    call_ns,
                    return_ns: (status != Status::Unknown).then_some(return_ns),
                    status,
                },
                effect_ns: call_ns + op.duration_ns * op.effect_percent / 100,
                applied,
            });
        }
    }
    // Apply in effect order to a real register: this order is a linearization.
    let mut order: Vec<usize> = (0..timed.len()).collect();
    order.sort_by_key(|&index| (timed[index].effect_ns, index));
    let mut register: BTreeMap<String, String> = BTreeMap::new();
    for index in order {
        let op = &mut timed[index];
        if !op.applied {
            continue;
        }
        match op.entry.op {
            Op::Set => {
                register.insert(op.entry.key.clone(), op.entry.value.clone().unwrap());
            }
            Op::Get => op.entry.value = register.get(&op.entry.key).cloned(),
        }
    }
    timed.into_iter().map(|op| op.entry).collect()
}

fn clients() -> impl Strategy<Value = Vec<Vec<PlannedOp>>> {
    prop::collection::vec(prop::collection::vec(planned_op(), 1..7), 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn histories_from_a_real_register_are_linearizable(clients in clients()) {
        let history = simulate(&clients);
        let report = check_history(&history).unwrap();
        prop_assert_eq!(report.verdict, Verdict::Ok, "{:#?}", report);

        let mut text = Vec::new();
        write_jsonl(&mut text, &history).unwrap();
        prop_assert_eq!(read_jsonl(text.as_slice()).unwrap(), history);
    }

    #[test]
    fn a_read_of_a_never_written_value_is_caught(clients in clients(), pick in any::<prop::sample::Index>()) {
        let mut history = simulate(&clients);
        let reads: Vec<usize> = history
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.op == Op::Get && entry.status == Status::Ok)
            .map(|(index, _)| index)
            .collect();
        prop_assume!(!reads.is_empty());
        let mutated = reads[pick.index(reads.len())];
        history[mutated].value = Some("never-written".to_string());
        let report = check_history(&history).unwrap();
        prop_assert_eq!(report.verdict, Verdict::Anomaly, "{:#?}", report);
        let key = &history[mutated].key;
        prop_assert!(matches!(report.keys[key], KeyVerdict::Anomaly(_)));
    }
}

/// Brute force: is there an order of the operations that may have happened, respecting
/// real time, in which every read sees the latest write? Only for tiny histories.
fn brute_force_linearizable(history: &[HistoryEntry]) -> bool {
    let ops: Vec<&HistoryEntry> = history
        .iter()
        .filter(|e| e.status != Status::Fail && !(e.op == Op::Get && e.status != Status::Ok))
        .collect();
    fn precedes(a: &HistoryEntry, b: &HistoryEntry) -> bool {
        matches!(a.return_ns, Some(return_ns) if return_ns < b.call_ns)
    }
    fn search(ops: &[&HistoryEntry], placed: &mut Vec<bool>, state: Option<&str>) -> bool {
        // Done when every op with a return is placed (unknown writes may be left out).
        if ops
            .iter()
            .zip(placed.iter())
            .all(|(op, &done)| done || op.return_ns.is_none())
        {
            return true;
        }
        for index in 0..ops.len() {
            if placed[index] {
                continue;
            }
            let blocked =
                (0..ops.len()).any(|other| !placed[other] && precedes(ops[other], ops[index]));
            if blocked {
                continue;
            }
            let op = ops[index];
            let next = match op.op {
                Op::Set => op.value.as_deref(),
                Op::Get if op.value.as_deref() == state => state,
                Op::Get => continue,
            };
            placed[index] = true;
            let found = search(ops, placed, next);
            placed[index] = false;
            if found {
                return true;
            }
        }
        false
    }
    search(&ops, &mut vec![false; ops.len()], None)
}

fn tiny_random_history() -> impl Strategy<Value = Vec<HistoryEntry>> {
    let op = (any::<bool>(), 0..4usize, 0..20u64, 1..40u64, 0..=5u8);
    prop::collection::vec(prop::collection::vec(op, 1..4), 1..4).prop_map(|clients| {
        let mut history = Vec::new();
        for (client, plan) in clients.into_iter().enumerate() {
            let mut now_ns = 0;
            for (is_set, value, gap_ns, duration_ns, fate) in plan {
                let call_ns = now_ns + gap_ns;
                let return_ns = call_ns + duration_ns;
                now_ns = return_ns;
                let status = match fate {
                    0..=3 => Status::Ok,
                    4 => Status::Unknown,
                    _ => Status::Fail,
                };
                // Reads see a random value (value 0 = missing), so both verdicts occur.
                let value = (is_set || value > 0).then(|| format!("v{value}"));
                history.push(HistoryEntry {
                    client: client as u64,
                    op: if is_set { Op::Set } else { Op::Get },
                    key: KEY.to_string(),
                    value,
                    call_ns,
                    return_ns: (status != Status::Unknown).then_some(return_ns),
                    status,
                });
            }
        }
        history
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The search agrees with brute force on tiny random histories, good and bad alike.
    #[test]
    fn search_agrees_with_brute_force(history in tiny_random_history()) {
        let expected = if brute_force_linearizable(&history) { Verdict::Ok } else { Verdict::Anomaly };
        let report = check_history(&history).unwrap();
        prop_assert_eq!(report.verdict, expected, "{:#?}", history);
    }
}

/// A long run (8 clients, 3000 operations, heavy overlap) from a real register checks as
/// ok well inside the search bound: the bound is not hit by realistic histories.
#[test]
fn long_history_from_a_real_register_is_ok() {
    const CLIENTS: usize = 8;
    const OPS_PER_CLIENT: usize = 375;
    // A fixed xorshift sequence: deterministic, no extra dependency.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let clients: Vec<Vec<PlannedOp>> = (0..CLIENTS)
        .map(|_| {
            (0..OPS_PER_CLIENT)
                .map(|_| PlannedOp {
                    is_set: next(2) == 0,
                    key: 0,
                    gap_ns: next(20),
                    duration_ns: 1 + next(100),
                    effect_percent: next(101),
                    fate: next(11) as u8,
                })
                .collect()
        })
        .collect();
    let history = simulate(&clients);
    assert_eq!(verdict(&history), Verdict::Ok);
}

/// A soak-sized history on one key: `rounds` rounds in which 4 clients overlap, each
/// round two concurrent writes and two reads that overlap both, then a read of the last
/// write; `stale_last_read` makes the final read return a value overwritten long before.
fn long_history(rounds: u64, stale_last_read: bool) -> Vec<HistoryEntry> {
    let mut history = Vec::new();
    let mut last = String::new();
    for round in 0..rounds {
        let t = round * 100;
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        history.push(set_ok(0, &a, t, t + 50));
        history.push(set_ok(1, &b, t + 10, t + 60));
        history.push(get_ok(2, Some(&a), t + 20, t + 70));
        history.push(get_ok(3, Some(&b), t + 30, t + 80));
        last = b;
    }
    let t = rounds * 100;
    let read = if stale_last_read {
        "a0".to_string()
    } else {
        last
    };
    history.push(get_ok(2, Some(&read), t, t + 10));
    history
}

#[test]
fn a_soak_sized_history_is_decided_within_the_default_limits() {
    // 80,000 operations on one key: a bitset per cache entry (10 KB each) used to exhaust
    // the 256 MiB cache after ~25,000 entries and answer undetermined.
    let report = check_history(&long_history(20_000, false)).unwrap();
    assert_eq!(report.keys[KEY], KeyVerdict::Ok);
    assert_eq!(report.verdict, Verdict::Ok);

    let report = check_history(&long_history(20_000, true)).unwrap();
    assert!(
        matches!(report.keys[KEY], KeyVerdict::Anomaly(_)),
        "a stale final read is found at the end of a long history: {:?}",
        report.keys[KEY]
    );
}
