//! `KvMachine`: Redis 7 commands over strings, hashes, lists, sets and sorted sets, with
//! deterministic, leader-clocked expiry and entry-seeded randomness.

use crate::command::{lookup, Command, CommandKind, CommandSpec};
use crate::keyspace::{Entry, ExpiryChange, Keyspace};
use crate::ops::Scripts;
use crate::resp::{parse_i64_strict, push_decimal, Value, MAX_BULK_BYTES};
use crate::transaction::{ExecLayout, EXEC_ABORT, MALFORMED_EXEC};
use crate::types::{Data, EntryRng, Str};

/// Returns the error reply of a `Result<_, Value>` from the enclosing command.
macro_rules! attempt {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(reply) => return reply,
        }
    };
}
pub(crate) use attempt;

/// Most expired keys reclaimed by the sweep in one apply. Every write creates at most one
/// expiring key, so sweeping more than one per apply drains any backlog, while the cap
/// keeps a mass expiry from stalling a single apply (Redis samples 20 keys per cycle).
pub const MAX_EXPIRED_SWEPT_PER_APPLY: usize = 32;

/// Most argument bytes echoed back in an unknown-command error, as Redis does.
const MAX_UNKNOWN_ARGS_ECHO_BYTES: usize = 128;

pub(crate) const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
pub(crate) const NOT_A_FLOAT: &str = "ERR value is not a valid float";
pub(crate) const SYNTAX_ERROR: &str = "ERR syntax error";
pub(crate) const OVERFLOW: &str = "ERR increment or decrement would overflow";
pub(crate) const WRONG_TYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";
pub(crate) const NOT_POSITIVE: &str = "ERR value is out of range, must be positive";
pub(crate) const NO_SUCH_KEY: &str = "ERR no such key";
const TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// The built-in Redis-compatible key-value state machine.
///
/// Time comes only from the `time_ms` stamped on each entry by the leader; the machine keeps
/// the largest value seen, so its clock never runs backwards even across leader changes.
#[derive(Debug, Default)]
pub struct KvMachine {
    pub(crate) keyspace: Keyspace,
    pub(crate) now_ms: u64,
    /// Index of the log entry being applied (set by `StateMachine::apply`): with the
    /// entry's time it seeds [`KvMachine::rng`], so SPOP and friends agree on every replica.
    pub(crate) entry_index: u64,
    pub(crate) rng: EntryRng,
    /// Set while the commands of a `STATOR.EXEC` or a script run (blocking commands never
    /// block there).
    pub(crate) in_transaction: bool,
    /// The EVAL script cache and FUNCTION libraries: state, in snapshots.
    pub(crate) scripts: Scripts,
    /// `maxmemory`: configuration, not state (never in a snapshot); see [`crate::budget`].
    pub(crate) budget: crate::budget::MemoryBudget,
    /// The caller's ACL key patterns while a `STATOR.ACLKEYS` script command runs (see
    /// [`crate::script_acl`]); `None` otherwise. Never in a snapshot: it lives for one
    /// command.
    pub(crate) script_key_patterns: Option<Vec<Vec<u8>>>,
    /// The caller's command rules while a `STATOR.ACLKEYS ... RIGHTS` script command runs;
    /// `None` otherwise (and never in a snapshot).
    pub(crate) script_rights: Option<crate::script_acl::CommandRights>,
    /// The snapshot this machine was restored from when its strings are still slices of
    /// it (a durable replica's mapped file); `None` once none is (see
    /// [`crate::snapshot::release_shared`]). Not state: equal machines may differ here.
    pub(crate) shared_snapshot: Option<crate::snapshot::SharedSnapshot>,
}

/// Units of an expiry argument.
#[derive(Clone, Copy)]
enum TimeUnit {
    Seconds,
    Milliseconds,
}

/// Whether an expiry argument counts from now or from the epoch.
#[derive(Clone, Copy)]
enum TimeBase {
    Relative,
    Absolute,
}

impl KvMachine {
    /// An empty machine at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The machine's clock: the largest `time_ms` applied so far.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Keys held, including expired keys not yet reclaimed.
    pub fn key_count(&self) -> usize {
        self.keyspace.len()
    }

    /// Approximate bytes of keys and values held.
    pub fn data_bytes(&self) -> u64 {
        self.keyspace.bytes()
    }

    /// Applies one command at leader time `time_ms` and returns its reply.
    pub fn apply_argv(&mut self, time_ms: u64, argv: &[Vec<u8>]) -> Value {
        self.apply_owned(time_ms, argv.to_vec())
    }

    /// Like [`KvMachine::apply_argv`], but takes the arguments so keys and values move into
    /// the map without a copy: the fast path for log entries.
    pub fn apply_owned(&mut self, time_ms: u64, argv: Vec<Vec<u8>>) -> Value {
        self.begin_entry(time_ms);
        self.execute(argv)
    }

    /// What every entry does first: the clock moves to the entry's time (reclaiming a
    /// bounded number of expired keys) and the entry's randomness is seeded.
    pub(crate) fn begin_entry(&mut self, time_ms: u64) {
        self.advance_clock(time_ms);
        let seed = EntryRng::new(self.entry_index ^ 0x5354_4154_4f52).next_u64() ^ time_ms;
        self.rng = EntryRng::new(seed);
    }

    /// Runs one command at the current clock (an entry, or one command of a transaction).
    pub(crate) fn execute(&mut self, argv: Vec<Vec<u8>>) -> Value {
        let spec = attempt!(resolve(&argv));
        let now_ms = self.now_ms;
        // Lazy expiry of the command's keys; skipped (no key list, no lookups) when no key
        // of the whole keyspace is past its expiry.
        if self.keyspace.may_hold_expired(now_ms) {
            for index in spec.key_indexes(&argv) {
                self.keyspace.reclaim_if_expired(&argv[index], now_ms);
            }
        }
        if let Some(refusal) = self.budget.refusal(spec, &argv, self.keyspace.bytes()) {
            return refusal;
        }
        match spec.kind {
            // Applied through the log, EVAL_RO caches its script as Redis does.
            CommandKind::Read if spec.command == Command::EvalRo => self.script_write(spec, argv),
            CommandKind::Read => self.read(now_ms, spec, &argv),
            CommandKind::Write | CommandKind::Unknown => self.write(spec, argv),
        }
    }

