//! The metrics operators scrape, through the real binary: after writes to a `disk`
//! service, the server's `/metrics` has the per-node commit-latency histogram, transport
//! bytes per peer node and the per-partition apply lag, state and disk sizes, and the
//! gateway's `/metrics` has the pub/sub bus's loss counters, each with a plausible value.
//! Asserts what the series say, never a timing.

mod common;

use common::{free_port, kv_spec, wait_for, wait_resp_ready, Cluster, Writers, WAIT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `GET url` (plain HTTP, `[http://]host:port/path`) and the body, or `None` on any error.
fn http_get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect(host).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET /{path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    // hyper answers an HTTP/1.0 request as HTTP/1.0.
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

/// Every sample of `name` whose labels contain each of `labels`: (label text, value).
fn samples(text: &str, name: &str, labels: &[&str]) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|l| label_text.contains(l)))
                .then(|| Some((label_text.to_string(), value.parse().ok()?)))
                .flatten()
        })
        .collect()
}

fn total(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text, name, labels).iter().map(|(_, v)| v).sum()
}

#[test]
fn metrics_show_commit_latency_transport_bytes_and_bus_losses_after_writes() {
    let cluster = Cluster::start(3, &[]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let spec = format!("{}durability = \"disk\"\n", kv_spec("ledger", 1, port));
    cluster.apply(&cluster.write_spec("ledger.toml", &spec));
    cluster.wait_service_healthy("ledger", 1);
    wait_resp_ready(&addr);
    let writers = Writers::start(&addr, "metrics", 2);
    writers.wait_progress(200, "writes to measure");
    let acked = writers.finish().len() as f64;

    // Heartbeats carry the counters; the server refreshes its series every second.
    let url = format!("{}/metrics", cluster.api);
    let text = wait_for("the commit histogram to count the writes", WAIT, || {
        let text = http_get(&url)?;
        let counted = total(&text, "stator_node_commit_latency_seconds_count", &[]);
        eprintln!("{counted} of {acked} acknowledged writes in the histogram");
        (counted >= acked).then_some(text)
    });

    // The histogram: one series per node, buckets cumulative up to +Inf = count, a mean
    // latency between 0 and a minute.
    let count = total(&text, "stator_node_commit_latency_seconds_count", &[]);
    let sum = total(&text, "stator_node_commit_latency_seconds_sum", &[]);
    assert!(
        sum > 0.0 && sum / count < 60.0,
        "sum {sum} over {count} writes"
    );
    assert_eq!(
        samples(&text, "stator_node_commit_latency_seconds_count", &[]).len(),
        3,
        "one histogram per node:\n{text}"
    );
    assert_eq!(
        total(
            &text,
            "stator_node_commit_latency_seconds_bucket",
            &["le=\"+Inf\""]
        ),
        count,
        "the +Inf bucket holds every sample"
    );

    // Transport: the leader sent appends to its peers, and the gateway (peer `clients`)
    // sent the writes to the leader.
    let peer_bytes: f64 = samples(&text, "stator_node_transport_sent_bytes_total", &[])
        .iter()
        .filter(|(labels, _)| !labels.contains("peer=\"clients\""))
        .map(|(_, v)| v)
        .sum();
    assert!(
        peer_bytes > 100.0 * acked,
        "appends of {acked} writes to two followers: {peer_bytes} bytes\n{text}"
    );
    assert!(
        total(
            &text,
            "stator_node_transport_received_bytes_total",
            &["peer=\"clients\""]
        ) > 0.0,
        "the gateway's requests arrived over the transport:\n{text}"
    );

    // Per partition: the state and the durable store hold the writes; lag is bounded.
    let ledger = ["service=\"ledger\"", "partition=\"0\""];
    assert!(total(&text, "stator_partition_state_bytes", &ledger) > 0.0);
    assert!(
        total(&text, "stator_partition_disk_bytes", &ledger) > 0.0,
        "a disk service reports its store's size:\n{text}"
    );
    let lag = samples(&text, "stator_partition_apply_lag_entries", &ledger);
    assert_eq!(lag.len(), 1, "{text}");
    assert!(lag[0].1 >= 0.0 && lag[0].1 <= acked, "lag {lag:?}");

    // The gateway: the bus's loss counters exist and nothing was lost without pub/sub.
    let gateway = http_get(&format!("{}/metrics", cluster.gateway_http))
        .expect("the gateway serves /metrics");
    for name in [
        "stator_gateway_bus_dropped_frames_total",
        "stator_gateway_slow_subscribers_closed_total",
    ] {
        assert_eq!(
            samples(&gateway, name, &[]),
            vec![(String::new(), 0.0)],
            "{gateway}"
        );
    }
}
