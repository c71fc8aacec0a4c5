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
    Set,
    Get,
    Incr,
    Del,
    MGet,
    MSet,
    Exists,
    HSet,
    HGet,
    LPush,
    RPush,
    LPop,
    RPop,
    SAdd,
    ZAdd,
    SetNx,
    SetEx,
    PSetEx,
    GetSet,
    GetDel,
    GetEx,
    GetRange,
    SetRange,
    MSetNx,
    IncrBy,
    Decr,
    DecrBy,
    IncrByFloat,
    Append,
    StrLen,
    Expire,
    PExpire,
    ExpireAt,
    PExpireAt,
    Ttl,
    PTtl,
    Persist,
    ExpireTime,
    PExpireTime,
    Ping,
    Echo,
    HMSet,
    HMGet,
    HGetAll,
    HDel,
    HExists,
    HIncrBy,
    HIncrByFloat,
    HKeys,
    HVals,
    HLen,
    HSetNx,
    HStrLen,
    HRandField,
    HScan,
    LPushX,
    RPushX,
    LRange,
    LLen,
    LIndex,
    LSet,
    LRem,
    LTrim,
    LInsert,
    LPos,
    LMove,
    RPopLPush,
    BLPop,
    BRPop,
    BLMove,
    BRPopLPush,
    SRem,
    SMembers,
    SIsMember,
    SMIsMember,
    SCard,
    SPop,
    SRandMember,
    SMove,
    SInter,
    SUnion,
    SDiff,
    SInterStore,
    SUnionStore,
    SDiffStore,
    SInterCard,
    SScan,
    ZIncrBy,
    ZScore,
    ZMScore,
    ZRank,
    ZRevRank,
    ZRange,
    ZRangeByScore,
    ZRevRangeByScore,
    ZRangeByLex,
    ZRevRangeByLex,
    ZRevRange,
    ZCount,
    ZLexCount,
    ZRem,
    ZRemRangeByRank,
    ZRemRangeByScore,
    ZRemRangeByLex,
    ZPopMin,
    ZPopMax,
    BZPopMin,
    BZPopMax,
    ZCard,
    ZRandMember,
    ZUnionStore,
    ZInterStore,
    ZDiffStore,
    ZUnion,
    ZInter,
    ZDiff,
    ZRangeStore,
    ZScan,
    Type,
    Rename,
    RenameNx,
    Copy,
    Unlink,
    Touch,
    RandomKey,
    Object,
    DbSize,
    Keys,
    Scan,
    FlushAll,
    FlushDb,
    LMPop,
    BLMPop,
    ZMPop,
    BZMPop,
    ZInterCard,
    Sort,
    SortRo,
    Eval,
    EvalSha,
    EvalRo,
    EvalShaRo,
    FCall,
    FCallRo,
    Script,
    Function,
    StatorVersion,
    StatorExec,
    StatorAclKeys,
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
    /// Index of a `numkeys` argument followed by that many keys (ZUNIONSTORE, SINTERCARD);
    /// 0 when the command has none. These keys come after the fixed ones above.
    pub(crate) numkeys_index: usize,
}

const fn spec(
    command: Command,
    name: &'static str,
    arity: i32,
    kind: CommandKind,
    keys: (usize, isize, usize),
    numkeys_index: usize,
) -> CommandSpec {
    CommandSpec {
        command,
        name,
        arity,
        kind,
        first_key: keys.0,
        last_key: keys.1,
        key_step: keys.2,
        numkeys_index,
    }
}

use CommandKind::{Read, Write};

