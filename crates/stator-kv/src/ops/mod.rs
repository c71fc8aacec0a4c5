//! Commands grouped by the type they work on, as `impl KvMachine` blocks, and the helpers
//! they share: typed key access, number parsing and formatting, SCAN cursors and globs.

mod hash;
mod keys;
mod list;
mod script;
mod set;
mod sort;
mod strings;
mod zset;

pub(crate) use script::Scripts;
pub use script::{MAX_CACHED_SCRIPTS, MAX_FUNCTION_LIBRARIES};

use crate::machine::{KvMachine, NOT_AN_INTEGER, SYNTAX_ERROR, WRONG_TYPE};
use crate::resp::{parse_i64_strict, Value};
use crate::types::{Data, Hash, List, Set, ZSet};

/// Most elements a SCAN-family reply returns per call when COUNT is not given.
pub(crate) const DEFAULT_SCAN_COUNT: usize = 10;

macro_rules! typed_access {
    ($get:ident, $with:ident, $variant:ident, $type:ty) => {
        impl KvMachine {
            /// The value under `key`, `None` if missing, or a WRONGTYPE error reply.
            pub(crate) fn $get(&self, key: &[u8], now_ms: u64) -> Result<Option<&$type>, Value> {
                match self.live(key, now_ms).map(|entry| &entry.data) {
                    None => Ok(None),
                    Some(Data::$variant(value)) => Ok(Some(&**value)),
                    Some(_) => Err(Value::error(WRONG_TYPE)),
                }
            }

            /// Runs `change` on the value under `key`, first creating it empty if `create`.
            /// `Ok(None)` if the key is missing and not created; WRONGTYPE if of another
            /// type. A value left empty deletes the key.
            pub(crate) fn $with<R>(
                &mut self,
                key: &[u8],
                create: bool,
                change: impl FnOnce(&mut $type) -> R,
            ) -> Result<Option<R>, Value> {
                let now_ms = self.now_ms;
                if self.$get(key, now_ms)?.is_none() && !create {
                    return Ok(None);
                }
                let change = |data: &mut Data| match data {
                    Data::$variant(value) => change(value),
                    _ => unreachable!("type checked above"),
                };
                Ok(Some(self.keyspace.upsert(
                    key,
                    || Data::$variant(Box::default()),
                    change,
                )))
            }
        }
    };
}

typed_access!(hash, with_hash, Hash, Hash);
typed_access!(list, with_list, List, List);
typed_access!(set, with_set, Set, Set);
typed_access!(zset, with_zset, ZSet, ZSet);

/// An integer argument, or Redis' "not an integer" error.
pub(crate) fn int_arg(arg: &[u8]) -> Result<i64, Value> {
    parse_i64_strict(arg).ok_or_else(|| Value::error(NOT_AN_INTEGER))
}

/// A bulk-string array.
pub(crate) fn bulk_array<T: AsRef<[u8]>>(items: impl IntoIterator<Item = T>) -> Value {
    Value::Array(Some(
        items
            .into_iter()
            .map(|item| Value::bulk(item.as_ref().to_vec()))
            .collect(),
    ))
}

/// Formats a double as Redis 7.0 replies it (`%.17g`; `inf`, `-inf`).
pub(crate) fn format_double(number: f64) -> Vec<u8> {
    if number.is_infinite() {
        return if number > 0.0 {
            b"inf".to_vec()
        } else {
            b"-inf".to_vec()
        };
    }
    if number == 0.0 {
        return if number.is_sign_negative() {
            b"-0".to_vec()
        } else {
            b"0".to_vec()
        };
    }
    let scientific = format!("{number:.16e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("{:e} output has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    if !(-4..17).contains(&exponent) {
        let mantissa = trim_fraction(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs()).into_bytes()
    } else {
        let decimals = (16 - exponent) as usize;
        trim_fraction(&format!("{number:.decimals$}"))
            .as_bytes()
            .to_vec()
    }
}

fn trim_fraction(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// A score or weight as Redis' `strtod` reads it: no spaces, no NaN; `inf` allowed.
pub(crate) fn parse_double(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    let number: f64 = text.parse().ok()?;
    (!number.is_nan()).then_some(number)
}

/// A score, increment or weight as Redis' `getDoubleFromObject` reads it: [`parse_double`],
/// and also refusing what `strtod` reports as out of range (`1e400` overflows to inf and
/// `1e-400` underflows to 0; only a spelled-out `inf` is infinite).
pub(crate) fn parse_score(arg: &[u8]) -> Option<f64> {
    let number = parse_double(arg)?;
    let mantissa = arg
        .split(|b| *b == b'e' || *b == b'E')
        .next()
        .unwrap_or(arg);
    let overflowed = number.is_infinite() && !arg.iter().any(|b| b.eq_ignore_ascii_case(&b'i'));
    let underflowed = number == 0.0 && mantissa.iter().any(|b| (b'1'..=b'9').contains(b));
    (!overflowed && !underflowed).then_some(number)
}

/// `start stop` indexes (negative from the end) clamped to `0..len`, or `None` if empty.
pub(crate) fn index_range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let stop = if stop < 0 {
        len + stop
    } else {
        stop.min(len - 1)
    };
    (start <= stop && start < len && stop >= 0).then_some((start as usize, stop as usize))
}

/// Parsed `[MATCH pattern] [COUNT count] [TYPE type]` of the SCAN family.
pub(crate) struct ScanOptions<'a> {
    pub(crate) pattern: Option<&'a [u8]>,
    pub(crate) count: usize,
    pub(crate) kind: Option<&'a [u8]>,
}

