//! Demand forecasts for predictive scaling: Holt's linear trend per partition, with a
//! safety margin taken from the forecaster's own measured errors.
//!
//! Each observation updates a smoothed level and trend (double exponential smoothing)
//! and returns an upper bound for the demand over the next `horizon_s`: the larger of
//! the level and the trend's extrapolation to the horizon, plus `error_sigmas` times
//! the root mean square of past forecast errors at that horizon (each forecast is kept
//! until its time comes and compared with what was then observed). Until enough
//! errors have been measured the margin is [`WARMUP_MARGIN`] of the level.
//!
//! Sizing a request for this bound instead of for the current demand with a fixed
//! margin lets the margin shrink where the load is predictable (peak, trough) and grow
//! where it rises fast (the ramp-up), and asks for room a horizon before the load
//! needs it.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Relative margin used until [`MIN_ERRORS`] forecast errors have been measured.
pub const WARMUP_MARGIN: f64 = 0.15;
/// Forecast errors measured before the margin comes from them.
pub const MIN_ERRORS: u32 = 8;
/// Most forecasts kept per series awaiting their time (bounds memory at any horizon
/// and rate of observation; older ones are dropped unscored).
pub const MAX_PENDING_FORECASTS: usize = 256;

/// Tunables of the forecaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastConfig {
    /// How far ahead the bound must hold: the time it takes to get room (a node's boot
    /// plus the moves onto it).
    pub horizon_s: u64,
    /// Level smoothing (0-1; higher follows the last observation more).
    pub level_smoothing: f64,
    /// Trend smoothing (0-1).
    pub trend_smoothing: f64,
    /// Weight of each new squared error in the running mean (0-1).
    pub error_smoothing: f64,
    /// Margin in root-mean-square errors.
    pub error_sigmas: f64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            horizon_s: 300,
            level_smoothing: 0.3,
            trend_smoothing: 0.05,
            error_smoothing: 0.05,
            error_sigmas: 2.0,
        }
    }
}

/// One series' state.
#[derive(Debug, Clone, Default)]
struct Series {
    level: f64,
    trend_per_s: f64,
    last_s: u64,
    /// (due time, forecast made for it).
    pending: VecDeque<(u64, f64)>,
    mean_sq_error: f64,
    errors: u32,
}

/// Forecasts for many series, keyed by service, then partition: a round looks a
/// series up by `&str` without building a `(String, u32)` key (at 33,000 partitions a
/// tick, those allocations were a visible share of the 10,000-node day). A caller that
/// sees the same partitions every round resolves each key once
/// ([`Forecaster::series_index`]) and observes by index
/// ([`Forecaster::observe_index`]): a `Vec` index instead of two hash lookups.
#[derive(Debug, Clone, Default)]
pub struct Forecaster {
    /// Service, then partition -> index into `store`; an index is never reused.
    index: FxHashMap<String, FxHashMap<u32, usize>>,
    /// None: no observation yet (or forgotten by [`Forecaster::retain`]).
    store: Vec<Option<Series>>,
}

impl Forecaster {
    /// Records `value` observed at `now_s` and returns the upper bound for the next
    /// `cfg.horizon_s` (see the module doc).
    pub fn observe(
        &mut self,
        key: (String, u32),
        now_s: u64,
        value: f64,
        cfg: &ForecastConfig,
    ) -> f64 {
        self.observe_partition(&key.0, key.1, now_s, value, cfg)
    }

    /// [`Forecaster::observe`] for one partition of `service`, allocating only for a
    /// series seen for the first time.
    pub fn observe_partition(
        &mut self,
        service: &str,
        partition: u32,
        now_s: u64,
        value: f64,
        cfg: &ForecastConfig,
    ) -> f64 {
        let ix = self.series_index(service, partition);
        self.observe_index(ix, now_s, value, cfg)
    }

    /// The stable index of `service`'s `partition` series for
    /// [`Forecaster::observe_index`], allocating only for a key seen the first time.
    pub fn series_index(&mut self, service: &str, partition: u32) -> usize {
        let next = self.store.len();
        let by_partition = match self.index.get_mut(service) {
            Some(m) => m,
            None => self.index.entry(service.to_string()).or_default(),
        };
        let ix = *by_partition.entry(partition).or_insert(next);
        if ix == next {
            self.store.push(None);
        }
        ix
    }

