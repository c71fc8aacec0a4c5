//! Output: JSON summary, `--compare` ratios, CSV time series, SVG and PNG plots.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::OnceLock;

/// A plot: file stem, title, and the sampled value drawn.
type Chart = (
    &'static str,
    &'static str,
    fn(&crate::engine::Sample) -> f64,
);

use crate::engine::{PolicySet, RunResult};
use crate::SimError;

/// Every run of one `stator sim` call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// One run per policy set.
    pub runs: Vec<RunResult>,
}

impl SimReport {
    /// Wraps runs.
    pub fn new(scenario: &str, seed: u64, runs: Vec<RunResult>) -> Self {
        SimReport {
            scenario: scenario.to_string(),
            seed,
            runs,
        }
    }

    /// The run of one policy set.
    pub fn run(&self, p: PolicySet) -> Option<&RunResult> {
        self.runs.iter().find(|r| r.policy == p)
    }

    /// The JSON line: the summary for one policy, or
    /// `{"policies":{"stator":{..},"k8s-default":{..}},"ratios":{..}}` for a comparison.
    pub fn to_json(&self) -> Value {
        if self.runs.len() == 1 {
            return serde_json::to_value(&self.runs[0].summary).expect("summary serialises");
        }
        let mut policies = Map::new();
        for r in &self.runs {
            policies.insert(
                r.policy.name().to_string(),
                serde_json::to_value(&r.summary).expect("summary serialises"),
            );
        }
        let mut out = json!({ "policies": policies });
        if let Some(s) = self.run(PolicySet::Stator) {
            // `ratios` holds stator over each baseline under the baseline's name; its
            // top-level keys keep meaning stator over k8s-default.
            let mut ratios = Map::new();
            for b in [PolicySet::K8sDefault, PolicySet::K8sTuned] {
                if let Some(k) = self.run(b) {
                    let r = ratios_of(&s.summary, &k.summary);
                    if b == PolicySet::K8sDefault {
                        for (key, v) in r.as_object().expect("object") {
                            ratios.insert(key.clone(), v.clone());
                        }
                    }
                    ratios.insert(b.name().to_string(), r);
                }
            }
            if !ratios.is_empty() {
                out["ratios"] = Value::Object(ratios);
            }
        }
        out
    }

    /// Writes `summary.json`, `<policy>.csv` and the plots (`nodes`, `cost`, `slo`,
    /// each `.svg` and `.png`) into `dir`.
    pub fn write_out(&self, dir: &Path) -> Result<(), SimError> {
        let io = |p: &Path, e| SimError::Io(p.display().to_string(), e);
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("summary.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&self.to_json()).expect("json") + "\n",
        )
        .map_err(|e| io(&path, e))?;
        for r in &self.runs {
            let path = dir.join(format!("{}.csv", r.policy.name()));
            let mut csv = String::from("t_s,nodes,replicas,cost_usd,slo_violating,quorum_lost,pending,cpu_requested_cores,cpu_used_cores,cpu_provisioned_cores,booting\n");
            for s in &r.samples {
                csv.push_str(&format!(
                    "{},{},{},{:.4},{},{},{},{:.3},{:.3},{:.3},{}\n",
                    s.t_s,
                    s.nodes,
                    s.replicas,
                    s.cost_usd,
                    s.slo_violating,
                    s.quorum_lost,
                    s.pending,
                    s.cpu_requested_cores,
                    s.cpu_used_cores,
                    s.cpu_provisioned_cores,
                    s.booting
                ));
            }
            std::fs::write(&path, csv).map_err(|e| io(&path, e))?;
        }
        let charts: [Chart; 5] = [
            ("nodes", "nodes over time", |s| s.nodes as f64),
            ("cost", "cumulative cost (USD)", |s| s.cost_usd),
            ("slo", "partitions violating the p99 objective", |s| {
                s.slo_violating as f64
            }),
            ("cpu-requested", "CPU requested (cores)", |s| {
                s.cpu_requested_cores
            }),
            (
                "cpu-provisioned",
                "CPU of the nodes paid for (cores)",
                |s| s.cpu_provisioned_cores,
            ),
        ];
        for (file, title, f) in charts {
            let series: Vec<(String, Vec<(f64, f64)>)> = self
                .runs
                .iter()
                .map(|r| {
                    (
                        r.policy.name().to_string(),
                        r.samples
                            .iter()
                            .map(|s| (s.t_s as f64 / 3600.0, f(s)))
                            .collect(),
                    )
                })
                .collect();
            let title = format!("{}: {title}", self.scenario);
            plot::draw(&dir.join(format!("{file}.svg")), &title, &series, true)?;
            plot::draw(&dir.join(format!("{file}.png")), &title, &series, false)?;
        }
        Ok(())
    }
}

