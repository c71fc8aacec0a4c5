//! The command table: names, arity, read/write kind and key positions of every command.

use stator_api::slot::key_slot;

/// Whether a command changes state, so where it must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// Only reads: may be served by `query` (leader read, or stale follower read).
    Read,
    /// Changes state: must go through the log and `apply`.
    Write,
    /// Not a command of the `kv` machine; the caller answers with an error.
    Unknown,
}

/// The commands the `kv` machine understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Get,
    Set,
    SetNx,
    SetEx,
    PSetEx,
    GetSet,
    GetDel,
    Del,
    Exists,
    Incr,
    IncrBy,
    Decr,
    DecrBy,
    IncrByFloat,
    Append,
    StrLen,
    MGet,
    MSet,
    Expire,
    PExpire,
    ExpireAt,
    PExpireAt,
    Ttl,
    PTtl,
    Persist,
    Ping,
    Echo,
}

/// One row of the command table, in Redis' own terms.
#[derive(Debug)]
pub(crate) struct CommandSpec {
    pub(crate) command: Command,
    /// Lower-case name, as Redis prints it in error messages.
    pub(crate) name: &'static str,
    /// Redis arity: `n > 0` means exactly `n` arguments (name included), `-n` at least `n`.
    pub(crate) arity: i32,
    pub(crate) kind: CommandKind,
    /// Index of the first key argument; 0 when the command takes no key.
    pub(crate) first_key: usize,
    /// Index of the last key argument; negative counts from the end (-1 = last argument).
    pub(crate) last_key: isize,
    /// Distance between key arguments (2 for MSET's key value pairs).
    pub(crate) key_step: usize,
}

const fn spec(
    command: Command,
    name: &'static str,
    arity: i32,
    kind: CommandKind,
    keys: (usize, isize, usize),
) -> CommandSpec {
    CommandSpec {
        command,
        name,
        arity,
        kind,
        first_key: keys.0,
        last_key: keys.1,
        key_step: keys.2,
    }
}

use CommandKind::{Read, Write};

/// Hot commands first: lookup is a linear scan, which beats hashing for a table this small.
const COMMANDS: &[CommandSpec] = &[
    spec(Command::Set, "set", -3, Write, (1, 1, 1)),
    spec(Command::Get, "get", 2, Read, (1, 1, 1)),
    spec(Command::Incr, "incr", 2, Write, (1, 1, 1)),
    spec(Command::Del, "del", -2, Write, (1, -1, 1)),
    spec(Command::MGet, "mget", -2, Read, (1, -1, 1)),
    spec(Command::MSet, "mset", -3, Write, (1, -1, 2)),
    spec(Command::Exists, "exists", -2, Read, (1, -1, 1)),
    spec(Command::SetNx, "setnx", 3, Write, (1, 1, 1)),
    spec(Command::SetEx, "setex", 4, Write, (1, 1, 1)),
    spec(Command::PSetEx, "psetex", 4, Write, (1, 1, 1)),
    spec(Command::GetSet, "getset", 3, Write, (1, 1, 1)),
    spec(Command::GetDel, "getdel", 2, Write, (1, 1, 1)),
    spec(Command::IncrBy, "incrby", 3, Write, (1, 1, 1)),
    spec(Command::Decr, "decr", 2, Write, (1, 1, 1)),
    spec(Command::DecrBy, "decrby", 3, Write, (1, 1, 1)),
    spec(Command::IncrByFloat, "incrbyfloat", 3, Write, (1, 1, 1)),
    spec(Command::Append, "append", 3, Write, (1, 1, 1)),
    spec(Command::StrLen, "strlen", 2, Read, (1, 1, 1)),
    spec(Command::Expire, "expire", -3, Write, (1, 1, 1)),
    spec(Command::PExpire, "pexpire", -3, Write, (1, 1, 1)),
    spec(Command::ExpireAt, "expireat", -3, Write, (1, 1, 1)),
    spec(Command::PExpireAt, "pexpireat", -3, Write, (1, 1, 1)),
    spec(Command::Ttl, "ttl", 2, Read, (1, 1, 1)),
    spec(Command::PTtl, "pttl", 2, Read, (1, 1, 1)),
    spec(Command::Persist, "persist", 2, Write, (1, 1, 1)),
    spec(Command::Ping, "ping", -1, Read, (0, 0, 0)),
    spec(Command::Echo, "echo", 2, Read, (0, 0, 0)),
];

/// Longest command name in [`COMMANDS`] ("incrbyfloat"); longer names are unknown without
/// looking, and shorter ones lower-case into a stack buffer of this size.
const MAX_COMMAND_NAME_BYTES: usize = 11;

/// The table row for command name `name` (any case).
pub(crate) fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    if name.len() > MAX_COMMAND_NAME_BYTES {
        return None;
    }
    let mut lower = [0u8; MAX_COMMAND_NAME_BYTES];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    COMMANDS.iter().find(|spec| spec.name.as_bytes() == lower)
}

impl CommandSpec {
    /// Whether `argc` arguments (name included) satisfy the arity.
    pub(crate) fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        }
    }

    /// Indexes of the key arguments in an argument list of length `argc`.
    pub(crate) fn key_indexes(&self, argc: usize) -> impl Iterator<Item = usize> {
        let (first, last) = if self.first_key == 0 || argc <= self.first_key {
            (1, 0)
        } else if self.last_key < 0 {
            (self.first_key, argc as isize + self.last_key)
        } else {
            (self.first_key, self.last_key.min(argc as isize - 1))
        };
        let last = last.max(0) as usize;
        (first..=last).step_by(self.key_step.max(1))
    }
}

