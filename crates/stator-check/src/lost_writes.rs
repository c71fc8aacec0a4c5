//! Acknowledged writes that vanished: a blunt check to run beside the linearizability one.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{HistoryEntry, Op, Status};

/// An acknowledged write that no later write can explain away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostWrite {
    /// The acknowledged set.
    pub write: HistoryEntry,
    /// What the final read of the key returned (`None`: missing).
    pub final_value: Option<String>,
}

/// Finds acknowledged writes that were lost, given a final read of keys taken after every
/// client stopped (`final_values[key]`, `None` when the key was missing).
///
/// Exact definition: a `set` W of value v on key k is **lost** when
/// 1. W has status `ok`,
/// 2. k has an entry in `final_values`, and it is not `Some(v)`,
/// 3. no other `set` on k that may have taken effect (status `ok` or `unknown`) could have
///    been ordered after W: every such set has status `ok` and returned strictly before W
///    was called (`return_ns < W.call_ns`).
///
/// So W was the last write to k in real time, it was acknowledged, and the final read does
/// not show it. Writes whose key has no final read are not judged. Failed sets are ignored:
/// they did not happen. This never reports a write that a later or concurrent write may
/// have overwritten, so it can miss losses that [`crate::check_history`] finds.
pub fn lost_acked_writes(
    history: &[HistoryEntry],
    final_values: &BTreeMap<String, Option<String>>,
) -> Vec<LostWrite> {
    let mut sets_by_key: BTreeMap<&str, Vec<&HistoryEntry>> = BTreeMap::new();
    for entry in history {
        if entry.op == Op::Set && entry.status != Status::Fail {
            sets_by_key
                .entry(entry.key.as_str())
                .or_default()
                .push(entry);
        }
    }
    let mut lost = Vec::new();
    for (key, sets) in sets_by_key {
        let Some(final_value) = final_values.get(key) else {
            continue;
        };
        for (index, write) in sets.iter().enumerate() {
            if write.status != Status::Ok || *final_value == write.value {
                continue;
            }
            let overwritable = sets.iter().enumerate().any(|(other_index, other)| {
                other_index != index
                    && !matches!(other.return_ns, Some(return_ns) if return_ns < write.call_ns)
            });
            if !overwritable {
                lost.push(LostWrite {
                    write: (*write).clone(),
                    final_value: final_value.clone(),
                });
            }
        }
    }
    lost
}