    /// Sets the index of the log entry about to be applied (seeds its randomness).
    pub fn set_entry_index(&mut self, index: u64) {
        self.entry_index = index;
    }

    /// Answers a read-only command at leader time `time_ms` without changing any state.
    /// A write command gets an error reply: it must go through the log.
    pub fn query_argv(&self, time_ms: u64, argv: &[Vec<u8>]) -> Value {
        let spec = match resolve(argv) {
            Ok(spec) => spec,
            Err(reply) => return reply,
        };
        let now_ms = self.now_ms.max(time_ms);
        if spec.command == Command::StatorAclKeys {
            let layout = attempt!(crate::script_acl::AclKeysLayout::parse(argv));
            let inner = &argv[layout.inner_start..];
            let inner_spec = attempt!(resolve(inner));
            if inner_spec.kind != CommandKind::Read {
                return changes_state(inner_spec);
            }
            let rights = match layout.rights.map(crate::script_acl::CommandRights::parse) {
                None => None,
                Some(Ok(rights)) => Some(rights),
                Some(Err(message)) => return malformed_rights(&message),
            };
            return self.script_read_scoped(
                now_ms,
                inner_spec,
                inner,
                Some(layout.patterns),
                rights,
            );
        }
        if spec.command == Command::StatorExec {
            return self.read_batch(time_ms, argv);
        }
        if spec.kind != CommandKind::Read {
            return changes_state(spec);
        }
        self.read(now_ms, spec, argv)
    }

    /// `STATOR.EXEC 0 [<argc> <arg>...]...` as a query: a pipeline batch of reads (see
    /// [`crate::transaction`]), answered in one pass over the applied state with one
    /// reply each, as the array a write batch gets. Watched keys belong to `EXEC` (a
    /// write); a write among the commands gets its usual "send it as a write" error.
    fn read_batch(&self, time_ms: u64, argv: &[Vec<u8>]) -> Value {
        let Some(layout) = ExecLayout::parse(argv) else {
            return Value::error(MALFORMED_EXEC);
        };
        if !layout.watched.is_empty() {
            return Value::error(
                "ERR STATOR.EXEC with watched keys changes state and cannot run as a read-only query; send it as a write",
            );
        }
        for range in &layout.commands {
            if crate::transaction::queued_command_error(&argv[range.clone()]).is_some() {
                return Value::error(EXEC_ABORT);
            }
        }
        Value::Array(Some(
            layout
                .commands
                .into_iter()
                .map(|range| self.query_argv(time_ms, &argv[range]))
                .collect(),
        ))
    }

    /// Moves the clock to `time_ms` unless that would run it backwards, then reclaims a
    /// bounded number of expired keys. Depends only on state and `time_ms`: deterministic.
    pub(crate) fn advance_clock(&mut self, time_ms: u64) {
        self.now_ms = self.now_ms.max(time_ms);
        self.keyspace
            .sweep_expired(self.now_ms, MAX_EXPIRED_SWEPT_PER_APPLY);
    }

    pub(crate) fn live(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.keyspace.live(key, now_ms)
    }

    /// The string under `key`, `None` if missing, or a WRONGTYPE error reply.
    pub(crate) fn string(&self, key: &[u8], now_ms: u64) -> Result<Option<&[u8]>, Value> {
        match self.live(key, now_ms).map(|entry| &entry.data) {
            None => Ok(None),
            Some(Data::Str(value)) => Ok(Some(value.as_slice())),
            Some(_) => Err(Value::error(WRONG_TYPE)),
        }
    }

    pub(crate) fn read(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        use Command as C;
        match spec.command {
            C::Get => Value::Bulk(attempt!(self.string(&argv[1], now_ms)).map(<[u8]>::to_vec)),
            C::StrLen => Value::Integer(
                attempt!(self.string(&argv[1], now_ms)).map_or(0, |value| value.len() as i64),
            ),
            C::GetRange => self.getrange(now_ms, argv),
            C::Exists => Value::Integer(
                argv[1..]
                    .iter()
                    .filter(|key| self.live(key, now_ms).is_some())
                    .count() as i64,
            ),
            C::MGet => Value::Array(Some(
                argv[1..]
                    .iter()
                    .map(|key| {
                        Value::Bulk(self.string(key, now_ms).ok().flatten().map(<[u8]>::to_vec))
                    })
                    .collect(),
            )),
            C::Ttl | C::PTtl => {
                let Some(entry) = self.live(&argv[1], now_ms) else {
                    return Value::Integer(-2);
                };
                let Some(at_ms) = entry.expires_at_ms() else {
                    return Value::Integer(-1);
                };
                let remaining_ms = at_ms.saturating_sub(now_ms) as i64;
                match spec.command {
                    // Redis rounds the seconds to nearest.
                    C::Ttl => Value::Integer((remaining_ms + 500) / 1000),
                    _ => Value::Integer(remaining_ms),
                }
            }
            C::ExpireTime | C::PExpireTime => {
                let Some(entry) = self.live(&argv[1], now_ms) else {
                    return Value::Integer(-2);
                };
                match entry.expires_at_ms() {
                    None => Value::Integer(-1),
                    Some(at_ms) if spec.command == C::ExpireTime => {
                        Value::Integer((at_ms / 1000) as i64)
                    }
                    Some(at_ms) => Value::Integer(at_ms as i64),
                }
            }
            C::Ping => match argv.len() {
                1 => Value::Simple("PONG".to_owned()),
                2 => Value::bulk(argv[1].clone()),
                _ => wrong_arity(spec.name),
            },
            C::Echo => Value::bulk(argv[1].clone()),
            C::HGet
            | C::HMGet
            | C::HGetAll
            | C::HExists
            | C::HKeys
            | C::HVals
            | C::HLen
            | C::HStrLen
            | C::HRandField
            | C::HScan => self.hash_read(now_ms, spec, argv),
            C::LRange | C::LLen | C::LIndex | C::LPos => self.list_read(now_ms, spec, argv),
            C::SMembers
            | C::SIsMember
            | C::SMIsMember
            | C::SCard
            | C::SRandMember
            | C::SInter
            | C::SUnion
            | C::SDiff
            | C::SInterCard
            | C::SScan => self.set_read(now_ms, spec, argv),
            C::ZScore
            | C::ZMScore
            | C::ZRank
            | C::ZRevRank
            | C::ZRange
            | C::ZRangeByScore
            | C::ZRevRangeByScore
            | C::ZRangeByLex
            | C::ZRevRangeByLex
            | C::ZRevRange
            | C::ZCount
            | C::ZLexCount
            | C::ZCard
            | C::ZRandMember
            | C::ZUnion
            | C::ZInter
            | C::ZDiff
            | C::ZInterCard
            | C::ZScan => self.zset_read(now_ms, spec, argv),
            C::EvalRo | C::EvalShaRo | C::FCallRo => self.script_read(now_ms, spec, argv),
            C::SortRo => self.sort_read(now_ms, spec, argv),
            C::Type
            | C::Touch
            | C::RandomKey
            | C::Object
            | C::DbSize
            | C::Keys
            | C::Scan
            | C::StatorVersion => self.keyspace_read(now_ms, spec, argv),
            other => unreachable!("{other:?} is a write but was dispatched as a read"),
        }
    }

