//! Keyspace notifications (`notify-keyspace-events`): which `(event, key)` pairs an
//! applied command produces, named exactly as Redis 7 names them, and the channels and
//! messages Redis publishes for them (`__keyspace@0__:<key>` -> event,
//! `__keyevent@0__:<event>` -> key).
//!
//! The machine stays unaware of pub/sub: [`NotifyingKv`] wraps a [`KvMachine`] and, when
//! its [`NotificationSink`] says notifications are on (the agent says so only where the
//! replica leads), compares each command's keys before and after the apply (a key whose
//! write version moved was modified, as `WATCH` sees it), names the events with the
//! command's Redis event, and adds `new` (key created), `del` (a collection emptied) and
//! `expired` (keys reclaimed by access or by the expiry sweep). Events of a `STATOR.EXEC`
//! are those of its queued commands on the keys the transaction modified.

use crate::command::{command_keys, lookup, Command};
use crate::machine::KvMachine;
use crate::resp::{parse_whole_command, Value};
use async_trait::async_trait;
use stator_api::app::{AppError, StateMachine};
use stator_api::ids::GroupId;
use std::collections::HashMap;
use std::sync::Arc;

/// One class of events, as a `notify-keyspace-events` flag bit.
pub type EventClass = u16;

/// `K`: publish `__keyspace@0__:<key>` with the event as message.
pub const KEYSPACE: EventClass = 1 << 0;
/// `E`: publish `__keyevent@0__:<event>` with the key as message.
pub const KEYEVENT: EventClass = 1 << 1;
/// `g`: generic commands (DEL, EXPIRE, RENAME, ...).
pub const GENERIC: EventClass = 1 << 2;
/// `$`: string commands.
pub const STRING: EventClass = 1 << 3;
/// `l`: list commands.
pub const LIST: EventClass = 1 << 4;
/// `s`: set commands.
pub const SET: EventClass = 1 << 5;
/// `h`: hash commands.
pub const HASH: EventClass = 1 << 6;
/// `z`: sorted set commands.
pub const ZSET: EventClass = 1 << 7;
/// `x`: keys expired.
pub const EXPIRED: EventClass = 1 << 8;
/// `e`: keys evicted (stator never evicts; accepted for compatibility).
pub const EVICTED: EventClass = 1 << 9;
/// `t`: stream commands (no streams in stator; accepted).
pub const STREAM: EventClass = 1 << 10;
/// `m`: key misses (not emitted by stator; accepted).
pub const KEY_MISS: EventClass = 1 << 11;
/// `d`: module events (no modules; accepted).
pub const MODULE: EventClass = 1 << 12;
/// `n`: new keys.
pub const NEW: EventClass = 1 << 13;
/// `A`: alias for `g$lshzxetd`.
pub const ALL: EventClass =
    GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;

/// The letters in the order Redis prints them, after `A` or the class letters.
const CLASS_LETTERS: &[(char, EventClass)] = &[
    ('g', GENERIC),
    ('$', STRING),
    ('l', LIST),
    ('s', SET),
    ('h', HASH),
    ('z', ZSET),
    ('x', EXPIRED),
    ('e', EVICTED),
    ('t', STREAM),
    ('d', MODULE),
];

/// Redis 7's refusal of an unknown flag letter.
pub const INVALID_FLAGS: &str = "ERR CONFIG SET failed (possibly related to argument 'notify-keyspace-events') - Invalid event class character. Use 'Ag$lshzxeKEtmdn'.";

/// A `notify-keyspace-events` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifyFlags(pub EventClass);

impl NotifyFlags {
    /// Parses Redis's flag letters (`K E g $ l s h z x e t m d n A`); the error is Redis's.
    pub fn parse(text: &str) -> Result<NotifyFlags, &'static str> {
        let mut flags = 0;
        for letter in text.chars() {
            flags |= match letter {
                'A' => ALL,
                'K' => KEYSPACE,
                'E' => KEYEVENT,
                'm' => KEY_MISS,
                'n' => NEW,
                other => {
                    CLASS_LETTERS
                        .iter()
                        .find(|(l, _)| *l == other)
                        .ok_or(INVALID_FLAGS)?
                        .1
                }
            };
        }
        Ok(NotifyFlags(flags))
    }

    /// Whether any event would be published: a class and at least one of `K`, `E`.
    pub fn enabled(self) -> bool {
        self.0 & (KEYSPACE | KEYEVENT) != 0 && self.0 & !(KEYSPACE | KEYEVENT) != 0
    }

    /// Whether events of `class` are published.
    pub fn wants(self, class: EventClass) -> bool {
        self.enabled() && self.0 & class != 0
    }
}

