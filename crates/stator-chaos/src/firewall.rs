//! Real network partitions on loopback: one cgroup per node, iptables rules in a chain
//! of our own that drop the packets a node's process sends to the cut-off nodes'
//! transport ports.
//!
//! Why cgroups: the replica transport keeps one connection per (caller, callee) pair, so
//! node A's requests to node B leave A from an ephemeral port towards B's listening port.
//! Rules on listening ports alone would cut the links into A but not A's own calls out, so
//! an "isolated" leader would keep its followers. Matching the sending process's cgroup
//! (`-m cgroup --path`) with the callee's port cuts both directions of every link: no
//! request crosses, so no reply does either. A socket keeps the cgroup it was created in,
//! so each agent is moved into its node's cgroup as soon as it starts, before it dials.
//!
//! Everything created here (the chain, the jump from OUTPUT, the cgroups) carries the
//! process id in its name and is removed by [`Firewall::cleanup`], called from `Drop` too,
//! so an error or a panic leaves nothing behind; chains of dead runs are removed at start.

use anyhow::{bail, Context as _};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Prefix of everything this module creates; followed by the owning process id.
const NAME_PREFIX: &str = "STATOR-CHAOS-";

/// One cut link: packets from the process in `from_node`'s cgroup to TCP port `to_port`
/// are dropped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    /// Node whose process sends.
    pub from_node: String,
    /// Transport port of the node it must not reach.
    pub to_port: u16,
}

/// The iptables chain and cgroups of one chaos run.
pub struct Firewall {
    chain: String,
    /// Where our cgroups live in the cgroup2 mount, e.g. `/sys/fs/cgroup/stator-chaos-42`.
    cgroup_dir: PathBuf,
    /// `cgroup_dir` relative to the cgroup2 root, as `-m cgroup --path` wants it.
    cgroup_path: String,
    installed: bool,
    cleaned: bool,
}

fn iptables(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .context("running iptables (is the iptables package installed?)")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cgroup2 mount point and the cgroup path of its root, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> anyhow::Result<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // `id parent major:minor root mount-point options ... - fstype source options`
        let (left, right) = line.split_once(" - ").unwrap_or((line, ""));
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        if fields.len() >= 5 {
            return Ok((PathBuf::from(fields[4]), fields[3].to_string()));
        }
    }
    bail!("no cgroup2 file system is mounted")
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes chains and cgroups left by chaos runs whose process is gone (killed -9).
fn remove_stale(mount: &Path) {
    if let Ok(rules) = iptables(&["-S"]) {
        let stale: BTreeSet<String> = rules
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|chain| {
                chain
                    .strip_prefix(NAME_PREFIX)
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !pid_alive(pid))
            })
            .map(str::to_string)
            .collect();
        for chain in stale {
            eprintln!("chaos: removing the iptables chain {chain} of a dead run");
            while iptables(&["-D", "OUTPUT", "-j", &chain]).is_ok() {}
            let _ = iptables(&["-F", &chain]);
            let _ = iptables(&["-X", &chain]);
        }
    }
    if let Ok(dir) = std::fs::read_dir(mount) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_lowercase();
            let Some(pid) = name
                .strip_prefix(&NAME_PREFIX.to_lowercase())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !pid_alive(pid) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
}

