//! Keyspace commands (TYPE, RENAME, COPY, SCAN, KEYS, FLUSHALL, ...) and transactions.

use super::{glob_match, parse_cursor, parse_scan_options, scan_page, scan_reply};
use crate::command::{lookup, Command, CommandSpec};
use crate::keyspace::ExpiryChange;
use crate::machine::{attempt, KvMachine, NO_SUCH_KEY, SYNTAX_ERROR};
use crate::resp::Value;
use crate::transaction::{ExecLayout, EXEC_ABORT, MALFORMED_EXEC};
use crate::types::{EntryRng, Kind};

impl KvMachine {
    /// Randomness for a read (SRANDMEMBER, HRANDFIELD, ZRANDMEMBER, RANDOMKEY): reads are
    /// not replicated, so any draw will do; this one follows the current entry's seed.
    pub(crate) fn read_rng(&self) -> EntryRng {
        self.rng.clone()
    }

    pub(crate) fn keyspace_read(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        match spec.command {
            Command::Type => Value::Simple(
                self.live(&argv[1], now_ms)
                    .map_or("none", |entry| entry.data.kind().name())
                    .to_owned(),
            ),
            Command::Touch => Value::Integer(
                argv[1..]
                    .iter()
                    .filter(|k| self.live(k, now_ms).is_some())
                    .count() as i64,
            ),
            Command::DbSize => Value::Integer(self.live_keys(now_ms).count() as i64),
            Command::RandomKey => {
                let keys: Vec<&[u8]> = self.live_keys(now_ms).map(|(key, _)| key).collect();
                if keys.is_empty() {
                    return Value::null();
                }
                let mut rng = self.read_rng();
                Value::bulk(keys[rng.below(keys.len())].to_vec())
            }
            Command::Keys => {
                let pattern = &argv[1];
                let mut keys: Vec<&[u8]> = self
                    .live_keys(now_ms)
                    .map(|(key, _)| key)
                    .filter(|key| glob_match(pattern, key))
                    .collect();
                keys.sort();
                super::bulk_array(keys)
            }
            Command::Scan => {
                let cursor = attempt!(parse_cursor(&argv[1]));
                let options = attempt!(parse_scan_options(&argv[2..], true));
                let (next, page) = scan_page(cursor, options.count, self.live_keys(now_ms));
                let wanted_kind = options.kind.map(Kind::from_name);
                let elements = page
                    .into_iter()
                    .filter(|(key, _)| options.pattern.is_none_or(|p| glob_match(p, key)))
                    .filter(|(_, kind)| wanted_kind.is_none_or(|wanted| wanted == Some(*kind)))
                    .map(|(key, _)| Value::bulk(key.to_vec()))
                    .collect();
                scan_reply(next, elements)
            }
            Command::Object => {
                let sub = argv[1].to_ascii_uppercase();
                match (sub.as_slice(), argv.len()) {
                    (b"ENCODING", 3) => Value::Bulk(self.live(&argv[2], now_ms).map(|entry| entry.data.encoding().as_bytes().to_vec())),
                    (b"REFCOUNT", 3) => match self.live(&argv[2], now_ms) {
                        None => Value::null(),
                        Some(_) => Value::Integer(1),
                    },
                    // No maxmemory policy runs (a partition's memory is the planner's), so no
                    // LFU counter exists: Redis' own answer under its default policy.
                    (b"FREQ", 3) => match self.live(&argv[2], now_ms) {
                        None => Value::null(),
                        Some(_) => Value::error("ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust."),
                    },
                    // Access times are not replicated state (a read on one replica would
                    // have to reach all of them), so every live key reads as just used.
                    (b"IDLETIME", 3) => match self.live(&argv[2], now_ms) {
                        None => Value::null(),
                        Some(_) => Value::Integer(0),
                    },
                    (b"HELP", 2) => Value::Array(Some(
                        [
                            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                            "ENCODING <key>",
                            "    Return the kind of internal representation used in order to store the value",
                            "    associated with a <key>.",
                            "REFCOUNT <key>",
                            "    Return the number of references of the value associated with the specified",
                            "    <key>.",
                            "HELP",
                            "    Print this help.",
                        ]
                        .iter()
                        .map(|line| Value::Simple((*line).to_owned()))
                        .collect(),
                    )),
                    _ => Value::error(format!(
                        "ERR unknown subcommand '{}'. Try OBJECT HELP.",
                        String::from_utf8_lossy(&argv[1])
                    )),
                }
            }
            Command::StatorVersion => Value::Array(Some(
                argv[1..]
                    .iter()
                    .map(|key| {
                        Value::Integer(
                            self.live(key, now_ms).map_or(0, |entry| entry.version) as i64
                        )
                    })
                    .collect(),
            )),
            other => unreachable!("{other:?} is not a keyspace read"),
        }
    }

