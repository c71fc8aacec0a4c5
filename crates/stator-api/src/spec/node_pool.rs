//! Node pools: a kind of node that can be provisioned ([`NodePoolSpec`]).

use super::*;

/// A kind of node that can be provisioned (read by the autoscaler and the simulator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePoolSpec {
    /// Unique pool name (a DNS label).
    pub name: String,
    /// CPU of one node.
    pub cpu: CpuMillis,
    /// Memory of one node.
    pub memory: MemoryMib,
    /// What one node costs per hour, in USD.
    pub price_per_hour: f64,
    /// Seconds from asking for a node to its agent registering.
    #[serde(default)]
    pub boot_delay_s: u64,
    /// Fewest nodes the pool keeps.
    #[serde(default)]
    pub min: u32,
    /// Most nodes the pool may hold.
    pub max: u32,
}

impl NodePoolSpec {
    /// Checks every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        if self.cpu.0 == 0 {
            return Err(SpecError::invalid(
                "cpu",
                "must be more than 0, e.g. cpu = \"4\"",
            ));
        }
        if self.memory.0 == 0 {
            return Err(SpecError::invalid(
                "memory",
                "must be more than 0, e.g. memory = \"16Gi\"",
            ));
        }
        if !self.price_per_hour.is_finite() || self.price_per_hour < 0.0 {
            return Err(SpecError::invalid(
                "price_per_hour",
                format!(
                    "must be a non-negative number of USD, got {}",
                    self.price_per_hour
                ),
            ));
        }
        if self.max == 0 || self.max > MAX_POOL_NODES {
            return Err(SpecError::invalid(
                "max",
                format!("must be between 1 and {MAX_POOL_NODES}, got {}", self.max),
            ));
        }
        if self.min > self.max {
            return Err(SpecError::invalid(
                "min",
                format!("must be at most max ({}), got {}", self.max, self.min),
            ));
        }
        Ok(())
    }
}