/// Parses a SCAN cursor, or Redis' "invalid cursor" error.
pub(crate) fn parse_cursor(arg: &[u8]) -> Result<u64, Value> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|text| !text.starts_with('+'))
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| Value::error("ERR invalid cursor"))
}

pub(crate) fn parse_scan_options(
    args: &[Vec<u8>],
    allow_type: bool,
) -> Result<ScanOptions<'_>, Value> {
    let mut options = ScanOptions {
        pattern: None,
        count: DEFAULT_SCAN_COUNT,
        kind: None,
    };
    let mut index = 0;
    while index < args.len() {
        let has_value = index + 1 < args.len();
        match args[index].to_ascii_uppercase().as_slice() {
            b"COUNT" if has_value => {
                let count = int_arg(&args[index + 1])?;
                if count < 1 {
                    return Err(Value::error(SYNTAX_ERROR));
                }
                options.count = count as usize;
            }
            b"MATCH" if has_value => options.pattern = Some(&args[index + 1]),
            b"TYPE" if has_value && allow_type => options.kind = Some(&args[index + 1]),
            _ => return Err(Value::error(SYNTAX_ERROR)),
        }
        index += 2;
    }
    Ok(options)
}

/// A hash of `bytes` that is the same on every machine and release: SCAN cursors are
/// positions in this hash order, so a cursor stays valid across replicas and failovers.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A SplitMix64 finaliser spreads FNV's weak low bits over the whole word.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    hash ^ (hash >> 31)
}

