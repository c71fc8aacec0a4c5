//! The agent's end of the pub/sub bus ([`stator_gateway::bus`]): it registers through
//! the agent's server client (join token), so cluster-mode subscribers on this agent get
//! messages published anywhere, and the leaders hosted here publish their partitions'
//! `SPUBLISH` messages and keyspace notifications.

use crate::server::ServerClient;
use stator_api::ids::GroupId;
use stator_api::pubsub::{BusRegistration, BusView, NotifySetting};
use stator_gateway::bus::Registrar;
use stator_gateway::resp::pubsub::Broker;
use stator_kv::notify::{NotificationSink, NotifyFlags, Published};
use stator_replication::{Host, ReplicaRole};
use std::sync::Arc;

impl Registrar for ServerClient {
    async fn register(&self, registration: &BusRegistration) -> Result<BusView, String> {
        self.bus_register(registration)
            .await
            .map_err(|e| e.to_string())
    }

    async fn set_notify(&self, setting: &NotifySetting) -> Result<BusView, String> {
        self.bus_notify(setting).await.map_err(|e| e.to_string())
    }
}

/// Publishes the keyspace events of the kv replicas this agent leads.
pub struct LeaderNotifier {
    host: Host,
    broker: Arc<Broker>,
}

impl LeaderNotifier {
    /// Events of `host`'s leading replicas go to `broker` and, through its bus, to every
    /// gateway and agent.
    pub fn new(host: Host, broker: Arc<Broker>) -> Self {
        Self { host, broker }
    }
}

impl NotificationSink for LeaderNotifier {
    fn flags(&self, service: &str, group: GroupId) -> NotifyFlags {
        let Some(fabric) = self.broker.fabric() else {
            return NotifyFlags::default();
        };
        // The flags first: the cheap check, and off for almost every service.
        let flags = fabric.notify_flags(service);
        if !flags.enabled() {
            return flags;
        }
        let leads = self
            .host
            .status(group)
            .is_some_and(|status| status.role == ReplicaRole::Leader);
        if leads {
            flags
        } else {
            NotifyFlags::default()
        }
    }

    fn publish(&self, service: &str, _group: GroupId, messages: Vec<Published>) {
        for (channel, payload) in messages {
            self.broker.publish(service, &channel, &payload);
        }
    }
}
