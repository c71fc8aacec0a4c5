//! A real `stator up` cluster for end-to-end tests, driven through the CLI like a user
//! would, plus a small blocking RESP client and writers that record acknowledged writes.
//!
//! Every process a test starts is killed when its guard drops, even on panic: `up` runs
//! in its own process group, and its agents and their app processes inherit that group.

#![allow(dead_code)] // reason: each test binary uses a different subset of the helpers

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bound for anything a test waits on. Generous: tests assert behaviour, never speed,
/// and two cores are shared by every test and build running here.
pub const WAIT: Duration = Duration::from_secs(90);
/// How often a wait loop looks again.
const POLL: Duration = Duration::from_millis(250);
/// Timeout of one RESP command; a command past it counts as unacknowledged.
const RESP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `stator` binary under test.
pub fn stator_exe() -> &'static str {
    env!("CARGO_BIN_EXE_stator")
}

/// The repository root (for `examples/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Whether a missing outside program should fail the test (CI) rather than skip it.
pub fn require_all() -> bool {
    std::env::var("STATOR_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// True when `program` runs; otherwise prints `SKIPPED` (or panics under
/// `STATOR_REQUIRE_ALL=1`) and returns false.
pub fn have(program: &str, probe_args: &[&str], why: &str) -> bool {
    let ok = Command::new(program)
        .args(probe_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !require_all(),
            "STATOR_REQUIRE_ALL=1 but {program} is missing: {why}"
        );
        println!("SKIPPED: {program} is not installed ({why})");
    }
    ok
}

/// A free loopback port (bound then released; good enough on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `program args` with no input, returning (success, stdout + stderr).
pub fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Polls `probe` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// A `stator up` cluster in a temporary directory.
pub struct Cluster {
    /// Holds the data directory (kept on panic so its logs can be read).
    dir: Option<tempfile::TempDir>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The context file `up` wrote.
    pub context: PathBuf,
    /// API base URL.
    pub api: String,
    /// API token.
    pub token: String,
    /// Gateway HTTP base URL.
    pub gateway_http: String,
    up: Child,
}

impl Cluster {
    /// Starts `stator up --nodes N` on free loopback ports and waits until `nodes` nodes
    /// are ready.
    pub fn start(nodes: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("stator-e2e-")
            .tempdir()
            .expect("temp dir");
        let data_dir = dir.path().join("data");
        let up = spawn_up(dir.path(), &data_dir, nodes, extra_args);
        let context = data_dir.join("context");
        let mut cluster = Cluster {
            dir: Some(dir),
            data_dir,
            context: context.clone(),
            api: String::new(),
            token: String::new(),
            gateway_http: String::new(),
            up,
        };
        cluster.read_context();
        cluster.wait_ready_nodes(nodes);
        cluster
    }

    /// SIGKILLs `up`, every agent and every app at once (a power cut), then starts
    /// `stator up` again on the same data directory and waits for `nodes` ready nodes.
    pub fn kill_everything_and_restart(&mut self, nodes: usize, extra_args: &[&str]) {
        let pgid = self.up.id() as i32;
        // SAFETY: kill(2) on the process group this guard created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.up.wait();
        // Agents die with `up` (PR_SET_PDEATHSIG); wait until none is left.
        wait_for("every process of the killed cluster to exit", WAIT, || {
            // SAFETY: signal 0 only asks whether any process of the group is left.
            (unsafe { libc::kill(-pgid, 0) } != 0).then_some(())
        });
        let _ = std::fs::remove_file(&self.context);
        let test_dir = self.test_dir();
        self.up = spawn_up(&test_dir, &self.data_dir, nodes, extra_args);
        self.read_context();
        self.wait_ready_nodes(nodes);
    }

    fn read_context(&mut self) {
        let context = self.context.clone();
        let ctx: Value = wait_for("stator up to write its context", WAIT, || {
            if let Ok(Some(status)) = self.up.try_wait() {
                panic!("stator up exited early ({status}); see {}", self.log_hint());
            }
            // Written once, but read whole JSON only: a half-written file fails to parse.
            let text = std::fs::read_to_string(&context).ok()?;
            serde_json::from_str(&text).ok()
        });
        self.api = ctx["server"].as_str().expect("context server").to_string();
        self.token = ctx["token"].as_str().expect("context token").to_string();
        self.gateway_http = ctx["gateway_http"]
            .as_str()
            .expect("context gateway_http")
            .to_string();
    }
}

/// Starts `stator up` on `data_dir`, logging to `test_dir/up.log` (appended).
fn spawn_up(test_dir: &Path, data_dir: &Path, nodes: usize, extra_args: &[&str]) -> Child {
    {
        let dir = test_dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("up.log"))
            .expect("up.log");
        let mut command = Command::new(stator_exe());
        command
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--nodes", &nodes.to_string()])
            .args(["--api", "127.0.0.1:0", "--gateway-http", "127.0.0.1:0"])
            .args(extra_args)
            // `up` records the current context under $HOME: keep the user's untouched.
            .env("HOME", dir)
            .env_remove("STATOR_CONTEXT")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: the guard kills `up`, agents and apps in one go.
            command.process_group(0);
        }
        command.spawn().expect("start stator up")
    }
}

