//! End-to-end containers through the real binary: the busybox image built by
//! `examples/containers/make_image.py`, then `examples/container-web.toml` (a stateless
//! service answering HTTP), `examples/container-job.toml` (a job, as uid 1000) and
//! `examples/container-oom.toml` (OOM-killed, reported in `describe service`, restarted)
//! under `stator up`; the service keeps answering through the OOM kills, and deleting
//! everything leaves no container in any agent's runc state. Then the replicated game
//! room of `examples/container-game-room.toml` (python3 copied into an image by
//! `examples/containers/python_rootfs.py`), its stator-sm/1 app in containers: calls
//! through the gateway, kills of the leader's container process and of the leader's
//! agent, and no container, cgroup or mount of the killed agent left behind.
//!
//! Needs root, runc, busybox-static and python3; without them it prints `SKIPPED: ...`
//! unless `STATOR_REQUIRE_ALL=1`.

mod common;

use common::{
    children_of, cmdline, environ, free_port, have, repo_root, require_all, sigkill, wait_for,
    Cluster, WAIT,
};
use serde_json::json;
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

/// The body of a `POST path` with `body` at `addr`, if it answers 200.
fn http_post(addr: &str, path: &str, body: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
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

/// Builds the game room image (`examples/container-game-room.toml`'s recipe) under
/// `dir` and returns its reference.
fn build_game_room_image(dir: &Path) -> String {
    let rootfs = dir.join("game-room-rootfs");
    let image = dir.join("game-room-image");
    let apps = repo_root().join("examples/apps");
    let built = Command::new("python3")
        .arg(repo_root().join("examples/containers/python_rootfs.py"))
        .arg(&rootfs)
        .arg(apps.join("game_room.py"))
        .arg(apps.join("stator_sm.py"))
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let packed = Command::new("python3")
        .arg(repo_root().join("examples/containers/make_image.py"))
        .arg("--rootfs")
        .arg(&rootfs)
        .arg(&image)
        .args(["1", "--env", "PYTHONHOME=/usr/local", "--cmd"])
        .args(["/usr/local/bin/python3", "/app/game_room.py"])
        .output()
        .unwrap();
    assert!(packed.status.success(), "{packed:?}");
    format!("oci:{}:1", image.display())
}

/// Every descendant of `root`.
fn descendants(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let kids = children_of(all[i]);
        all.extend(kids);
        i += 1;
    }
    all.remove(0);
    all
}

/// The game room app (inside its container) serving `partition` under agent `agent`.
fn room_app_pid(agent: u32, partition: u64) -> Option<u32> {
    descendants(agent).into_iter().find(|&pid| {
        cmdline(pid).iter().any(|a| a == "/app/game_room.py")
            && environ(pid).get("STATOR_PARTITION") == Some(&partition.to_string())
    })
}

/// Containers runc knows in an agent's state root.
fn runc_list(agent_dir: &Path) -> Vec<String> {
    let output = Command::new("runc")
        .arg("--root")
        .arg(agent_dir.join("runc"))
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Mount points at or under `dir` in this (the host's) mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|point| Path::new(point).starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// cgroup directories of agent `pid` in any hierarchy.
fn cgroups_of_agent(pid: u32) -> Vec<String> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter(|line| line.contains(" - cgroup"))
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|root| Path::new(root).join("stator").join(format!("agent-{pid}")))
        .filter(|dir| dir.exists())
        .map(|dir| dir.display().to_string())
        .collect()
}

