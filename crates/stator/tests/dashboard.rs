//! The dashboard in a real browser: Debian's headless `chromium`, driven over the
//! DevTools protocol on a pipe (`--remote-debugging-pipe`: messages are JSON separated
//! by NUL bytes on fds 3 and 4, so no WebSocket client and no downloaded browser are
//! needed), against a real `stator up`.
//!
//! Without `chromium` the test prints `SKIPPED` (and fails under `STATOR_REQUIRE_ALL=1`).
//! Screenshots go to `CARGO_TARGET_TMPDIR/dashboard/`, or to `STATOR_SCREENSHOTS_DIR`
//! (`STATOR_SCREENSHOTS_DIR=docs/img` refreshes the README's pictures).

mod common;

use base64::Engine as _;
use common::{have, wait_for, Cluster, WAIT};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Longest wait for one DevTools answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest DevTools message accepted (a full-window PNG screenshot is a few MiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A headless Chromium with a fresh profile, killed (with its helpers) on drop.
struct Browser {
    child: Child,
    pipe: UnixStream,
    messages: Receiver<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("stator-chromium-")
            .tempdir()
            .expect("profile dir");
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let their_fd = theirs.as_raw_fd();
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log");
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1440,1000",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own group: the renderer and GPU helpers die with it.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The
        // socket moves to a high fd first so that dup2 onto 3 and 4 never closes it.
        unsafe {
            command.pre_exec(move || {
                let high = libc::fcntl(their_fd, libc::F_DUPFD, 10);
                if high < 0 || libc::dup2(high, 3) < 0 || libc::dup2(high, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop(theirs);
        let (sender, messages) = mpsc::channel();
        let mut reader = ours.try_clone().expect("clone pipe");
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(value) = serde_json::from_slice(&message[..end]) {
                        if sender.send(value).is_err() {
                            return;
                        }
                    }
                }
                assert!(
                    pending.len() < MAX_MESSAGE_BYTES,
                    "DevTools message too large"
                );
            }
        });
        Browser {
            child,
            pipe: ours,
            messages,
            next_id: 0,
            _profile: profile,
        }
    }

    /// One DevTools call; its `result`.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.pipe.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to {method} from chromium: {e}"));
            if answer["id"] == id {
                assert!(
                    answer.get("error").is_none(),
                    "{method} failed: {}",
                    answer["error"]
                );
                return answer["result"].clone();
            }
        }
    }

    /// A new tab at `url`; its session id.
    fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({ "url": url }));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        attached["sessionId"].as_str().unwrap().to_string()
    }

    /// The value of `expression` in the tab (null when it throws).
    fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if result.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the tab; returns its value.
    fn wait_js(&mut self, session: &str, what: &str, expression: &str) -> Value {
        wait_for(what, WAIT, || {
            let value = self.eval(session, expression);
            let truthy = !(value.is_null() || value == false || value == "" || value == 0);
            truthy.then_some(value)
        })
    }

    fn screenshot(&mut self, session: &str, path: &Path) {
        let shot = self.call(
            Some(session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: a plain kill(2) of the group this test started.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = match std::env::var_os("STATOR_SCREENSHOTS_DIR") {
        Some(dir) => common::repo_root().join(dir),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard"),
    };
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// JavaScript: the text of column `col` in the row `key` of table `table`.
fn cell(table: &str, key: &str, col: &str) -> String {
    format!(
        "(document.querySelector('#{table} tr[data-key=\"{key}\"] [data-col={col}]') || {{}}).textContent"
    )
}

#[test]
fn dashboard_shows_the_cluster_live_and_refuses_a_wrong_token() {
    if !have(
        "chromium",
        &["--version"],
        "the dashboard browser test (apt-get install chromium)",
    ) {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let text = std::fs::read_to_string(common::repo_root().join("examples/kv.toml")).unwrap();
    let port = common::free_port();
    let spec = cluster.write_spec(
        "kv.toml",
        &text.replace("127.0.0.1:6380", &format!("127.0.0.1:{port}")),
    );
    cluster.apply(&spec);
    cluster.wait_service_healthy("sessions", 4);
    let shots = screenshots_dir();

    // `stator up` printed the dashboard's URL with the token in the fragment.
    let printed = std::fs::read_to_string(cluster.test_dir().join("up.log")).expect("up.log");
    let line = printed
        .lines()
        .find(|l| l.contains("dashboard"))
        .unwrap_or_else(|| panic!("no dashboard line in the output of `stator up`:\n{printed}"));
    assert!(
        line.contains(&format!("{}/ui/#token={}", cluster.api, cluster.token))
            && !line.contains('?'),
        "{line}"
    );

    let mut browser = Browser::launch();
    let page = browser.open(&format!("{}/ui/#token={}", cluster.api, cluster.token));
    browser.wait_js(
        &page,
        "the token to leave the address bar",
        "location.hash === '#/' && !location.href.includes('token')",
    );
    browser.wait_js(
        &page,
        "3 ready nodes on the page",
        "document.querySelectorAll('#nodes tbody [data-col=state] .ready').length === 3",
    );
    browser.wait_js(
        &page,
        "the service on the page",
        "!!document.querySelector('#services tr[data-key=\"sessions\"]')",
    );
    browser.wait_js(
        &page,
        "4 partitions with a leader on the page",
        "[...document.querySelectorAll('#partitions tbody tr')].filter(tr => \
           tr.dataset.key.startsWith('sessions/') && \
           tr.querySelector('[data-col=leader]').textContent !== 'none').length === 4",
    );
    browser.screenshot(&page, &shots.join("dashboard-overview.png"));
    let first_paint_ms = browser.eval(&page, "statorDashboard.firstPaintMs()");
    println!("dashboard: first paint with data {first_paint_ms} ms after navigation");

    // SIGKILL the leader of partition 0; the open page must follow without a reload.
    browser.eval(&page, "window.notReloaded = true");
    // The leader as the page shows it now (it may have moved since the cluster settled),
    // once the page and the API agree on it.
    let (leader, leader_id) = wait_for("the page and the API to agree on a leader", WAIT, || {
        let shown = browser.eval(&page, &cell("partitions", "sessions/0", "leader"));
        let current = cluster.partitions("sessions");
        let leader = &current[0]["leader"];
        (leader["name"] == shown).then(|| {
            (
                leader["name"].as_str().unwrap().to_string(),
                leader["node_id"].as_u64().unwrap(),
            )
        })
    });
    let pid = cluster.agent_pid(&leader).expect("leader agent pid");
    // The page notes the wall-clock time the cell changes (the test's polling would add
    // its own delay to the figure).
    browser.eval(
        &page,
        &format!(
            "(() => {{ const td = document.querySelector('#partitions tr[data-key=\"sessions/0\"] [data-col=leader]'); \
               new MutationObserver(() => {{ const t = td.textContent; \
                 if (!window.leaderShownAtMs && t !== 'none' && t !== '{leader}') window.leaderShownAtMs = Date.now(); }}) \
               .observe(td, {{ childList: true, characterData: true, subtree: true }}); return true; }})()"
        ),
    );
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let killed = Instant::now();
    // SAFETY: kill(2) of an agent this test's cluster started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let new_leader_js = format!(
        "(t => t && t !== 'none' && t !== '{leader}' && t)({})",
        cell("partitions", "sessions/0", "leader")
    );
    let new_leader = browser.wait_js(
        &page,
        "a new leader of partition 0 on the page",
        &new_leader_js,
    );
    let new_leader = new_leader.as_str().expect("a node name").to_string();
    let new_leader_after = killed.elapsed();
    browser.wait_js(
        &page,
        "the killed node shown lost",
        &format!(
            "{} === 'lost'",
            cell("nodes", &format!("{leader}#{leader_id}"), "state")
        ),
    );
    let lost_after = killed.elapsed();
    assert_eq!(
        browser.eval(&page, "window.notReloaded === true"),
        json!(true),
        "the page reloaded"
    );
    let shown_at_ms = browser.eval(&page, "window.leaderShownAtMs").as_i64();
    println!(
        "dashboard: new leader {new_leader} in the page {} ms after the SIGKILL (test saw it after {} ms); node lost shown after {} ms",
        shown_at_ms.map_or("?".to_string(), |t| (t - killed_at_ms).to_string()),
        new_leader_after.as_millis(),
        lost_after.as_millis()
    );
    browser.screenshot(&page, &shots.join("dashboard-node-lost.png"));

    // The events feed got the news over the stream.
    browser.wait_js(
        &page,
        "node_lost in the events feed",
        "!!document.querySelector('#events li[data-type=node_lost]')",
    );

    // Service detail: slot map and leader placement.
    browser.eval(&page, "location.hash = '#/service/sessions'");
    browser.wait_js(
        &page,
        "the slot map of 4 partitions",
        "document.querySelectorAll('#slotmap > div').length === 4",
    );
    browser.wait_js(
        &page,
        "leader placement",
        "document.querySelectorAll('#placement tbody tr').length >= 2",
    );
    browser.screenshot(&page, &shots.join("dashboard-service.png"));

    // A node's page.
    browser.eval(&page, &format!("location.hash = '#/node/{new_leader}'"));
    browser.wait_js(
        &page,
        "the node's replicas",
        "document.querySelectorAll('#node-replicas tbody tr').length >= 1",
    );
    browser.screenshot(&page, &shots.join("dashboard-node.png"));

    // Read-only by default: the drain buttons are hidden until actions are turned on,
    // and a drain asks first (declined here, so nothing drains).
    browser.eval(&page, "location.hash = '#/'");
    browser.wait_js(
        &page,
        "the overview again",
        "!!document.querySelector('#nodes tbody button.act')",
    );
    assert_eq!(
        browser.eval(
            &page,
            "getComputedStyle(document.querySelector('#nodes tbody button.act')).display"
        ),
        json!("none")
    );
    let asked = browser.eval(
        &page,
        "document.querySelector('#actions-toggle').click(); \
         window.confirm = question => { window.asked = question; return false; }; \
         document.querySelector('#nodes tbody button.act').click(); window.asked",
    );
    assert!(
        asked.as_str().is_some_and(|q| q.starts_with("Drain ")),
        "{asked}"
    );
    assert!(
        cluster.nodes().iter().all(|n| n["state"] != "draining"),
        "a declined confirmation drained a node"
    );

    // The simulator report page reads `stator sim --compare --out DIR` files in the
    // browser (files shaped as stator-sim's report writes them).
    let sim_dir = cluster.test_dir().join("sim-out");
    std::fs::create_dir_all(&sim_dir).unwrap();
    std::fs::write(
        sim_dir.join("summary.json"),
        r#"{"policies":{"stator":{"cost_usd":12.5,"node_hours":40.0,"slo_violation_s":0.0},
           "k8s-default":{"cost_usd":20.0,"node_hours":64.0,"slo_violation_s":30.0}},
           "ratios":{"cost":0.625,"node_hours":0.625,"slo_violation":0.0}}"#,
    )
    .unwrap();
    let header = "t_s,nodes,replicas,cost_usd,slo_violating,quorum_lost,pending,cpu_requested_cores,cpu_used_cores\n";
    for (policy, nodes) in [("stator", [3, 4, 3]), ("k8s-default", [4, 6, 6])] {
        let rows: String = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{},{n},9,{:.4},0,0,0,1.0,0.5\n", i * 60, i as f64 * 0.5))
            .collect();
        std::fs::write(
            sim_dir.join(format!("{policy}.csv")),
            format!("{header}{rows}"),
        )
        .unwrap();
    }
    browser.eval(&page, "location.hash = '#/sim'");
    browser.wait_js(
        &page,
        "the file picker",
        "!!document.querySelector('#sim-files')",
    );
    let document = browser.call(Some(&page), "DOM.getDocument", json!({}));
    let input = browser.call(
        Some(&page),
        "DOM.querySelector",
        json!({ "nodeId": document["root"]["nodeId"], "selector": "#sim-files" }),
    );
    let files: Vec<String> = ["summary.json", "stator.csv", "k8s-default.csv"]
        .iter()
        .map(|f| sim_dir.join(f).display().to_string())
        .collect();
    browser.call(
        Some(&page),
        "DOM.setFileInputFiles",
        json!({ "nodeId": input["nodeId"], "files": files }),
    );
    browser.wait_js(
        &page,
        "the policies side by side, the ratios and the charts",
        "document.querySelectorAll('#sim-summary thead th').length === 3 && \
         document.querySelectorAll('#sim-ratios tbody tr').length === 3 && \
         document.querySelectorAll('svg.chart polyline').length === 6",
    );

    // Render time of a fresh overview (figures, not verdicts): 100 partitions as the
    // baseline, then 1,000, in the same page; the median of five of each, alternating,
    // so both see the same load from the rest of the machine. `first`: the first paint
    // (summary, nodes, services, the first rows); `full`: every row in.
    let mut samples: [(u32, Vec<f64>, Vec<f64>); 2] = [
        (100, Vec::new(), Vec::new()),
        (1000, Vec::new(), Vec::new()),
    ];
    for _ in 0..5 {
        for (count, first, full) in samples.iter_mut() {
            let timing = browser.eval(&page, &format!("statorDashboard.renderSynthetic({count})"));
            assert_eq!(timing["rows"], json!(*count), "every partition rendered");
            first.push(timing["first_ms"].as_f64().unwrap());
            full.push(timing["full_ms"].as_f64().unwrap());
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    for (count, first, full) in samples.iter_mut() {
        println!(
            "dashboard: overview of {count} partitions from scratch (median of 5): first paint {:.0} ms, all rows {:.0} ms",
            median(first),
            median(full)
        );
    }

    // A wrong token is refused: the login form says so and no data is shown.
    let refused = browser.open(&format!("{}/ui/#token=not-the-token", cluster.api));
    browser.wait_js(
        &refused,
        "the login form to refuse the token",
        "!document.querySelector('#login').hidden && \
         document.querySelector('#login-error').textContent.includes('refused')",
    );
    assert_eq!(
        browser.eval(&refused, "document.querySelector('#app').hidden"),
        json!(true)
    );
    browser.screenshot(&refused, &shots.join("dashboard-login-refused.png"));
    // The login form with the right token opens the dashboard.
    browser.eval(
        &refused,
        &format!(
            "document.querySelector('#login-token').value = '{}'; \
             document.querySelector('#login-form').requestSubmit(); true",
            cluster.token
        ),
    );
    browser.wait_js(
        &refused,
        "the dashboard after signing in with the form",
        "document.querySelector('#login').hidden && \
         document.querySelectorAll('#nodes tbody tr').length >= 3",
    );
    println!("dashboard: screenshots in {}", shots.display());
}
