//! The pub/sub bus registry: which gateways and agents carry Pub/Sub messages, where
//! their bus listeners are, what they report about their subscribers, and each
//! service's `notify-keyspace-events` flags (see [`stator_api::pubsub`]).
//!
//! Pure bookkeeping with the time passed in; the API keeps one behind a std mutex (held
//! for a map update, never across an await). It lives in the memory of the server that
//! runs the controller: after a restart or a change of holder, peers register again
//! within a second, and notification flags start empty, as Redis's `CONFIG SET` is lost
//! on a restart without `CONFIG REWRITE`.

use crate::error::ServerError;
use stator_api::pubsub::{
    BusPeer, BusRegistration, BusView, NotifySetting, BUS_PEER_TTL_MS, MAX_REPORTED_CHANNELS,
};
use std::collections::{BTreeMap, HashMap};

/// Most peers registered at once: every gateway and agent of a large cluster, with
/// room; a flood of fake registrations (which need a token) cannot grow it further.
pub const MAX_BUS_PEERS: usize = 16_384;

/// Most services with notification flags (one entry per service).
pub const MAX_NOTIFY_SERVICES: usize = 4_096;

/// Live peers and notification flags.
#[derive(Debug, Default)]
pub struct BusRegistry {
    peers: HashMap<String, (BusPeer, u64)>,
    notify: BTreeMap<String, String>,
}

impl BusRegistry {
    /// Records (or refreshes) `registration` at `now_ms`; answers the view.
    pub fn register(
        &mut self,
        mut registration: BusRegistration,
        now_ms: u64,
    ) -> Result<BusView, ServerError> {
        if registration.id.is_empty() || registration.id.len() > 64 {
            return Err(ServerError::BadRequest(
                "pub/sub peer id must be 1 to 64 characters".into(),
            ));
        }
        if registration.addr.parse::<std::net::SocketAddr>().is_err()
            && !registration.addr.contains(':')
        {
            return Err(ServerError::BadRequest(format!(
                "addr '{}' is not host:port",
                registration.addr
            )));
        }
        self.expire(now_ms);
        if !self.peers.contains_key(&registration.id) && self.peers.len() >= MAX_BUS_PEERS {
            return Err(ServerError::BadRequest(format!(
                "the pub/sub registry already holds {MAX_BUS_PEERS} peers; stop stale gateways or agents"
            )));
        }
        for summary in registration.subscribers.values_mut() {
            summary.channels.truncate(MAX_REPORTED_CHANNELS);
            summary.shard_channels.truncate(MAX_REPORTED_CHANNELS);
        }
        self.peers
            .insert(registration.id.clone(), (registration, now_ms));
        Ok(self.view())
    }

    /// Sets a service's notification flags (empty: off); answers the view.
    pub fn set_notify(
        &mut self,
        setting: NotifySetting,
        now_ms: u64,
    ) -> Result<BusView, ServerError> {
        self.expire(now_ms);
        if setting.flags.is_empty() {
            self.notify.remove(&setting.service);
        } else {
            if !self.notify.contains_key(&setting.service)
                && self.notify.len() >= MAX_NOTIFY_SERVICES
            {
                return Err(ServerError::BadRequest(format!(
                    "at most {MAX_NOTIFY_SERVICES} services may have keyspace notifications on"
                )));
            }
            self.notify.insert(setting.service, setting.flags);
        }
        Ok(self.view())
    }

    fn expire(&mut self, now_ms: u64) {
        self.peers
            .retain(|_, (_, seen_ms)| now_ms.saturating_sub(*seen_ms) <= BUS_PEER_TTL_MS);
    }

    fn view(&self) -> BusView {
        let mut peers: Vec<BusPeer> = self.peers.values().map(|(p, _)| p.clone()).collect();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        BusView {
            peers,
            notify: self.notify.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::pubsub::BusPeerKind;

    fn registration(id: &str) -> BusRegistration {
        BusRegistration {
            id: id.into(),
            addr: "127.0.0.1:4000".into(),
            kind: BusPeerKind::Gateway,
            node_id: None,
            subscribers: BTreeMap::new(),
        }
    }

    #[test]
    fn peers_expire_unless_refreshed_and_flags_follow_config_set() {
        let mut registry = BusRegistry::default();
        registry.register(registration("a"), 1_000).unwrap();
        let view = registry.register(registration("b"), 2_000).unwrap();
        assert_eq!(view.peers.len(), 2);
        let view = registry
            .register(registration("b"), 1_000 + BUS_PEER_TTL_MS + 1)
            .unwrap();
        assert_eq!(
            view.peers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["b"],
            "a stopped refreshing"
        );
        let view = registry
            .set_notify(
                NotifySetting {
                    service: "kv".into(),
                    flags: "AKE".into(),
                },
                7_000,
            )
            .unwrap();
        assert_eq!(view.notify["kv"], "AKE");
        let view = registry
            .set_notify(
                NotifySetting {
                    service: "kv".into(),
                    flags: String::new(),
                },
                7_000,
            )
            .unwrap();
        assert!(view.notify.is_empty());
        assert!(registry.register(registration(""), 7_000).is_err());
    }
}