impl std::fmt::Display for NotifyFlags {
    /// As `CONFIG GET` prints it: `A` or the class letters, then `K`, `E`, `m`, `n`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        if self.0 & ALL == ALL {
            out.push('A');
        } else {
            for (letter, class) in CLASS_LETTERS {
                if self.0 & class != 0 {
                    out.push(*letter);
                }
            }
        }
        for (letter, class) in [
            ('K', KEYSPACE),
            ('E', KEYEVENT),
            ('m', KEY_MISS),
            ('n', NEW),
        ] {
            if self.0 & class != 0 {
                out.push(letter);
            }
        }
        f.write_str(&out)
    }
}

/// One keyspace event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Its class.
    pub class: EventClass,
    /// The event name Redis uses (`set`, `hset`, `expire`, `del`, `expired`, ...).
    pub event: &'static str,
    /// The key.
    pub key: Vec<u8>,
}

/// A message to publish: (channel, payload).
pub type Published = (Vec<u8>, Vec<u8>);

/// The messages Redis publishes for `events` under `flags`, in order: per event the
/// `__keyspace@0__` one first, then the `__keyevent@0__` one.
pub fn messages(flags: NotifyFlags, events: &[Notification]) -> Vec<Published> {
    let mut out = Vec::new();
    for event in events.iter().filter(|e| flags.wants(e.class)) {
        if flags.0 & KEYSPACE != 0 {
            let mut channel = b"__keyspace@0__:".to_vec();
            channel.extend_from_slice(&event.key);
            out.push((channel, event.event.as_bytes().to_vec()));
        }
        if flags.0 & KEYEVENT != 0 {
            let channel = format!("__keyevent@0__:{}", event.event).into_bytes();
            out.push((channel, event.key.clone()));
        }
    }
    out
}

/// Where a leader's events go, and whether anyone wants them.
///
/// To ensure correctness an implementation must answer [`NotificationSink::flags`]
/// quickly and without blocking (it runs before every apply), and answer "off" on a
/// replica that does not lead, so each event is published once, by the leader.
pub trait NotificationSink: Send + Sync + 'static {
    /// The flags of `service` for the replica of `group` (off unless it leads).
    fn flags(&self, service: &str, group: GroupId) -> NotifyFlags;
    /// Publishes the messages of one applied entry, in order.
    fn publish(&self, service: &str, group: GroupId, messages: Vec<Published>);
}

/// What a key looked like: (write version, live).
type KeyState = Option<u64>;

/// A [`KvMachine`] that reports keyspace events of what it applies to a sink.
pub struct NotifyingKv {
    machine: KvMachine,
    service: String,
    group: GroupId,
    sink: Arc<dyn NotificationSink>,
}

impl NotifyingKv {
    /// `machine` (empty, or with its `maxmemory` budget) for `group` of `service`,
    /// reporting to `sink`.
    pub fn new(
        machine: KvMachine,
        service: String,
        group: GroupId,
        sink: Arc<dyn NotificationSink>,
    ) -> Self {
        Self {
            machine,
            service,
            group,
            sink,
        }
    }
}

fn key_states(machine: &KvMachine, keys: &[&[u8]], now_ms: u64) -> HashMap<Vec<u8>, KeyState> {
    keys.iter()
        .map(|key| {
            (
                key.to_vec(),
                machine
                    .keyspace
                    .live(key, now_ms)
                    .map(|entry| entry.version),
            )
        })
        .collect()
}

