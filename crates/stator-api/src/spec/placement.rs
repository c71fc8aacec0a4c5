//! Placement preferences and quality-of-service targets.

use super::*;

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