    fn write(&mut self, spec: &CommandSpec, argv: Vec<Vec<u8>>) -> Value {
        use Command as C;
        match spec.command {
            C::Set => self.set_string(argv),
            C::SetNx => self.set_if_missing(argv),
            C::SetEx | C::PSetEx => self.set_expiring(spec, argv),
            C::GetSet => self.getset(argv),
            C::GetDel => self.getdel(&argv),
            C::GetEx => self.getex(argv),
            C::SetRange => self.setrange(argv),
            C::Del | C::Unlink => Value::Integer(
                argv[1..]
                    .iter()
                    .filter(|key| self.keyspace.remove(key).is_some())
                    .count() as i64,
            ),
            C::Incr => self.increment(argv, 1),
            C::Decr => self.increment(argv, -1),
            C::IncrBy => match parse_i64_strict(&argv[2]) {
                Some(delta) => self.increment(argv, delta),
                None => Value::error(NOT_AN_INTEGER),
            },
            C::DecrBy => match parse_i64_strict(&argv[2]) {
                Some(i64::MIN) => Value::error("ERR decrement would overflow"),
                Some(delta) => self.increment(argv, -delta),
                None => Value::error(NOT_AN_INTEGER),
            },
            C::IncrByFloat => self.increment_float(argv),
            C::Append => self.append(argv),
            C::MSet | C::MSetNx => self.mset(spec, argv),
            C::Expire => self.expire(spec.name, &argv, TimeUnit::Seconds, TimeBase::Relative),
            C::PExpire => self.expire(spec.name, &argv, TimeUnit::Milliseconds, TimeBase::Relative),
            C::ExpireAt => self.expire(spec.name, &argv, TimeUnit::Seconds, TimeBase::Absolute),
            C::PExpireAt => {
                self.expire(spec.name, &argv, TimeUnit::Milliseconds, TimeBase::Absolute)
            }
            C::Persist => self.persist(&argv),
            C::HSet | C::HMSet | C::HDel | C::HIncrBy | C::HIncrByFloat | C::HSetNx => {
                self.hash_write(spec, argv)
            }
            C::LPush
            | C::RPush
            | C::LPushX
            | C::RPushX
            | C::LPop
            | C::RPop
            | C::LSet
            | C::LRem
            | C::LTrim
            | C::LInsert
            | C::LMove
            | C::RPopLPush
            | C::BLPop
            | C::BRPop
            | C::BLMove
            | C::BRPopLPush
            | C::LMPop
            | C::BLMPop => self.list_write(spec, argv),
            C::SAdd
            | C::SRem
            | C::SPop
            | C::SMove
            | C::SInterStore
            | C::SUnionStore
            | C::SDiffStore => self.set_write(spec, argv),
            C::ZAdd
            | C::ZIncrBy
            | C::ZRem
            | C::ZRemRangeByRank
            | C::ZRemRangeByScore
            | C::ZRemRangeByLex
            | C::ZPopMin
            | C::ZPopMax
            | C::BZPopMin
            | C::BZPopMax
            | C::ZUnionStore
            | C::ZInterStore
            | C::ZDiffStore
            | C::ZRangeStore
            | C::ZMPop
            | C::BZMPop => self.zset_write(spec, argv),
            C::Sort => self.sort(spec, &argv),
            C::Eval | C::EvalSha | C::FCall | C::Script | C::Function => {
                self.script_write(spec, argv)
            }
            C::Rename | C::RenameNx | C::Copy | C::FlushAll | C::FlushDb => {
                self.keyspace_write(spec, argv)
            }
            C::StatorExec => self.exec_transaction(argv),
            C::StatorAclKeys => self.script_with_acl(argv),
            other => unreachable!("{other:?} is a read but was dispatched as a write"),
        }
    }

    /// `SETNX key value`.
    fn set_if_missing(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        let now_ms = self.now_ms;
        if self.live(&argv[1], now_ms).is_some() {
            return Value::Integer(0);
        }
        let value = std::mem::take(&mut argv[2]);
        self.keyspace
            .insert(take_key(&mut argv), value, ExpiryChange::Clear);
        Value::Integer(1)
    }

