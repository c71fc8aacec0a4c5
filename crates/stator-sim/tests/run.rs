//! End-to-end runs of the library entry point (what `stator sim` calls).

use stator_sim::{run, SimOptions};
use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The MMO day, shortened to six hours so the debug-mode test stays quick.
fn short_mmo() -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("examples/sim/mmo-diurnal.toml")).unwrap();
    let text = text.replace("duration_s = 86400", "duration_s = 21600");
    let dir = std::env::temp_dir().join(format!("stator-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mmo-short.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn same_seed_same_json_and_compare_shape() {
    let scenario = short_mmo();
    let opts = SimOptions {
        scenario: Some(scenario.clone()),
        compare: true,
        seed: Some(3),
        ..Default::default()
    };
    let a = run(&opts).unwrap().to_json();
    let b = run(&opts).unwrap().to_json();
    assert_eq!(a, b, "two runs with one seed differ");
    for p in ["stator", "k8s-default"] {
        for f in [
            "cost_usd",
            "node_hours",
            "slo_violation_s",
            "quorum_loss_s",
            "unavailable_s",
            "migrations",
            "bytes_moved",
            "unscheduled",
            "pending_s_p99",
            "nodes_max",
            "replicas_max",
            "simulated_s",
        ] {
            assert!(a["policies"][p].get(f).is_some(), "{p} lacks {f}: {a}");
        }
    }
    assert!(a["ratios"]["cost"].as_f64().unwrap() > 0.0);
    assert_eq!(a["policies"]["stator"]["quorum_loss_s"].as_f64(), Some(0.0));
    let c = run(&SimOptions {
        seed: Some(4),
        ..opts
    })
    .unwrap()
    .to_json();
    assert_ne!(a, c, "the seed should matter");
}

#[test]
fn writes_csv_and_plots() {
    let out = std::env::temp_dir().join(format!("stator-sim-out-{}", std::process::id()));
    let opts = SimOptions {
        scenario: Some(short_mmo()),
        policy: Some("stator".into()),
        out: Some(out.clone()),
        ..Default::default()
    };
    let report = run(&opts).unwrap();
    assert_eq!(report.runs.len(), 1);
    for f in [
        "summary.json",
        "stator.csv",
        "nodes.svg",
        "nodes.png",
        "cost.svg",
        "cost.png",
        "slo.svg",
        "slo.png",
    ] {
        let meta = std::fs::metadata(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 100, "{f} is too small");
    }
}

#[test]
fn usage_errors() {
    assert!(run(&SimOptions::default()).is_err());
    let bad = SimOptions {
        scenario: Some(short_mmo()),
        policy: Some("nope".into()),
        ..Default::default()
    };
    assert!(run(&bad).is_err());
}

#[test]
fn openb_trace_runs_both_policies() {
    let dir = repo_root().join("../shared/traces/alibaba-openb");
    let nodes = dir.join("openb_node_list_all_node.csv");
    let pods = dir.join("openb_pod_list_default.csv");
    if !nodes.exists() || !pods.exists() {
        println!(
            "SKIPPED: the openb trace is not at {} (it lives in shared/, never in the repo)",
            dir.display()
        );
        return;
    }
    let opts = SimOptions {
        trace_nodes: Some(nodes),
        trace_pods: Some(pods),
        compare: true,
        seed: Some(1),
        ..Default::default()
    };
    let report = run(&opts).unwrap();
    let json = report.to_json();
    assert!(json["policies"]["stator"]["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(
        json["policies"]["k8s-default"]["cost_usd"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // stator's warm spare: no more tasks left unplaced than the baseline leaves. (Task
    // by task the sets can differ: a burst of a shape not seen for a day may still
    // find no room; docs/PLANNING.md lists them.)
    let (stator, k8s) = (&report.runs[0], &report.runs[1]);
    let only_stator: Vec<&String> = stator
        .unscheduled_tasks
        .iter()
        .filter(|t| !k8s.unscheduled_tasks.contains(t))
        .collect();
    println!("unplaced by stator only: {only_stator:?}");
    assert!(
        stator.unscheduled_tasks.len() <= k8s.unscheduled_tasks.len(),
        "stator left {} tasks unplaced, k8s-default {}; by stator only: {only_stator:?}",
        stator.unscheduled_tasks.len(),
        k8s.unscheduled_tasks.len()
    );
}

/// The 10,000-node day; run in release: `cargo test --release -p stator-sim -- --ignored`.
#[test]
#[ignore]
fn scale_10k_day() {
    let opts = SimOptions {
        scenario: Some(repo_root().join("examples/sim/scale-10k.toml")),
        policy: Some("stator".into()),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let report = run(&opts).unwrap();
    println!(
        "scale-10k: {:.1} s wall, {}",
        started.elapsed().as_secs_f64(),
        report.to_json()
    );
}
