//! What each heartbeat reports of the replicas: the full view, or only the changes since
//! the view the server last acknowledged.
//!
//! An idle agent of 1,000 replicas otherwise serializes every status twice a second (and
//! the server parses them) though nothing changed. The agent numbers each view it sends;
//! the server answers with the number it now holds ([`Assignments::replicas_view`]), and
//! the next heartbeat carries only what differs from that acknowledged view. Anything
//! unsure falls back to the full view: a failed call keeps the old base (the server either
//! holds it still or refuses the delta), and a server that does not hold the base (it
//! restarted, or applied a beat whose answer was lost) answers 409, after which the agent
//! sends everything at once.
//!
//! [`Assignments::replicas_view`]: stator_api::agent::Assignments::replicas_view

use std::collections::BTreeMap;

use stator_api::agent::{Heartbeat, ReplicaStatus};
use stator_api::ids::GroupId;

/// The agent's side of the numbered replica views (one per incarnation of the agent).
#[derive(Debug, Default)]
pub struct ReplicaReport {
    /// The number of the last view prepared.
    last_view: u64,
    /// The view the server acknowledged holding, and its number.
    acknowledged: Option<(u64, BTreeMap<GroupId, ReplicaStatus>)>,
}

/// One heartbeat's replica report, kept until the server answers it.
#[derive(Debug)]
pub struct PreparedReport {
    view: u64,
    since: Option<u64>,
    changed: Vec<ReplicaStatus>,
    gone: Vec<GroupId>,
    current: BTreeMap<GroupId, ReplicaStatus>,
}

impl ReplicaReport {
    /// The report of `statuses` (every replica hosted now): the changes against the
    /// acknowledged view, or the full view when none is acknowledged.
    pub fn prepare(&mut self, statuses: Vec<ReplicaStatus>) -> PreparedReport {
        self.last_view += 1;
        let current: BTreeMap<GroupId, ReplicaStatus> =
            statuses.into_iter().map(|s| (s.group, s)).collect();
        let (since, changed, gone) = match &self.acknowledged {
            None => (None, current.values().cloned().collect(), Vec::new()),
            Some((view, held)) => (
                Some(*view),
                current
                    .values()
                    .filter(|s| held.get(&s.group) != Some(*s))
                    .cloned()
                    .collect(),
                held.keys()
                    .filter(|group| !current.contains_key(group))
                    .copied()
                    .collect(),
            ),
        };
        PreparedReport {
            view: self.last_view,
            since,
            changed,
            gone,
            current,
        }
    }

    /// The server answered the heartbeat that carried `report`, saying it now holds
    /// view `held` (`None`: no numbered view; the next report is full).
    pub fn answered(&mut self, report: PreparedReport, held: Option<u64>) {
        self.acknowledged = (held == Some(report.view)).then_some((report.view, report.current));
    }

    /// The server refused a delta (it does not hold its base): the next report is full.
    pub fn refused(&mut self) {
        self.acknowledged = None;
    }
}

impl PreparedReport {
    /// Whether this report carries only changes (a server may refuse it).
    pub fn is_delta(&self) -> bool {
        self.since.is_some()
    }

    /// Whether this report says anything changed: a full report, or a delta naming a
    /// replica that changed, came or went.
    pub fn has_changes(&self) -> bool {
        !self.is_delta() || !self.changed.is_empty() || !self.gone.is_empty()
    }

    /// Fills `beat`'s replica fields with this report.
    pub fn fill(&self, beat: &mut Heartbeat) {
        beat.replicas = self.changed.clone();
        beat.replicas_since = self.since;
        beat.replicas_gone = self.gone.clone();
        beat.replicas_view = self.view;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(partition: u32, term: u64) -> ReplicaStatus {
        ReplicaStatus {
            leader: Some(1),
            term,
            voters: vec![1, 2, 3],
            applied_index: 5,
            ..stator_api::testing::replica_status(GroupId::new(1, partition), "kv", partition)
        }
    }

    fn beat(report: &PreparedReport) -> Heartbeat {
        let mut beat = Heartbeat::default();
        report.fill(&mut beat);
        beat
    }

    #[test]
    fn the_first_report_is_full_and_an_acknowledged_one_is_followed_by_changes() {
        let mut report = ReplicaReport::default();
        let first = report.prepare(vec![status(0, 1), status(1, 1)]);
        let sent = beat(&first);
        assert_eq!((sent.replicas.len(), sent.replicas_since), (2, None));
        let view = sent.replicas_view;
        report.answered(first, Some(view));

        // Nothing changed: nothing but the base.
        let idle = report.prepare(vec![status(0, 1), status(1, 1)]);
        let sent = beat(&idle);
        assert!(sent.replicas.is_empty() && sent.replicas_gone.is_empty());
        assert_eq!(sent.replicas_since, Some(view));
        report.answered(idle, Some(sent.replicas_view));

        // One term changed, one replica went, one came.
        let next = report.prepare(vec![status(0, 2), status(2, 1)]);
        let sent = beat(&next);
        assert_eq!(sent.replicas, vec![status(0, 2), status(2, 1)]);
        assert_eq!(sent.replicas_gone, vec![GroupId::new(1, 1)]);
    }

    #[test]
    fn an_unanswered_or_refused_report_never_becomes_the_base() {
        let mut report = ReplicaReport::default();
        let first = report.prepare(vec![status(0, 1)]);
        let first_view = beat(&first).replicas_view;
        report.answered(first, Some(first_view));

        // Lost: the next delta still builds on the first view.
        let lost = report.prepare(vec![status(0, 2)]);
        drop(lost);
        let again = report.prepare(vec![status(0, 2)]);
        assert_eq!(beat(&again).replicas_since, Some(first_view));
        assert_eq!(beat(&again).replicas, vec![status(0, 2)]);

        // Refused: full next.
        report.refused();
        let full = report.prepare(vec![status(0, 2)]);
        assert_eq!(beat(&full).replicas_since, None);

        // Answered without a view (a server that keeps none): full next too.
        report.answered(full, None);
        assert!(!report.prepare(vec![status(0, 2)]).is_delta());
    }
}
