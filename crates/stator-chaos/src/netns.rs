//! Real network faults: every agent in a network namespace of its own, linked by a veth
//! pair to a private bridge on the host.
//!
//! ```text
//!   host: bridge stc<pid>b 10.X.Y.1/24   (servers, gateway and clients listen here)
//!     ├── veth stc<pid>h0 ── [netns stator-chaos-<pid>-node-1] eth0 10.X.Y.10/24
//!     ├── veth stc<pid>h1 ── [netns stator-chaos-<pid>-node-2] eth0 10.X.Y.11/24
//!     └── ...
//! ```
//!
//! `X.Y` is picked at random per run among subnets no interface or route uses, so
//! parallel runs do not collide; every name carries the process id, so the links,
//! namespaces and the forward rule of runs that were `kill -9`ed are recognised and
//! removed by the next run.
//!
//! Faults:
//! - **isolate** a node: its veth's host end down. Nothing crosses, in either direction,
//!   to any peer, the servers or the gateway; the node's packets are dropped at its
//!   veth end (counted in its `tx_dropped`).
//! - **cut** two sets of nodes apart (a majority/minority split, or a bridge where one
//!   node is on neither side and so reaches both): in each cut node's namespace, the
//!   filter table drops packets to and from the other side's addresses. The links to the
//!   servers and the gateway (the bridge address) stay up.
//!
//! Both are healed by [`Netns::heal`]; everything is removed by [`Netns::cleanup`], also
//! called from `Drop`.

use anyhow::{bail, Context as _};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Prefix of namespace names; followed by the owning process id and the node name.
const NS_PREFIX: &str = "stator-chaos-";
/// Prefix of link names (bridge `stc<pid>b`, veth host ends `stc<pid>h<i>`): link names
/// are at most 15 bytes, so the prefix is short.
const LINK_PREFIX: &str = "stc";
/// First host number of the agents in the subnet (`.1` is the bridge).
const FIRST_AGENT_HOST: u8 = 10;
/// Subnets tried before giving up on finding an unused one.
const SUBNET_ATTEMPTS: usize = 50;

/// One agent's place in the network.
#[derive(Debug, Clone)]
pub struct NodeNet {
    /// Namespace name (`ip netns exec NAME ...`).
    pub ns: String,
    /// Host end of its veth pair (on the bridge).
    pub host_veth: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// The bridge, namespaces and veth pairs of one chaos run.
pub struct Netns {
    bridge: String,
    bridge_ip: Ipv4Addr,
    nodes: BTreeMap<String, NodeNet>,
    forward_rule: Option<Vec<String>>,
    /// Namespaces holding drop rules now.
    cut: std::sync::Mutex<BTreeSet<String>>,
    /// Veths set down now.
    down: std::sync::Mutex<BTreeSet<String>>,
    cleaned: bool,
}

/// Runs `program args`; its stdout, or an error with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// `iptables-restore` of `table` inside namespace `ns`.
fn restore_in(ns: &str, table: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "-w", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (is the iptables package installed?)")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(table.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The owning pid in a name `<prefix><pid><rest>`, if any.
fn owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Removes namespaces, links and forward rules of chaos runs whose process is gone.
fn remove_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if owner(name, NS_PREFIX).is_some_and(|pid| !pid_alive(pid)) {
                eprintln!("chaos: removing the network namespace {name} of a dead run");
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            let Some(name) = line.split_whitespace().nth(1) else {
                continue;
            };
            let name = name.trim_end_matches(':');
            let name = name.split('@').next().unwrap_or(name);
            if owner(name, LINK_PREFIX).is_some_and(|pid| !pid_alive(pid)) {
                eprintln!("chaos: removing the link {name} of a dead run");
                let _ = ip(&["link", "del", name]);
            }
        }
    }
    if let Ok(rules) = run("iptables", &["-w", "5", "-S", "FORWARD"]) {
        for rule in rules.lines().filter_map(|l| l.strip_prefix("-A FORWARD ")) {
            let args: Vec<&str> = rule.split_whitespace().collect();
            let stale = args
                .iter()
                .any(|a| owner(a, LINK_PREFIX).is_some_and(|pid| !pid_alive(pid)));
            if stale {
                let mut delete = vec!["-w", "5", "-D", "FORWARD"];
                delete.extend(args);
                let _ = run("iptables", &delete);
            }
        }
    }
}

