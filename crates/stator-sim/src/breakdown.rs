//! Where the money goes: each tick's cost rate split by phase of the day and by cause.
//!
//! Every node paid for is put, at each sample, into causes that sum to its price:
//! - `used`: the share of a CPU-bound node's CPU the load uses (trace tasks count
//!   their whole request as used: their usage is not in the trace);
//! - `headroom`: the share requested above the load (sizing margin, stabilisation);
//! - `memory_bound`: a node whose memory share is its largest: the replicas' memory,
//!   which does not follow the load (on mmo-diurnal, the R copies of every partition:
//!   the quorum floor);
//! - `gpu_bound`: a node whose GPU share is its largest;
//! - `fragmentation`: the share of a non-empty node left unrequested in its largest
//!   dimension (room no request took);
//! - `empty`: a ready node hosting nothing (slow scale-in, warm spares, a node that
//!   has just joined);
//! - `draining`: a cordoned node still hosting replicas (consolidation in progress);
//! - `booting`: a node asked for and not yet ready;
//! - `failed`: a failed node not yet released.
//!
//! Phases come from the scenario's total load curve (noise and skew left out): `peak`
//! above 75 % of the way from the day's lowest to its highest load, `trough` under
//! 25 %, `ramp-up` / `ramp-down` between them while the load rises / falls; `all` for a
//! scenario whose load does not change (a trace, constant loads).

use std::collections::BTreeMap;

use crate::scenario::Scenario;

/// Above this fraction of the way from the lowest to the highest load: `peak`.
pub const PEAK_ABOVE: f64 = 0.75;
/// Under this fraction: `trough`.
pub const TROUGH_BELOW: f64 = 0.25;
/// The load curve is read this far apart to tell a rise from a fall.
const SLOPE_STEP_S: f64 = 300.0;
/// The day's lowest and highest load are found over samples this far apart.
const RANGE_STEP_S: u64 = 300;

/// A phase of the load curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The load rises (between trough and peak).
    RampUp,
    /// Near the day's highest load.
    Peak,
    /// The load falls.
    RampDown,
    /// Near the day's lowest load.
    Trough,
    /// The load does not change (trace scenarios, constant loads).
    All,
}

impl Phase {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::RampUp => "ramp-up",
            Phase::Peak => "peak",
            Phase::RampDown => "ramp-down",
            Phase::Trough => "trough",
            Phase::All => "all",
        }
    }
}

/// Every phase in report order.
pub const PHASES: [Phase; 5] = [
    Phase::RampUp,
    Phase::Peak,
    Phase::RampDown,
    Phase::Trough,
    Phase::All,
];

/// Every cause in report order.
pub const CAUSES: [&str; 9] = [
    "used",
    "headroom",
    "memory_bound",
    "gpu_bound",
    "fragmentation",
    "empty",
    "draining",
    "booting",
    "failed",
];

/// Tells the phase of the day from the scenario's load curves.
#[derive(Debug, Clone)]
pub struct PhaseClock {
    curves: Vec<crate::scenario::LoadCurve>,
    lowest: f64,
    highest: f64,
}

impl PhaseClock {
    /// The clock of a scenario (its services' load curves over one day).
    pub fn new(sc: &Scenario) -> Self {
        let curves: Vec<_> = sc.services.iter().map(|s| s.load.clone()).collect();
        let mut clock = PhaseClock {
            curves,
            lowest: f64::INFINITY,
            highest: f64::NEG_INFINITY,
        };
        for t in (0..=86_400u64.max(sc.duration_s)).step_by(RANGE_STEP_S as usize) {
            let l = clock.load(t as f64);
            clock.lowest = clock.lowest.min(l);
            clock.highest = clock.highest.max(l);
        }
        clock
    }

    fn load(&self, t_s: f64) -> f64 {
        self.curves.iter().map(|c| c.at(t_s)).sum()
    }

    /// The phase at `t_s`.
    pub fn phase(&self, t_s: u64) -> Phase {
        let span = self.highest - self.lowest;
        if self.curves.is_empty() || span <= 1e-9 * self.highest.abs().max(1.0) {
            return Phase::All;
        }
        let t = t_s as f64;
        let f = (self.load(t) - self.lowest) / span;
        if f >= PEAK_ABOVE {
            Phase::Peak
        } else if f <= TROUGH_BELOW {
            Phase::Trough
        } else if self.load(t + SLOPE_STEP_S) >= self.load(t) {
            Phase::RampUp
        } else {
            Phase::RampDown
        }
    }
}

/// What one node holds at a sample, as [`split_node`] needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeFacts {
    /// Price per hour.
    pub price_per_hour: f64,
    /// Capacity: CPU millicores, memory MiB, GPU milli-units.
    pub capacity: [f64; 3],
    /// Requested (allocated) of each.
    pub allocated: [f64; 3],
    /// CPU the load uses on this node, millicores (trace tasks: their request).
    pub cpu_used_millis: f64,
    /// Hosts at least one replica or task.
    pub hosts_anything: bool,
    /// Cordoned (being emptied).
    pub cordoned: bool,
    /// Failed, not yet released.
    pub failed: bool,
}

