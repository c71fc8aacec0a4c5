//! The node's identity on its data dir: the id, per-node secret and transport address of
//! its last registration, so an agent restarted on the same data dir comes back as itself.

use serde::{Deserialize, Serialize};
use stator_api::agent::Rejoin;
use stator_api::ids::{GroupId, NodeId};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The identity file inside the agent's data dir.
pub const IDENTITY_FILE: &str = "identity.json";
/// Where the replica host keeps durable replicas, inside the agent's data dir.
pub const RAFT_DIR: &str = "raft";
/// The `memory` groups this node hosts, inside [`RAFT_DIR`]: after a restart they are
/// the replicas whose state is gone ("forgotten").
pub const MEMORY_GROUPS_FILE: &str = "memory-groups.json";

/// What the server handed out at the last registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node id.
    pub node_id: NodeId,
    /// The per-node secret proving it.
    pub node_secret: String,
    /// Where the replica transport listened: peers' memberships hold this address, so a
    /// restarted agent listens there again when it can.
    pub transport_addr: String,
}

impl Identity {
    /// What to send to keep this identity.
    pub fn rejoin(&self) -> Rejoin {
        Rejoin {
            node_id: self.node_id,
            node_secret: self.node_secret.clone(),
        }
    }
}

/// The identity stored in `data_dir`, if any. A file that does not parse is ignored
/// with a warning: the agent then joins as a new node, which is always safe.
pub fn load(data_dir: &Path) -> Option<Identity> {
    let path = data_dir.join(IDENTITY_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(identity) => Some(identity),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring unreadable identity file: {e}");
            None
        }
    }
}

/// Stores `identity` (0600, fsynced, replaced atomically).
pub fn save(data_dir: &Path, identity: &Identity) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(identity).expect("identity serializes");
    write_atomically(&data_dir.join(IDENTITY_FILE), text.as_bytes())
}

/// The replica stores' directory of an agent.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(RAFT_DIR)
}

/// The `memory` groups recorded as hosted by the previous run.
pub fn load_memory_groups(raft_dir: &Path) -> BTreeSet<GroupId> {
    std::fs::read_to_string(raft_dir.join(MEMORY_GROUPS_FILE))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Records the `memory` groups hosted now.
pub fn save_memory_groups(raft_dir: &Path, groups: &BTreeSet<GroupId>) -> std::io::Result<()> {
    std::fs::create_dir_all(raft_dir)?;
    let text = serde_json::to_string(groups).expect("group ids serialize");
    write_atomically(&raft_dir.join(MEMORY_GROUPS_FILE), text.as_bytes())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_round_trips_and_a_garbled_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        let identity = Identity {
            node_id: 7,
            node_secret: "s3cret".into(),
            transport_addr: "127.0.0.1:4000".into(),
        };
        save(dir.path(), &identity).unwrap();
        assert_eq!(load(dir.path()), Some(identity.clone()));
        assert_eq!(identity.rejoin().node_id, 7);
        std::fs::write(dir.path().join(IDENTITY_FILE), "{not json").unwrap();
        assert_eq!(load(dir.path()), None);
        let groups: BTreeSet<GroupId> = [GroupId::new(1, 0), GroupId::new(2, 3)].into();
        save_memory_groups(dir.path(), &groups).unwrap();
        assert_eq!(load_memory_groups(dir.path()), groups);
    }
}
