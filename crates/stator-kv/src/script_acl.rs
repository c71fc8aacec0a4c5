//! ACL rights inside scripts: `STATOR.ACLKEYS <count> <pattern>... [RIGHTS <count> <rule>...]
//! <script command>`.
//!
//! A script runs inside the state machine, which does not know the caller's ACL user. The
//! gateway (or a cluster-mode agent) that authenticated the caller wraps the caller's EVAL,
//! EVALSHA, FCALL (and `_RO` forms) with the user's key patterns and, when the user may not
//! run every command, the user's command rules (`+@all`, `-set`, `+@read`, ... in the order
//! the spec lists them; the last rule that matches a command decides, as in Redis). While
//! the wrapped script runs, every `redis.call` / `redis.pcall` of a command the rules refuse
//! answers Redis 7.0's [`SCRIPT_COMMAND_DENIED`], and one naming a key no pattern matches
//! answers [`SCRIPT_KEY_DENIED`], instead of running. Routing, kind and key positions of
//! the wrapped command are those of the script command inside, so the wrapper changes
//! nothing else: it travels in the log entry (every replica enforces the same rights) and
//! inside `STATOR.EXEC` when the script was queued in `MULTI`. Entries written before
//! `RIGHTS` existed still parse: they carry key patterns only.
//!
//! [`command_in_category`] is the one definition of the ACL categories, shared with the
//! gateway's own checks so a command is allowed or refused alike inside and outside scripts.

use crate::command::{lookup, Command, CommandKind};
use crate::resp::Value;

/// The wrapper's name.
pub const ACL_KEYS_COMMAND: &str = "STATOR.ACLKEYS";

/// Redis 7.0's reply (checked against redis-server with an ACL user) when a script's
/// `redis.call` names a key outside the user's patterns; the script error reply adds
/// ` script: <sha>, on @user_script:<line>.` as for any failed call.
pub const SCRIPT_KEY_DENIED: &str =
    "ERR The user executing the script can't access at least one of the keys mentioned in the command arguments";

/// Redis 7.0's reply (checked against redis-server with an ACL user) when a script's
/// `redis.call` runs a command the user's rules refuse; the script error reply adds
/// ` script: <sha>, on @user_script:<line>.` as for any failed call.
pub const SCRIPT_COMMAND_DENIED: &str =
    "ERR The user executing the script can't run this command or subcommand";

/// The word that starts a wrapper's command rules.
pub const RIGHTS_MARKER: &str = "RIGHTS";

/// Most command rules one wrapper carries (a spec's user has a handful).
pub const MAX_ACL_RULES: usize = 1024;

/// The ACL categories stator knows, for rules (`+@read`) and `ACL CAT`.
pub const ACL_CATEGORIES: &[&str] = &[
    "all",
    "read",
    "write",
    "keyspace",
    "dangerous",
    "connection",
    "admin",
    "pubsub",
    "transaction",
];

/// Whether command `name` (lowercase) of `kind` belongs to ACL `category`.
pub fn command_in_category(category: &str, name: &str, kind: CommandKind) -> bool {
    match category {
        "all" => true,
        "read" => {
            kind == CommandKind::Read
                || matches!(name, "keys" | "scan" | "dbsize" | "randomkey" | "type")
        }
        "write" => kind == CommandKind::Write || matches!(name, "flushall" | "flushdb"),
        "keyspace" => matches!(
            name,
            "del"
                | "exists"
                | "expire"
                | "pexpire"
                | "expireat"
                | "pexpireat"
                | "ttl"
                | "pttl"
                | "persist"
                | "keys"
                | "scan"
                | "dbsize"
                | "flushall"
                | "flushdb"
                | "randomkey"
                | "type"
                | "rename"
                | "renamenx"
                | "unlink"
                | "touch"
                | "copy"
        ),
        "dangerous" => matches!(
            name,
            "flushall" | "flushdb" | "keys" | "acl" | "config" | "client" | "info"
        ),
        "connection" => matches!(
            name,
            "ping" | "echo" | "select" | "client" | "hello" | "auth" | "quit"
        ),
        "admin" => matches!(name, "acl" | "config" | "client"),
        "pubsub" => matches!(
            name,
            "publish"
                | "subscribe"
                | "unsubscribe"
                | "psubscribe"
                | "punsubscribe"
                | "pubsub"
                | "spublish"
                | "ssubscribe"
                | "sunsubscribe"
        ),
        "transaction" => matches!(name, "multi" | "exec" | "discard" | "watch" | "unwatch"),
        _ => false,
    }
}

/// What one command rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSelector {
    /// `@category`.
    Category(String),
    /// A command name, lowercase.
    Command(String),
}

/// A user's command rules: `(allow, selector)` in order; the last rule that matches a
/// command decides, and a command no rule matches is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandRights {
    pub rules: Vec<(bool, RuleSelector)>,
}