/// The game room as a replicated service whose stator-sm/1 app runs in containers:
/// calls through the gateway; SIGKILL of the leader's container process, then of the
/// leader's agent; the room keeps its state; the restarted agent left no container,
/// cgroup or mount of its old run behind; deleting the service removes the containers.
#[test]
fn replicated_game_room_runs_in_containers_and_survives_kills() {
    if !containers_can_run() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let image = build_game_room_image(&cluster.test_dir());
    let text =
        std::fs::read_to_string(repo_root().join("examples/container-game-room.toml")).unwrap();
    let relative = "oci:examples/containers/game-room:1";
    assert!(
        text.contains(relative),
        "examples/container-game-room.toml changed"
    );
    let spec = text
        .replace(relative, &image)
        .replace("partitions = 2", "partitions = 1");
    cluster.apply(&cluster.write_spec("rooms.toml", &spec));
    cluster.wait_service_healthy("rooms", 1);

    let addr = cluster
        .gateway_http
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let call = |body: &serde_json::Value, read: bool| -> Option<serde_json::Value> {
        let path = format!(
            "/v1/services/rooms/call?key=lobby{}",
            if read { "&read=1" } else { "" }
        );
        serde_json::from_str(&http_post(&addr, &path, &body.to_string())?).ok()
    };
    let call_ok = |body: serde_json::Value| {
        let reply = wait_for(&format!("{body} to be answered"), WAIT, || {
            call(&body, false)
        });
        assert_eq!(reply["ok"], true, "{body} -> {reply}");
    };
    let room = || {
        wait_for("the room to be read", WAIT, || {
            call(&json!({"op": "room"}), true)
        })
    };
    call_ok(json!({"op": "join", "player": "ana"}));
    call_ok(json!({"op": "join", "player": "bo"}));
    call_ok(json!({"op": "move", "player": "ana", "dx": 3, "dy": 4}));

    // The app runs inside a container: pid 1 of its own pid namespace.
    let leader = || -> String {
        let parts = cluster.partitions("rooms");
        parts[0]["leader"]["name"].as_str().unwrap().to_string()
    };
    let node = leader();
    let agent = cluster.agent_pid(&node).unwrap();
    let app = wait_for("the leader's app in its container", WAIT, || {
        room_app_pid(agent, 0)
    });
    let status = std::fs::read_to_string(format!("/proc/{app}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "not pid 1 of a namespace: {nspid}"
    );
    // As the spec's user, not root (the agent handed it the socket).
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("1000"), "{uid}");

    sigkill(app);
    call_ok(json!({"op": "move", "player": "bo", "dx": -1, "dy": 2}));
    wait_for("the leader's container to be recreated", WAIT, || {
        room_app_pid(agent, 0).filter(|&pid| pid != app)
    });
    let players = room()["players"].clone();
    assert_eq!(players["ana"]["x"], 3, "{players}");
    assert_eq!(players["bo"]["y"], 2, "{players}");

    // Now the leader's whole agent: the group fails over; `up` restarts the agent.
    let node = leader();
    let agent_dir = cluster.data_dir.join("agents").join(&node);
    let agent = cluster.agent_pid(&node).unwrap();
    let old_apps = descendants(agent);
    assert!(!cgroups_of_agent(agent).is_empty() || !Path::new("/sys/fs/cgroup").exists());
    sigkill(agent);
    call_ok(json!({"op": "join", "player": "cy"}));
    let players = room()["players"].clone();
    assert_eq!(players["ana"]["x"], 3, "{players}");
    assert!(players.get("cy").is_some(), "{players}");
    let new_agent = wait_for("up to restart the killed agent", WAIT, || {
        cluster.agent_pid(&node).filter(|&pid| pid != agent)
    });
    wait_for(
        "the old agent's containers, cgroups and mounts to be gone",
        WAIT,
        || {
            let alive: Vec<u32> = old_apps
                .iter()
                .copied()
                .filter(|pid| {
                    Path::new(&format!("/proc/{pid}")).exists()
                        && !descendants(new_agent).contains(pid)
                })
                .collect();
            let containers = runc_list(&agent_dir);
            let mounts = mounts_under(&agent_dir);
            let cgroups = cgroups_of_agent(agent);
            println!("left: pids {alive:?} containers {containers:?} mounts {mounts:?} cgroups {cgroups:?}");
            // Each running container has exactly its rootfs mounted on the host.
            (alive.is_empty() && cgroups.is_empty() && mounts.len() == containers.len())
                .then_some(())
        },
    );

    cluster.stator_ok(&["delete", "service", "rooms"]);
    let agents = cluster.data_dir.join("agents");
    wait_for(
        "every container, mount and replica cgroup to be removed",
        WAIT,
        || {
            let mut left = Vec::new();
            for agent in std::fs::read_dir(&agents).ok()?.flatten() {
                left.extend(runc_list(&agent.path()));
                left.extend(mounts_under(&agent.path()));
                let node = agent.file_name().to_string_lossy().into_owned();
                let pid = cluster.agent_pid(&node)?;
                for dir in cgroups_of_agent(pid) {
                    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.starts_with("replica-") {
                            left.push(format!("{dir}/{name}"));
                        }
                    }
                }
            }
            println!("left after delete: {left:?}");
            left.is_empty().then_some(())
        },
    );
}
