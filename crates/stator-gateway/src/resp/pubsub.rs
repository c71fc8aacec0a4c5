//! Pub/Sub: `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE` and their `UN` forms, `PUBLISH`,
//! `SPUBLISH`, `PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB`.
//!
//! One [`Broker`] per process (gateway or agent) holds every subscription of every
//! service of its RESP listeners. With the pub/sub bus attached ([`crate::bus`]) a
//! `PUBLISH` is delivered here and sent once to every other gateway and agent, as Redis
//! Cluster broadcasts it over its bus; an `SPUBLISH` goes to the agent leading the
//! channel's slot, which delivers it to everyone, so shard subscribers see one partition's
//! messages in one order. Delivery is at-most-once, as in Redis: nothing is stored, and a
//! subscriber that falls [`MAX_PENDING_MESSAGES`] behind is disconnected (Redis's pubsub
//! output-buffer limit).
//!
//! `PUBLISH` answers the subscribers reached in this process (Redis Cluster answers those
//! of the node it ran on); `PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB` add
//! what the other peers reported at their last registration (at most a second or two
//! old, so approximate while subscriptions change). `CONFIG SET|GET
//! notify-keyspace-events` is answered here too (see `stator_kv::notify`).
//!
//! What subscribers see across failures: a gateway restart closes its subscribers'
//! connections (clients resubscribe, as after a Redis restart); messages published
//! while a peer is unreachable are lost for its subscribers once its queue
//! ([`crate::bus::MAX_BUS_QUEUE_FRAMES`]) is full. A leader failover does not touch
//! `PUBLISH` (no partition is involved); `SPUBLISH` and keyspace events move to the new
//! leader's agent as soon as the map names it, and those in flight at the change may be
//! lost or, for keyspace events of entries applied during it, doubled.

use super::glob::glob_match;
use super::local::Dispatch;
use crate::bus::{frame, Fabric, FrameKind};
use crate::map::ServiceRoutes;
use stator_api::pubsub::{SubscriberSummary, MAX_REPORTED_CHANNELS};
use stator_kv::notify::{NotifyFlags, INVALID_FLAGS};
use stator_kv::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages waiting for one subscriber before it is disconnected as too slow.
pub const MAX_PENDING_MESSAGES: usize = 4096;

/// Most channels plus patterns one connection may subscribe to.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 10_000;

/// Which kind of subscription delivered a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `SUBSCRIBE`: `message`.
    Channel,
    /// `PSUBSCRIBE pattern`: `pmessage`.
    Pattern(Vec<u8>),
    /// `SSUBSCRIBE`: `smessage`.
    Shard,
}

/// One message on its way to one subscriber.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) origin: Origin,
    pub(crate) channel: Arc<[u8]>,
    pub(crate) payload: Arc<[u8]>,
}

impl Message {
    /// The message as Redis pushes it: an array in RESP2, a push frame in RESP3.
    pub(crate) fn encode(&self, resp3: bool, out: &mut Vec<u8>) {
        let items: Vec<Value> = match &self.origin {
            Origin::Channel => vec![
                Value::bulk("message"),
                Value::bulk(self.channel.to_vec()),
                Value::bulk(self.payload.to_vec()),
            ],
            Origin::Pattern(pattern) => vec![
                Value::bulk("pmessage"),
                Value::bulk(pattern.clone()),
                Value::bulk(self.channel.to_vec()),
                Value::bulk(self.payload.to_vec()),
            ],
            Origin::Shard => vec![
                Value::bulk("smessage"),
                Value::bulk(self.channel.to_vec()),
                Value::bulk(self.payload.to_vec()),
            ],
        };
        push(items, resp3, out);
    }
}

fn push(items: Vec<Value>, resp3: bool, out: &mut Vec<u8>) {
    if resp3 {
        out.extend_from_slice(format!(">{}\r\n", items.len()).as_bytes());
        for item in &items {
            item.encode(out);
        }
    } else {
        Value::Array(Some(items)).encode(out);
    }
}

#[derive(Clone)]
struct Subscriber {
    sender: mpsc::Sender<Message>,
    /// Cancelled when the subscriber falls too far behind: the connection closes.
    too_slow: CancellationToken,
}