impl Cluster {
    fn log_hint(&self) -> String {
        format!(
            "{}/up.log and {}/agents/*/agent.log",
            self.dir
                .as_ref()
                .map_or(Path::new("?"), |d| d.path())
                .display(),
            self.data_dir.display()
        )
    }

    /// Waits until at least `n` nodes report `ready`.
    pub fn wait_ready_nodes(&self, n: usize) {
        wait_for(&format!("{n} ready nodes"), WAIT, || {
            let nodes = self.try_json(&["get", "nodes"])?;
            let ready = nodes
                .as_array()?
                .iter()
                .filter(|n| n["state"] == "ready")
                .count();
            (ready >= n).then_some(())
        });
    }

    /// Runs `stator --context CTX ARGS...`.
    pub fn stator(&self, args: &[&str]) -> Output {
        Command::new(stator_exe())
            .arg("--context")
            .arg(&self.context)
            .args(args)
            .env("HOME", self.data_dir.parent().unwrap())
            // anyhow appends a backtrace to the one-line reason when these are set (as
            // they often are under `cargo test`); a user's shell usually has neither.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .output()
            .expect("run stator")
    }

    /// Runs a verb that must succeed; returns its stdout.
    pub fn stator_ok(&self, args: &[&str]) -> String {
        let out = self.stator(args);
        assert!(
            out.status.success(),
            "stator {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a read verb with `-o json`; None if it failed (e.g. mid-failover).
    pub fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.stator(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Runs a read verb with `-o json`, which must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.stator_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// `get nodes -o json` as an array.
    pub fn nodes(&self) -> Vec<Value> {
        self.json(&["get", "nodes"]).as_array().unwrap().clone()
    }

    /// `get partitions SERVICE -o json` as an array.
    pub fn partitions(&self, service: &str) -> Vec<Value> {
        self.json(&["get", "partitions", service])
            .as_array()
            .unwrap()
            .clone()
    }

    /// `get services -o json` as an array.
    pub fn services(&self) -> Vec<Value> {
        self.json(&["get", "services"]).as_array().unwrap().clone()
    }

    /// One service from `get services -o json`.
    pub fn service(&self, name: &str) -> Option<Value> {
        self.services().into_iter().find(|s| s["name"] == name)
    }

    /// Writes a spec file into the test's directory and returns its path.
    pub fn write_spec(&self, file_name: &str, text: &str) -> PathBuf {
        let path = self.data_dir.parent().unwrap().join(file_name);
        std::fs::write(&path, text).expect("write spec");
        path
    }

    /// `stator apply -f PATH`, which must succeed.
    pub fn apply(&self, path: &Path) {
        self.stator_ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// Waits until every partition of `service` has a leader and its replication factor
    /// met; returns the partitions.
    pub fn wait_service_healthy(&self, service: &str, partitions: usize) -> Vec<Value> {
        wait_for(
            &format!("{service}: {partitions} partitions with a leader and RF met"),
            WAIT,
            || {
                let parts = self.try_json(&["get", "partitions", service])?;
                let parts = parts.as_array()?.clone();
                let healthy = parts.len() == partitions
                    && parts
                        .iter()
                        .all(|p| !p["leader"].is_null() && p["replication_factor_met"] == true);
                healthy.then_some(parts)
            },
        )
    }

    /// The pid of the agent process named `node`, found among the children of `up`
    /// (the harness's one lookup, which the benchmarks use too).
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        stator_harness::process::child_agent_pids(self.up.id())
            .get(node)
            .copied()
    }

    /// Every process of this cluster: `up` and all its descendants.
    pub fn processes(&self) -> Vec<u32> {
        let mut all = vec![self.up.id()];
        let mut i = 0;
        while i < all.len() {
            let kids = children_of(all[i]);
            all.extend(kids);
            i += 1;
        }
        all
    }

    /// The directory of the test (spec files, `up.log`).
    pub fn test_dir(&self) -> PathBuf {
        self.data_dir.parent().unwrap().to_path_buf()
    }

    fn stop(&mut self) {
        let pgid = self.up.id() as i32;
        // SAFETY: kill(2) on the process group this guard created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.up.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (apps of a wedged agent, a slow `up`) dies now.
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.up.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!(
                    "test failed: cluster logs kept in {} (up.log, data/agents/*/agent.log)",
                    kept.display()
                );
                if let Ok(log) = std::fs::read_to_string(kept.join("up.log")) {
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    eprintln!("--- tail of up.log ---");
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// Pids whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return kids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields follow the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            kids.push(pid);
        }
    }
    kids
}

/// A process's arguments (without argv[0]'s path resolution).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's environment.
pub fn environ(pid: u32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL, like a machine losing power.
pub fn sigkill(pid: u32) {
    // SAFETY: kill(2) on a pid this test found among its own cluster's processes.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// Listening TCP sockets of `pids`, as `ip:port` strings.
pub fn listening_addrs(pids: &[u32]) -> BTreeSet<String> {
    let mut inodes = BTreeSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy().into_owned();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut addrs = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode.
            if fields.len() < 10 || fields[3] != "0A" || !inodes.contains(fields[9]) {
                continue;
            }
            addrs.insert(decode_proc_addr(fields[1]));
        }
    }
    addrs
}

fn decode_proc_addr(hex: &str) -> String {
    let (ip, port) = hex.split_once(':').unwrap();
    let port = u16::from_str_radix(port, 16).unwrap();
    if ip.len() == 8 {
        let n = u32::from_str_radix(ip, 16).unwrap();
        // /proc prints the address in host (little-endian) order.
        let b = n.to_le_bytes();
        format!("{}.{}.{}.{}:{port}", b[0], b[1], b[2], b[3])
    } else {
        format!("[{ip}]:{port}")
    }
}

// ---------------------------------------------------------------------------------------
// RESP

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$n` (None: `$-1`)
    Bulk(Option<Vec<u8>>),
    /// `*n` (None: `*-1`)
    Array(Option<Vec<Reply>>),
}

/// A blocking RESP client with timeouts, enough for tests.
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Resp {
    /// Connects to `addr`.
    pub fn connect(addr: &str) -> std::io::Result<Resp> {
        let stream = TcpStream::connect_timeout(&addr.parse().unwrap(), RESP_TIMEOUT)?;
        stream.set_read_timeout(Some(RESP_TIMEOUT))?;
        stream.set_write_timeout(Some(RESP_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            frame.extend(format!("${}\r\n", a.len()).as_bytes());
            frame.extend(a.as_bytes());
            frame.extend(b"\r\n");
        }
        self.writer.write_all(&frame)?;
        self.read_reply()
    }

    /// Reads the next reply or pushed message, waiting at most `timeout` (then an error
    /// of kind `WouldBlock` or `TimedOut`).
    pub fn next_reply(&mut self, timeout: Duration) -> std::io::Result<Reply> {
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        let reply = self.read_reply();
        self.reader.get_ref().set_read_timeout(Some(RESP_TIMEOUT))?;
        reply
    }

    /// Sends one command without reading its reply (`SUBSCRIBE` answers with pushes).
    pub fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            frame.extend(format!("${}\r\n", a.len()).as_bytes());
            frame.extend(a.as_bytes());
            frame.extend(b"\r\n");
        }
        self.writer.write_all(&frame)
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches("\r\n").to_string())
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.read_line()?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP");
        let (kind, rest) = line.split_at(1);
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(rest.parse().map_err(|_| bad())?),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::new();
                    for _ in 0..n {
                        items.push(self.read_reply()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => return Err(bad()),
        })
    }
}

/// Writers that SET unique values to distinct keys through a RESP endpoint and record
/// every acknowledged one; a failed or timed-out SET is simply not recorded (it may or
/// may not have been applied, and is never checked).
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<(String, String)>>>,
}

impl Writers {
    /// Starts `n` writer threads against `addr`; keys are `PREFIX:w:i`.
    pub fn start(addr: &str, prefix: &str, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_count = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|w| {
                let stop = stop.clone();
                let acked_count = acked_count.clone();
                let addr = addr.to_string();
                let prefix = prefix.to_string();
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut conn: Option<Resp> = None;
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("{prefix}:{w}:{i}");
                        let value = format!("v{i}-{}", i.wrapping_mul(2654435761) % 1_000_003);
                        if conn.is_none() {
                            conn = Resp::connect(&addr).ok();
                        }
                        let Some(c) = conn.as_mut() else {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        match c.call(&["SET", &key, &value]) {
                            Ok(Reply::Simple(s)) if s == "OK" => {
                                acked.push((key, value));
                                acked_count.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                            Err(_) => conn = None,
                        }
                    }
                    acked
                })
            })
            .collect();
        Writers {
            stop,
            acked: acked_count,
            threads,
        }
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes beyond the current count are acknowledged: proof that
    /// the service takes writes at this point of the story.
    pub fn wait_progress(&self, more: u64, what: &str) {
        let target = self.acked() + more;
        wait_for(
            &format!("{more} more acknowledged writes ({what})"),
            WAIT,
            || (self.acked() >= target).then_some(()),
        );
    }

    /// Stops the writers; returns every acknowledged (key, value).
    pub fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("writer thread"))
            .collect()
    }
}

/// Waits until a RESP endpoint accepts a SET.
pub fn wait_resp_ready(addr: &str) {
    wait_for(
        &format!("RESP endpoint {addr} to accept a SET"),
        WAIT,
        || {
            let mut c = Resp::connect(addr).ok()?;
            match c.call(&["SET", "e2e:ready", "1"]).ok()? {
                Reply::Simple(s) if s == "OK" => Some(()),
                _ => None,
            }
        },
    );
}

/// Asserts every acknowledged write reads back with its value (over a fresh connection,
/// retrying transient errors).
pub fn assert_all_readable(addr: &str, acked: &[(String, String)]) {
    let mut conn = Resp::connect(addr).expect("connect for read-back");
    for (key, value) in acked {
        let got = wait_for(&format!("GET {key}"), WAIT, || {
            match conn.call(&["GET", key]) {
                Ok(Reply::Bulk(v)) => Some(v),
                Ok(_) => None,
                Err(_) => {
                    conn = Resp::connect(addr).ok()?;
                    None
                }
            }
        });
        assert_eq!(
            got.as_deref(),
            Some(value.as_bytes()),
            "acknowledged write {key}={value} was lost"
        );
    }
}

/// The name of the node leading the most partitions in `partitions` (ties: by name).
pub fn busiest_leader(partitions: &[Value]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for p in partitions {
        if let Some(name) = p["leader"]["name"].as_str() {
            *counts.entry(name.to_string()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(name, _)| name)
        .expect("some partition has a leader")
}

/// The spec of a kv service with its RESP endpoint on `port`, spread over nodes (not
/// zones, so a lost node's replicas can move to any other node).
pub fn kv_spec(name: &str, partitions: u32, port: u16) -> String {
    format!(
        "name = \"{name}\"\nkind = \"replicated\"\npartitions = {partitions}\nreplicas = 3\n\
         app = {{ builtin = \"kv\" }}\nexpose = {{ resp = \"127.0.0.1:{port}\" }}\n\
         resources = {{ cpu = \"250m\", memory = \"128Mi\" }}\n"
    )
}