/// One page of a cursor scan: the items whose [`stable_hash`] is at least `cursor`, the
/// `count` smallest hashes (all items sharing the last hash included), and the next cursor
/// (0 when done). Costs one pass over `items`; an item present for the whole scan is
/// returned at least once, as Redis guarantees.
pub(crate) fn scan_page<'a, T>(
    cursor: u64,
    count: usize,
    items: impl Iterator<Item = (&'a [u8], T)>,
) -> (u64, Vec<(&'a [u8], T)>) {
    let mut page: Vec<(u64, &'a [u8], T)> = items
        .filter_map(|(name, extra)| {
            let hash = stable_hash(name);
            (hash >= cursor).then_some((hash, name, extra))
        })
        .collect();
    page.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    if page.len() > count {
        let last_hash = page[count - 1].0;
        let end = page.partition_point(|item| item.0 <= last_hash);
        page.truncate(end);
        let next = last_hash.checked_add(1).unwrap_or(0);
        return (next, page.into_iter().map(|(_, n, e)| (n, e)).collect());
    }
    (0, page.into_iter().map(|(_, n, e)| (n, e)).collect())
}

/// The SCAN reply: `[cursor, [elements...]]`.
pub(crate) fn scan_reply(cursor: u64, elements: Vec<Value>) -> Value {
    Value::Array(Some(vec![
        Value::bulk(cursor.to_string()),
        Value::Array(Some(elements)),
    ]))
}

/// Redis' glob match (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // KEYS and SCAN treat a lone `*` as "everything", the empty key included, without
    // matching (the matcher itself never matches an empty string).
    pattern == b"*" || glob_match_depth(pattern, text, 0)
}

/// Deepest `*` nesting followed before giving up (Redis bounds the same recursion).
const MAX_GLOB_DEPTH: usize = 1000;

/// A line-by-line port of Redis' `stringmatchlen_impl` (util.c), so patterns with odd
/// corners (unterminated classes, trailing escapes) match exactly as Redis matches them.
fn glob_match_depth(pattern: &[u8], text: &[u8], depth: usize) -> bool {
    if depth > MAX_GLOB_DEPTH {
        return false;
    }
    // Redis reads one byte past the pattern's end (its NUL terminator) in places.
    let at = |index: usize| pattern.get(index).copied().unwrap_or(0);
    let (mut p, mut s) = (0usize, 0usize);
    while p < pattern.len() && s < text.len() {
        match pattern[p] {
            b'*' => {
                while p < pattern.len() && at(p + 1) == b'*' {
                    p += 1;
                }
                if pattern.len() - p == 1 {
                    return true;
                }
                while s < text.len() {
                    if glob_match_depth(&pattern[p + 1..], &text[s..], depth + 1) {
                        return true;
                    }
                    s += 1;
                }
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                p += 1;
                let negate = at(p) == b'^';
                if negate {
                    p += 1;
                }
                let mut matched = false;
                loop {
                    let remaining = pattern.len().saturating_sub(p);
                    if at(p) == b'\\' && remaining >= 2 {
                        p += 1;
                        if at(p) == text[s] {
                            matched = true;
                        }
                    } else if at(p) == b']' && remaining > 0 {
                        break;
                    } else if remaining == 0 {
                        p -= 1;
                        break;
                    } else if remaining >= 3 && at(p + 1) == b'-' {
                        let (mut start, mut end) = (at(p), at(p + 2));
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        p += 2;
                        if (start..=end).contains(&text[s]) {
                            matched = true;
                        }
                    } else if at(p) == text[s] {
                        matched = true;
                    }
                    p += 1;
                }
                if negate {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s += 1;
            }
            other => {
                let literal = if other == b'\\' && pattern.len() - p >= 2 {
                    p += 1;
                    pattern[p]
                } else {
                    other
                };
                if literal != text[s] {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == text.len() {
            while at(p) == b'*' && p < pattern.len() {
                p += 1;
            }
            break;
        }
    }
    p >= pattern.len() && s == text.len()
}

/// Picks `count` distinct indexes of `0..len` (all of them if `count >= len`).
pub(crate) fn distinct_indexes(
    rng: &mut crate::types::EntryRng,
    len: usize,
    count: usize,
) -> Vec<usize> {
    let mut indexes: Vec<usize> = (0..len).collect();
    let count = count.min(len);
    for at in 0..count {
        let pick = at + rng.below(len - at);
        indexes.swap(at, pick);
    }
    indexes.truncate(count);
    indexes
}

/// The arguments of LMPOP and ZMPOP from `numkeys`: `numkeys key... <end> [COUNT n]`.
pub(crate) struct MultiPop<'a> {
    pub(crate) keys: &'a [Vec<u8>],
    /// The end word as given (LEFT/RIGHT or MIN/MAX), upper-cased.
    pub(crate) end: Vec<u8>,
    pub(crate) count: usize,
}

/// Parses `argv[at..]` as [`MultiPop`] (the end one of `ends`), with Redis 7.0's errors
/// in its order: numkeys, end, count.
pub(crate) fn parse_multi_pop<'a>(
    argv: &'a [Vec<u8>],
    at: usize,
    ends: [&str; 2],
) -> Result<MultiPop<'a>, Value> {
    let numkeys = parse_i64_strict(&argv[at])
        .filter(|&n| n > 0)
        .ok_or_else(|| Value::error("ERR numkeys should be greater than 0"))?
        as u64;
    let rest = &argv[at + 1..];
    // The keys and at least the end word must follow.
    if numkeys >= rest.len() as u64 {
        return Err(Value::error(SYNTAX_ERROR));
    }
    let (keys, options) = rest.split_at(numkeys as usize);
    let end = options[0].to_ascii_uppercase();
    if !ends
        .iter()
        .any(|allowed| allowed.as_bytes() == end.as_slice())
    {
        return Err(Value::error(SYNTAX_ERROR));
    }
    let count = match &options[1..] {
        [] => 1,
        [word, value] if word.eq_ignore_ascii_case(b"COUNT") => parse_i64_strict(value)
            .filter(|&n| n > 0)
            .ok_or_else(|| Value::error("ERR count should be greater than 0"))?
            as usize,
        _ => return Err(Value::error(SYNTAX_ERROR)),
    };
    Ok(MultiPop { keys, end, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_format_like_printf_17g() {
        for (number, text) in [
            (1.1, "1.1000000000000001"),
            (2.0, "2"),
            (-0.5, "-0.5"),
            (1e20, "1e+20"),
            (1.5e-7, "1.4999999999999999e-07"),
            (123456789.0, "123456789"),
            (0.0001, "0.0001"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
        ] {
            assert_eq!(
                String::from_utf8(format_double(number)).unwrap(),
                text,
                "{number}"
            );
        }
    }

    #[test]
    fn globs_match_as_redis_does() {
        for (pattern, text, expected) in [
            ("*", "anything", true),
            ("a*", "abc", true),
            ("a*", "bac", false),
            ("h?llo", "hello", true),
            ("h[ae]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h\\*llo", "h*llo", true),
            ("*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("", "", true),
            ("a", "", false),
        ] {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern} {text}"
            );
        }
    }

    #[test]
    fn index_ranges_clamp() {
        assert_eq!(index_range(0, -1, 3), Some((0, 2)));
        assert_eq!(index_range(-100, 100, 3), Some((0, 2)));
        assert_eq!(index_range(2, 1, 3), None);
        assert_eq!(index_range(5, 10, 3), None);
        assert_eq!(index_range(0, -4, 3), None);
        assert_eq!(index_range(0, 0, 0), None);
    }
}
