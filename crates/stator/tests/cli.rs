//! The operator's CLI against a real one-node `stator up`: every verb answers bad input
//! with one line on stderr and no panic, closed pipes end it quietly, and `events -f`
//! follows the live stream.

mod common;

use common::{stator_exe, wait_for, Cluster, WAIT};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};

/// Asserts a failed run with exactly one line on stderr, `error: ...`, and no panic.
fn assert_one_line_error(out: &Output, args: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "stator {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !stderr.contains("panicked"),
        "stator {args:?} panicked: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "stator {args:?}: want one line on stderr, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("error: "), "stator {args:?}: {stderr}");
}

/// A pipe whose reading end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills both fds; each is owned once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors from pipe(2), owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

/// A plain HTTP GET; the body.
fn http_get(base_url: &str, path: &str) -> String {
    let addr = base_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the API");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn every_verb_answers_bad_input_with_one_line_and_closed_pipes_quietly() {
    // Bad command lines need no cluster.
    let home = tempfile::tempdir().unwrap();
    let bare = |args: &[&str]| {
        Command::new(stator_exe())
            .args(args)
            .env("HOME", home.path())
            .env_remove("STATOR_CONTEXT")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .current_dir(home.path())
            .stdin(Stdio::null())
            .output()
            .expect("run stator")
    };
    for args in [
        &["nosuchverb"][..],
        &["get"],
        &["get", "nodes", "--bogus"],
        &["get", "nodes", "-o", "yaml"],
        &["describe", "node"],
        &["describe", "partition", "sessions"],
        &["describe", "partition", "sessions/x"],
        &["events", "--since", "3"],
        &["top", "--limit", "many"],
        &["completions", "tcsh"],
        &["apply"],
        &["drain"],
        &["delete", "service"],
        &["get", "nodes"], // no context: says to run `stator up`
        &["sim", "--seed", "x"],
        &["bench", "nosuch"],
    ] {
        assert_one_line_error(&bare(args), args);
    }
    let completions = bare(&["completions", "bash"]);
    assert!(completions.status.success());
    assert!(String::from_utf8_lossy(&completions.stdout).contains("describe"));

    let cluster = Cluster::start(1, &[]);
    let spec = cluster.write_spec(
        "one.toml",
        "name = \"one\"\nkind = \"replicated\"\npartitions = 2\nreplicas = 1\napp = { builtin = \"kv\" }\n",
    );
    for args in [
        &["describe", "node", "nosuch"][..],
        &["describe", "service", "nosuch"],
        &["describe", "partition", "nosuch/0"],
        &["describe", "widget", "x"],
        &["events", "--service", "nosuch"],
        &["top", "--limit", "0"],
        &["get", "widgets"],
        &["get", "partitions", "nosuch"],
        &["delete", "service", "nosuch"],
        &["delete", "widget", "x"],
        &["drain", "nosuch"],
        &["apply", "-f", "/nonexistent/spec.toml"],
    ] {
        assert_one_line_error(&cluster.stator(args), args);
    }

    // `events -f` prints history, then follows: an apply shows up live.
    let mut follower = Command::new(stator_exe())
        .arg("--context")
        .arg(&cluster.context)
        .args(["events", "-f", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("stator events -f");
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    // The node's join is in the history.
    let joined = lines.next().expect("a line").expect("utf-8");
    assert!(joined.contains("node_joined"), "{joined}");
    cluster.apply(&spec);
    let applied = wait_for("service_applied on the live stream", WAIT, || {
        let line = lines.next()?.ok()?;
        line.contains("service_applied").then_some(line)
    });
    assert!(applied.contains("\"one\""), "{applied}");
    let _ = follower.kill();
    let _ = follower.wait();
    cluster.wait_service_healthy("one", 2);

    // Human output of the new verbs, with ages and events at the bottom.
    let node = cluster.stator_ok(&["describe", "node", "node-1"]);
    assert!(
        node.contains("Heartbeat:") && node.contains("ago"),
        "{node}"
    );
    assert!(
        node.contains("Replicas:") && node.contains("one/0"),
        "{node}"
    );
    assert!(node.trim_end().contains("Events:"), "{node}");
    let service = cluster.stator_ok(&["describe", "service", "one"]);
    assert!(
        service.contains("Partitions:") && service.contains("REPORTED"),
        "{service}"
    );
    assert!(service.contains("service_applied"), "{service}");
    let partition = cluster.stator_ok(&["describe", "partition", "one/1"]);
    assert!(
        partition.contains("Leader:") && partition.contains("Members:"),
        "{partition}"
    );
    let top = cluster.stator_ok(&["top"]);
    assert!(top.contains("NODES") && top.contains("PARTITIONS"), "{top}");

    // Per-partition and per-node series on /metrics (refreshed once a second).
    wait_for("per-partition metrics", WAIT, || {
        let text = http_get(&cluster.api, "/metrics");
        (text.contains("stator_partition_ops_per_second{service=\"one\",partition=\"1\"}")
            && text
                .contains("stator_partition_leader_changes_total{service=\"one\",partition=\"0\"}")
            && text.contains("stator_node_replicas{node=\"node-1\""))
        .then_some(())
    });

    // A drain with nowhere to go (one node) says why: in `get nodes`, in `describe
    // node`, and as one event however many passes find it blocked.
    cluster.stator_ok(&["drain", "node-1"]);
    let described = wait_for("describe node to show the drain waiting", WAIT, || {
        let text = cluster.stator_ok(&["describe", "node", "node-1"]);
        text.contains("Drain:        waiting on").then_some(text)
    });
    assert!(
        described.contains("one/0") && described.contains("add nodes"),
        "{described}"
    );
    let nodes = cluster.stator_ok(&["get", "nodes"]);
    assert!(nodes.contains("node-1 drain waits on:"), "{nodes}");
    std::thread::sleep(std::time::Duration::from_secs(2)); // several reconcile passes
    let events = cluster.stator_ok(&["events", "-o", "json"]);
    let blocked = events
        .lines()
        .filter(|l| l.contains("\"drain_blocked\""))
        .count();
    assert_eq!(
        blocked, 1,
        "one drain_blocked event, not one per pass:\n{events}"
    );

    // A closed pipe ends every printing verb quietly: exit 0, nothing on stderr.
    for args in [
        &["describe", "service", "one"][..],
        &["describe", "node", "node-1"],
        &["get", "partitions"],
        &["events"],
        &["top"],
        &["completions", "bash"],
    ] {
        let out = Command::new(stator_exe())
            .arg("--context")
            .arg(&cluster.context)
            .args(args)
            .stdout(Stdio::from(closed_pipe()))
            .stderr(Stdio::piped())
            .output()
            .expect("run stator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "stator {args:?} on a closed pipe: {} {stderr}",
            out.status
        );
    }
}