/// A /24 under 10.0.0.0/8 that no address or route on the host mentions.
fn pick_subnet() -> anyhow::Result<(u8, u8)> {
    let used = format!(
        "{}\n{}",
        ip(&["-o", "addr", "show"]).unwrap_or_default(),
        ip(&["route", "show", "table", "all"]).unwrap_or_default()
    );
    let mut rng = rand::thread_rng();
    for _ in 0..SUBNET_ATTEMPTS {
        let (x, y) = (rng.gen_range(100..=250u8), rng.gen_range(0..=255u8));
        if !used.contains(&format!("10.{x}.{y}.")) {
            return Ok((x, y));
        }
    }
    bail!("no free 10.x.y.0/24 subnet found in {SUBNET_ATTEMPTS} tries")
}

impl Netns {
    /// Creates the bridge and one namespace per node in `nodes`. Fails with the reason
    /// when namespaces cannot be made here (not root, no iproute2, no veth or bridge
    /// support); whatever was created is removed again.
    pub fn new(nodes: &[String]) -> anyhow::Result<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("network namespaces need root");
        }
        anyhow::ensure!(
            nodes.len() < usize::from(255 - FIRST_AGENT_HOST),
            "too many nodes for one /24"
        );
        remove_stale();
        let pid = std::process::id();
        let (x, y) = pick_subnet()?;
        let mut netns = Netns {
            bridge: format!("{LINK_PREFIX}{pid}b"),
            bridge_ip: Ipv4Addr::new(10, x, y, 1),
            nodes: BTreeMap::new(),
            forward_rule: None,
            cut: Default::default(),
            down: Default::default(),
            cleaned: false,
        };
        // On error `netns` is dropped, which removes what was made so far.
        ip(&["link", "add", &netns.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", netns.bridge_ip),
            "dev",
            &netns.bridge,
        ])?;
        ip(&["link", "set", &netns.bridge, "up"])?;
        // Bridged packets may traverse the host's FORWARD chain (br_netfilter); a DROP
        // policy there (Docker sets one) would cut every link.
        let rule: Vec<String> = ["FORWARD", "-i", &netns.bridge, "-o", &netns.bridge]
            .iter()
            .map(|s| s.to_string())
            .chain(["-j", "ACCEPT"].map(String::from))
            .collect();
        let mut insert = vec!["-w", "5", "-I"];
        insert.extend(rule.iter().map(String::as_str));
        if run("iptables", &insert).is_ok() {
            netns.forward_rule = Some(rule);
        }
        for (i, name) in nodes.iter().enumerate() {
            let node = NodeNet {
                ns: format!("{NS_PREFIX}{pid}-{name}"),
                host_veth: format!("{LINK_PREFIX}{pid}h{i}"),
                ip: Ipv4Addr::new(10, x, y, FIRST_AGENT_HOST + i as u8),
            };
            let peer = format!("{LINK_PREFIX}{pid}p{i}");
            ip(&["netns", "add", &node.ns])?;
            netns.nodes.insert(name.clone(), node.clone());
            ip(&[
                "link",
                "add",
                &node.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ])?;
            ip(&["link", "set", &peer, "netns", &node.ns])?;
            ip(&["-n", &node.ns, "link", "set", &peer, "name", "eth0"])?;
            ip(&[
                "-n",
                &node.ns,
                "addr",
                "add",
                &format!("{}/24", node.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &node.ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node.ns, "link", "set", "lo", "up"])?;
            ip(&["link", "set", &node.host_veth, "master", &netns.bridge])?;
            ip(&["link", "set", &node.host_veth, "up"])?;
        }
        // Probe: the filter table must work inside a namespace for cuts.
        if let Some(first) = netns.nodes.values().next() {
            restore_in(&first.ns, &filter_table(&[]))
                .context("iptables does not work inside a network namespace here")?;
        }
        Ok(netns)
    }

    /// The host's address on the bridge: servers, the gateway and clients listen here.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.bridge_ip
    }

    /// `node`'s namespace and address.
    pub fn node(&self, node: &str) -> Option<&NodeNet> {
        self.nodes.get(node)
    }

    /// Words for the log: the bridge and subnet.
    pub fn describe(&self) -> String {
        format!(
            "bridge {} {}/24, {} namespaces {}{}-*",
            self.bridge,
            self.bridge_ip,
            self.nodes.len(),
            NS_PREFIX,
            std::process::id()
        )
    }

    /// Isolates `node`: its veth's host end down.
    pub fn isolate(&self, node: &str) -> anyhow::Result<()> {
        let net = self.node(node).context("no namespace for that node")?;
        ip(&["link", "set", &net.host_veth, "down"])?;
        self.down
            .lock()
            .expect("not poisoned")
            .insert(net.host_veth.clone());
        Ok(())
    }

    /// Cuts `left` and `right` apart: in each node's namespace, drop packets to and from
    /// every node on the other side.
    pub fn cut(&self, left: &[String], right: &[String]) -> anyhow::Result<()> {
        let mut peers: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
        for (side, other) in [(left, right), (right, left)] {
            for a in side {
                for b in other.iter().filter(|b| *b != a) {
                    if let Some(net) = self.node(b) {
                        peers.entry(a.as_str()).or_default().push(net.ip);
                    }
                }
            }
        }
        for (node, addrs) in peers {
            let net = self.node(node).context("no namespace for that node")?;
            self.cut
                .lock()
                .expect("not poisoned")
                .insert(net.ns.clone());
            restore_in(&net.ns, &filter_table(&addrs))?;
        }
        Ok(())
    }

    /// Evidence that the current cut is real: packets the namespaces' drop rules
    /// matched (for isolation, see [`Netns::tx_dropped`]).
    pub fn dropped_packets(&self) -> u64 {
        let cut = self.cut.lock().expect("not poisoned").clone();
        cut.iter()
            .filter_map(|ns| {
                run(
                    "ip",
                    &[
                        "netns", "exec", ns, "iptables", "-w", "5", "-L", "-v", "-n", "-x",
                    ],
                )
                .ok()
            })
            .flat_map(|listing| {
                listing
                    .lines()
                    .filter(|l| l.contains("DROP"))
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Packets `node`'s end of its veth dropped so far: while the host end is down,
    /// everything the node sends (new segments, retransmissions, ARP) is dropped there.
    pub fn tx_dropped(&self, node: &str) -> Option<u64> {
        let net = self.node(node)?;
        // `ip netns exec` mounts the namespace's own /sys.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &net.ns,
                "cat",
                "/sys/class/net/eth0/statistics/tx_dropped",
            ],
        )
        .ok()?
        .trim()
        .parse()
        .ok()
    }

    /// Heals every fault: veths up, drop rules removed. Tries everything, reports the
    /// first failure.
    pub fn heal(&self) -> anyhow::Result<()> {
        let mut first_error = None;
        let down = std::mem::take(&mut *self.down.lock().expect("not poisoned"));
        for veth in down {
            if let Err(e) = ip(&["link", "set", &veth, "up"]) {
                first_error.get_or_insert(e);
            }
        }
        let cut = std::mem::take(&mut *self.cut.lock().expect("not poisoned"));
        for ns in cut {
            if let Err(e) = restore_in(&ns, &filter_table(&[])) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the namespaces (and with them the veth pairs), the bridge and the forward
    /// rule. Idempotent.
    pub fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        for net in self.nodes.values() {
            if let Err(e) = ip(&["netns", "del", &net.ns]) {
                eprintln!("chaos: removing namespace {}: {e}", net.ns);
            }
            // Gone with the namespace normally; a leftover host end goes here.
            let _ = ip(&["link", "del", &net.host_veth]);
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("chaos: removing bridge {}: {e}", self.bridge);
        }
        if let Some(rule) = self.forward_rule.take() {
            let mut delete = vec!["-w", "5", "-D"];
            delete.extend(rule.iter().map(String::as_str));
            let _ = run("iptables", &delete);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The filter table of a namespace that drops packets to and from `peers`.
pub fn filter_table(peers: &[Ipv4Addr]) -> String {
    let mut table =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for peer in peers {
        table.push_str(&format!("-A INPUT -s {peer}/32 -j DROP\n"));
        table.push_str(&format!("-A OUTPUT -d {peer}/32 -j DROP\n"));
    }
    table.push_str("COMMIT\n");
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_names() {
        assert_eq!(owner("stc1234b", LINK_PREFIX), Some(1234));
        assert_eq!(owner("stc77h3", LINK_PREFIX), Some(77));
        assert_eq!(owner("stator-chaos-42-node-1", NS_PREFIX), Some(42));
        assert_eq!(owner("eth0", LINK_PREFIX), None);
        assert_eq!(owner("stcx", LINK_PREFIX), None);
    }

    #[test]
    fn a_cut_table_drops_both_directions() {
        let table = filter_table(&[Ipv4Addr::new(10, 1, 2, 11)]);
        assert!(table.contains("-A INPUT -s 10.1.2.11/32 -j DROP"));
        assert!(table.contains("-A OUTPUT -d 10.1.2.11/32 -j DROP"));
        assert!(table.ends_with("COMMIT\n"));
        assert!(!filter_table(&[]).contains("DROP"));
    }
}