#[derive(Default)]
struct Topics {
    /// (service, channel or pattern) -> connection id -> subscriber.
    channels: HashMap<(String, Vec<u8>), HashMap<u64, Subscriber>>,
    patterns: HashMap<(String, Vec<u8>), HashMap<u64, Subscriber>>,
    shard: HashMap<(String, Vec<u8>), HashMap<u64, Subscriber>>,
}

/// Every subscription through one gateway or agent, and its link to the bus.
#[derive(Default)]
pub struct Broker {
    // A std mutex: nothing awaits while it is held (sends are `try_send`).
    topics: Mutex<Topics>,
    /// The pub/sub bus, once started; without it messages stay in this process.
    fabric: OnceLock<Arc<Fabric>>,
    /// Subscribers closed for falling [`MAX_PENDING_MESSAGES`] behind.
    slow_subscribers_closed: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Channel,
    Pattern,
    Shard,
}

impl Topics {
    fn table(&mut self, kind: Kind) -> &mut HashMap<(String, Vec<u8>), HashMap<u64, Subscriber>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard,
        }
    }
}

impl Broker {
    fn subscribe(&self, service: &str, kind: Kind, topic: &[u8], id: u64, subscriber: Subscriber) {
        let mut topics = self.topics.lock().expect("broker lock poisoned");
        topics
            .table(kind)
            .entry((service.to_string(), topic.to_vec()))
            .or_default()
            .insert(id, subscriber);
    }