/// Splits a node's price per hour into causes (see the module doc); the parts sum to
/// the price.
pub fn split_node(n: &NodeFacts) -> Vec<(&'static str, f64)> {
    let p = n.price_per_hour;
    if n.failed {
        return vec![("failed", p)];
    }
    if !n.hosts_anything {
        return vec![("empty", p)];
    }
    if n.cordoned {
        return vec![("draining", p)];
    }
    let share = |i: usize| {
        if n.capacity[i] > 0.0 {
            (n.allocated[i] / n.capacity[i]).clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let (cpu, memory, gpu) = (share(0), share(1), share(2));
    let dominant = cpu.max(memory).max(gpu);
    let mut parts = vec![("fragmentation", p * (1.0 - dominant))];
    if gpu > 0.0 && gpu >= cpu && gpu >= memory {
        parts.push(("gpu_bound", p * gpu));
    } else if memory > cpu {
        parts.push(("memory_bound", p * memory));
    } else {
        let used = if n.capacity[0] > 0.0 {
            (n.cpu_used_millis / n.capacity[0]).clamp(0.0, cpu)
        } else {
            0.0
        };
        parts.push(("used", p * used));
        parts.push(("headroom", p * (cpu - used)));
    }
    parts
}

/// Cost so far by phase and cause, USD.
#[derive(Debug, Clone, Default)]
pub struct CostBreakdown {
    usd: BTreeMap<(Phase, &'static str), f64>,
}

impl CostBreakdown {
    /// Adds `usd_per_hour` of `cause` held for `dt_s` in `phase`.
    pub fn add(&mut self, phase: Phase, cause: &'static str, usd_per_hour: f64, dt_s: f64) {
        if usd_per_hour > 0.0 {
            *self.usd.entry((phase, cause)).or_insert(0.0) += usd_per_hour * dt_s / 3600.0;
        }
    }

    /// `{phase: {cause: usd}}` (rounded to cents), phases and causes in report order,
    /// empty ones left out.
    pub fn to_map(&self) -> BTreeMap<String, BTreeMap<String, f64>> {
        let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for (&(phase, cause), &usd) in &self.usd {
            let usd = (usd * 100.0).round() / 100.0;
            if usd > 0.0 {
                out.entry(phase.name().to_string())
                    .or_default()
                    .insert(cause.to_string(), usd);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cap: [f64; 3], alloc: [f64; 3], used: f64) -> NodeFacts {
        NodeFacts {
            price_per_hour: 1.0,
            capacity: cap,
            allocated: alloc,
            cpu_used_millis: used,
            hosts_anything: true,
            ..Default::default()
        }
    }

    fn sum(parts: &[(&str, f64)]) -> f64 {
        parts.iter().map(|p| p.1).sum()
    }

    #[test]
    fn a_node_splits_into_causes_that_sum_to_its_price() {
        // CPU-bound: 60 % requested, 40 % used.
        let parts = split_node(&node([1000.0, 1000.0, 0.0], [600.0, 100.0, 0.0], 400.0));
        assert!((sum(&parts) - 1.0).abs() < 1e-9, "{parts:?}");
        let get = |c: &str| parts.iter().find(|p| p.0 == c).map(|p| p.1).unwrap();
        assert!((get("used") - 0.4).abs() < 1e-9);
        assert!((get("headroom") - 0.2).abs() < 1e-9);
        assert!((get("fragmentation") - 0.4).abs() < 1e-9);
        // Memory-bound.
        let parts = split_node(&node([1000.0, 1000.0, 0.0], [300.0, 900.0, 0.0], 200.0));
        assert_eq!(parts[1].0, "memory_bound");
        assert!((sum(&parts) - 1.0).abs() < 1e-9);
        // Empty, cordoned.
        let mut n = node([1000.0, 1000.0, 0.0], [0.0, 0.0, 0.0], 0.0);
        n.hosts_anything = false;
        assert_eq!(split_node(&n), vec![("empty", 1.0)]);
    }

    #[test]
    fn phases_follow_a_diurnal_curve() {
        let sc = Scenario::from_toml_str(
            r#"
name = "t"
duration_s = 86400
tick_s = 60
[[pools]]
name = "p"
cpu_millis = 1000
memory_mib = 1024
price_per_hour = 1.0
max = 1
zones = ["a"]
[[services]]
name = "s"
partitions = 1
replicas = 1
cpu_millis = 100
memory_mib = 100
p99_latency_ms = 10
service_time_ms = 1
load = { kind = "diurnal", peak_cpu_millis = 1000, peak_to_trough = 5, peak_hour = 20, noise = 0.0 }
"#,
        )
        .unwrap();
        let clock = PhaseClock::new(&sc);
        assert_eq!(clock.phase(20 * 3600), Phase::Peak);
        assert_eq!(clock.phase(8 * 3600), Phase::Trough);
        assert_eq!(clock.phase(14 * 3600), Phase::RampUp);
        assert_eq!(clock.phase(2 * 3600), Phase::RampDown);
    }
}
