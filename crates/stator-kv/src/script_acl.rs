//! ACL key rights inside scripts: `STATOR.ACLKEYS <count> <pattern>... <script command>`.
//!
//! A script runs inside the state machine, which does not know the caller's ACL user. The
//! gateway (or a cluster-mode agent) that authenticated the caller wraps the caller's EVAL,
//! EVALSHA, FCALL (and `_RO` forms) with the user's key patterns; while the wrapped script
//! runs, every `redis.call` / `redis.pcall` on a key no pattern matches answers Redis 7.0's
//! script ACL error ([`SCRIPT_KEY_DENIED`]) instead of running. Routing, kind and key
//! positions of the wrapped command are those of the script command inside, so the wrapper
//! changes nothing else: it travels in the log entry (every replica enforces the same
//! rights) and inside `STATOR.EXEC` when the script was queued in `MULTI`.

use crate::command::{lookup, Command};
use crate::resp::Value;

/// The wrapper's name.
pub const ACL_KEYS_COMMAND: &str = "STATOR.ACLKEYS";

/// Redis 7.0's reply (checked against redis-server with an ACL user) when a script's
/// `redis.call` names a key outside the user's patterns; the script error reply adds
/// ` script: <sha>, on @user_script:<line>.` as for any failed call.
pub const SCRIPT_KEY_DENIED: &str =
    "ERR The user executing the script can't access at least one of the keys mentioned in the command arguments";

/// Most key patterns one wrapper carries. An ACL user in a spec has a handful; the bound
/// keeps a hostile entry from making every `redis.call` try millions of globs.
pub const MAX_ACL_KEY_PATTERNS: usize = 1024;

/// A parsed wrapper: the patterns and where the script command starts.
pub(crate) struct AclKeysLayout<'a> {
    pub(crate) patterns: &'a [Vec<u8>],
    /// Index of the script command's name in the wrapper's arguments.
    pub(crate) inner_start: usize,
}

impl<'a> AclKeysLayout<'a> {
    /// The layout of `argv` (a `STATOR.ACLKEYS` command), or the error reply.
    pub(crate) fn parse(argv: &'a [Vec<u8>]) -> Result<AclKeysLayout<'a>, Value> {
        let malformed = || {
            Value::error(format!(
                "ERR malformed {ACL_KEYS_COMMAND}: expected <count> <pattern>... EVAL|EVALSHA|EVAL_RO|EVALSHA_RO|FCALL|FCALL_RO ...; build it with stator_kv::encode_script_acl"
            ))
        };
        let count: usize = argv
            .get(1)
            .and_then(|count| std::str::from_utf8(count).ok())
            .and_then(|count| count.parse().ok())
            .filter(|count| *count <= MAX_ACL_KEY_PATTERNS)
            .ok_or_else(malformed)?;
        let inner_start = 2 + count;
        let inner = argv.get(inner_start..).ok_or_else(malformed)?;
        if !inner.first().is_some_and(|name| is_script_name(name)) {
            return Err(malformed());
        }
        Ok(AclKeysLayout {
            patterns: &argv[2..inner_start],
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
    let mut wrapped = Vec::with_capacity(2 + patterns.len() + argv.len());
    wrapped.push(ACL_KEYS_COMMAND.as_bytes().to_vec());
    wrapped.push(patterns.len().to_string().into_bytes());
    wrapped.extend(patterns.iter().cloned());
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
        assert!(is_script_command(&argv(&["fcall_ro", "f", "0"])));
        assert!(!is_script_command(&argv(&["GET", "k"])));
        assert!(runs_script(&wrapped) && runs_script(&argv(&["EVAL", "return 1", "0"])));
        assert!(!is_script_command(&wrapped) && !runs_script(&argv(&["GET", "k"])));
    }
}