    /// Live keys with their type, in no particular order.
    fn live_keys(&self, now_ms: u64) -> impl Iterator<Item = (&[u8], Kind)> {
        self.keyspace
            .iter()
            .filter(move |(_, entry)| !entry.is_expired(now_ms))
            .map(|(key, entry)| (key, entry.data.kind()))
    }

    pub(crate) fn keyspace_write(&mut self, spec: &CommandSpec, argv: Vec<Vec<u8>>) -> Value {
        let now_ms = self.now_ms;
        match spec.command {
            Command::Rename | Command::RenameNx => {
                let only_if_missing = spec.command == Command::RenameNx;
                if self.live(&argv[1], now_ms).is_none() {
                    return Value::error(NO_SUCH_KEY);
                }
                if argv[1] == argv[2] {
                    return if only_if_missing {
                        Value::Integer(0)
                    } else {
                        Value::ok()
                    };
                }
                if only_if_missing && self.live(&argv[2], now_ms).is_some() {
                    return Value::Integer(0);
                }
                let entry = self.keyspace.remove(&argv[1]).expect("live above");
                let expiry = entry
                    .expires_at_ms()
                    .map_or(ExpiryChange::Clear, ExpiryChange::At);
                self.keyspace.remove(&argv[2]);
                self.keyspace
                    .insert_data(argv[2].clone(), entry.data, expiry);
                if only_if_missing {
                    Value::Integer(1)
                } else {
                    Value::ok()
                }
            }
            Command::Copy => {
                let mut replace = false;
                let mut index = 3;
                while index < argv.len() {
                    let option = argv[index].to_ascii_uppercase();
                    if option == b"REPLACE" {
                        replace = true;
                    } else if option == b"DB" && index + 1 < argv.len() {
                        if argv[index + 1] != b"0" {
                            return Value::error(
                                "ERR DB index is out of range; stator's kv has only database 0",
                            );
                        }
                        index += 1;
                    } else {
                        return Value::error(SYNTAX_ERROR);
                    }
                    index += 1;
                }
                if argv[1] == argv[2] {
                    return Value::error("ERR source and destination objects are the same");
                }
                let Some(source) = self.live(&argv[1], now_ms) else {
                    return Value::Integer(0);
                };
                let (data, expires_at_ms) = (source.data.clone(), source.expires_at_ms());
                if self.live(&argv[2], now_ms).is_some() {
                    if !replace {
                        return Value::Integer(0);
                    }
                    self.keyspace.remove(&argv[2]);
                }
                let expiry = expires_at_ms.map_or(ExpiryChange::Clear, ExpiryChange::At);
                self.keyspace.insert_data(argv[2].clone(), data, expiry);
                Value::Integer(1)
            }
            Command::FlushAll | Command::FlushDb => {
                match argv.get(1).map(|arg| arg.to_ascii_uppercase()) {
                    None => {}
                    Some(mode) if argv.len() == 2 && (mode == b"SYNC" || mode == b"ASYNC") => {}
                    Some(_) => return Value::error(SYNTAX_ERROR),
                }
                self.keyspace.clear();
                Value::ok()
            }
            other => unreachable!("{other:?} is not a keyspace write"),
        }
    }

    /// `STATOR.EXEC`: a whole `MULTI ... EXEC` transaction in one entry (see `transaction`).
    pub(crate) fn exec_transaction(&mut self, argv: Vec<Vec<u8>>) -> Value {
        let Some(layout) = ExecLayout::parse(&argv) else {
            return Value::error(MALFORMED_EXEC);
        };
        for range in &layout.commands {
            if crate::transaction::queued_command_error(&argv[range.clone()]).is_some() {
                return Value::error(EXEC_ABORT);
            }
        }
        let now_ms = self.now_ms;
        for &(key_index, version) in &layout.watched {
            let current = self
                .live(&argv[key_index], now_ms)
                .map_or(0, |entry| entry.version);
            if current != version {
                return Value::Array(None);
            }
        }
        let mut replies = Vec::with_capacity(layout.commands.len());
        self.in_transaction = true;
        let mut argv = argv;
        for range in layout.commands {
            // Moved out, not copied: each queued command's keys and values go into the
            // keyspace as the client sent them (the ranges do not overlap).
            let queued: Vec<Vec<u8>> = argv[range].iter_mut().map(std::mem::take).collect();
            debug_assert!(lookup(&queued[0]).is_some());
            replies.push(self.execute(queued));
        }
        self.in_transaction = false;
        Value::Array(Some(replies))
    }

