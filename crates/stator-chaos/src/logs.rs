//! `--keep-logs DIR`: the cluster's logs and small metadata, copied out of the run's
//! temporary directory when the run ends, whatever its verdict.
//!
//! What is kept (paths relative to the cluster's directory, so `DIR` has the same shape):
//! every `*.log` (`servers/*/server.log`, `gateway.log`, `agents/*/agent.log`,
//! `etcd/e*.log`), each agent's `identity.json` without its secret (the node id and
//! transport address of its last registration), each agent's `memory-groups.json`, and
//! [`LISTING_FILE`]: every file of the cluster's directory with its size (the replica
//! stores that existed, their segments and snapshots), so what is not copied is still
//! described. The replica stores themselves are not copied: they can be large.

use anyhow::Context as _;
use std::path::{Path, PathBuf};

/// The listing of every file of the cluster's directory, inside `DIR`.
pub const LISTING_FILE: &str = "files.txt";
/// Where chaos puts etcd's member logs inside the cluster's directory (etcd runs in a
/// temporary directory of its own, removed with it).
pub const ETCD_LOG_DIR: &str = "etcd";
/// The agent's identity file (`stator_agent::identity::IDENTITY_FILE`; chaos runs the
/// agent as a process and does not link its crate for two names).
const IDENTITY_FILE: &str = "identity.json";
/// The field of the identity file that is not copied: the node's secret.
const SECRET_FIELD: &str = "node_secret";
/// The agent's record of its `memory` groups (`stator_agent::identity::MEMORY_GROUPS_FILE`).
const MEMORY_GROUPS_FILE: &str = "memory-groups.json";

/// What happens to one file of the cluster's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Copied as it is.
    Copy,
    /// An agent's identity: copied without its secret.
    IdentityWithoutSecret,
    /// Only listed.
    ListOnly,
}

/// What to do with the file at `relative` (a path inside the cluster's directory). Pure.
pub fn what_to_keep(relative: &Path) -> Keep {
    let name = relative
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name == IDENTITY_FILE {
        Keep::IdentityWithoutSecret
    } else if name == MEMORY_GROUPS_FILE || relative.extension().is_some_and(|e| e == "log") {
        Keep::Copy
    } else {
        Keep::ListOnly
    }
}

/// Makes `dir` ready to receive the logs, before the run: created if missing; refused
/// if it holds anything (two runs' logs would mix).
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--keep-logs: creating {}", dir.display()))?;
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("--keep-logs: reading {}", dir.display()))?;
    anyhow::ensure!(
        entries.next().is_none(),
        "--keep-logs: {} is not empty; give a new or empty directory so runs' logs do not mix",
        dir.display()
    );
    Ok(())
}

/// What [`keep`] copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// Files copied.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Copies what [`what_to_keep`] says from `cluster_dir` to `dir` and writes the listing.
pub fn keep(cluster_dir: &Path, dir: &Path) -> anyhow::Result<Kept> {
    let mut files = Vec::new();
    walk(cluster_dir, Path::new(""), &mut files)?;
    files.sort();
    let mut listing = String::new();
    let mut kept = Kept::default();
    for (relative, size) in &files {
        listing.push_str(&format!("{size:>12} {}\n", relative.display()));
        let from = cluster_dir.join(relative);
        let to = dir.join(relative);
        let bytes = match what_to_keep(relative) {
            Keep::ListOnly => continue,
            Keep::Copy => std::fs::read(&from),
            Keep::IdentityWithoutSecret => std::fs::read(&from).map(|b| without_secret(&b)),
        };
        // A file may vanish between the walk and the copy (a store being compacted):
        // the listing still names it.
        let Ok(bytes) = bytes else { continue };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&to, &bytes).with_context(|| format!("writing {}", to.display()))?;
        kept.files += 1;
        kept.bytes += bytes.len() as u64;
    }
    std::fs::write(dir.join(LISTING_FILE), listing)
        .with_context(|| format!("writing {}", dir.join(LISTING_FILE).display()))?;
    Ok(kept)
}