/// Hot commands first: lookup is a linear scan, which beats hashing for a table this small.
const COMMANDS: &[CommandSpec] = &[
    spec(Command::Set, "set", -3, Write, (1, 1, 1), 0),
    spec(Command::Get, "get", 2, Read, (1, 1, 1), 0),
    spec(Command::Incr, "incr", 2, Write, (1, 1, 1), 0),
    spec(Command::Del, "del", -2, Write, (1, -1, 1), 0),
    spec(Command::MGet, "mget", -2, Read, (1, -1, 1), 0),
    spec(Command::MSet, "mset", -3, Write, (1, -1, 2), 0),
    spec(Command::Exists, "exists", -2, Read, (1, -1, 1), 0),
    spec(Command::HSet, "hset", -4, Write, (1, 1, 1), 0),
    spec(Command::HGet, "hget", 3, Read, (1, 1, 1), 0),
    spec(Command::LPush, "lpush", -3, Write, (1, 1, 1), 0),
    spec(Command::RPush, "rpush", -3, Write, (1, 1, 1), 0),
    spec(Command::LPop, "lpop", -2, Write, (1, 1, 1), 0),
    spec(Command::RPop, "rpop", -2, Write, (1, 1, 1), 0),
    spec(Command::SAdd, "sadd", -3, Write, (1, 1, 1), 0),
    spec(Command::ZAdd, "zadd", -4, Write, (1, 1, 1), 0),
    spec(Command::SetNx, "setnx", 3, Write, (1, 1, 1), 0),
    spec(Command::SetEx, "setex", 4, Write, (1, 1, 1), 0),
    spec(Command::PSetEx, "psetex", 4, Write, (1, 1, 1), 0),
    spec(Command::GetSet, "getset", 3, Write, (1, 1, 1), 0),
    spec(Command::GetDel, "getdel", 2, Write, (1, 1, 1), 0),
    spec(Command::GetEx, "getex", -2, Write, (1, 1, 1), 0),
    spec(Command::GetRange, "getrange", 4, Read, (1, 1, 1), 0),
    spec(Command::SetRange, "setrange", 4, Write, (1, 1, 1), 0),
    spec(Command::MSetNx, "msetnx", -3, Write, (1, -1, 2), 0),
    spec(Command::IncrBy, "incrby", 3, Write, (1, 1, 1), 0),
    spec(Command::Decr, "decr", 2, Write, (1, 1, 1), 0),
    spec(Command::DecrBy, "decrby", 3, Write, (1, 1, 1), 0),
    spec(Command::IncrByFloat, "incrbyfloat", 3, Write, (1, 1, 1), 0),
    spec(Command::Append, "append", 3, Write, (1, 1, 1), 0),
    spec(Command::StrLen, "strlen", 2, Read, (1, 1, 1), 0),
    spec(Command::Expire, "expire", -3, Write, (1, 1, 1), 0),
    spec(Command::PExpire, "pexpire", -3, Write, (1, 1, 1), 0),
    spec(Command::ExpireAt, "expireat", -3, Write, (1, 1, 1), 0),
    spec(Command::PExpireAt, "pexpireat", -3, Write, (1, 1, 1), 0),
    spec(Command::Ttl, "ttl", 2, Read, (1, 1, 1), 0),
    spec(Command::PTtl, "pttl", 2, Read, (1, 1, 1), 0),
    spec(Command::Persist, "persist", 2, Write, (1, 1, 1), 0),
    spec(Command::ExpireTime, "expiretime", 2, Read, (1, 1, 1), 0),
    spec(Command::PExpireTime, "pexpiretime", 2, Read, (1, 1, 1), 0),
    spec(Command::Ping, "ping", -1, Read, (0, 0, 0), 0),
    spec(Command::Echo, "echo", 2, Read, (0, 0, 0), 0),
    spec(Command::HMSet, "hmset", -4, Write, (1, 1, 1), 0),
    spec(Command::HMGet, "hmget", -3, Read, (1, 1, 1), 0),
    spec(Command::HGetAll, "hgetall", 2, Read, (1, 1, 1), 0),
    spec(Command::HDel, "hdel", -3, Write, (1, 1, 1), 0),
    spec(Command::HExists, "hexists", 3, Read, (1, 1, 1), 0),
    spec(Command::HIncrBy, "hincrby", 4, Write, (1, 1, 1), 0),
    spec(
        Command::HIncrByFloat,
        "hincrbyfloat",
        4,
        Write,
        (1, 1, 1),
        0,
    ),
    spec(Command::HKeys, "hkeys", 2, Read, (1, 1, 1), 0),
    spec(Command::HVals, "hvals", 2, Read, (1, 1, 1), 0),
    spec(Command::HLen, "hlen", 2, Read, (1, 1, 1), 0),
    spec(Command::HSetNx, "hsetnx", 4, Write, (1, 1, 1), 0),
    spec(Command::HStrLen, "hstrlen", 3, Read, (1, 1, 1), 0),
    spec(Command::HRandField, "hrandfield", -2, Read, (1, 1, 1), 0),
    spec(Command::HScan, "hscan", -3, Read, (1, 1, 1), 0),
    spec(Command::LPushX, "lpushx", -3, Write, (1, 1, 1), 0),
    spec(Command::RPushX, "rpushx", -3, Write, (1, 1, 1), 0),
    spec(Command::LRange, "lrange", 4, Read, (1, 1, 1), 0),
    spec(Command::LLen, "llen", 2, Read, (1, 1, 1), 0),
    spec(Command::LIndex, "lindex", 3, Read, (1, 1, 1), 0),
    spec(Command::LSet, "lset", 4, Write, (1, 1, 1), 0),
    spec(Command::LRem, "lrem", 4, Write, (1, 1, 1), 0),
    spec(Command::LTrim, "ltrim", 4, Write, (1, 1, 1), 0),
    spec(Command::LInsert, "linsert", 5, Write, (1, 1, 1), 0),
    spec(Command::LPos, "lpos", -3, Read, (1, 1, 1), 0),
    spec(Command::LMove, "lmove", 5, Write, (1, 2, 1), 0),
    spec(Command::RPopLPush, "rpoplpush", 3, Write, (1, 2, 1), 0),
    spec(Command::BLPop, "blpop", -3, Write, (1, -2, 1), 0),
    spec(Command::BRPop, "brpop", -3, Write, (1, -2, 1), 0),
    spec(Command::BLMove, "blmove", 6, Write, (1, 2, 1), 0),
    spec(Command::BRPopLPush, "brpoplpush", 4, Write, (1, 2, 1), 0),
    spec(Command::SRem, "srem", -3, Write, (1, 1, 1), 0),
    spec(Command::SMembers, "smembers", 2, Read, (1, 1, 1), 0),
    spec(Command::SIsMember, "sismember", 3, Read, (1, 1, 1), 0),
    spec(Command::SMIsMember, "smismember", -3, Read, (1, 1, 1), 0),
    spec(Command::SCard, "scard", 2, Read, (1, 1, 1), 0),
    spec(Command::SPop, "spop", -2, Write, (1, 1, 1), 0),
    spec(Command::SRandMember, "srandmember", -2, Read, (1, 1, 1), 0),
    spec(Command::SMove, "smove", 4, Write, (1, 2, 1), 0),
    spec(Command::SInter, "sinter", -2, Read, (1, -1, 1), 0),
    spec(Command::SUnion, "sunion", -2, Read, (1, -1, 1), 0),
    spec(Command::SDiff, "sdiff", -2, Read, (1, -1, 1), 0),
    spec(
        Command::SInterStore,
        "sinterstore",
        -3,
        Write,
        (1, -1, 1),
        0,
    ),
    spec(
        Command::SUnionStore,
        "sunionstore",
        -3,
        Write,
        (1, -1, 1),
        0,
    ),
    spec(Command::SDiffStore, "sdiffstore", -3, Write, (1, -1, 1), 0),
    spec(Command::SInterCard, "sintercard", -3, Read, (0, 0, 0), 1),
    spec(Command::SScan, "sscan", -3, Read, (1, 1, 1), 0),
    spec(Command::ZIncrBy, "zincrby", 4, Write, (1, 1, 1), 0),
    spec(Command::ZScore, "zscore", 3, Read, (1, 1, 1), 0),
    spec(Command::ZMScore, "zmscore", -3, Read, (1, 1, 1), 0),
    spec(Command::ZRank, "zrank", 3, Read, (1, 1, 1), 0),
    spec(Command::ZRevRank, "zrevrank", 3, Read, (1, 1, 1), 0),
    spec(Command::ZRange, "zrange", -4, Read, (1, 1, 1), 0),
    spec(
        Command::ZRangeByScore,
        "zrangebyscore",
        -4,
        Read,
        (1, 1, 1),
        0,
    ),
    spec(
        Command::ZRevRangeByScore,
        "zrevrangebyscore",
        -4,
        Read,
        (1, 1, 1),
        0,
    ),
    spec(Command::ZRangeByLex, "zrangebylex", -4, Read, (1, 1, 1), 0),
    spec(
        Command::ZRevRangeByLex,
        "zrevrangebylex",
        -4,
        Read,
        (1, 1, 1),
        0,
    ),
    spec(Command::ZRevRange, "zrevrange", -4, Read, (1, 1, 1), 0),
    spec(Command::ZCount, "zcount", 4, Read, (1, 1, 1), 0),
    spec(Command::ZLexCount, "zlexcount", 4, Read, (1, 1, 1), 0),
    spec(Command::ZRem, "zrem", -3, Write, (1, 1, 1), 0),
    spec(
        Command::ZRemRangeByRank,
        "zremrangebyrank",
        4,
        Write,
        (1, 1, 1),
        0,
    ),
    spec(
        Command::ZRemRangeByScore,
        "zremrangebyscore",
        4,
        Write,
        (1, 1, 1),
        0,
    ),
    spec(
        Command::ZRemRangeByLex,
        "zremrangebylex",
        4,
        Write,
        (1, 1, 1),
        0,
    ),
    spec(Command::ZPopMin, "zpopmin", -2, Write, (1, 1, 1), 0),
    spec(Command::ZPopMax, "zpopmax", -2, Write, (1, 1, 1), 0),
    spec(Command::BZPopMin, "bzpopmin", -3, Write, (1, -2, 1), 0),
    spec(Command::BZPopMax, "bzpopmax", -3, Write, (1, -2, 1), 0),
    spec(Command::ZCard, "zcard", 2, Read, (1, 1, 1), 0),
    spec(Command::ZRandMember, "zrandmember", -2, Read, (1, 1, 1), 0),
    spec(Command::ZUnionStore, "zunionstore", -4, Write, (1, 1, 1), 2),
    spec(Command::ZInterStore, "zinterstore", -4, Write, (1, 1, 1), 2),
    spec(Command::ZDiffStore, "zdiffstore", -4, Write, (1, 1, 1), 2),
    spec(Command::ZUnion, "zunion", -3, Read, (0, 0, 0), 1),
    spec(Command::ZInter, "zinter", -3, Read, (0, 0, 0), 1),
    spec(Command::ZDiff, "zdiff", -3, Read, (0, 0, 0), 1),
    spec(Command::ZRangeStore, "zrangestore", -5, Write, (1, 2, 1), 0),
    spec(Command::ZScan, "zscan", -3, Read, (1, 1, 1), 0),
    spec(Command::Type, "type", 2, Read, (1, 1, 1), 0),
    spec(Command::Rename, "rename", 3, Write, (1, 2, 1), 0),
    spec(Command::RenameNx, "renamenx", 3, Write, (1, 2, 1), 0),
    spec(Command::Copy, "copy", -3, Write, (1, 2, 1), 0),
    spec(Command::Unlink, "unlink", -2, Write, (1, -1, 1), 0),
    spec(Command::Touch, "touch", -2, Read, (1, -1, 1), 0),
    spec(Command::RandomKey, "randomkey", 1, Read, (0, 0, 0), 0),
    spec(Command::Object, "object", -2, Read, (2, 2, 1), 0),
    spec(Command::DbSize, "dbsize", 1, Read, (0, 0, 0), 0),
    spec(Command::Keys, "keys", 2, Read, (0, 0, 0), 0),
    spec(Command::Scan, "scan", -2, Read, (0, 0, 0), 0),
    spec(Command::FlushAll, "flushall", -1, Write, (0, 0, 0), 0),
    spec(Command::FlushDb, "flushdb", -1, Write, (0, 0, 0), 0),
    spec(Command::LMPop, "lmpop", -4, Write, (0, 0, 0), 1),
    spec(Command::BLMPop, "blmpop", -5, Write, (0, 0, 0), 2),
    spec(Command::ZMPop, "zmpop", -4, Write, (0, 0, 0), 1),
    spec(Command::BZMPop, "bzmpop", -5, Write, (0, 0, 0), 2),
    spec(Command::ZInterCard, "zintercard", -3, Read, (0, 0, 0), 1),
    // SORT's STORE destination is a key too: see `key_indexes`.
    spec(Command::Sort, "sort", -2, Write, (1, 1, 1), 0),
    spec(Command::SortRo, "sort_ro", -2, Read, (1, 1, 1), 0),
    // Scripts name their keys in the `numkeys` form, so the gateway routes them by KEYS.
    spec(Command::Eval, "eval", -3, Write, (0, 0, 0), 2),
    spec(Command::EvalSha, "evalsha", -3, Write, (0, 0, 0), 2),
    spec(Command::EvalRo, "eval_ro", -3, Read, (0, 0, 0), 2),
    spec(Command::EvalShaRo, "evalsha_ro", -3, Read, (0, 0, 0), 2),
    spec(Command::FCall, "fcall", -3, Write, (0, 0, 0), 2),
    spec(Command::FCallRo, "fcall_ro", -3, Read, (0, 0, 0), 2),
    spec(Command::Script, "script", -2, Write, (0, 0, 0), 0),
    spec(Command::Function, "function", -2, Write, (0, 0, 0), 0),
    spec(
        Command::StatorVersion,
        "stator.version",
        -2,
        Read,
        (1, -1, 1),
        0,
    ),
    spec(Command::StatorExec, "stator.exec", -2, Write, (0, 0, 0), 0),
    // A script command with the caller's ACL key patterns (`script_acl`); its kind and
    // keys are the script command's.
    spec(
        Command::StatorAclKeys,
        "stator.aclkeys",
        -4,
        Write,
        (0, 0, 0),
        0,
    ),
];

