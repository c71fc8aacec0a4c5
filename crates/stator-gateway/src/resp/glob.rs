//! Redis's glob patterns (`KEYS`, `SCAN MATCH`, ACL key patterns): `*`, `?`, `[abc]`,
//! `[^a-z]`, and `\` to quote, matched on bytes as Redis's `stringmatchlen` does.

/// Deepest `*` nesting followed before giving up (no match), so a hostile pattern such as
/// `*a*a*a*...` cannot make a match run for minutes; Redis bounds it the same way.
const MAX_STAR_DEPTH: u32 = 1000;

/// Whether `subject` matches the glob `pattern`.
pub(crate) fn glob_match(pattern: &[u8], subject: &[u8]) -> bool {
    let mut skip_longer = false;
    matches(pattern, subject, 0, &mut skip_longer)
}

fn matches(mut pattern: &[u8], mut subject: &[u8], depth: u32, skip_longer: &mut bool) -> bool {
    if depth > MAX_STAR_DEPTH {
        return false;
    }
    while let Some(&p) = pattern.first() {
        match p {
            b'*' => {
                while pattern.len() > 1 && pattern[1] == b'*' {
                    pattern = &pattern[1..];
                }
                if pattern.len() == 1 {
                    return true;
                }
                for start in 0..=subject.len() {
                    if matches(&pattern[1..], &subject[start..], depth + 1, skip_longer) {
                        return true;
                    }
                    if *skip_longer {
                        // A deeper star already failed on the whole rest: longer
                        // prefixes cannot succeed either (Redis's same shortcut).
                        return false;
                    }
                }
                *skip_longer = true;
                return false;
            }
            b'?' => {
                if subject.is_empty() {
                    return false;
                }
                subject = &subject[1..];
                pattern = &pattern[1..];
            }
            b'[' => {
                let Some(&c) = subject.first() else {
                    return false;
                };
                let mut rest = &pattern[1..];
                let negate = rest.first() == Some(&b'^');
                if negate {
                    rest = &rest[1..];
                }
                let mut found = false;
                loop {
                    match rest {
                        [] => break,
                        [b']', ..] => {
                            rest = &rest[1..];
                            break;
                        }
                        [b'\\', quoted, ..] => {
                            found |= *quoted == c;
                            rest = &rest[2..];
                        }
                        [low, b'-', high, ..] if *high != b']' => {
                            let (low, high) = if low <= high {
                                (*low, *high)
                            } else {
                                (*high, *low)
                            };
                            found |= (low..=high).contains(&c);
                            rest = &rest[3..];
                        }
                        [single, ..] => {
                            found |= *single == c;
                            rest = &rest[1..];
                        }
                    }
                }
                if found == negate {
                    return false;
                }
                subject = &subject[1..];
                pattern = rest;
            }
            b'\\' if pattern.len() >= 2 => {
                if subject.first() != Some(&pattern[1]) {
                    return false;
                }
                subject = &subject[1..];
                pattern = &pattern[2..];
            }
            literal => {
                if subject.first() != Some(&literal) {
                    return false;
                }
                subject = &subject[1..];
                pattern = &pattern[1..];
            }
        }
    }
    subject.is_empty()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    fn m(pattern: &str, subject: &str) -> bool {
        glob_match(pattern.as_bytes(), subject.as_bytes())
    }

    #[test]
    fn matches_as_redis_does() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("user:*", "user:1"));
        assert!(!m("user:*", "session:1"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hallo"), "reversed ranges work as in Redis");
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*c", "xxaxxbxxc"));
        assert!(!m("*a*b*c", "xxaxxbxx"));
        assert!(!m("abc", "abcd"));
    }

    #[test]
    fn hostile_patterns_end_quickly() {
        let pattern = "*a".repeat(40) + "b";
        let subject = "a".repeat(200);
        assert!(!m(&pattern, &subject));
    }
}
