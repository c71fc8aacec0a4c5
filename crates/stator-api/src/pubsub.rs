//! The pub/sub bus registry: how gateways and agents find each other to carry Pub/Sub
//! messages, and where the per-service `notify-keyspace-events` setting lives.
//!
//! Every process that serves RESP (each gateway, each agent) runs a bus listener and posts
//! a [`BusRegistration`] to [`BUS_PEERS_PATH`] about once a second (with the API token or
//! the join token); the answer, a [`BusView`], lists the other live peers, what they
//! report about their subscribers, and the notification flags of every service. A peer
//! that stops registering drops out after [`BUS_PEER_TTL_MS`]. `CONFIG SET
//! notify-keyspace-events` posts a [`NotifySetting`] to [`BUS_NOTIFY_PATH`].

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where peers register and learn each other (POST, [`BusRegistration`] -> [`BusView`]).
pub const BUS_PEERS_PATH: &str = "/v1/pubsub/peers";

/// Where `CONFIG SET notify-keyspace-events` lands (POST, [`NotifySetting`] -> [`BusView`]).
pub const BUS_NOTIFY_PATH: &str = "/v1/pubsub/notify";

/// A peer that has not registered for this long is dropped from the view: a few missed
/// refreshes (one a second) before its subscribers stop counting and nobody dials it.
pub const BUS_PEER_TTL_MS: u64 = 5_000;

/// Most channels (plus shard channels) one peer reports per service in its summary; past
/// it `PUBSUB CHANNELS`/`NUMSUB` of other peers' subscribers are cut short (documented as
/// approximate). Bounds the registration body at a few hundred KiB.
pub const MAX_REPORTED_CHANNELS: usize = 10_000;

/// What kind of process a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusPeerKind {
    /// A gateway: its RESP listeners serve every kv service.
    Gateway,
    /// An agent: its cluster-mode listeners, and the leaders of its replicas (which
    /// order `SPUBLISH` and publish keyspace notifications).
    Agent,
}

/// One peer: what it registers about itself (about once a second) and, unchanged, what
/// the registry answers about it to every peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusPeer {
    /// Random id the peer picked at start (a restart is a new peer).
    pub id: String,
    /// `host:port` of its bus listener, as other peers dial it.
    pub addr: String,
    /// Gateway or agent.
    pub kind: BusPeerKind,
    /// The agent's node id (agents only): where `SPUBLISH` for a partition led by that
    /// node is sent.
    #[serde(default)]
    pub node_id: Option<NodeId>,
    /// Its subscribers, per service.
    #[serde(default)]
    pub subscribers: BTreeMap<String, SubscriberSummary>,
}

/// A peer's registration is the peer as it describes itself.
pub type BusRegistration = BusPeer;

/// How many connections of one peer subscribe to what, for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberSummary {
    /// Channel -> subscribed connections (`SUBSCRIBE`).
    #[serde(default)]
    pub channels: Vec<(Vec<u8>, u64)>,
    /// Shard channel -> subscribed connections (`SSUBSCRIBE`).
    #[serde(default)]
    pub shard_channels: Vec<(Vec<u8>, u64)>,
    /// Pattern subscriptions (`PSUBSCRIBE`), counted as `PUBSUB NUMPAT` counts them.
    #[serde(default)]
    pub patterns: u64,
}

/// The registry's answer: every live peer (the caller included) and the notification
/// flags per service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusView {
    /// Live peers.
    pub peers: Vec<BusPeer>,
    /// Service -> `notify-keyspace-events` flags as Redis writes them (`"AKE"`); a service
    /// not listed has notifications off.
    #[serde(default)]
    pub notify: BTreeMap<String, String>,
}

/// `CONFIG SET notify-keyspace-events` for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifySetting {
    /// The service.
    pub service: String,
    /// The flags, already checked and normalised (`""` turns notifications off).
    pub flags: String,
}