/// Removes a cgroup and its children (they must hold no process any more).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Firewall {
    /// Creates the chain (hooked into OUTPUT, empty) and the cgroup directory, after
    /// checking that iptables can match on cgroups here. Fails with the reason when
    /// partitions cannot be made on this machine (not root, no iptables, no cgroup2).
    pub fn new() -> anyhow::Result<Firewall> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("partitions need root (iptables and cgroups)");
        }
        iptables(&["-S", "OUTPUT"])?;
        let (mount, mount_root) = cgroup2_mount()?;
        remove_stale(&mount);
        let leaf = format!("{}{}", NAME_PREFIX.to_lowercase(), std::process::id());
        let cgroup_dir = mount.join(&leaf);
        std::fs::create_dir_all(&cgroup_dir)
            .with_context(|| format!("creating the cgroup {}", cgroup_dir.display()))?;
        let root = mount_root.trim_matches('/');
        let cgroup_path = if root.is_empty() {
            leaf
        } else {
            format!("{root}/{leaf}")
        };
        let mut firewall = Firewall {
            chain: format!("{NAME_PREFIX}{}", std::process::id()),
            cgroup_dir,
            cgroup_path,
            installed: false,
            cleaned: false,
        };
        iptables(&["-N", &firewall.chain])?;
        firewall.installed = true;
        // Probe: a rule with a cgroup match, in the empty chain, proves the kernel has it.
        firewall.node_cgroup("probe")?;
        let probe = firewall.rule_args("probe", 1);
        iptables(&probe.iter().map(String::as_str).collect::<Vec<_>>())
            .context("iptables cannot match on cgroups here (xt_cgroup)")?;
        iptables(&["-F", &firewall.chain])?;
        iptables(&["-I", "OUTPUT", "-j", &firewall.chain])?;
        Ok(firewall)
    }

    fn node_cgroup(&self, node: &str) -> anyhow::Result<PathBuf> {
        let dir = self.cgroup_dir.join(node);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the cgroup {}", dir.display()))?;
        Ok(dir)
    }

    fn rule_args(&self, from_node: &str, to_port: u16) -> Vec<String> {
        [
            "-A",
            &self.chain,
            "-p",
            "tcp",
            "-m",
            "cgroup",
            "--path",
            &format!("{}/{from_node}", self.cgroup_path),
            "--dport",
            &to_port.to_string(),
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Moves process `pid` into `node`'s cgroup unless it is there already. Returns
    /// whether it moved.
    pub fn adopt(&self, node: &str, pid: u32) -> anyhow::Result<bool> {
        let want = format!("/{}/{node}", self.cgroup_path);
        let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if now
            .lines()
            .any(|l| l.strip_prefix("0::") == Some(want.as_str()))
        {
            return Ok(false);
        }
        let procs = self.node_cgroup(node)?.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", procs.display()))?;
        Ok(true)
    }

    /// Replaces the rules with exactly `blocks` (empty: heal everything).
    pub fn set(&self, blocks: &BTreeSet<Block>) -> anyhow::Result<()> {
        iptables(&["-F", &self.chain])?;
        for block in blocks {
            let args = self.rule_args(&block.from_node, block.to_port);
            iptables(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(())
    }

    /// Packets the current rules dropped so far: evidence that a partition really cut
    /// traffic, read before healing.
    pub fn dropped_packets(&self) -> anyhow::Result<u64> {
        let listing = iptables(&["-L", &self.chain, "-v", "-n", "-x"])?;
        Ok(listing
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// Removes the rules, the chain and the cgroups. The processes in the cgroups must
    /// have exited for the cgroups to go (they are left behind otherwise, and removed by
    /// the next run). Idempotent.
    pub fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        if self.installed {
            while iptables(&["-D", "OUTPUT", "-j", &self.chain]).is_ok() {}
            if let Err(e) = iptables(&["-F", &self.chain]) {
                eprintln!("chaos: cleaning up iptables: {e}");
            }
            if let Err(e) = iptables(&["-X", &self.chain]) {
                eprintln!("chaos: cleaning up iptables: {e}");
            }
        }
        // Processes killed a moment ago may still be leaving their cgroups.
        for _ in 0..20 {
            remove_cgroup_tree(&self.cgroup_dir);
            if !self.cgroup_dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!(
            "chaos: {} still holds processes; the next run removes it",
            self.cgroup_dir.display()
        );
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The links to cut so that no node of `left` reaches a node of `right` and back.
/// `ports` gives each node's transport port.
pub fn cut(
    left: &[String],
    right: &[String],
    ports: &std::collections::BTreeMap<String, u16>,
) -> BTreeSet<Block> {
    let mut blocks = BTreeSet::new();
    for a in left {
        for b in right {
            if a == b {
                continue;
            }
            for (from, to) in [(a, b), (b, a)] {
                if let Some(port) = ports.get(to) {
                    blocks.insert(Block {
                        from_node: from.clone(),
                        to_port: *port,
                    });
                }
            }
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_blocks_both_directions_of_every_crossing_link() {
        let ports = [("a", 1), ("b", 2), ("c", 3)]
            .into_iter()
            .map(|(n, p)| (n.to_string(), p))
            .collect();
        let blocks = cut(&["a".into()], &["b".into(), "c".into()], &ports);
        let pairs: Vec<(String, u16)> = blocks
            .into_iter()
            .map(|b| (b.from_node, b.to_port))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), 2),
                ("a".into(), 3),
                ("b".into(), 1),
                ("c".into(), 1)
            ]
        );
    }
}
