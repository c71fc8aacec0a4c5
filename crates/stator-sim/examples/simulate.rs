//! `stator sim` without the CLI: the same flags, parsed by hand.
//!
//! cargo run --release -p stator-sim --example simulate -- --scenario examples/sim/mmo-diurnal.toml --compare --seeds 1..5 --json

use stator_sim::{parse_seeds, run_and_report, SimOptions};

fn main() -> anyhow::Result<()> {
    let mut opts = SimOptions {
        progress: true,
        ..SimOptions::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--scenario" => opts.scenario = Some(val()?.into()),
            "--trace-nodes" => opts.trace_nodes = Some(val()?.into()),
            "--trace-pods" => opts.trace_pods = Some(val()?.into()),
            "--policy" => opts.policy = Some(val()?),
            "--compare" => opts.compare = true,
            "--out" => opts.out = Some(val()?.into()),
            "--seed" => opts.seed = Some(val()?.parse()?),
            "--seeds" => opts.seeds = parse_seeds(&val()?)?,
            "--json" => opts.json = true,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let started = std::time::Instant::now();
    run_and_report(&opts)?;
    eprintln!("wall time: {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