    /// A whole `STATOR.EXEC` log entry (every pipeline batch is one) applied at leader
    /// time `time_ms`, with its reply's bytes; `None` if `entry` is not one (the caller
    /// applies it as any other command). The same outcome as [`KvMachine::apply_owned`]
    /// of the parsed entry, for less: the entry is parsed into slices of its bytes, and
    /// only each queued command's own arguments are copied (they move into the keyspace),
    /// not the layout's argument counts; replies are encoded as each command answers,
    /// with no array of values built in between. On every replica, followers included:
    /// the exactly-once session table keeps the reply.
    ///
    /// Entries whose outcome depends on more (a key may be past its expiry, so lazy
    /// expiry of every key comes first; a memory budget is set) take the general path.
    pub(crate) fn apply_exec_entry(&mut self, time_ms: u64, entry: &[u8]) -> Option<Vec<u8>> {
        if !is_exec_entry(entry) {
            return None;
        }
        let args = crate::resp::parse_whole_array_borrowed(entry)?;
        if args.len() < 2
            || self.budget.max_bytes != 0
            || self.keyspace.may_hold_expired(self.now_ms.max(time_ms))
        {
            let argv = args.iter().map(|arg| arg.to_vec()).collect();
            return Some(self.apply_owned(time_ms, argv).to_bytes());
        }
        self.begin_entry(time_ms);
        let Some(layout) = ExecLayout::parse(&args) else {
            return Some(Value::error(MALFORMED_EXEC).to_bytes());
        };
        if layout
            .commands
            .iter()
            .any(|range| crate::transaction::queued_command_error(&args[range.clone()]).is_some())
        {
            return Some(Value::error(EXEC_ABORT).to_bytes());
        }
        // Every command's key first (its first argument, where a command has one), so
        // that the lookups' cache misses overlap instead of coming one after the other.
        for range in &layout.commands {
            if let Some(key) = args[range.clone()].get(1) {
                self.keyspace.prefetch(key);
            }
        }
        let now_ms = self.now_ms;
        for &(key_index, version) in &layout.watched {
            let current = self
                .live(args[key_index], now_ms)
                .map_or(0, |entry| entry.version);
            if current != version {
                return Some(Value::Array(None).to_bytes());
            }
        }
        // `+OK\r\n` per command is the common reply: room for it up front.
        let mut reply = Vec::with_capacity(16 + layout.commands.len() * 8);
        reply.push(b'*');
        crate::resp::push_decimal(&mut reply, layout.commands.len() as i64);
        reply.extend_from_slice(b"\r\n");
        self.in_transaction = true;
        for range in layout.commands {
            let queued = &args[range];
            if self.set_plain_borrowed(queued) {
                reply.extend_from_slice(b"+OK\r\n");
                continue;
            }
            let queued: Vec<Vec<u8>> = queued.iter().map(|arg| arg.to_vec()).collect();
            self.execute(queued).encode(&mut reply);
        }
        self.in_transaction = false;
        Some(reply)
    }
}

impl KvMachine {
    /// Applies `queued` if it is a plain `SET key value` (no options) and nothing else
    /// could change its outcome (no key past its expiry to reclaim first, no memory
    /// budget), straight from the entry's bytes: no argument vector, no copy of the
    /// command's name, and no allocation at all when it overwrites a string of about the
    /// same size ([`Keyspace::set_plain`](crate::keyspace::Keyspace::set_plain)). Returns
    /// false, having done nothing, for anything else. Its reply is always `+OK`.
    fn set_plain_borrowed(&mut self, queued: &[&[u8]]) -> bool {
        let [name, key, value] = queued else {
            return false;
        };
        if !name.eq_ignore_ascii_case(b"set")
            || self.budget.max_bytes != 0
            || self.keyspace.may_hold_expired(self.now_ms)
        {
            return false;
        }
        self.keyspace.set_plain(key, value);
        true
    }
}

/// Whether a log entry is a `STATOR.EXEC` command: its first argument, read from the
/// bytes without parsing the rest.
fn is_exec_entry(entry: &[u8]) -> bool {
    const NAME: &[u8] = crate::transaction::EXEC_COMMAND.as_bytes();
    let Some(header_end) = entry.iter().take(24).position(|&b| b == b'\n') else {
        return false;
    };
    let rest = &entry[header_end + 1..];
    let bulk_header = b"$11\r\n";
    entry.first() == Some(&b'*')
        && NAME.len() == 11
        && rest.starts_with(bulk_header)
        && rest
            .get(bulk_header.len()..bulk_header.len() + NAME.len())
            .is_some_and(|name| name.eq_ignore_ascii_case(NAME))
}