impl CommandRights {
    /// Parses rules as a spec writes them: `+name`, `-name`, `+@category`, `-@category`,
    /// `allcommands`, `nocommands`; `Err` names the rule and what is accepted.
    pub fn parse<R: AsRef<[u8]>>(rules: &[R]) -> Result<CommandRights, String> {
        let mut parsed = Vec::with_capacity(rules.len());
        for rule in rules {
            let text = String::from_utf8_lossy(rule.as_ref()).to_ascii_lowercase();
            let (allow, selector) = match text.as_str() {
                "allcommands" => (true, RuleSelector::Category("all".into())),
                "nocommands" => (false, RuleSelector::Category("all".into())),
                _ => {
                    let allow = match text.as_bytes().first() {
                        Some(b'+') => true,
                        Some(b'-') => false,
                        _ => {
                            return Err(format!(
                                "command rule '{text}' must start with + or - (or be allcommands / nocommands)"
                            ))
                        }
                    };
                    let body = &text[1..];
                    match body.strip_prefix('@') {
                        Some(category) if ACL_CATEGORIES.contains(&category) => {
                            (allow, RuleSelector::Category(category.to_string()))
                        }
                        Some(category) => {
                            return Err(format!(
                                "category @{category} is not known to stator; use one of @{}",
                                ACL_CATEGORIES.join(", @")
                            ))
                        }
                        None if body.is_empty() => {
                            return Err(format!("command rule '{text}' names no command"))
                        }
                        None => (allow, RuleSelector::Command(body.to_string())),
                    }
                }
            };
            parsed.push((allow, selector));
        }
        Ok(CommandRights { rules: parsed })
    }

    /// Whether the last `+@all` lets every command through (no check needed).
    pub fn allows_everything(&self) -> bool {
        self.rules.last() == Some(&(true, RuleSelector::Category("all".into())))
    }

    /// Whether these rules let command `name` (lowercase) of `kind` run.
    pub fn allows(&self, name: &str, kind: CommandKind) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|(_, selector)| match selector {
                RuleSelector::Category(category) => command_in_category(category, name, kind),
                RuleSelector::Command(command) => command == name,
            })
            .is_some_and(|(allow, _)| *allow)
    }

    /// The rules as [`CommandRights::parse`] reads them back (what a wrapper carries).
    pub fn encode(&self) -> Vec<Vec<u8>> {
        self.rules
            .iter()
            .map(|(allow, selector)| {
                let sign = if *allow { '+' } else { '-' };
                match selector {
                    RuleSelector::Category(category) => format!("{sign}@{category}"),
                    RuleSelector::Command(command) => format!("{sign}{command}"),
                }
                .into_bytes()
            })
            .collect()
    }
}

/// Most key patterns one wrapper carries. An ACL user in a spec has a handful; the bound
/// keeps a hostile entry from making every `redis.call` try millions of globs.
pub const MAX_ACL_KEY_PATTERNS: usize = 1024;

/// A parsed wrapper: the patterns and where the script command starts.
pub(crate) struct AclKeysLayout<'a> {
    pub(crate) patterns: &'a [Vec<u8>],
    /// The command rules after `RIGHTS`; `None` when the wrapper carries none (the
    /// caller may run every command).
    pub(crate) rights: Option<&'a [Vec<u8>]>,
    /// Index of the script command's name in the wrapper's arguments.
    pub(crate) inner_start: usize,
}

