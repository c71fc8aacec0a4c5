//! End-to-end containers through the real binary: the busybox image built by
//! `examples/containers/make_image.py`, then `examples/container-web.toml` (a stateless
//! service answering HTTP), `examples/container-job.toml` (a job, as uid 1000) and
//! `examples/container-oom.toml` (OOM-killed, reported in `describe service`, restarted)
//! under `stator up`; the service keeps answering through the OOM kills, and deleting
//! everything leaves no container in any agent's runc state.
//!
//! Needs root, runc, busybox-static and python3; without them it prints `SKIPPED: ...`
//! unless `STATOR_REQUIRE_ALL=1`.

mod common;

use common::{free_port, have, repo_root, require_all, wait_for, Cluster, WAIT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The body of `GET /` at `addr`, if it answers 200.
fn http_get(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    // busybox httpd answers HTTP/1.1 even to a 1.0 request.
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

fn containers_can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("containers need root")
    } else if !Path::new("/bin/busybox").is_file() {
        Some("busybox-static is not installed")
    } else {
        None
    };
    if let Some(why) = why {
        assert!(!require_all(), "STATOR_REQUIRE_ALL=1 but {why}");
        println!("SKIPPED: {why}");
        return false;
    }
    have("runc", &["--version"], "the container driver runs runc")
        && have(
            "python3",
            &["--version"],
            "the image is built by a Python script",
        )
}

/// The example spec `name`, with its image at `image` and `edits` applied.
fn example(name: &str, image: &str, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo_root().join("examples").join(name)).unwrap();
    let relative = "oci:examples/containers/busybox:1";
    assert!(text.contains(relative), "examples/{name} changed");
    text = text.replace(relative, image);
    for (from, to) in edits {
        assert!(text.contains(from), "examples/{name} changed: no {from:?}");
        text = text.replace(from, to);
    }
    text
}

#[test]
fn container_service_job_and_oom_kill_run_through_the_binary() {
    if !containers_can_run() {
        return;
    }
    let cluster = Cluster::start(1, &[]);
    let image_dir = cluster.test_dir().join("busybox-image");
    let built = Command::new("python3")
        .arg(repo_root().join("examples/containers/make_image.py"))
        .arg("--busybox")
        .arg(&image_dir)
        .arg("1")
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let image = format!("oci:{}:1", image_dir.display());

    let port = free_port();
    cluster.apply(&cluster.write_spec(
        "web.toml",
        &example(
            "container-web.toml",
            &image,
            &[
                ("instances = 2", "instances = 1"),
                ("port = 8181", &format!("port = {port}")),
            ],
        ),
    ));
    cluster.apply(&cluster.write_spec("job.toml", &example("container-job.toml", &image, &[])));
    cluster.apply(&cluster.write_spec("oom.toml", &example("container-oom.toml", &image, &[])));

    let addr = format!("127.0.0.1:{port}");
    let body = wait_for("the container web service to answer", WAIT, || {
        http_get(&addr)
    });
    assert_eq!(body.trim(), "hello from container-web-0");

    let job = wait_for("the container job to succeed", WAIT, || {
        let job = cluster.service("container-job")?;
        assert_ne!(job["status"]["job_phase"], "failed", "{job}");
        (job["status"]["job_phase"] == "succeeded").then_some(job)
    });
    assert_eq!(job["status"]["completions_succeeded"], 2, "{job}");

    let hog = wait_for("the hog to be OOM-killed twice", WAIT, || {
        let hog = cluster.service("hog")?;
        let instance = hog["instances"].get(0)?.clone();
        (instance["oom_kills"].as_u64()? >= 2 && instance["reason"] == "OOMKilled")
            .then_some(instance)
    });
    assert!(hog["restarts"].as_u64().unwrap() >= 1, "{hog}");
    let described = cluster.stator_ok(&["describe", "service", "hog"]);
    assert!(described.contains("OOMKilled"), "{described}");

    // The neighbour never noticed.
    assert_eq!(
        http_get(&addr).as_deref().map(str::trim),
        Some("hello from container-web-0")
    );
    let web = cluster.service("container-web").unwrap();
    assert_eq!(web["instances"][0]["restarts"], 0, "{web}");

    for service in ["container-web", "container-job", "hog"] {
        cluster.stator_ok(&["delete", "service", service]);
    }
    let agents = cluster.data_dir.join("agents");
    wait_for("every container to be removed", WAIT, || {
        let mut left = Vec::new();
        for agent in std::fs::read_dir(&agents).ok()?.flatten() {
            let output = Command::new("runc")
                .arg("--root")
                .arg(agent.path().join("runc"))
                .args(["list", "--quiet"])
                .output()
                .ok()?;
            left.extend(
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(str::to_string),
            );
        }
        left.is_empty().then_some(())
    });
}