    /// `SETEX key seconds value`, `PSETEX key milliseconds value`.
    fn set_expiring(&mut self, spec: &CommandSpec, mut argv: Vec<Vec<u8>>) -> Value {
        let now_ms = self.now_ms;
        let unit = if spec.command == Command::SetEx {
            TimeUnit::Seconds
        } else {
            TimeUnit::Milliseconds
        };
        let Some(amount) = parse_i64_strict(&argv[2]) else {
            return Value::error(NOT_AN_INTEGER);
        };
        let at_ms = match (amount > 0)
            .then(|| expiry_at_ms(now_ms, amount, unit, TimeBase::Relative))
            .flatten()
        {
            Some(at_ms) => at_ms,
            None => return invalid_expire(spec.name),
        };
        let value = std::mem::take(&mut argv[3]);
        self.keyspace
            .insert(take_key(&mut argv), value, ExpiryChange::At(at_ms));
        Value::ok()
    }

    /// `GETSET key value`.
    fn getset(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        let now_ms = self.now_ms;
        attempt!(self.string(&argv[1], now_ms));
        let value = std::mem::take(&mut argv[2]);
        Value::Bulk(
            self.keyspace
                .insert(take_key(&mut argv), value, ExpiryChange::Clear)
                .map(Str::into_vec),
        )
    }

    /// `GETDEL key`.
    fn getdel(&mut self, argv: &[Vec<u8>]) -> Value {
        let now_ms = self.now_ms;
        attempt!(self.string(&argv[1], now_ms));
        Value::Bulk(
            self.keyspace
                .remove(&argv[1])
                .map(|entry| match entry.data {
                    Data::Str(value) => value.into_vec(),
                    _ => unreachable!("type checked above"),
                }),
        )
    }

    /// `APPEND key value`.
    fn append(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        let now_ms = self.now_ms;
        let current_len = attempt!(self.string(&argv[1], now_ms)).map_or(0, <[u8]>::len);
        let new_len = current_len + argv[2].len();
        if new_len > MAX_BULK_BYTES {
            return Value::error(TOO_LONG);
        }
        let suffix = std::mem::take(&mut argv[2]);
        if self
            .keyspace
            .update_value(&argv[1], |value| value.extend_from_slice(&suffix))
            .is_none()
        {
            self.keyspace
                .insert(take_key(&mut argv), suffix, ExpiryChange::Clear);
        }
        Value::Integer(new_len as i64)
    }