/// Prints a human summary to stdout, then (with `json`) the JSON object as the last
/// line.
pub fn print_report(report: &SimReport, json: bool) {
    println!("scenario {} (seed {})", report.scenario, report.seed);
    println!(
        "{:<12} {:>12} {:>11} {:>10} {:>10} {:>11} {:>10} {:>12} {:>11} {:>10} {:>9}",
        "policy",
        "cost_usd",
        "node_hours",
        "slo_viol_s",
        "quorum_s",
        "unavail_s",
        "migrations",
        "bytes_moved",
        "unscheduled",
        "pend_p99",
        "nodes_max"
    );
    for r in &report.runs {
        let s = &r.summary;
        println!(
            "{:<12} {:>12.2} {:>11.1} {:>10.0} {:>10.0} {:>11.1} {:>10} {:>12} {:>11} {:>10.0} {:>9}",
            r.policy.name(), s.cost_usd, s.node_hours, s.slo_violation_s, s.quorum_loss_s, s.unavailable_s, s.migrations, s.bytes_moved, s.unscheduled, s.pending_s_p99, s.nodes_max
        );
    }
    print_settings(report);
    print_breakdown(report);
    if json {
        println!("{}", report.to_json());
    }
}

/// The choices behind each baseline's figure, printed beside it: HPA targets, pod
/// requests and the node types used.
fn print_settings(report: &SimReport) {
    for r in &report.runs {
        let s = &r.summary;
        let mut parts = Vec::new();
        if !s.hpa_target_utilization.is_empty() {
            let t: Vec<String> = s
                .hpa_target_utilization
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect();
            parts.push(format!("HPA CPU target: {}", t.join(", ")));
        }
        if !s.cpu_request_millis.is_empty() {
            let t: Vec<String> = s
                .cpu_request_millis
                .iter()
                .map(|(k, v)| format!("{k} {v}m"))
                .collect();
            parts.push(format!("requests: {}", t.join(", ")));
        }
        let t: Vec<String> = s
            .node_hours_by_pool
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        parts.push(format!("node-hours by pool: {}", t.join(", ")));
        println!("  {}: {}", r.policy.name(), parts.join("; "));
    }
}

/// Where each policy's money went: one row per policy and phase of the day, one column
/// per cause (`crate::breakdown`), USD; causes no run paid for are left out.
fn print_breakdown(report: &SimReport) {
    use crate::breakdown::{CAUSES, PHASES};
    let paid = |cause: &str| {
        report.runs.iter().any(|r| {
            r.summary
                .cost_breakdown_usd
                .values()
                .any(|c| c.get(cause).is_some_and(|&v| v > 0.0))
        })
    };
    let causes: Vec<&str> = CAUSES.iter().copied().filter(|c| paid(c)).collect();
    if causes.is_empty() {
        return;
    }
    println!("cost by phase and cause (USD):");
    let mut header = format!("  {:<12} {:<10}", "policy", "phase");
    for c in &causes {
        header.push_str(&format!(" {c:>13}"));
    }
    println!("{header} {:>9}", "total");
    for r in &report.runs {
        for phase in PHASES {
            let Some(row) = r.summary.cost_breakdown_usd.get(phase.name()) else {
                continue;
            };
            let mut line = format!("  {:<12} {:<10}", r.policy.name(), phase.name());
            for c in &causes {
                line.push_str(&format!(" {:>13.2}", row.get(*c).copied().unwrap_or(0.0)));
            }
            println!("{line} {:>9.2}", row.values().sum::<f64>());
        }
    }
}