/// An identity file without its secret; a file that does not parse is replaced by a
/// note saying so (it may hold the secret in a form this does not know).
fn without_secret(bytes: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(mut value) => {
            if let Some(object) = value.as_object_mut() {
                object.remove(SECRET_FIELD);
            }
            serde_json::to_vec_pretty(&value).expect("a JSON value serializes")
        }
        Err(e) => format!("identity file not copied: it does not parse ({e})\n").into_bytes(),
    }
}

/// Every regular file under `root/relative`, with its size (symlinks are not followed).
fn walk(root: &Path, relative: &Path, out: &mut Vec<(PathBuf, u64)>) -> anyhow::Result<()> {
    let here = root.join(relative);
    let entries = match std::fs::read_dir(&here) {
        Ok(entries) => entries,
        // Removed while walking (a store deleted by its agent).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", here.display())),
    };
    for entry in entries.flatten() {
        let path = relative.join(entry.file_name());
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            out.push((path, meta.len()));
        }
    }
    Ok(())
}

/// Copies etcd's member logs (`e<N>.log` in `etcd_dir`) into the cluster's directory
/// under [`ETCD_LOG_DIR`], before etcd's own temporary directory goes.
pub fn save_etcd_logs(etcd_dir: &Path, cluster_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(etcd_dir) else {
        return;
    };
    let to = cluster_dir.join(ETCD_LOG_DIR);
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "log") {
            let copied = std::fs::create_dir_all(&to)
                .and_then(|()| std::fs::copy(&path, to.join(entry.file_name())));
            if let Err(e) = copied {
                eprintln!("chaos: could not keep etcd's log {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_and_identities_are_kept_stores_only_listed() {
        let keep = |p: &str| what_to_keep(Path::new(p));
        assert_eq!(keep("servers/s0/server.log"), Keep::Copy);
        assert_eq!(keep("gateway.log"), Keep::Copy);
        assert_eq!(keep("agents/node-2/agent.log"), Keep::Copy);
        assert_eq!(keep("etcd/e0.log"), Keep::Copy);
        assert_eq!(keep("agents/node-2/raft/memory-groups.json"), Keep::Copy);
        assert_eq!(
            keep("agents/node-2/identity.json"),
            Keep::IdentityWithoutSecret
        );
        assert_eq!(keep("agents/node-2/raft/g1-0/log-0.seg"), Keep::ListOnly);
        assert_eq!(keep("stator"), Keep::ListOnly);
        assert_eq!(keep("servers/s0/api-token"), Keep::ListOnly);
    }

    #[test]
    fn keep_copies_logs_drops_the_secret_and_lists_every_file() {
        let cluster = tempfile::tempdir().unwrap();
        let root = cluster.path();
        std::fs::create_dir_all(root.join("agents/node-1/raft/g1-0")).unwrap();
        std::fs::write(root.join("agents/node-1/agent.log"), "registered\n").unwrap();
        std::fs::write(
            root.join("agents/node-1/identity.json"),
            r#"{"node_id":7,"node_secret":"s3cret","transport_addr":"10.0.0.2:4000"}"#,
        )
        .unwrap();
        std::fs::write(root.join("agents/node-1/raft/g1-0/log-0.seg"), [0u8; 64]).unwrap();
        std::fs::write(root.join("stator"), [0u8; 16]).unwrap();

        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("logs");
        prepare(&dir).unwrap();
        let kept = keep(root, &dir).unwrap();

        assert_eq!(kept.files, 2);
        assert_eq!(
            std::fs::read_to_string(dir.join("agents/node-1/agent.log")).unwrap(),
            "registered\n"
        );
        let identity = std::fs::read_to_string(dir.join("agents/node-1/identity.json")).unwrap();
        assert!(identity.contains("\"node_id\": 7"), "{identity}");
        assert!(!identity.contains("s3cret"), "{identity}");
        assert!(!dir.join("agents/node-1/raft/g1-0/log-0.seg").exists());
        let listing = std::fs::read_to_string(dir.join(LISTING_FILE)).unwrap();
        assert!(
            listing.contains("64 agents/node-1/raft/g1-0/log-0.seg"),
            "{listing}"
        );
        assert!(listing.contains("16 stator"), "{listing}");

        // A second run into the same directory is refused, not mixed in.
        let refused = prepare(&dir).unwrap_err().to_string();
        assert!(refused.contains("not empty"), "{refused}");
    }
}