    /// `MSET key value [key value ...]`, `MSETNX` (sets none if any key exists).
    fn mset(&mut self, spec: &CommandSpec, argv: Vec<Vec<u8>>) -> Value {
        let now_ms = self.now_ms;
        if argv.len() % 2 == 0 {
            return wrong_arity(spec.name);
        }
        if spec.command == Command::MSetNx
            && argv[1..]
                .iter()
                .step_by(2)
                .any(|key| self.live(key, now_ms).is_some())
        {
            return Value::Integer(0);
        }
        let mut pairs = argv.into_iter().skip(1);
        while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
            self.keyspace.insert(key, value, ExpiryChange::Clear);
        }
        if spec.command == Command::MSetNx {
            Value::Integer(1)
        } else {
            Value::ok()
        }
    }

    /// `PERSIST key`.
    fn persist(&mut self, argv: &[Vec<u8>]) -> Value {
        let now_ms = self.now_ms;
        let has_expiry = self
            .live(&argv[1], now_ms)
            .is_some_and(|entry| entry.expires_at_ms().is_some());
        if has_expiry {
            self.keyspace.set_expiry(&argv[1], None);
        }
        Value::Integer(i64::from(has_expiry))
    }

    /// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]`.
    fn set_string(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        #[derive(PartialEq)]
        enum Condition {
            Always,
            IfMissing,
            IfExists,
        }
        let mut condition = Condition::Always;
        let mut return_previous = false;
        let mut keep_ttl = false;
        let mut expiry: Option<(TimeUnit, TimeBase, usize)> = None;
        let mut index = 3;
        while index < argv.len() {
            let option = argv[index].to_ascii_uppercase();
            let has_next = index + 1 < argv.len();
            match option.as_slice() {
                b"NX" if condition != Condition::IfExists => condition = Condition::IfMissing,
                b"XX" if condition != Condition::IfMissing => condition = Condition::IfExists,
                b"GET" => return_previous = true,
                b"KEEPTTL" if expiry.is_none() => keep_ttl = true,
                b"EX" | b"PX" | b"EXAT" | b"PXAT" if !keep_ttl && has_next => {
                    let (unit, base) = match option.as_slice() {
                        b"EX" => (TimeUnit::Seconds, TimeBase::Relative),
                        b"PX" => (TimeUnit::Milliseconds, TimeBase::Relative),
                        b"EXAT" => (TimeUnit::Seconds, TimeBase::Absolute),
                        _ => (TimeUnit::Milliseconds, TimeBase::Absolute),
                    };
                    if expiry.is_some_and(|(_, _, earlier)| {
                        argv[earlier - 1].to_ascii_uppercase() != option
                    }) {
                        return Value::error(SYNTAX_ERROR);
                    }
                    expiry = Some((unit, base, index + 1));
                    index += 1;
                }
                _ => return Value::error(SYNTAX_ERROR),
            }
            index += 1;
        }
        let now_ms = self.now_ms;
        let expiry_change = match expiry {
            None if keep_ttl => ExpiryChange::Keep,
            None => ExpiryChange::Clear,
            Some((unit, base, value_index)) => {
                let Some(amount) = parse_i64_strict(&argv[value_index]) else {
                    return Value::error(NOT_AN_INTEGER);
                };
                match (amount > 0)
                    .then(|| expiry_at_ms(now_ms, amount, unit, base))
                    .flatten()
                {
                    Some(at_ms) => ExpiryChange::At(at_ms),
                    None => return invalid_expire("set"),
                }
            }
        };
        if return_previous {
            attempt!(self.string(&argv[1], now_ms));
        }
        // A plain SET does not look the key up here: the insert's lookup is its only one.
        let skip = match condition {
            Condition::Always => false,
            Condition::IfMissing => self.live(&argv[1], now_ms).is_some(),
            Condition::IfExists => self.live(&argv[1], now_ms).is_none(),
        };
        if skip {
            return if return_previous {
                Value::Bulk(attempt!(self.string(&argv[1], now_ms)).map(<[u8]>::to_vec))
            } else {
                Value::null()
            };
        }
        let previous = match expiry_change {
            // An absolute time already past: the key is written and gone at once (Redis 7).
            ExpiryChange::At(at_ms) if at_ms <= now_ms => self
                .keyspace
                .remove(&argv[1])
                .and_then(|entry| match entry.data {
                    Data::Str(value) => Some(value),
                    _ => None,
                })
                .map(Str::into_vec),
            _ => {
                let value = std::mem::take(&mut argv[2]);
                self.keyspace
                    .insert(take_key(&mut argv), value, expiry_change)
                    .map(Str::into_vec)
            }
        };
        if return_previous {
            Value::Bulk(previous)
        } else {
            Value::ok()
        }
    }

    /// INCR / DECR / INCRBY / DECRBY: the value must be a decimal i64; the TTL is kept.
    fn increment(&mut self, mut argv: Vec<Vec<u8>>, delta: i64) -> Value {
        let current = match attempt!(self.string(&argv[1], self.now_ms)) {
            Some(value) => match parse_i64_strict(value) {
                Some(number) => Some(number),
                None => return Value::error(NOT_AN_INTEGER),
            },
            None => None,
        };
        let Some(updated) = current.unwrap_or(0).checked_add(delta) else {
            return Value::error(OVERFLOW);
        };
        let write_decimal = |value: &mut Vec<u8>| {
            value.clear();
            push_decimal(value, updated);
        };
        if current.is_some() {
            self.keyspace.update_value(&argv[1], write_decimal);
        } else {
            let mut value = Vec::with_capacity(20);
            write_decimal(&mut value);
            self.keyspace
                .insert(take_key(&mut argv), value, ExpiryChange::Clear);
        }
        Value::Integer(updated)
    }

    /// INCRBYFLOAT: the TTL is kept; the result is stored and returned as a decimal string.
    fn increment_float(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        attempt!(self.string(&argv[1], self.now_ms));
        let Some(delta) = parse_f64_strict(&argv[2]) else {
            return Value::error(NOT_A_FLOAT);
        };
        let current = match attempt!(self.string(&argv[1], self.now_ms)) {
            Some(value) => match parse_f64_strict(value) {
                Some(number) => Some(number),
                None => return Value::error(NOT_A_FLOAT),
            },
            None => None,
        };
        let updated = current.unwrap_or(0.0) + delta;
        if !updated.is_finite() {
            return Value::error("ERR increment would produce NaN or Infinity");
        }
        let text = format_f64(updated);
        if current.is_some() {
            self.keyspace.update_value(&argv[1], |value| {
                value.clear();
                value.extend_from_slice(&text);
            });
        } else {
            self.keyspace
                .insert(take_key(&mut argv), text.clone(), ExpiryChange::Clear);
        }
        Value::bulk(text)
    }

    /// `EXPIRE key amount [NX | XX | GT | LT]` and its PEXPIRE / EXPIREAT / PEXPIREAT kin.
    fn expire(&mut self, name: &str, argv: &[Vec<u8>], unit: TimeUnit, base: TimeBase) -> Value {
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for option in &argv[3..] {
            match option.to_ascii_uppercase().as_slice() {
                b"NX" => nx = true,
                b"XX" => xx = true,
                b"GT" => gt = true,
                b"LT" => lt = true,
                _ => {
                    return Value::error(format!(
                        "ERR Unsupported option {}",
                        String::from_utf8_lossy(option)
                    ));
                }
            }
        }
        if nx && (xx || gt || lt) {
            return Value::error(
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            );
        }
        if gt && lt {
            return Value::error("ERR GT and LT options at the same time are not compatible");
        }
        let Some(amount) = parse_i64_strict(&argv[2]) else {
            return Value::error(NOT_AN_INTEGER);
        };
        let now_ms = self.now_ms;
        // Negative results are legal (the key is deleted); only overflow is refused.
        let Some(at_ms) = signed_expiry_at_ms(now_ms, amount, unit, base) else {
            return invalid_expire(name);
        };
        let Some(entry) = self.live(&argv[1], now_ms) else {
            return Value::Integer(0);
        };
        let current_ms = entry.expires_at_ms().map(|at| at as i128);
        // No TTL counts as an infinite one: GT never beats it, LT always does.
        let refused = match current_ms {
            None => xx || gt,
            Some(current_ms) => nx || (gt && at_ms <= current_ms) || (lt && at_ms >= current_ms),
        };
        if refused {
            return Value::Integer(0);
        }
        if at_ms <= now_ms as i128 {
            self.keyspace.remove(&argv[1]);
        } else {
            self.keyspace.set_expiry(&argv[1], Some(at_ms as u64));
        }
        Value::Integer(1)
    }
}

/// Looks the command up and checks its arity, or returns the error reply.
/// The reply to a write sent as a read-only query.
fn changes_state(spec: &CommandSpec) -> Value {
    Value::error(format!(
        "ERR '{}' changes state and cannot run as a read-only query; send it as a write",
        spec.name
    ))
}

fn resolve(argv: &[Vec<u8>]) -> Result<&'static CommandSpec, Value> {
    let Some(name) = argv.first() else {
        return Err(Value::error(
            "ERR empty command; send a command name and its arguments",
        ));
    };
    let Some(spec) = lookup(name) else {
        return Err(unknown_command(argv));
    };
    if !spec.arity_ok(argv.len()) {
        return Err(wrong_arity(spec.name));
    }
    if let Some(error) = spec.subcommand_error(argv) {
        return Err(Value::error(error));
    }
    // No slot check here: a machine holds a whole partition (a range of slots), and the
    // routers decide what may cross slots: the gateway takes any keys of one partition (a
    // one-partition service behaves like a standalone Redis), cluster-mode agents keep
    // Redis Cluster's one-slot rule.
    Ok(spec)
}