    fn unsubscribe(&self, service: &str, kind: Kind, topic: &[u8], id: u64) {
        let mut topics = self.topics.lock().expect("broker lock poisoned");
        let table = topics.table(kind);
        let key = (service.to_string(), topic.to_vec());
        if let Some(subscribers) = table.get_mut(&key) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                table.remove(&key);
            }
        }
    }

    /// Connects the broker to the bus (once; later calls are ignored).
    pub(crate) fn attach(&self, fabric: Arc<Fabric>) {
        let _ = self.fabric.set(fabric);
    }

    /// Subscribers closed so far for falling [`MAX_PENDING_MESSAGES`] behind.
    pub fn slow_subscribers_closed(&self) -> u64 {
        self.slow_subscribers_closed.load(Ordering::Relaxed)
    }

    /// The bus, when attached.
    pub fn fabric(&self) -> Option<&Arc<Fabric>> {
        self.fabric.get()
    }

    /// `PUBLISH`: delivers here and sends it once to every other peer of the bus; the
    /// number of subscribers reached here.
    pub fn publish(&self, service: &str, channel: &[u8], payload: &[u8]) -> i64 {
        let reached = self.deliver(service, false, channel, payload);
        if let Some(fabric) = self.fabric.get() {
            fabric.broadcast(frame(FrameKind::Publish, service, channel, payload));
        }
        reached
    }

    /// `SPUBLISH`: through the agent leading the channel's slot when it is on the bus
    /// (it delivers to every peer, in its order), else delivered here and sent to every
    /// peer. The number of shard subscribers here.
    pub(crate) fn spublish(
        &self,
        service: &str,
        routes: Option<&ServiceRoutes>,
        channel: &[u8],
        payload: &[u8],
    ) -> i64 {
        let Some(fabric) = self.fabric.get() else {
            return self.deliver(service, true, channel, payload);
        };
        let leader = routes.and_then(|routes| {
            let slot = stator_api::slot::key_slot(channel);
            routes.partitions[routes.route_index(slot)?].leader_id
        });
        let elsewhere = leader.filter(|node| fabric.node_id() != Some(*node));
        if let Some(node) = elsewhere {
            if fabric.send_to_node(
                node,
                frame(FrameKind::ShardOrder, service, channel, payload),
            ) {
                // The leader sends it back to this process's subscribers.
                return self.count(service, Kind::Shard, channel);
            }
        }
        let reached = self.deliver(service, true, channel, payload);
        fabric.broadcast(frame(FrameKind::ShardDeliver, service, channel, payload));
        reached
    }

    /// What this process's connections subscribe to, per service (for the registry).
    pub(crate) fn summary(&self) -> BTreeMap<String, SubscriberSummary> {
        let topics = self.topics.lock().expect("broker lock poisoned");
        let mut out: BTreeMap<String, SubscriberSummary> = BTreeMap::new();
        for ((service, channel), subscribers) in &topics.channels {
            let summary = out.entry(service.clone()).or_default();
            if summary.channels.len() < MAX_REPORTED_CHANNELS {
                summary
                    .channels
                    .push((channel.clone(), subscribers.len() as u64));
            }
        }
        for ((service, channel), subscribers) in &topics.shard {
            let summary = out.entry(service.clone()).or_default();
            if summary.shard_channels.len() < MAX_REPORTED_CHANNELS {
                summary
                    .shard_channels
                    .push((channel.clone(), subscribers.len() as u64));
            }
        }
        for (service, _) in topics.patterns.keys() {
            out.entry(service.clone()).or_default().patterns += 1;
        }
        out
    }

    /// Delivers to every matching subscriber here; the number reached.
    pub(crate) fn deliver(
        &self,
        service: &str,
        shard: bool,
        channel: &[u8],
        payload: &[u8],
    ) -> i64 {
        let topics = self.topics.lock().expect("broker lock poisoned");
        let channel: Arc<[u8]> = channel.into();
        let payload: Arc<[u8]> = payload.into();
        let mut reached = 0;
        let mut deliver = |subscriber: &Subscriber, origin: Origin| {
            let message = Message {
                origin,
                channel: channel.clone(),
                payload: payload.clone(),
            };
            match subscriber.sender.try_send(message) {
                Ok(()) => reached += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !subscriber.too_slow.is_cancelled() {
                        subscriber.too_slow.cancel();
                        let closed =
                            self.slow_subscribers_closed.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(service, closed,
                            "closing a subscriber {MAX_PENDING_MESSAGES} messages behind (Redis's pubsub output-buffer limit)");
                    }
                }
                // The connection is closing; its Drop removes it shortly.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        };
        let key = (service.to_string(), channel.to_vec());
        if shard {
            for subscriber in topics.shard.get(&key).into_iter().flat_map(|s| s.values()) {
                deliver(subscriber, Origin::Shard);
            }
            return reached;
        }
        for subscriber in topics
            .channels
            .get(&key)
            .into_iter()
            .flat_map(|s| s.values())
        {
            deliver(subscriber, Origin::Channel);
        }
        for ((owner, pattern), subscribers) in &topics.patterns {
            if owner == service && glob_match(pattern, &channel) {
                for subscriber in subscribers.values() {
                    deliver(subscriber, Origin::Pattern(pattern.clone()));
                }
            }
        }
        reached
    }

    /// Channel (or shard channel) names with subscribers here or at another peer.
    fn names(&self, service: &str, kind: Kind, pattern: Option<&[u8]>) -> Vec<Vec<u8>> {
        let wanted = |name: &[u8]| pattern.is_none_or(|p| glob_match(p, name));
        let mut names: BTreeSet<Vec<u8>> = {
            let mut topics = self.topics.lock().expect("broker lock poisoned");
            topics
                .table(kind)
                .keys()
                .filter(|(owner, name)| owner == service && wanted(name))
                .map(|(_, name)| name.clone())
                .collect()
        };
        for summary in self.remote(service) {
            let reported = match kind {
                Kind::Shard => &summary.shard_channels,
                _ => &summary.channels,
            };
            names.extend(
                reported
                    .iter()
                    .filter(|(name, count)| *count > 0 && wanted(name))
                    .map(|(name, _)| name.clone()),
            );
        }
        names.into_iter().collect()
    }

    fn remote(&self, service: &str) -> Vec<SubscriberSummary> {
        self.fabric
            .get()
            .map(|fabric| fabric.remote_summaries(service))
            .unwrap_or_default()
    }

    /// Subscribers of `topic` here and at the other peers (as last reported).
    fn total_count(&self, service: &str, kind: Kind, topic: &[u8]) -> i64 {
        let remote: u64 = self
            .remote(service)
            .iter()
            .map(|summary| {
                let reported = match kind {
                    Kind::Shard => &summary.shard_channels,
                    _ => &summary.channels,
                };
                reported
                    .iter()
                    .find(|(name, _)| name == topic)
                    .map_or(0, |(_, count)| *count)
            })
            .sum();
        self.count(service, kind, topic) + remote as i64
    }

    fn count(&self, service: &str, kind: Kind, topic: &[u8]) -> i64 {
        let mut topics = self.topics.lock().expect("broker lock poisoned");
        topics
            .table(kind)
            .get(&(service.to_string(), topic.to_vec()))
            .map_or(0, |s| s.len() as i64)
    }

    fn pattern_count(&self, service: &str) -> i64 {
        let local = {
            let topics = self.topics.lock().expect("broker lock poisoned");
            topics
                .patterns
                .keys()
                .filter(|(owner, _)| owner == service)
                .count() as i64
        };
        let remote: u64 = self.remote(service).iter().map(|s| s.patterns).sum();
        local + remote as i64
    }
}