/// Longest command name in [`COMMANDS`] ("zremrangebyscore"); longer names are unknown without
/// looking, and shorter ones lower-case into a stack buffer of this size.
const MAX_COMMAND_NAME_BYTES: usize = 16;

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

/// Subcommands of OBJECT with their Redis arity (negative: at least that many).
const OBJECT_SUBCOMMANDS: &[(&str, i32)] = &[
    ("encoding", 3),
    ("refcount", 3),
    ("freq", 3),
    ("idletime", 3),
    ("help", 2),
];

/// Subcommands of SCRIPT with their Redis arity.
const SCRIPT_SUBCOMMANDS: &[(&str, i32)] = &[
    ("load", 3),
    ("exists", -3),
    ("flush", -2),
    ("kill", 2),
    ("help", 2),
    ("debug", 3),
];

/// Subcommands of FUNCTION with their Redis arity.
const FUNCTION_SUBCOMMANDS: &[(&str, i32)] = &[
    ("load", -3),
    ("list", -2),
    ("delete", 3),
    ("flush", -2),
    ("kill", 2),
    ("stats", 2),
    ("dump", 2),
    ("restore", -3),
    ("help", 2),
];

impl CommandSpec {
    /// The error Redis gives for a subcommand it does not know or with the wrong arity
    /// (OBJECT, SCRIPT and FUNCTION have subcommands), or `None`.
    pub(crate) fn subcommand_error<A: AsRef<[u8]>>(&self, argv: &[A]) -> Option<String> {
        let (table, upper) = match self.command {
            Command::Object => (OBJECT_SUBCOMMANDS, "OBJECT"),
            Command::Script => (SCRIPT_SUBCOMMANDS, "SCRIPT"),
            Command::Function => (FUNCTION_SUBCOMMANDS, "FUNCTION"),
            _ => return None,
        };
        let sub = String::from_utf8_lossy(argv[1].as_ref()).to_ascii_lowercase();
        match table.iter().find(|(name, _)| *name == sub) {
            None => Some(format!(
                "ERR unknown subcommand '{}'. Try {upper} HELP.",
                String::from_utf8_lossy(argv[1].as_ref())
            )),
            Some((name, arity)) if !arity_admits(*arity, argv.len()) => Some(format!(
                "ERR wrong number of arguments for '{}|{name}' command",
                self.name
            )),
            Some(_) => None,
        }
    }