fn take_key(argv: &mut [Vec<u8>]) -> Vec<u8> {
    std::mem::take(&mut argv[1])
}

/// Absolute expiry in ms for a positive `amount`, or `None` on overflow.
fn expiry_at_ms(now_ms: u64, amount: i64, unit: TimeUnit, base: TimeBase) -> Option<u64> {
    let at_ms = signed_expiry_at_ms(now_ms, amount, unit, base)?;
    // Redis keeps expiries in a signed 64-bit millisecond clock.
    (at_ms <= i64::MAX as i128).then_some(at_ms as u64)
}

/// Absolute expiry in ms (may be negative or past), or `None` if it leaves the i64 range.
fn signed_expiry_at_ms(now_ms: u64, amount: i64, unit: TimeUnit, base: TimeBase) -> Option<i128> {
    let amount_ms = match unit {
        TimeUnit::Seconds => amount.checked_mul(1000)?,
        TimeUnit::Milliseconds => amount,
    };
    let at_ms = match base {
        TimeBase::Relative => i128::from(amount_ms) + i128::from(now_ms),
        TimeBase::Absolute => i128::from(amount_ms),
    };
    (i128::from(i64::MIN)..=i128::from(i64::MAX))
        .contains(&at_ms)
        .then_some(at_ms)
}

/// Parses a float as Redis does for INCRBYFLOAT: no surrounding spaces, no NaN.
pub(crate) fn parse_f64_strict(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    let number: f64 = text.parse().ok()?;
    // Out of range is not a float (C's ERANGE), unless the text says infinity itself.
    let overflowed = number.is_infinite() && !text.to_ascii_lowercase().contains("inf");
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    let underflowed = number == 0.0 && mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b));
    (!number.is_nan() && !overflowed && !underflowed).then_some(number)
}

/// Shortest decimal that reads back as `number`, with no exponent (e.g. `10.5`, `3`).
pub(crate) fn format_f64(number: f64) -> Vec<u8> {
    format!("{number}").into_bytes()
}