impl<'a> AclKeysLayout<'a> {
    /// The layout of `argv` (a `STATOR.ACLKEYS` command), or the error reply.
    pub(crate) fn parse(argv: &'a [Vec<u8>]) -> Result<AclKeysLayout<'a>, Value> {
        let malformed = || {
            Value::error(format!(
                "ERR malformed {ACL_KEYS_COMMAND}: expected <count> <pattern>... [{RIGHTS_MARKER} <count> <rule>...] EVAL|EVALSHA|EVAL_RO|EVALSHA_RO|FCALL|FCALL_RO ...; build it with stator_kv::encode_script_acl"
            ))
        };
        let count: usize = argv
            .get(1)
            .and_then(|count| std::str::from_utf8(count).ok())
            .and_then(|count| count.parse().ok())
            .filter(|count| *count <= MAX_ACL_KEY_PATTERNS)
            .ok_or_else(malformed)?;
        let patterns_end = 2 + count;
        let patterns = argv.get(2..patterns_end).ok_or_else(malformed)?;
        let mut inner_start = patterns_end;
        let mut rights = None;
        if argv
            .get(patterns_end)
            .is_some_and(|word| word.eq_ignore_ascii_case(RIGHTS_MARKER.as_bytes()))
        {
            let count: usize = argv
                .get(patterns_end + 1)
                .and_then(|count| std::str::from_utf8(count).ok())
                .and_then(|count| count.parse().ok())
                .filter(|count| *count <= MAX_ACL_RULES)
                .ok_or_else(malformed)?;
            let rules_start = patterns_end + 2;
            inner_start = rules_start + count;
            rights = Some(argv.get(rules_start..inner_start).ok_or_else(malformed)?);
        }
        let inner = argv.get(inner_start..).ok_or_else(malformed)?;
        if !inner.first().is_some_and(|name| is_script_name(name)) {
            return Err(malformed());
        }
        Ok(AclKeysLayout {
            patterns,
            rights,
            inner_start,
        })
    }
}

/// Whether `name` is a command that runs a script (EVAL, EVALSHA, FCALL and `_RO` forms).
fn is_script_name(name: &[u8]) -> bool {
    lookup(name).is_some_and(|spec| {
        matches!(
            spec.command,
            Command::Eval
                | Command::EvalSha
                | Command::EvalRo
                | Command::EvalShaRo
                | Command::FCall
                | Command::FCallRo
        )
    })
}

/// Whether `argv` runs a script, so a restricted user's call should be wrapped.
pub fn is_script_command(argv: &[Vec<u8>]) -> bool {
    argv.first().is_some_and(|name| is_script_name(name))
}

/// Whether `argv` runs a script: a script command, or one wrapped in `STATOR.ACLKEYS`.
pub fn runs_script(argv: &[Vec<u8>]) -> bool {
    is_script_command(argv)
        || argv
            .first()
            .is_some_and(|name| name.eq_ignore_ascii_case(ACL_KEYS_COMMAND.as_bytes()))
}

/// `argv` (a script command) wrapped with the caller's key `patterns`.
pub fn encode_script_acl(patterns: &[Vec<u8>], argv: &[Vec<u8>]) -> Vec<Vec<u8>> {
    encode_script_rights(patterns, None, argv)
}

/// `argv` (a script command) wrapped with the caller's key `patterns` and, when the
/// caller may not run every command, its command `rights`.
pub fn encode_script_rights(
    patterns: &[Vec<u8>],
    rights: Option<&CommandRights>,
    argv: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let rules = rights.map(CommandRights::encode).unwrap_or_default();
    let mut wrapped = Vec::with_capacity(4 + patterns.len() + rules.len() + argv.len());
    wrapped.push(ACL_KEYS_COMMAND.as_bytes().to_vec());
    wrapped.push(patterns.len().to_string().into_bytes());
    wrapped.extend(patterns.iter().cloned());
    if rights.is_some() {
        wrapped.push(RIGHTS_MARKER.as_bytes().to_vec());
        wrapped.push(rules.len().to_string().into_bytes());
        wrapped.extend(rules);
    }
    wrapped.extend(argv.iter().cloned());
    wrapped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn wrappers_name_patterns_and_a_script_command() {
        let wrapped = encode_script_acl(&argv(&["a*", "b"]), &argv(&["EVAL", "return 1", "0"]));
        assert_eq!(
            wrapped,
            argv(&["STATOR.ACLKEYS", "2", "a*", "b", "EVAL", "return 1", "0"])
        );
        let layout = AclKeysLayout::parse(&wrapped).unwrap();
        assert_eq!(layout.patterns, &argv(&["a*", "b"])[..]);
        assert_eq!(layout.inner_start, 4);
        for bad in [
            argv(&["STATOR.ACLKEYS", "1", "a*", "GET", "k"]),
            argv(&["STATOR.ACLKEYS", "x", "EVAL", "return 1", "0"]),
            argv(&["STATOR.ACLKEYS", "5", "a", "EVAL"]),
            argv(&["STATOR.ACLKEYS", "99999", "EVAL", "return 1", "0"]),
        ] {
            assert!(AclKeysLayout::parse(&bad).is_err(), "{bad:?}");
        }
        let rights = CommandRights::parse(&["-@all", "+get", "+@read", "-hgetall"]).unwrap();
        let wrapped_rights = encode_script_rights(
            &argv(&["*"]),
            Some(&rights),
            &argv(&["EVAL", "return 1", "0"]),
        );
        assert_eq!(
            wrapped_rights,
            argv(&[
                "STATOR.ACLKEYS",
                "1",
                "*",
                "RIGHTS",
                "4",
                "-@all",
                "+get",
                "+@read",
                "-hgetall",
                "EVAL",
                "return 1",
                "0"
            ])
        );
        let layout = AclKeysLayout::parse(&wrapped_rights).unwrap();
        assert_eq!(layout.inner_start, 9);
        let parsed = CommandRights::parse(layout.rights.unwrap()).unwrap();
        assert_eq!(parsed, rights);
        assert!(parsed.allows("get", CommandKind::Read));
        assert!(parsed.allows("hget", CommandKind::Read));
        assert!(!parsed.allows("hgetall", CommandKind::Read));
        assert!(!parsed.allows("set", CommandKind::Write));
        assert!(!parsed.allows_everything());
        assert!(AclKeysLayout::parse(&argv(&[
            "STATOR.ACLKEYS",
            "0",
            "RIGHTS",
            "2",
            "+get",
            "EVAL",
            "return 1",
            "0"
        ]))
        .is_err());
        assert!(CommandRights::parse(&["+@nosuch"])
            .unwrap_err()
            .contains("@read"));
        assert!(CommandRights::parse(&["get"]).is_err());
        assert!(is_script_command(&argv(&["fcall_ro", "f", "0"])));
        assert!(!is_script_command(&argv(&["GET", "k"])));
        assert!(runs_script(&wrapped) && runs_script(&argv(&["EVAL", "return 1", "0"])));
        assert!(!is_script_command(&wrapped) && !runs_script(&argv(&["GET", "k"])));
    }
}