    /// Whether `argc` arguments (name included) satisfy the arity.
    pub(crate) fn arity_ok(&self, argc: usize) -> bool {
        arity_admits(self.arity, argc)
    }

    /// Indexes of the key arguments of `argv` (whose arity was not necessarily checked).
    pub(crate) fn key_indexes(&self, argv: &[Vec<u8>]) -> Vec<usize> {
        if self.command == Command::StatorExec {
            return exec_key_indexes(argv);
        }
        if self.command == Command::StatorAclKeys {
            return script_acl_key_indexes(argv);
        }
        if self.command == Command::Sort && argv.len() > 1 {
            let store = (2..argv.len().saturating_sub(1))
                .find(|&index| argv[index].eq_ignore_ascii_case(b"STORE"));
            return std::iter::once(1)
                .chain(store.map(|index| index + 1))
                .collect();
        }
        let argc = argv.len();
        let (first, last) = if self.first_key == 0 || argc <= self.first_key {
            (1, 0)
        } else if self.last_key < 0 {
            (self.first_key, argc as isize + self.last_key)
        } else {
            (self.first_key, self.last_key.min(argc as isize - 1))
        };
        let last = last.max(0) as usize;
        let mut indexes: Vec<usize> = (first..=last).step_by(self.key_step.max(1)).collect();
        if self.numkeys_index > 0 {
            if let Some(count) = argv
                .get(self.numkeys_index)
                .and_then(|n| crate::resp::parse_i64_strict(n))
                .and_then(|n| usize::try_from(n).ok())
            {
                let start = self.numkeys_index + 1;
                // A count past the arguments is an invalid command: name no keys, so the
                // machine (not a CROSSSLOT check on non-keys) answers it.
                if start + count <= argc {
                    indexes.extend(start..start + count);
                }
            }
        }
        indexes
    }
}