pub(crate) fn wrong_arity(name: &str) -> Value {
    Value::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

pub(crate) fn invalid_expire(name: &str) -> Value {
    Value::error(format!("ERR invalid expire time in '{name}' command"))
}

/// Redis' wording: `ERR unknown command 'foo', with args beginning with: 'a' 'b' `.
pub(crate) fn unknown_command<A: AsRef<[u8]>>(argv: &[A]) -> Value {
    let name = String::from_utf8_lossy(argv[0].as_ref());
    let name: String = name.chars().take(MAX_UNKNOWN_ARGS_ECHO_BYTES).collect();
    let mut args = String::new();
    for arg in &argv[1..] {
        if args.len() >= MAX_UNKNOWN_ARGS_ECHO_BYTES {
            break;
        }
        let room = MAX_UNKNOWN_ARGS_ECHO_BYTES - args.len();
        let arg: String = String::from_utf8_lossy(arg.as_ref())
            .chars()
            .take(room)
            .collect();
        args.push('\'');
        args.push_str(&arg);
        args.push_str("' ");
    }
    Value::error(format!(
        "ERR unknown command '{name}', with args beginning with: {args}"
    ))
}

/// The reply to a `STATOR.ACLKEYS` wrapper whose command rules do not parse.
pub(crate) fn malformed_rights(message: &str) -> Value {
    Value::error(format!(
        "ERR malformed {} rights: {message}; build the wrapper with stator_kv::encode_script_rights",
        crate::script_acl::ACL_KEYS_COMMAND
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Commands over a few keys sharing a hash tag (so multi-key commands mostly run) plus
    /// one untagged key (so some hit CROSSSLOT), with small expiries so keys really expire.
    fn command_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let key = prop::sample::select(vec!["{t}a", "{t}b", "{t}c", "other"]);
        // The long value is kept shared by a restore from shared bytes (64 bytes or more).
        const LONG: &str = "a value long enough to stay a slice of a restored shared snapshot";
        let value =
            prop::sample::select(vec!["1", "-7", "x", "", "9223372036854775807", "2.5", LONG]);
        let amount = -5i64..300;
        let option = prop::sample::select(vec!["", "NX", "XX", "GT", "LT", "GET", "KEEPTTL"]);
        (0usize..24, key.clone(), key, value, amount, option).prop_map(
            |(which, key, other_key, value, amount, option)| {
                let amount = amount.to_string();
                let words: Vec<&str> = match which {
                    0 => vec!["SET", key, value],
                    1 => vec!["SET", key, value, "PX", &amount, option],
                    2 => vec!["SET", key, value, option],
                    3 => vec!["GET", key],
                    4 => vec!["DEL", key, other_key],
                    5 => vec!["INCRBY", key, &amount],
                    6 => vec!["APPEND", key, value],
                    7 => vec!["PEXPIRE", key, &amount, option],
                    8 => vec!["PTTL", key],
                    9 => vec!["MSET", key, value, other_key, value],
                    10 => vec!["MGET", key, other_key],
                    11 => vec!["PERSIST", key],
                    12 => vec!["GETDEL", key],
                    13 => vec!["EXISTS", key, other_key],
                    14 => vec!["INCRBYFLOAT", key, value],
                    15 => vec!["HSET", key, value, other_key],
                    16 => vec!["LPUSH", key, value, value],
                    17 => vec!["SADD", key, value, other_key, "m"],
                    18 => vec!["SPOP", key],
                    19 => vec!["ZADD", key, "1.5", value, "2", other_key],
                    20 => vec!["ZPOPMIN", key],
                    21 => vec!["RPOP", key],
                    22 => vec!["HDEL", key, value],
                    _ => vec!["SETNX", key, value],
                };
                words
                    .into_iter()
                    .filter(|w| !w.is_empty() || which == 0)
                    .map(|w| w.as_bytes().to_vec())
                    .collect()
            },
        )
    }

    /// Each step: a command and how far the leader clock moves (sometimes backwards, as a
    /// new leader's clock may be behind).
    fn steps_strategy() -> impl Strategy<Value = Vec<(Vec<Vec<u8>>, i64)>> {
        prop::collection::vec((command_strategy(), -20i64..120), 1..120)
    }

    proptest! {
        #[test]
        fn snapshot_restored_copy_answers_identically(steps in steps_strategy(), cut in 0usize..120) {
            let mut original = KvMachine::new();
            let mut copy: Option<KvMachine> = None;
            // Restored from shared bytes (long strings are slices of them, copied on
            // write), with a bounded release pass every few steps.
            let mut shared: Option<KvMachine> = None;
            let mut time_ms: i64 = 1_000;
            for (index, (argv, clock_step_ms)) in steps.iter().enumerate() {
                if index == cut.min(steps.len() - 1) {
                    let snapshot = original.to_snapshot();
                    copy = Some(KvMachine::from_snapshot(&snapshot).unwrap());
                    shared = Some(KvMachine::from_shared_snapshot(&snapshot.into()).unwrap());
                }
                time_ms = (time_ms + clock_step_ms).max(0);
                let reply = original.apply_argv(time_ms as u64, argv);
                original.keyspace.assert_consistent();
                if let Some(copy) = copy.as_mut() {
                    prop_assert_eq!(&copy.apply_argv(time_ms as u64, argv), &reply, "step {} {:?}", index, argv);
                    copy.keyspace.assert_consistent();
                }
                if let Some(shared) = shared.as_mut() {
                    prop_assert_eq!(&shared.apply_argv(time_ms as u64, argv), &reply, "shared, step {} {:?}", index, argv);
                    shared.keyspace.assert_consistent();
                    if index % 7 == 0 {
                        shared.release_shared(100);
                    }
                }
            }
            let copy = copy.expect("a snapshot was taken");
            prop_assert_eq!(original.to_snapshot(), copy.to_snapshot());
            prop_assert_eq!(original.data_bytes(), copy.data_bytes());
            let mut shared = shared.expect("a snapshot was taken");
            prop_assert_eq!(original.to_snapshot(), shared.to_snapshot());
            prop_assert_eq!(original.data_bytes(), shared.data_bytes());
            while !shared.release_shared(100) {}
            prop_assert!(!shared.holds_shared_snapshot());
            prop_assert_eq!(original.to_snapshot(), shared.to_snapshot());
        }

        /// A snapshot taken at one step ([`crate::snapshot::capture`], the part that holds
        /// the machine) and finished after every later step has changed the machine gives
        /// the bytes of the state at that step, not after: the writes copied the shards
        /// the snapshot still held instead of changing them under it, and answered and
        /// ended as a machine never snapshotted does.
        #[test]
        fn a_snapshot_finished_after_later_writes_holds_the_state_it_was_taken_at(
            steps in steps_strategy(),
            cut in 0usize..120,
            filler in 0u32..3_000,
        ) {
            let mut machine = KvMachine::new();
            // The same writes with no snapshot taken: what the machine must end as.
            let mut twin = KvMachine::new();
            // Enough keys that most shards hold some (the strategy's keys are few).
            for i in 0..filler {
                let argv = [b"SET".to_vec(), format!("filler:{i}").into_bytes(), b"v".to_vec()];
                machine.apply_argv(1_000, &argv);
                twin.apply_argv(1_000, &argv);
            }
            let mut taken = None;
            let mut time_ms: i64 = 1_000;
            for (index, (argv, clock_step_ms)) in steps.iter().enumerate() {
                if index == cut.min(steps.len() - 1) {
                    taken = Some((crate::snapshot::capture(&mut machine), machine.to_snapshot()));
                }
                time_ms = (time_ms + clock_step_ms).max(0);
                let reply = machine.apply_argv(time_ms as u64, argv);
                prop_assert_eq!(reply, twin.apply_argv(time_ms as u64, argv), "step {} {:?}", index, argv);
                machine.keyspace.assert_consistent();
            }
            let (captured, expected) = taken.expect("a snapshot was taken");
            prop_assert_eq!(captured.encode().finish(), expected);
            prop_assert_eq!(machine.to_snapshot(), twin.to_snapshot());
        }

        /// A `STATOR.EXEC` entry's fast path (`apply_exec_entry`: borrowed parse, replies
        /// encoded as they come) answers and ends exactly as the general path.
        #[test]
        fn exec_entries_apply_as_the_general_path_does(
            steps in steps_strategy(),
            batch in 1usize..7,
            watch in prop::option::of(0u64..3),
        ) {
            let mut fast = KvMachine::new();
            let mut general = KvMachine::new();
            let mut time_ms: i64 = 1_000;
            for (index, chunk) in steps.chunks(batch).enumerate() {
                time_ms = (time_ms + chunk[0].1).max(0);
                let queued: Vec<Vec<Vec<u8>>> = chunk.iter().map(|(argv, _)| argv.clone()).collect();
                // Sometimes a watched key, whose version may or may not match.
                let watched: Vec<(Vec<u8>, u64)> =
                    watch.map(|version| (b"{t}a".to_vec(), version)).into_iter().collect();
                let argv = crate::encode_exec(&watched, &queued);
                let entry = crate::encode_command(&argv);
                fast.set_entry_index(index as u64 + 1);
                general.set_entry_index(index as u64 + 1);
                let reply = fast.apply_exec_entry(time_ms as u64, &entry).expect("an exec entry");
                prop_assert_eq!(
                    reply,
                    general.apply_owned(time_ms as u64, argv).to_bytes(),
                    "batch {} {:?}", index, queued
                );
                fast.keyspace.assert_consistent();
            }
            prop_assert_eq!(fast.to_snapshot(), general.to_snapshot());
            prop_assert_eq!(fast.data_bytes(), general.data_bytes());
            prop_assert!(fast.apply_exec_entry(0, &crate::encode_command(&["SET", "k", "v"])).is_none());
            prop_assert!(fast.apply_exec_entry(0, b"STATOR.EXEC 0 1 PING\r\n").is_none(), "inline: the general path");
        }

        #[test]
        fn two_machines_fed_the_same_entries_end_identical(steps in steps_strategy()) {
            let mut first = KvMachine::new();
            let mut second = KvMachine::new();
            let mut time_ms: i64 = 0;
            for (argv, clock_step_ms) in &steps {
                time_ms = (time_ms + clock_step_ms).max(0);
                let reply = first.apply_argv(time_ms as u64, argv);
                prop_assert_eq!(second.apply_argv(time_ms as u64, argv), reply);
            }
            prop_assert_eq!(first.to_snapshot(), second.to_snapshot());
            let restored = KvMachine::from_snapshot(&first.to_snapshot()).unwrap();
            prop_assert_eq!(restored.to_snapshot(), first.to_snapshot());
            prop_assert_eq!(restored.now_ms(), first.now_ms());
        }
    }

    #[test]
    fn sweep_reclaims_a_bounded_number_per_apply() {
        let mut machine = KvMachine::new();
        let keys = MAX_EXPIRED_SWEPT_PER_APPLY * 2 + 1;
        for index in 0..keys {
            let argv: Vec<Vec<u8>> = vec![
                b"SET".to_vec(),
                format!("k{index}").into_bytes(),
                b"v".to_vec(),
                b"PX".to_vec(),
                b"10".to_vec(),
            ];
            machine.apply_argv(0, &argv);
        }
        assert_eq!(machine.key_count(), keys);
        let ping = vec![b"PING".to_vec()];
        machine.apply_argv(11, &ping);
        assert_eq!(machine.key_count(), keys - MAX_EXPIRED_SWEPT_PER_APPLY);
        machine.apply_argv(11, &ping);
        machine.apply_argv(11, &ping);
        assert_eq!(machine.key_count(), 0);
        assert_eq!(machine.data_bytes(), 0);
        machine.keyspace.assert_consistent();
    }

    /// The write path skips lazy expiry while no key is past its expiry; once one is (and
    /// the bounded sweep left it), a command on it still finds it gone.
    #[test]
    fn lazy_expiry_reclaims_what_the_sweep_left() {
        let mut machine = KvMachine::new();
        let argv = |words: &[&str]| -> Vec<Vec<u8>> {
            words.iter().map(|w| w.as_bytes().to_vec()).collect()
        };
        for index in 0..MAX_EXPIRED_SWEPT_PER_APPLY * 2 {
            let key = format!("k{index}");
            machine.apply_argv(0, &argv(&["SET", &key, "v", "PX", "10"]));
        }
        // Sorted last in the expiry index (same time, larger key): swept last.
        machine.apply_argv(0, &argv(&["SET", "zz", "old", "PX", "10"]));
        machine.apply_argv(0, &argv(&["SET", "plain", "v"]));
        assert!(
            !machine.keyspace.may_hold_expired(10),
            "nothing past 10 ms yet"
        );
        assert_eq!(
            machine.apply_argv(11, &argv(&["SETNX", "zz", "new"])),
            Value::Integer(1),
            "the expired key is gone for SETNX although the sweep had not reached it"
        );
        assert_eq!(
            machine.apply_argv(11, &argv(&["GET", "zz"])),
            Value::bulk(b"new".to_vec())
        );
        assert_eq!(
            machine.apply_argv(11, &argv(&["SET", "plain", "w", "NX"])),
            Value::null()
        );
        machine.keyspace.assert_consistent();
    }

    /// A pipeline batch of reads sent as one query answers each read as it would alone;
    /// writes, watched keys and bad commands are refused without touching the state.
    #[test]
    fn a_read_batch_query_answers_each_read() {
        let mut machine = KvMachine::new();
        let argv = |words: &[&str]| -> Vec<Vec<u8>> {
            words.iter().map(|w| w.as_bytes().to_vec()).collect()
        };
        machine.apply_argv(0, &argv(&["SET", "a", "1"]));
        machine.apply_argv(0, &argv(&["HSET", "h", "f", "v"]));
        let queued = [
            argv(&["GET", "a"]),
            argv(&["GET", "missing"]),
            argv(&["HGET", "h", "f"]),
            argv(&["GET", "h"]),
        ];
        let batch = crate::encode_exec(&[], &queued);
        let alone: Vec<Value> = queued.iter().map(|q| machine.query_argv(0, q)).collect();
        assert_eq!(
            machine.query_argv(0, &batch),
            Value::Array(Some(alone)),
            "one reply per read, the WRONGTYPE error as an element"
        );
        let with_write = crate::encode_exec(&[], &[argv(&["GET", "a"]), argv(&["SET", "a", "2"])]);
        let Value::Array(Some(replies)) = machine.query_argv(0, &with_write) else {
            panic!("an array");
        };
        assert!(replies[1].is_error(), "a write in a read batch is refused");
        assert_eq!(
            machine.query_argv(0, &argv(&["GET", "a"])),
            Value::bulk(b"1".to_vec())
        );
        let watched = crate::encode_exec(&[(b"a".to_vec(), 1)], &[argv(&["GET", "a"])]);
        assert!(machine.query_argv(0, &watched).is_error());
        let bad_arity = crate::encode_exec(&[], &[argv(&["GET", "a", "b"])]);
        assert_eq!(machine.query_argv(0, &bad_arity), Value::error(EXEC_ABORT));
        assert!(machine
            .query_argv(0, &argv(&["STATOR.EXEC", "0", "5", "GET"]))
            .is_error());
    }
}