/// One connection's subscriptions; unsubscribes everything when dropped.
pub(crate) struct PubSub {
    broker: Arc<Broker>,
    service: String,
    id: u64,
    subscriber: Subscriber,
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
    shard: BTreeSet<Vec<u8>>,
}

impl PubSub {
    /// A connection's pub/sub side, and the receiving end of its messages.
    pub(crate) fn new(
        broker: Arc<Broker>,
        service: String,
        id: u64,
    ) -> (PubSub, mpsc::Receiver<Message>, CancellationToken) {
        let (sender, receiver) = mpsc::channel(MAX_PENDING_MESSAGES);
        let too_slow = CancellationToken::new();
        let pubsub = PubSub {
            broker,
            service,
            id,
            subscriber: Subscriber {
                sender,
                too_slow: too_slow.clone(),
            },
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            shard: BTreeSet::new(),
        };
        (pubsub, receiver, too_slow)
    }

    fn total(&self) -> usize {
        self.channels.len() + self.patterns.len() + self.shard.len()
    }

    /// Whether the connection is in RESP2's subscribed mode.
    pub(crate) fn subscribed(&self) -> bool {
        self.total() > 0
    }

    fn set(&mut self, kind: Kind) -> &mut BTreeSet<Vec<u8>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard,
        }
    }

    fn count_for(&self, kind: Kind) -> usize {
        // Redis counts shard subscriptions apart from the others.
        match kind {
            Kind::Shard => self.shard.len(),
            _ => self.channels.len() + self.patterns.len(),
        }
    }

    fn subscribe(&mut self, kind: Kind, topics: &[Vec<u8>], resp3: bool) -> Dispatch {
        let word = match kind {
            Kind::Channel => "subscribe",
            Kind::Pattern => "psubscribe",
            Kind::Shard => "ssubscribe",
        };
        if self.total() + topics.len() > MAX_SUBSCRIPTIONS_PER_CONNECTION {
            return error(format!(
                "ERR a connection may hold at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions; use a pattern or another connection"
            ));
        }
        let mut out = Vec::new();
        for topic in topics {
            if self.set(kind).insert(topic.clone()) {
                self.broker
                    .subscribe(&self.service, kind, topic, self.id, self.subscriber.clone());
            }
            push(
                vec![
                    Value::bulk(word),
                    Value::bulk(topic.clone()),
                    Value::Integer(self.count_for(kind) as i64),
                ],
                resp3,
                &mut out,
            );
        }
        Dispatch::Reply(out)
    }

    fn unsubscribe(&mut self, kind: Kind, topics: &[Vec<u8>], resp3: bool) -> Dispatch {
        let word = match kind {
            Kind::Channel => "unsubscribe",
            Kind::Pattern => "punsubscribe",
            Kind::Shard => "sunsubscribe",
        };
        let topics: Vec<Vec<u8>> = if topics.is_empty() {
            self.set(kind).iter().cloned().collect()
        } else {
            topics.to_vec()
        };
        let mut out = Vec::new();
        if topics.is_empty() {
            push(
                vec![
                    Value::bulk(word),
                    Value::Bulk(None),
                    Value::Integer(self.count_for(kind) as i64),
                ],
                resp3,
                &mut out,
            );
        }
        for topic in topics {
            if self.set(kind).remove(&topic) {
                self.broker
                    .unsubscribe(&self.service, kind, &topic, self.id);
            }
            push(
                vec![
                    Value::bulk(word),
                    Value::bulk(topic),
                    Value::Integer(self.count_for(kind) as i64),
                ],
                resp3,
                &mut out,
            );
        }
        Dispatch::Reply(out)
    }
}