impl NotifyingKv {
    /// Applies one entry and publishes its events; nothing in it waits.
    fn apply_entry(&mut self, index: u64, time_ms: u64, command: &[u8]) -> Vec<u8> {
        let flags = self.sink.flags(&self.service, self.group);
        if !flags.enabled() {
            return self.machine.apply_entry(index, time_ms, command);
        }
        let argv = parse_whole_command(command).ok();
        let now_ms = self.machine.now_ms().max(time_ms);
        let before = argv.as_ref().map_or_else(HashMap::new, |argv| {
            key_states(&self.machine, &command_keys(argv), now_ms)
        });
        self.machine.keyspace.record_expired();
        let reply_bytes = self.machine.apply_entry(index, time_ms, command);
        let expired = self.machine.keyspace.take_expired();
        let mut events: Vec<Notification> = expired
            .into_iter()
            .map(|key| Notification {
                class: EXPIRED,
                event: "expired",
                key,
            })
            .collect();
        if let Some(argv) = &argv {
            let after = key_states(&self.machine, &command_keys(argv), now_ms);
            let reply = crate::resp::parse_reply(&reply_bytes)
                .ok()
                .flatten()
                .map_or(Value::Bulk(None), |(value, _)| value);
            events.extend(command_events(argv, &reply, &before, &after));
        }
        let messages = messages(flags, &events);
        if !messages.is_empty() {
            self.sink.publish(&self.service, self.group, messages);
        }
        reply_bytes
    }
}