fn ratio(a: f64, b: f64) -> Value {
    if b == 0.0 {
        if a == 0.0 {
            json!(1.0)
        } else {
            Value::Null
        }
    } else {
        json!(((a / b) * 1000.0).round() / 1000.0)
    }
}

/// Stator's summary over a baseline's, field by field.
fn ratios_of(s: &crate::engine::Summary, k: &crate::engine::Summary) -> Value {
    json!({
        "cost": ratio(s.cost_usd, k.cost_usd),
        "node_hours": ratio(s.node_hours, k.node_hours),
        "slo_violation": ratio(s.slo_violation_s, k.slo_violation_s),
        "quorum_loss": ratio(s.quorum_loss_s, k.quorum_loss_s),
        "unavailable": ratio(s.unavailable_s, k.unavailable_s),
        "pending_s_p99": ratio(s.pending_s_p99, k.pending_s_p99),
        "nodes_max": ratio(s.nodes_max as f64, k.nodes_max as f64),
        "unscheduled": ratio(s.unscheduled as f64, k.unscheduled as f64),
    })
}

/// One report per seed of a `--seeds` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedsReport {
    /// Scenario name.
    pub scenario: String,
    /// One report per seed, in the order given.
    pub reports: Vec<SimReport>,
}

/// Median, smallest and largest of some values (the median of an even count is the
/// mean of the middle two).
pub fn median_range(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

fn stats_json(values: &[f64]) -> Value {
    match median_range(values) {
        Some((m, lo, hi)) => json!({
            "median": (m * 1000.0).round() / 1000.0,
            "min": (lo * 1000.0).round() / 1000.0,
            "max": (hi * 1000.0).round() / 1000.0,
        }),
        None => Value::Null,
    }
}

/// Summary fields given a median and range across seeds.
const SEED_FIELDS: [&str; 9] = [
    "cost_usd",
    "node_hours",
    "slo_violation_s",
    "quorum_loss_s",
    "unavailable_s",
    "migrations",
    "unscheduled",
    "nodes_max",
    "booting_beyond_pending_max",
];

impl SeedsReport {
    /// Wraps per-seed reports.
    pub fn new(scenario: &str, reports: Vec<SimReport>) -> Self {
        SeedsReport {
            scenario: scenario.to_string(),
            reports,
        }
    }

    /// `{"scenario":..,"seeds":[..],"per_seed":[{"seed":..,"policies":..,"ratios":..}],
    /// "policies":{"stator":{"cost_usd":{"median","min","max"},..},..},
    /// "ratios":{"k8s-default":{"cost":{"median","min","max"},..},"k8s-tuned":{..}}}`.
    pub fn to_json(&self) -> Value {
        let per_seed: Vec<Value> = self
            .reports
            .iter()
            .map(|r| {
                let mut j = r.to_json();
                if let Some(o) = j.as_object_mut() {
                    o.insert("seed".into(), json!(r.seed));
                }
                j
            })
            .collect();
        let mut policies = Map::new();
        let names: Vec<&str> = self
            .reports
            .first()
            .map(|r| r.runs.iter().map(|x| x.policy.name()).collect())
            .unwrap_or_default();
        for name in &names {
            let mut fields = Map::new();
            for f in SEED_FIELDS {
                let vals: Vec<f64> = per_seed
                    .iter()
                    .filter_map(|j| j["policies"][name][f].as_f64())
                    .collect();
                fields.insert(f.to_string(), stats_json(&vals));
            }
            policies.insert(name.to_string(), Value::Object(fields));
        }
        let mut ratios = Map::new();
        for b in ["k8s-default", "k8s-tuned"] {
            if !names.contains(&b) || !names.contains(&"stator") {
                continue;
            }
            let mut fields = Map::new();
            for f in [
                "cost",
                "node_hours",
                "slo_violation",
                "quorum_loss",
                "unavailable",
            ] {
                let vals: Vec<f64> = per_seed
                    .iter()
                    .filter_map(|j| j["ratios"][b][f].as_f64())
                    .collect();
                fields.insert(f.to_string(), stats_json(&vals));
            }
            ratios.insert(b.to_string(), Value::Object(fields));
        }
        json!({
            "scenario": self.scenario,
            "seeds": self.reports.iter().map(|r| r.seed).collect::<Vec<_>>(),
            "per_seed": per_seed,
            "policies": policies,
            "ratios": ratios,
        })
    }
}

/// Prints each seed's table, then the medians and ranges; with `json` the JSON object
/// of [`SeedsReport::to_json`] as the last line.
pub fn print_seeds_report(report: &SeedsReport, json: bool) {
    for r in &report.reports {
        print_report(r, false);
        println!();
    }
    let j = report.to_json();
    println!(
        "{} over seeds {}: median [min - max]",
        report.scenario, j["seeds"]
    );
    let fmt = |v: &Value| match (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.3} [{lo:.3} - {hi:.3}]"),
        _ => "-".to_string(),
    };
    if let Some(p) = j["policies"].as_object() {
        for (name, fields) in p {
            println!(
                "  {name:<12} cost_usd {}  slo_violation_s {}  quorum_loss_s {}",
                fmt(&fields["cost_usd"]),
                fmt(&fields["slo_violation_s"]),
                fmt(&fields["quorum_loss_s"])
            );
        }
    }
    if let Some(r) = j["ratios"].as_object() {
        for (b, fields) in r {
            println!("  stator / {b:<12} cost {}", fmt(&fields["cost"]));
        }
    }
    if json {
        println!("{j}");
    }
}