impl Drop for PubSub {
    fn drop(&mut self) {
        for (kind, topics) in [
            (Kind::Channel, std::mem::take(&mut self.channels)),
            (Kind::Pattern, std::mem::take(&mut self.patterns)),
            (Kind::Shard, std::mem::take(&mut self.shard)),
        ] {
            for topic in topics {
                self.broker
                    .unsubscribe(&self.service, kind, &topic, self.id);
            }
        }
    }
}

fn reply(value: Value) -> Dispatch {
    Dispatch::Reply(value.to_bytes())
}

fn error(message: impl Into<String>) -> Dispatch {
    reply(Value::error(message))
}

fn arity(name: &str) -> Dispatch {
    error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// The commands [`intercept`] answers outside subscribed mode (the arms of its match).
const INTERCEPTED: &[&str] = &[
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "publish",
    "spublish",
    "pubsub",
    "config",
];

/// Commands RESP2's subscribed mode allows.
const SUBSCRIBED_MODE_COMMANDS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ssubscribe",
    "sunsubscribe",
    "ping",
    "quit",
    "reset",
];

/// Handles `argv` if it is a pub/sub command (or `CONFIG SET|GET notify-keyspace-events`),
/// or if subscribed mode forbids it. `routes` are the service's (for `SPUBLISH`).
pub(crate) fn intercept(
    argv: &[Vec<u8>],
    pubsub: &mut PubSub,
    resp3: bool,
    routes: Option<&ServiceRoutes>,
) -> Option<Dispatch> {
    if !pubsub.subscribed()
        && !INTERCEPTED
            .iter()
            .any(|name| argv[0].eq_ignore_ascii_case(name.as_bytes()))
    {
        // Every keyed command of a pipeline passes here: no name copied for them.
        return None;
    }
    let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
    if pubsub.subscribed() && !resp3 {
        if !SUBSCRIBED_MODE_COMMANDS.contains(&name.as_str()) {
            return Some(error(format!(
                "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            )));
        }
        if name == "ping" {
            return Some(match argv {
                [_] => reply(Value::Array(Some(vec![
                    Value::bulk("pong"),
                    Value::bulk(""),
                ]))),
                [_, message] => reply(Value::Array(Some(vec![
                    Value::bulk("pong"),
                    Value::bulk(message.clone()),
                ]))),
                _ => arity("ping"),
            });
        }
    }
    let args = &argv[1..];
    Some(match name.as_str() {
        "subscribe" | "psubscribe" | "ssubscribe" if args.is_empty() => arity(&name),
        "subscribe" => pubsub.subscribe(Kind::Channel, args, resp3),
        "psubscribe" => pubsub.subscribe(Kind::Pattern, args, resp3),
        "ssubscribe" => pubsub.subscribe(Kind::Shard, args, resp3),
        "unsubscribe" => pubsub.unsubscribe(Kind::Channel, args, resp3),
        "punsubscribe" => pubsub.unsubscribe(Kind::Pattern, args, resp3),
        "sunsubscribe" => pubsub.unsubscribe(Kind::Shard, args, resp3),
        "publish" => match args {
            [channel, message] => reply(Value::Integer(pubsub.broker.publish(
                &pubsub.service,
                channel,
                message,
            ))),
            _ => arity(&name),
        },
        "spublish" => match args {
            [channel, message] => reply(Value::Integer(pubsub.broker.spublish(
                &pubsub.service,
                routes,
                channel,
                message,
            ))),
            _ => arity(&name),
        },
        "pubsub" => pubsub_command(argv, pubsub),
        "config" => return notify_config(argv, pubsub),
        _ => return None,
    })
}

fn pubsub_command(argv: &[Vec<u8>], pubsub: &PubSub) -> Dispatch {
    let sub = argv.get(1).map(|s| s.to_ascii_uppercase());
    let (broker, service) = (&pubsub.broker, pubsub.service.as_str());
    let names = |kind| {
        let pattern = argv.get(2).map(Vec::as_slice);
        Value::Array(Some(
            broker
                .names(service, kind, pattern)
                .into_iter()
                .map(Value::bulk)
                .collect(),
        ))
    };
    let counts = |kind| {
        let mut items = Vec::new();
        for channel in &argv[2..] {
            items.push(Value::bulk(channel.clone()));
            items.push(Value::Integer(broker.total_count(service, kind, channel)));
        }
        Value::Array(Some(items))
    };
    match (sub.as_deref(), argv.len()) {
        (Some(b"CHANNELS"), 2 | 3) => reply(names(Kind::Channel)),
        (Some(b"SHARDCHANNELS"), 2 | 3) => reply(names(Kind::Shard)),
        (Some(b"NUMSUB"), _) => reply(counts(Kind::Channel)),
        (Some(b"SHARDNUMSUB"), _) => reply(counts(Kind::Shard)),
        (Some(b"NUMPAT"), 2) => reply(Value::Integer(broker.pattern_count(service))),
        _ => error(format!(
            "ERR unknown subcommand or wrong number of arguments for 'pubsub|{}'; use CHANNELS, NUMSUB, NUMPAT, SHARDCHANNELS or SHARDNUMSUB",
            String::from_utf8_lossy(argv.get(1).map(Vec::as_slice).unwrap_or_default()).to_lowercase()
        )),
    }
}

/// The `notify-keyspace-events` parameter name.
const NOTIFY_PARAMETER: &[u8] = b"notify-keyspace-events";

/// `CONFIG SET|GET notify-keyspace-events` for this connection's service; other `CONFIG`
/// forms are left to the connection-level commands.
fn notify_config(argv: &[Vec<u8>], pubsub: &PubSub) -> Option<Dispatch> {
    let sub = argv.get(1)?.to_ascii_uppercase();
    let parameter = argv.get(2)?;
    if !parameter.eq_ignore_ascii_case(NOTIFY_PARAMETER) {
        return None;
    }
    let fabric = pubsub.broker.fabric();
    Some(match (sub.as_slice(), argv.len()) {
        (b"GET", 3) => {
            let flags =
                fabric.map_or_else(NotifyFlags::default, |f| f.notify_flags(&pubsub.service));
            reply(Value::Array(Some(vec![
                Value::bulk(NOTIFY_PARAMETER),
                Value::bulk(flags.to_string()),
            ])))
        }
        (b"SET", 4) => {
            let Ok(text) = std::str::from_utf8(&argv[3]) else {
                return Some(error(INVALID_FLAGS));
            };
            match (NotifyFlags::parse(text), fabric) {
                (Err(message), _) => error(message),
                (Ok(_), None) => error(
                    "ERR keyspace notifications need the pub/sub bus, which this endpoint has not started",
                ),
                (Ok(flags), Some(fabric)) => {
                    fabric.set_notify(&pubsub.service, flags);
                    reply(Value::ok())
                }
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intercept_(argv: &[Vec<u8>], pubsub: &mut PubSub, resp3: bool) -> Option<Dispatch> {
        intercept(argv, pubsub, resp3, None)
    }

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn text(d: Option<Dispatch>) -> String {
        match d {
            Some(Dispatch::Reply(b)) => String::from_utf8(b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn encoded(message: &Message, resp3: bool) -> String {
        let mut out = Vec::new();
        message.encode(resp3, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn messages_reach_channel_and_pattern_subscribers() {
        let broker = Arc::new(Broker::default());
        let (mut a, mut a_rx, _) = PubSub::new(broker.clone(), "kv".into(), 1);
        let (mut b, mut b_rx, _) = PubSub::new(broker.clone(), "kv".into(), 2);
        let (mut other, _other_rx, _) = PubSub::new(broker.clone(), "other".into(), 3);
        assert_eq!(
            text(intercept_(&argv(&["SUBSCRIBE", "room:1", "room:2"]), &mut a, false)),
            "*3\r\n$9\r\nsubscribe\r\n$6\r\nroom:1\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$6\r\nroom:2\r\n:2\r\n"
        );
        intercept_(&argv(&["PSUBSCRIBE", "room:*"]), &mut b, true);
        assert_eq!(
            text(intercept_(
                &argv(&["PUBLISH", "room:1", "hi"]),
                &mut other,
                false
            )),
            ":0\r\n",
            "services do not share channels"
        );
        let (mut publisher, _rx, _) = PubSub::new(broker.clone(), "kv".into(), 4);
        assert_eq!(
            text(intercept_(
                &argv(&["PUBLISH", "room:1", "hi"]),
                &mut publisher,
                false
            )),
            ":2\r\n"
        );
        assert_eq!(
            encoded(&a_rx.try_recv().unwrap(), false),
            "*3\r\n$7\r\nmessage\r\n$6\r\nroom:1\r\n$2\r\nhi\r\n"
        );
        assert_eq!(
            encoded(&b_rx.try_recv().unwrap(), true),
            ">4\r\n$8\r\npmessage\r\n$6\r\nroom:*\r\n$6\r\nroom:1\r\n$2\r\nhi\r\n"
        );
        assert_eq!(
            text(intercept_(
                &argv(&["PUBSUB", "NUMSUB", "room:1", "nope"]),
                &mut publisher,
                false
            )),
            "*4\r\n$6\r\nroom:1\r\n:1\r\n$4\r\nnope\r\n:0\r\n"
        );
        assert_eq!(
            text(intercept_(
                &argv(&["PUBSUB", "NUMPAT"]),
                &mut publisher,
                false
            )),
            ":1\r\n"
        );
        drop(a);
        assert_eq!(
            text(intercept_(
                &argv(&["PUBSUB", "CHANNELS"]),
                &mut publisher,
                false
            )),
            "*0\r\n",
            "a closed connection leaves no subscription behind"
        );
    }

    #[test]
    fn notify_config_checks_flags_and_needs_the_bus() {
        let broker = Arc::new(Broker::default());
        let (mut a, _rx, _) = PubSub::new(broker, "kv".into(), 1);
        assert_eq!(
            text(intercept_(
                &argv(&["CONFIG", "GET", "notify-keyspace-events"]),
                &mut a,
                false
            )),
            "*2\r\n$22\r\nnotify-keyspace-events\r\n$0\r\n\r\n"
        );
        assert_eq!(
            text(intercept_(
                &argv(&["CONFIG", "SET", "notify-keyspace-events", "KEQ"]),
                &mut a,
                false
            )),
            format!("-{INVALID_FLAGS}\r\n")
        );
        assert!(text(intercept_(
            &argv(&["config", "set", "NOTIFY-KEYSPACE-EVENTS", "KEA"]),
            &mut a,
            false
        ))
        .starts_with("-ERR keyspace notifications need the pub/sub bus"));
        assert_eq!(
            intercept_(&argv(&["CONFIG", "GET", "save"]), &mut a, false),
            None,
            "other parameters are the connection's"
        );
    }

    #[test]
    fn subscribed_mode_allows_only_pubsub_and_ping() {
        let broker = Arc::new(Broker::default());
        let (mut a, _rx, _) = PubSub::new(broker, "kv".into(), 1);
        assert_eq!(intercept_(&argv(&["GET", "k"]), &mut a, false), None);
        intercept_(&argv(&["SUBSCRIBE", "c"]), &mut a, false);
        assert!(text(intercept_(&argv(&["GET", "k"]), &mut a, false))
            .starts_with("-ERR Can't execute 'get': only (P|S)SUBSCRIBE"));
        assert_eq!(
            text(intercept_(&argv(&["PING"]), &mut a, false)),
            "*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        );
        assert_eq!(
            intercept_(&argv(&["GET", "k"]), &mut a, true),
            None,
            "RESP3 allows any command"
        );
        assert_eq!(
            text(intercept_(&argv(&["UNSUBSCRIBE"]), &mut a, false)),
            "*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n"
        );
        assert_eq!(intercept_(&argv(&["GET", "k"]), &mut a, false), None);
    }
}
