//! Where the heap bytes of an idle replica go: 3 hosts in this process, N `kv` groups
//! (3 replicas each) formed, one write to each, then left to go quiet; a heap profiler
//! (`dhat`) counts the live bytes after each phase and, at the end, the bytes still live
//! by allocation site, grouped by the innermost stator or openraft frame (the caller
//! that owns them) and by the innermost frame outside the standard library (what
//! allocated them).
//!
//! `cargo run --release -p stator-replication --example idle_alloc -- 300`
//!
//! Writes `idle-alloc-heap.json` (dhat's format; <https://nnethercote.github.io/dh_view/dh_view.html>
//! opens it) in the current directory. Heap bytes are what the program asked for;
//! resident memory adds the allocator's size classes, headers and free space.

use stator_replication::testing::InProcessCluster;
use stator_replication::{ClientReply, ClientRequest, GroupId, GroupOptions, RequestKind};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Where dhat writes its profile.
const PROFILE_FILE: &str = "idle-alloc-heap.json";
/// Election timeout of the profiled groups.
const PROFILED_ELECTION_TIMEOUT_MS: u64 = 3_000;
/// Sites printed per table.
const TOP_SITES: usize = 25;
/// How long the groups idle before the final count: long enough for every group to go
/// quiet (`quiesce::QUIET_AFTER` plus a few sweeps).
const IDLE: Duration = Duration::from_secs(8);

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

fn group_id(g: u64) -> GroupId {
    GroupId::new(2 + g / 60_000, (g % 60_000) as u32)
}

fn live_bytes() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let groups: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let replicas = groups * 3;
    let cluster = InProcessCluster::start(3, Arc::new(stator_kv::KvFactory)).await;
    // One group first, so runtime and connection set-up are not counted per replica.
    cluster
        .create_group(GroupId::new(1, 0), &[1, 2, 3], GroupOptions::default())
        .await;
    cluster.leader(GroupId::new(1, 0)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let profiler = dhat::Profiler::builder()
        .file_name(PROFILE_FILE)
        .trim_backtraces(Some(40))
        .build();
    let rss_before = rss_kib();
    let heap_before = live_bytes();
    // The profiler records a backtrace per allocation, which slows everything down a
    // lot: long election timeouts keep elections from churning meanwhile (timeouts change
    // no structure's size).
    let options = GroupOptions {
        election_timeout_ms: PROFILED_ELECTION_TIMEOUT_MS,
        ..GroupOptions::default()
    };
    let per_replica = |bytes: u64| bytes.saturating_sub(heap_before) as f64 / replicas as f64;

    for g in 1..=groups {
        let group = group_id(g);
        for id in [1, 2, 3] {
            cluster.hosts[&id]
                .create_group(group, options, Box::new(stator_kv::KvMachine::new()))
                .await
                .expect("create group");
        }
    }
    let created = live_bytes();
    let members = cluster.members(&[1, 2, 3]);
    for g in 1..=groups {
        for id in [1, 2, 3] {
            cluster.hosts[&id]
                .bootstrap(group_id(g), &members)
                .await
                .expect("bootstrap");
        }
    }
    for g in 1..=groups {
        cluster.leader(group_id(g)).await;
    }
    let led = live_bytes();
    for g in 1..=groups {
        write_once(&cluster, group_id(g), g).await;
    }
    let written = live_bytes();
    tokio::time::sleep(IDLE).await;
    let quiet_groups = cluster.hosts[&1]
        .statuses()
        .iter()
        .filter(|s| s.quiet)
        .count();
    let idle = live_bytes();
    let rss_after = rss_kib();
    println!(
        "{groups} groups, {replicas} replicas; {quiet_groups} of host 1's replicas quiet; live heap bytes per replica:"
    );
    println!(
        "  created, before bootstrap       {:8.1}",
        per_replica(created)
    );
    println!("  every group has a leader       {:8.1}", per_replica(led));
    println!(
        "  after one write to each group  {:8.1}",
        per_replica(written)
    );
    println!(
        "  idle {:>2} s                     {:8.1}",
        IDLE.as_secs(),
        per_replica(idle)
    );
    println!(
        "  resident set growth per replica {:7.1} KiB (heap {:.1} KiB)",
        rss_after.saturating_sub(rss_before) as f64 / replicas as f64,
        per_replica(idle) / 1024.0
    );
    drop(profiler);
    report_sites(replicas);
    drop(cluster);
}