/// Whether `argc` arguments satisfy Redis arity `arity` (`-n`: at least `n`).
fn arity_admits(arity: i32, argc: usize) -> bool {
    if arity >= 0 {
        argc == arity as usize
    } else {
        argc >= arity.unsigned_abs() as usize
    }
}

/// Keys of a `STATOR.EXEC` entry: the watched keys, then each queued command's keys.
fn exec_key_indexes(argv: &[Vec<u8>]) -> Vec<usize> {
    let mut indexes = Vec::new();
    let Some(layout) = crate::transaction::ExecLayout::parse(argv) else {
        return indexes;
    };
    indexes.extend(layout.watched.iter().map(|(key_index, _)| *key_index));
    for range in layout.commands {
        let queued = &argv[range.clone()];
        if let Some(spec) = queued.first().and_then(|name| lookup(name)) {
            if spec.command != Command::StatorExec {
                indexes.extend(
                    spec.key_indexes(queued)
                        .into_iter()
                        .map(|index| index + range.start),
                );
            }
        }
    }
    indexes
}

/// Keys of a `STATOR.ACLKEYS` wrapper: its script command's.
fn script_acl_key_indexes(argv: &[Vec<u8>]) -> Vec<usize> {
    let Ok(layout) = crate::script_acl::AclKeysLayout::parse(argv) else {
        return Vec::new();
    };
    let inner = &argv[layout.inner_start..];
    lookup(&inner[0]).map_or_else(Vec::new, |spec| {
        spec.key_indexes(inner)
            .into_iter()
            .map(|index| index + layout.inner_start)
            .collect()
    })
}