/// A progress bar on stderr, only when asked and stderr is a terminal.
pub(crate) fn progress_bar(
    enabled: bool,
    total_s: u64,
    label: &str,
) -> Option<indicatif::ProgressBar> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total_s),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>12} [{bar:40}] {percent:>3}% simulated, {elapsed} wall",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    Some(bar)
}

mod plot {
    use super::*;
    use plotters::prelude::*;

    const FONT_PATHS: [&str; 2] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];

    /// Registers a system font for labels once; plots go without text if none.
    fn have_font() -> bool {
        static FONT: OnceLock<bool> = OnceLock::new();
        *FONT.get_or_init(|| {
            for p in FONT_PATHS {
                if let Ok(bytes) = std::fs::read(p) {
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .is_ok()
                    {
                        return true;
                    }
                }
            }
            false
        })
    }

    pub(super) fn draw(
        path: &Path,
        title: &str,
        series: &[(String, Vec<(f64, f64)>)],
        svg: bool,
    ) -> Result<(), SimError> {
        let err = |e: String| SimError::Plot(format!("{}: {e}", path.display()));
        if svg {
            let root = SVGBackend::new(path, (900, 450)).into_drawing_area();
            chart(root, title, series).map_err(err)
        } else {
            let root = BitMapBackend::new(path, (900, 450)).into_drawing_area();
            chart(root, title, series).map_err(err)
        }
    }

    fn chart<DB: DrawingBackend>(
        root: DrawingArea<DB, plotters::coord::Shift>,
        title: &str,
        series: &[(String, Vec<(f64, f64)>)],
    ) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let text = have_font();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let x_max = series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.0))
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let y_max = series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.05;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            builder
                .caption(title, ("sans-serif", 20))
                .x_label_area_size(36)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        if text {
            chart
                .configure_mesh()
                .x_desc("simulated hours")
                .draw()
                .map_err(|e| e.to_string())?;
        } else {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(0)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(214, 39, 40),
            RGBColor(44, 160, 44),
        ];
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            let s = chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if text {
                s.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
        Ok(())
    }
}
