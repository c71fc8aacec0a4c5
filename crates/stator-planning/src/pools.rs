//! Node pools: the shapes of machine a cluster may grow by, and what they cost.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::view::{ClusterView, Node, Resources};

/// One pool of identical machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Pool name.
    pub name: String,
    /// Allocatable capacity of one node.
    pub capacity: Resources,
    /// USD per node-hour.
    pub price_per_hour: f64,
    /// Seconds from request to a ready node.
    pub boot_delay_s: u64,
    /// Nodes the pool always keeps.
    pub min_nodes: u32,
    /// Nodes the pool may have at most.
    pub max_nodes: u32,
    /// Zones the pool can provision in.
    pub zones: Vec<String>,
    /// Labels every node of the pool carries.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl PoolSpec {
    /// Price per unit of resource, as [`Node::price_per_unit`].
    pub fn price_per_unit(&self) -> f64 {
        let n = Node::new(0, "", &self.name, self.capacity, self.price_per_hour);
        n.price_per_unit()
    }
}

/// A node requested from a pool and still booting (not yet in the view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootingNode {
    /// Pool name.
    pub pool: String,
    /// Zone.
    pub zone: String,
}

/// Nodes per pool: those in the view plus those booting.
pub fn pool_counts(view: &ClusterView, booting: &[BootingNode]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for n in view.nodes() {
        *counts.entry(n.pool.clone()).or_insert(0) += 1;
    }
    for b in booting {
        *counts.entry(b.pool.clone()).or_insert(0) += 1;
    }
    counts
}

/// The pools, cheapest per unit of resource first (name breaks ties).
pub fn pools_by_unit_price(pools: &[PoolSpec]) -> Vec<&PoolSpec> {
    let mut v: Vec<&PoolSpec> = pools.iter().collect();
    v.sort_by(|a, b| {
        a.price_per_unit()
            .total_cmp(&b.price_per_unit())
            .then(a.name.cmp(&b.name))
    });
    v
}