/// Whether `argv` reads, writes, or is not a `kv` command (case-insensitive; arity unchecked).
/// A `STATOR.ACLKEYS` wrapper has the kind of the script command it wraps.
pub fn command_kind(argv: &[Vec<u8>]) -> CommandKind {
    let Some(spec) = argv.first().and_then(|name| lookup(name)) else {
        return CommandKind::Unknown;
    };
    if spec.command == Command::StatorAclKeys {
        if let Ok(layout) = crate::script_acl::AclKeysLayout::parse(argv) {
            return command_kind(&argv[layout.inner_start..]);
        }
    }
    spec.kind
}

/// The key arguments of `argv`, in order (empty for unknown and keyless commands).
pub fn command_keys(argv: &[Vec<u8>]) -> Vec<&[u8]> {
    let Some(spec) = argv.first().and_then(|name| lookup(name)) else {
        return Vec::new();
    };
    spec.key_indexes(argv)
        .into_iter()
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
    let one_key = spec.first_key == 1
        && spec.last_key == 1
        && spec.numkeys_index == 0
        && !matches!(
            spec.command,
            Command::StatorExec | Command::StatorAclKeys | Command::Sort
        );
    if one_key {
        // GET, SET, HSET ...: the slot of argument 1, without a list of key indexes.
        return argv
            .get(1)
            .map_or(KeySlot::NoKeys, |key| KeySlot::Slot(key_slot(key)));
    }
    let mut slots = spec
        .key_indexes(argv)
        .into_iter()
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
    fn one_key_commands_find_the_slot_the_key_list_gives() {
        // `slot_of_keys` skips the key list for one-key commands: same answer for every
        // command of the table, with too few, enough and extra arguments.
        let from_key_list = |spec: &CommandSpec, argv: &[Vec<u8>]| {
            let slots: Vec<u16> = spec
                .key_indexes(argv)
                .into_iter()
                .map(|index| key_slot(&argv[index]))
                .collect();
            match slots.split_first() {
                None => KeySlot::NoKeys,
                Some((first, rest)) if rest.iter().all(|s| s == first) => KeySlot::Slot(*first),
                Some(_) => KeySlot::CrossSlot,
            }
        };
        for spec in COMMANDS {
            for words in [
                vec![spec.name],
                vec![spec.name, "k"],
                vec![spec.name, "k", "{k}x", "2", "b"],
            ] {
                let argv = argv(&words);
                assert_eq!(
                    slot_of_keys(spec, &argv),
                    from_key_list(spec, &argv),
                    "{words:?}"
                );
            }
        }
    }

    #[test]
    fn kinds_are_case_insensitive() {
        assert_eq!(command_kind(&argv(&["get", "k"])), CommandKind::Read);
        assert_eq!(command_kind(&argv(&["GeT", "k"])), CommandKind::Read);
        assert_eq!(command_kind(&argv(&["SET", "k", "v"])), CommandKind::Write);
        assert_eq!(command_kind(&argv(&["INCRBYFLOAT"])), CommandKind::Write);
        assert_eq!(command_kind(&argv(&["FLUSHALL"])), CommandKind::Write);
        assert_eq!(
            command_kind(&argv(&["PUBLISH", "c", "m"])),
            CommandKind::Unknown
        );
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
        assert_eq!(
            command_keys(&argv(&[
                "ZUNIONSTORE",
                "d",
                "2",
                "a",
                "b",
                "WEIGHTS",
                "1",
                "2"
            ])),
            vec![b"d", b"a", b"b"]
        );
        assert_eq!(
            command_keys(&argv(&["SINTERCARD", "2", "a", "b", "LIMIT", "1"])),
            vec![b"a", b"b"]
        );
        assert!(
            command_keys(&argv(&["SINTERCARD", "9", "a"])).is_empty(),
            "a numkeys past the end names no keys"
        );
        assert_eq!(
            command_keys(&argv(&["BLPOP", "a", "b", "0"])),
            vec![b"a", b"b"]
        );
        assert_eq!(
            command_keys(&argv(&[
                "STATOR.EXEC",
                "1",
                "w",
                "3",
                "2",
                "GET",
                "g",
                "3",
                "SET",
                "s",
                "v"
            ])),
            vec![b"w".as_slice(), b"g", b"s"]
        );
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