    /// [`Forecaster::observe`] for the series with index `ix` (from
    /// [`Forecaster::series_index`]). Panics on an index this forecaster never gave.
    pub fn observe_index(
        &mut self,
        ix: usize,
        now_s: u64,
        value: f64,
        cfg: &ForecastConfig,
    ) -> f64 {
        let s = self.store[ix].get_or_insert_with(|| Series {
            level: value,
            last_s: now_s,
            ..Series::default()
        });
        // Score the forecasts whose time has come.
        while let Some(&(due, predicted)) = s.pending.front() {
            if due > now_s {
                break;
            }
            s.pending.pop_front();
            let e = value - predicted;
            s.mean_sq_error = if s.errors == 0 {
                e * e
            } else {
                (1.0 - cfg.error_smoothing) * s.mean_sq_error + cfg.error_smoothing * e * e
            };
            s.errors = s.errors.saturating_add(1);
        }
        // Holt's update.
        let dt = now_s.saturating_sub(s.last_s) as f64;
        if dt > 0.0 {
            let expected = s.level + s.trend_per_s * dt;
            let level = cfg.level_smoothing * value + (1.0 - cfg.level_smoothing) * expected;
            s.trend_per_s = cfg.trend_smoothing * (level - s.level) / dt
                + (1.0 - cfg.trend_smoothing) * s.trend_per_s;
            s.level = level;
            s.last_s = now_s;
        }
        let horizon = cfg.horizon_s as f64;
        let at_horizon = (s.level + s.trend_per_s * horizon).max(0.0);
        if s.pending.len() >= MAX_PENDING_FORECASTS {
            s.pending.pop_front();
        }
        s.pending.push_back((now_s + cfg.horizon_s, at_horizon));
        let margin = if s.errors < MIN_ERRORS {
            WARMUP_MARGIN * s.level.max(value)
        } else {
            cfg.error_sigmas * s.mean_sq_error.sqrt()
        };
        s.level.max(at_horizon) + margin
    }

    /// Forgets series not in `keep` (partitions deleted).
    pub fn retain(&mut self, keep: impl Fn(&(String, u32)) -> bool) {
        // Indexes stay assigned (a caller may hold them); a forgotten series starts
        // afresh at its next observation.
        for (service, by_partition) in &self.index {
            for (&p, &ix) in by_partition {
                if !keep(&(service.clone(), p)) {
                    self.store[ix] = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (String, u32) {
        ("s".into(), 0)
    }

    #[test]
    fn a_flat_series_gets_a_small_margin_once_errors_are_measured() {
        let mut f = Forecaster::default();
        let cfg = ForecastConfig::default();
        let mut last = 0.0;
        for i in 0..200u64 {
            // +-2 % alternating around 1000.
            let v = if i % 2 == 0 { 1020.0 } else { 980.0 };
            last = f.observe(key(), i * 15, v, &cfg);
        }
        assert!(last > 1020.0 && last < 1100.0, "{last}");
    }

    #[test]
    fn a_rising_series_is_bounded_ahead_of_time() {
        let mut f = Forecaster::default();
        let cfg = ForecastConfig::default();
        // +1 millicore per second: in 300 s it is 300 higher.
        let mut bound = 0.0;
        for i in 0..400u64 {
            let t = i * 15;
            bound = f.observe(key(), t, 1000.0 + t as f64, &cfg);
        }
        let now = 1000.0 + (399 * 15) as f64;
        assert!(bound >= now + 250.0, "bound {bound} vs now {now}");
        assert!(bound <= now + 450.0, "bound {bound} vs now {now}");
    }

    #[test]
    fn the_margin_covers_a_jump_the_series_has_shown_before() {
        let mut f = Forecaster::default();
        let cfg = ForecastConfig::default();
        // Mostly flat with a +30 % spike every 20 samples: the margin stays several
        // times wider than for the same series without spikes.
        let mut calm = Forecaster::default();
        let (mut bound, mut calm_bound) = (0.0, 0.0);
        for i in 0..400u64 {
            let v = if i % 20 == 0 { 1300.0 } else { 1000.0 };
            bound = f.observe(key(), i * 15, v, &cfg);
            calm_bound = calm.observe(key(), i * 15, 1000.0, &cfg);
        }
        assert!(bound > 1050.0, "{bound}");
        assert!(calm_bound < 1001.0, "{calm_bound}");
    }
}