#[async_trait]
impl StateMachine for NotifyingKv {
    async fn apply(
        &mut self,
        index: u64,
        time_ms: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, AppError> {
        Ok(self.apply_entry(index, time_ms, command))
    }

    fn apply_now(
        &mut self,
        index: u64,
        time_ms: u64,
        command: &[u8],
    ) -> Option<Result<Vec<u8>, AppError>> {
        Some(Ok(self.apply_entry(index, time_ms, command)))
    }

    async fn query(&mut self, time_ms: u64, request: &[u8]) -> Result<Vec<u8>, AppError> {
        self.machine.query(time_ms, request).await
    }

    async fn snapshot(&mut self) -> Result<Vec<u8>, AppError> {
        self.machine.snapshot().await
    }

    async fn snapshot_in_parts(&mut self) -> Result<stator_api::app::SnapshotFinish, AppError> {
        self.machine.snapshot_in_parts().await
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
        self.machine.restore(snapshot).await
    }

    async fn restore_shared(&mut self, snapshot: bytes::Bytes) -> Result<(), AppError> {
        self.machine.restore_shared(snapshot).await
    }

    fn release_shared(&mut self, max_bytes: u64) -> bool {
        self.machine.release_shared(max_bytes)
    }

    fn state_bytes(&self) -> u64 {
        self.machine.state_bytes()
    }
}

/// The events of one applied command (`STATOR.EXEC`: of its queued commands), given the
/// write versions of its keys before and after (`None`: no live key).
pub(crate) fn command_events(
    argv: &[Vec<u8>],
    reply: &Value,
    before: &HashMap<Vec<u8>, KeyState>,
    after: &HashMap<Vec<u8>, KeyState>,
) -> Vec<Notification> {
    let Some(spec) = argv.first().and_then(|name| lookup(name)) else {
        return Vec::new();
    };
    if matches!(reply, Value::Error(_)) {
        return Vec::new();
    }
    if spec.command == Command::StatorExec {
        let Some(layout) = crate::transaction::ExecLayout::parse(argv) else {
            return Vec::new();
        };
        let replies = match reply {
            Value::Array(Some(replies)) => replies.as_slice(),
            _ => return Vec::new(),
        };
        let mut events = Vec::new();
        for (range, reply) in layout.commands.into_iter().zip(replies) {
            events.extend(command_events(&argv[range], reply, before, after));
        }
        return events;
    }
    let name = spec.name;
    let keys = command_keys(argv);
    let mut events = Vec::new();
    for (position, key) in keys.iter().enumerate() {
        let was = before.get(*key).copied().flatten();
        let now = after.get(*key).copied().flatten();
        if was == now {
            continue;
        }
        let Some((class, event)) = event_of(name, argv, position) else {
            continue;
        };
        let key = key.to_vec();
        if was.is_none() && now.is_some() {
            events.push(Notification {
                class: NEW,
                event: "new",
                key: key.clone(),
            });
        }
        let emptied = was.is_some() && now.is_none() && event != "del" && class != GENERIC;
        let store = name.ends_with("store");
        if !(emptied && store) {
            events.push(Notification {
                class,
                event,
                key: key.clone(),
            });
        }
        if event == "set" && expiry_option(name, argv) {
            events.push(Notification {
                class: GENERIC,
                event: "expire",
                key: key.clone(),
            });
        }
        if emptied {
            events.push(Notification {
                class: GENERIC,
                event: "del",
                key,
            });
        }
    }
    events
}

/// Whether a SET-family command also set an expiry (Redis adds an `expire` event).
fn expiry_option(name: &str, argv: &[Vec<u8>]) -> bool {
    match name {
        "setex" | "psetex" => true,
        "set" => argv[3..].iter().any(|arg| {
            ["ex", "px", "exat", "pxat"]
                .iter()
                .any(|option| arg.eq_ignore_ascii_case(option.as_bytes()))
        }),
        _ => false,
    }
}

/// The class and Redis event name of command `name` for its key at `position` (0 is the
/// first key), or `None` for commands Redis raises no event for.
fn event_of(name: &str, argv: &[Vec<u8>], position: usize) -> Option<(EventClass, &'static str)> {
    let side = |index: usize| {
        argv.get(index)
            .is_some_and(|arg| arg.eq_ignore_ascii_case(b"left"))
    };
    Some(match name {
        "set" | "setnx" | "setex" | "psetex" | "mset" | "msetnx" | "getset" => (STRING, "set"),
        "setrange" => (STRING, "setrange"),
        "append" => (STRING, "append"),
        "incr" | "decr" | "incrby" | "decrby" => (STRING, "incrby"),
        "incrbyfloat" => (STRING, "incrbyfloat"),
        "getdel" | "del" | "unlink" => (GENERIC, "del"),
        "getex" => {
            let persist = argv[2..]
                .iter()
                .any(|arg| arg.eq_ignore_ascii_case(b"persist"));
            (GENERIC, if persist { "persist" } else { "expire" })
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => (GENERIC, "expire"),
        "persist" => (GENERIC, "persist"),
        "rename" | "renamenx" if position == 0 => (GENERIC, "rename_from"),
        "rename" | "renamenx" => (GENERIC, "rename_to"),
        "copy" if position == 1 => (GENERIC, "copy_to"),
        "hset" | "hmset" | "hsetnx" => (HASH, "hset"),
        "hdel" => (HASH, "hdel"),
        "hincrby" => (HASH, "hincrby"),
        "hincrbyfloat" => (HASH, "hincrbyfloat"),
        "lpush" | "lpushx" => (LIST, "lpush"),
        "rpush" | "rpushx" => (LIST, "rpush"),
        "lpop" | "blpop" => (LIST, "lpop"),
        "rpop" | "brpop" => (LIST, "rpop"),
        "linsert" => (LIST, "linsert"),
        "lset" => (LIST, "lset"),
        "lrem" => (LIST, "lrem"),
        "ltrim" => (LIST, "ltrim"),
        "rpoplpush" | "brpoplpush" if position == 0 => (LIST, "rpop"),
        "rpoplpush" | "brpoplpush" => (LIST, "lpush"),
        "lmove" | "blmove" if position == 0 => (LIST, if side(3) { "lpop" } else { "rpop" }),
        "lmove" | "blmove" => (LIST, if side(4) { "lpush" } else { "rpush" }),
        "sadd" => (SET, "sadd"),
        "srem" => (SET, "srem"),
        "spop" => (SET, "spop"),
        "smove" if position == 0 => (SET, "srem"),
        "smove" => (SET, "sadd"),
        "sinterstore" | "sunionstore" | "sdiffstore" if position == 0 => (SET, static_name(name)),
        "zadd" => {
            let incr = argv[2..]
                .iter()
                .any(|arg| arg.eq_ignore_ascii_case(b"incr"));
            (ZSET, if incr { "zincr" } else { "zadd" })
        }
        "zincrby" => (ZSET, "zincr"),
        "zrem" => (ZSET, "zrem"),
        "zremrangebyscore" | "zremrangebyrank" | "zremrangebylex" => (ZSET, static_name(name)),
        "zpopmin" | "bzpopmin" => (ZSET, "zpopmin"),
        "zpopmax" | "bzpopmax" => (ZSET, "zpopmax"),
        "zunionstore" | "zinterstore" | "zdiffstore" | "zrangestore" if position == 0 => {
            (ZSET, static_name(name))
        }
        _ => return None,
    })
}

/// The `'static` spelling of a command name (the table's names are `'static` already;
/// this keeps the match above readable).
fn static_name(name: &str) -> &'static str {
    lookup(name.as_bytes()).map_or("", |spec| spec.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn flags_parse_and_print_as_redis_does() {
        assert_eq!(NotifyFlags::parse("KEA").unwrap().to_string(), "AKE");
        assert_eq!(NotifyFlags::parse("Kg$").unwrap().to_string(), "g$K");
        assert_eq!(NotifyFlags::parse("").unwrap().to_string(), "");
        assert_eq!(NotifyFlags::parse("Exn").unwrap().to_string(), "xEn");
        assert_eq!(NotifyFlags::parse("KEQ"), Err(INVALID_FLAGS));
        assert!(!NotifyFlags::parse("KE").unwrap().enabled());
        assert!(!NotifyFlags::parse("A").unwrap().enabled());
        assert!(NotifyFlags::parse("Kh").unwrap().wants(HASH));
        assert!(!NotifyFlags::parse("Kh").unwrap().wants(STRING));
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<Published>>);

    impl NotificationSink for Collect {
        fn flags(&self, _: &str, _: GroupId) -> NotifyFlags {
            NotifyFlags::parse("KEAn").unwrap()
        }
        fn publish(&self, _: &str, _: GroupId, messages: Vec<Published>) {
            self.0.lock().unwrap().extend(messages);
        }
    }

    fn keyspace_events(sink: &Collect) -> Vec<String> {
        sink.0
            .lock()
            .unwrap()
            .drain(..)
            .filter(|(channel, _)| channel.starts_with(b"__keyspace@0__:"))
            .map(|(channel, event)| {
                format!(
                    "{} {}",
                    String::from_utf8_lossy(&channel["__keyspace@0__:".len()..]),
                    String::from_utf8_lossy(&event)
                )
            })
            .collect()
    }

    async fn run(kv: &mut NotifyingKv, index: u64, time_ms: u64, argv: &[&str]) {
        let argv: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
        kv.apply(index, time_ms, &crate::encode_command(&argv))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn events_are_named_as_redis_names_them() {
        let sink = Arc::new(Collect::default());
        let mut kv = NotifyingKv::new(
            KvMachine::new(),
            "kv".into(),
            GroupId::new(1, 0),
            sink.clone(),
        );
        run(&mut kv, 1, 1_000, &["SET", "a", "1"]).await;
        run(&mut kv, 2, 1_000, &["SET", "a", "2", "EX", "100"]).await;
        run(&mut kv, 3, 1_000, &["HSET", "h", "f", "v"]).await;
        run(&mut kv, 4, 1_000, &["HDEL", "h", "f"]).await;
        run(&mut kv, 5, 1_000, &["DEL", "a", "missing"]).await;
        run(&mut kv, 6, 1_000, &["SET", "t", "x", "PX", "10"]).await;
        run(&mut kv, 7, 1_000, &["SETNX", "t", "y"]).await;
        run(&mut kv, 8, 2_000, &["LPUSH", "l", "x"]).await;
        assert_eq!(
            keyspace_events(&sink),
            [
                "a new",
                "a set",
                "a set",
                "a expire",
                "h new",
                "h hset",
                "h hdel",
                "h del",
                "a del",
                "t new",
                "t set",
                "t expire",
                "t expired",
                "l new",
                "l lpush"
            ]
        );
        let all = sink.0.lock().unwrap().len();
        assert_eq!(all, 0);
        let exec = crate::encode_exec(
            &[],
            &[
                vec![b"SADD".to_vec(), b"s".to_vec(), b"m".to_vec()],
                vec![b"INCR".to_vec(), b"c".to_vec()],
                vec![
                    b"HSET".to_vec(),
                    b"s".to_vec(),
                    b"f".to_vec(),
                    b"v".to_vec(),
                ],
            ],
        );
        let exec: Vec<&str> = exec
            .iter()
            .map(|a| std::str::from_utf8(a).unwrap())
            .collect();
        run(&mut kv, 9, 2_000, &exec).await;
        assert_eq!(
            keyspace_events(&sink),
            ["s new", "s sadd", "c new", "c incrby"],
            "a queued command that failed (WRONGTYPE) raises nothing"
        );
        run(&mut kv, 10, 2_000, &["EXPIRE", "l", "50"]).await;
        let messages = sink.0.lock().unwrap().clone();
        assert_eq!(
            messages,
            [
                (b"__keyspace@0__:l".to_vec(), b"expire".to_vec()),
                (b"__keyevent@0__:expire".to_vec(), b"l".to_vec()),
            ]
        );
    }
}