/// One SET through the group's leader.
async fn write_once(cluster: &InProcessCluster, group: GroupId, g: u64) {
    let payload = format!(
        "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n${}\r\n{g}\r\n",
        g.to_string().len()
    );
    for _attempt in 0..50 {
        let leader = cluster.leader(group).await;
        let reply = cluster.hosts[&leader]
            .serve_client(
                group,
                ClientRequest {
                    client_id: 0,
                    seq: 0,
                    kind: RequestKind::Write,
                    payload: payload.clone().into_bytes(),
                },
            )
            .await;
        if matches!(reply, ClientReply::Ok(_)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no write reached group {group}");
}

/// Reads dhat's profile and prints the bytes still live at the end by site.
fn report_sites(replicas: u64) {
    let text = std::fs::read_to_string(PROFILE_FILE).expect("dhat wrote its profile");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("dhat's JSON");
    let frames: Vec<&str> = profile["ftbl"]
        .as_array()
        .expect("ftbl")
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    let mut by_owner: HashMap<String, (u64, u64)> = HashMap::new();
    let mut by_allocator: HashMap<String, (u64, u64)> = HashMap::new();
    for point in profile["pps"].as_array().expect("pps") {
        let bytes = point["eb"].as_u64().unwrap_or(0);
        let blocks = point["ebk"].as_u64().unwrap_or(0);
        if bytes == 0 {
            continue;
        }
        let stack: Vec<&str> = point["fs"]
            .as_array()
            .expect("fs")
            .iter()
            .filter_map(|i| frames.get(i.as_u64()? as usize).copied())
            .collect();
        let owner = stack
            .iter()
            .find(|f| is_ours(f))
            .map(|f| function_of(f))
            .unwrap_or_else(|| "(no stator/openraft frame)".into());
        let allocator = stack
            .iter()
            .find(|f| !is_plumbing(f))
            .map(|f| function_of(f))
            .unwrap_or_else(|| "(std only)".into());
        let o = by_owner.entry(owner).or_default();
        o.0 += bytes;
        o.1 += blocks;
        let a = by_allocator.entry(allocator).or_default();
        a.0 += bytes;
        a.1 += blocks;
    }
    print_table(
        "live bytes per replica by owner (innermost stator/openraft frame)",
        by_owner,
        replicas,
    );
    print_table(
        "live bytes per replica by allocating function (innermost non-std frame)",
        by_allocator,
        replicas,
    );
}

fn print_table(title: &str, sites: HashMap<String, (u64, u64)>, replicas: u64) {
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.1 .0));
    let total: u64 = sites.iter().map(|s| s.1 .0).sum();
    println!("\n{title}: total {:.1}", total as f64 / replicas as f64);
    println!("  bytes/replica  blocks/replica  site");
    for (site, (bytes, blocks)) in sites.into_iter().take(TOP_SITES) {
        println!(
            "  {:13.1}  {:14.2}  {site}",
            bytes as f64 / replicas as f64,
            blocks as f64 / replicas as f64
        );
    }
}

fn is_ours(frame: &str) -> bool {
    let f = function_part(frame);
    (f.contains("stator_") || f.contains("openraft::")) && !f.contains("idle_alloc::")
}

fn is_plumbing(frame: &str) -> bool {
    let f = function_part(frame);
    f.starts_with("alloc::")
        || f.starts_with("core::")
        || f.starts_with("std::")
        || f.starts_with("dhat::")
        || f.starts_with("hashbrown::")
        || f.starts_with("<alloc::")
        || f.starts_with("<core::")
        || f.starts_with("<std::")
        || f.starts_with("<dhat::")
        || f.starts_with("<hashbrown::")
        || f.contains("__rust")
        || f.starts_with("[root]")
}

/// `0x1234: name (file:line:col)` -> `name`.
fn function_part(frame: &str) -> &str {
    let f = frame.split_once(": ").map_or(frame, |(_, rest)| rest);
    f.rsplit_once(" (").map_or(f, |(name, _)| name)
}

/// The function name with its source location, generics dropped to keep lines short.
fn function_of(frame: &str) -> String {
    let name = function_part(frame);
    let location = frame
        .rsplit_once(" (")
        .map(|(_, loc)| loc.trim_end_matches(')'))
        .and_then(|loc| loc.rsplit_once("/src/").map(|(_, l)| l))
        .unwrap_or("");
    // `<Type<..> as Trait>::method` keeps its outer brackets' text; generic arguments go.
    let kept_depth = usize::from(name.starts_with('<'));
    let mut short = String::new();
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '<' => {
                if depth == kept_depth {
                    short.push_str("<..>");
                }
                depth += 1;
            }
            '>' => depth = depth.saturating_sub(1),
            _ if depth <= kept_depth => short.push(c),
            _ => {}
        }
    }
    let short = short.replace("<..><..>", "<..>");
    format!("{short} [{location}]")
}