/// Whether `argv` reads, writes, or is not a `kv` command (case-insensitive; arity unchecked).
pub fn command_kind(argv: &[Vec<u8>]) -> CommandKind {
    argv.first()
        .and_then(|name| lookup(name))
        .map_or(CommandKind::Unknown, |spec| spec.kind)
}

/// The key arguments of `argv`, in order (empty for unknown and keyless commands).
pub fn command_keys(argv: &[Vec<u8>]) -> Vec<&[u8]> {
    let Some(spec) = argv.first().and_then(|name| lookup(name)) else {
        return Vec::new();
    };
    spec.key_indexes(argv.len())
        .map(|index| argv[index].as_slice())
        .collect()
}

/// Where a command's keys hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// The command names no key (PING, unknown commands): any partition may answer.
    NoKeys,
    /// Every key hashes to this slot.
    Slot(u16),
    /// Keys hash to different slots: Redis Cluster refuses such commands with `CROSSSLOT`.
    CrossSlot,
}

/// The slot shared by all keys of `argv`, for routing a command to its partition.
pub fn command_slot(argv: &[Vec<u8>]) -> KeySlot {
    let Some(spec) = argv.first().and_then(|name| lookup(name)) else {
        return KeySlot::NoKeys;
    };
    slot_of_keys(spec, argv)
}

pub(crate) fn slot_of_keys(spec: &CommandSpec, argv: &[Vec<u8>]) -> KeySlot {
    let mut slots = spec
        .key_indexes(argv.len())
        .map(|index| key_slot(&argv[index]));
    let Some(first) = slots.next() else {
        return KeySlot::NoKeys;
    };
    if slots.all(|slot| slot == first) {
        KeySlot::Slot(first)
    } else {
        KeySlot::CrossSlot
    }
}

/// What `COMMAND` and `COMMAND INFO` tell clients about one kv command: Redis' own
/// arity and key positions, which cluster clients (redis-py) use to find a command's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: `n > 0` exactly `n` arguments (name included), `-n` at least `n`.
    pub arity: i32,
    /// Read or write.
    pub kind: CommandKind,
    /// Index of the first key; 0 when the command takes none.
    pub first_key: usize,
    /// Index of the last key; negative counts from the end.
    pub last_key: isize,
    /// Distance between keys.
    pub key_step: usize,
}

impl From<&CommandSpec> for CommandInfo {
    fn from(spec: &CommandSpec) -> Self {
        Self {
            name: spec.name,
            arity: spec.arity,
            kind: spec.kind,
            first_key: spec.first_key,
            last_key: spec.last_key,
            key_step: spec.key_step,
        }
    }
}

/// Every command of the kv machine, in table order.
pub fn command_table() -> impl Iterator<Item = CommandInfo> {
    COMMANDS.iter().map(CommandInfo::from)
}

/// The table entry of command `name` (any case).
pub fn command_info(name: &[u8]) -> Option<CommandInfo> {
    lookup(name).map(CommandInfo::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn kinds_are_case_insensitive() {
        assert_eq!(command_kind(&argv(&["get", "k"])), CommandKind::Read);
        assert_eq!(command_kind(&argv(&["GeT", "k"])), CommandKind::Read);
        assert_eq!(command_kind(&argv(&["SET", "k", "v"])), CommandKind::Write);
        assert_eq!(command_kind(&argv(&["INCRBYFLOAT"])), CommandKind::Write);
        assert_eq!(command_kind(&argv(&["FLUSHALL"])), CommandKind::Unknown);
        assert_eq!(command_kind(&argv(&["incrbyfloatx"])), CommandKind::Unknown);
        assert_eq!(command_kind(&[]), CommandKind::Unknown);
    }

    #[test]
    fn keys_follow_the_key_spec() {
        assert_eq!(command_keys(&argv(&["GET", "k"])), vec![b"k"]);
        assert_eq!(
            command_keys(&argv(&["SET", "k", "v", "EX", "1"])),
            vec![b"k"]
        );
        assert_eq!(
            command_keys(&argv(&["DEL", "a", "b", "c"])),
            vec![b"a", b"b", b"c"]
        );
        assert_eq!(
            command_keys(&argv(&["MSET", "a", "1", "b", "2"])),
            vec![b"a", b"b"]
        );
        assert_eq!(
            command_keys(&argv(&["MSET", "a", "1", "b"])),
            vec![b"a", b"b"]
        );
        assert!(command_keys(&argv(&["PING", "x"])).is_empty());
        assert!(command_keys(&argv(&["GET"])).is_empty());
        assert!(command_keys(&argv(&["DEL"])).is_empty());
        assert!(command_keys(&argv(&["NOPE", "k"])).is_empty());
    }

    #[test]
    fn slots_detect_cross_slot_commands() {
        assert_eq!(command_slot(&argv(&["GET", "foo"])), KeySlot::Slot(12182));
        assert_eq!(
            command_slot(&argv(&["MGET", "{u}a", "{u}b"])),
            command_slot(&argv(&["GET", "u"]))
        );
        assert_eq!(
            command_slot(&argv(&["MGET", "foo", "bar"])),
            KeySlot::CrossSlot
        );
        assert_eq!(command_slot(&argv(&["PING"])), KeySlot::NoKeys);
    }

    #[test]
    fn longest_name_fits_the_lookup_buffer() {
        let longest = COMMANDS.iter().map(|spec| spec.name.len()).max().unwrap();
        assert_eq!(longest, MAX_COMMAND_NAME_BYTES);
    }
}
