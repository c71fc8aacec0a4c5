//! Set commands.

use super::{
    bulk_array, distinct_indexes, glob_match, int_arg, parse_cursor, parse_scan_options, scan_page,
    scan_reply,
};
use crate::command::{Command, CommandSpec};
use crate::keyspace::ExpiryChange;
use crate::machine::{attempt, KvMachine, NOT_POSITIVE, SYNTAX_ERROR};
use crate::resp::{parse_i64_strict, Value};
use crate::types::{Data, Set};

/// How a multi-set command combines its sets.
#[derive(Clone, Copy, PartialEq)]
enum SetOp {
    Inter,
    Union,
    Diff,
}

/// Parses `numkeys key... [LIMIT n]`-style key counts as SINTERCARD and ZUNION check them.
pub(crate) fn parse_numkeys(argv: &[Vec<u8>], at: usize) -> Result<usize, Value> {
    let numkeys = int_arg(&argv[at])?;
    if numkeys <= 0 {
        return Err(Value::error("ERR numkeys should be greater than 0"));
    }
    if numkeys as usize > argv.len() - at - 1 {
        return Err(Value::error(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    Ok(numkeys as usize)
}

impl KvMachine {
    /// The members of `op` over `keys` (sorted for a stable result), or WRONGTYPE.
    fn combine_sets(
        &self,
        now_ms: u64,
        keys: &[Vec<u8>],
        op: SetOp,
    ) -> Result<Vec<Vec<u8>>, Value> {
        let mut sets: Vec<Option<&Set>> = Vec::with_capacity(keys.len());
        for key in keys {
            sets.push(self.set(key, now_ms)?);
        }
        let members: Vec<Vec<u8>> = match op {
            SetOp::Inter => {
                if sets.iter().any(Option::is_none) {
                    return Ok(Vec::new());
                }
                let mut sets: Vec<&Set> = sets.into_iter().flatten().collect();
                sets.sort_by_key(|set| set.len());
                let (first, rest) = sets.split_first().expect("at least one key");
                first
                    .iter()
                    .filter(|member| rest.iter().all(|set| set.contains(member)))
                    .cloned()
                    .collect()
            }
            SetOp::Union => {
                let mut union = indexmap::IndexSet::new();
                for set in sets.into_iter().flatten() {
                    union.extend(set.iter().cloned());
                }
                union.into_iter().collect()
            }
            SetOp::Diff => {
                let Some(first) = sets[0] else {
                    return Ok(Vec::new());
                };
                first
                    .iter()
                    .filter(|member| !sets[1..].iter().flatten().any(|set| set.contains(member)))
                    .cloned()
                    .collect()
            }
        };
        Ok(members)
    }

    pub(crate) fn set_read(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        match spec.command {
            Command::SMembers => bulk_array(
                attempt!(self.set(&argv[1], now_ms))
                    .into_iter()
                    .flat_map(|s| s.iter()),
            ),
            Command::SIsMember => Value::Integer(i64::from(
                attempt!(self.set(&argv[1], now_ms)).is_some_and(|s| s.contains(&argv[2])),
            )),
            Command::SMIsMember => {
                let set = attempt!(self.set(&argv[1], now_ms));
                Value::Array(Some(
                    argv[2..]
                        .iter()
                        .map(|m| Value::Integer(i64::from(set.is_some_and(|s| s.contains(m)))))
                        .collect(),
                ))
            }
            Command::SCard => {
                Value::Integer(attempt!(self.set(&argv[1], now_ms)).map_or(0, Set::len) as i64)
            }
            Command::SRandMember => {
                if argv.len() == 3 {
                    attempt!(int_arg(&argv[2]));
                }
                let set = attempt!(self.set(&argv[1], now_ms));
                let mut rng = self.read_rng();
                match argv.len() {
                    2 => Value::Bulk(set.and_then(|s| s.get_index(rng.below(s.len()))).cloned()),
                    3 => {
                        let count = attempt!(int_arg(&argv[2]));
                        let Some(set) = set else {
                            return Value::Array(Some(Vec::new()));
                        };
                        let indexes: Vec<usize> = if count >= 0 {
                            distinct_indexes(&mut rng, set.len(), count as usize)
                        } else {
                            (0..count.unsigned_abs())
                                .map(|_| rng.below(set.len()))
                                .collect()
                        };
                        bulk_array(
                            indexes
                                .into_iter()
                                .map(|i| set.get_index(i).expect("below len")),
                        )
                    }
                    _ => Value::error(SYNTAX_ERROR),
                }
            }
            Command::SInter | Command::SUnion | Command::SDiff => {
                let op = match spec.command {
                    Command::SInter => SetOp::Inter,
                    Command::SUnion => SetOp::Union,
                    _ => SetOp::Diff,
                };
                bulk_array(&attempt!(self.combine_sets(now_ms, &argv[1..], op)))
            }
            Command::SInterCard => {
                let numkeys = attempt!(parse_numkeys(argv, 1));
                let mut limit = 0usize;
                let mut index = 2 + numkeys;
                while index < argv.len() {
                    if argv[index].eq_ignore_ascii_case(b"LIMIT") && index + 1 < argv.len() {
                        let value = attempt!(int_arg(&argv[index + 1])
                            .map_err(|_| { Value::error("ERR LIMIT can't be negative") }));
                        if value < 0 {
                            return Value::error("ERR LIMIT can't be negative");
                        }
                        limit = value as usize;
                        index += 2;
                    } else {
                        return Value::error(SYNTAX_ERROR);
                    }
                }
                let members =
                    attempt!(self.combine_sets(now_ms, &argv[2..2 + numkeys], SetOp::Inter));
                let count = if limit == 0 {
                    members.len()
                } else {
                    members.len().min(limit)
                };
                Value::Integer(count as i64)
            }
            Command::SScan => {
                let cursor = attempt!(parse_cursor(&argv[2]));
                let Some(set) = attempt!(self.set(&argv[1], now_ms)) else {
                    return scan_reply(0, Vec::new());
                };
                let options = attempt!(parse_scan_options(&argv[3..], false));
                let small = set.iter().all(|m| parse_i64_strict(m).is_some()) && set.len() <= 512;
                let (next, page) = if small {
                    (0, set.iter().map(|m| (m.as_slice(), ())).collect())
                } else {
                    scan_page(
                        cursor,
                        options.count,
                        set.iter().map(|m| (m.as_slice(), ())),
                    )
                };
                let elements = page
                    .into_iter()
                    .filter(|(m, _)| options.pattern.is_none_or(|p| glob_match(p, m)))
                    .map(|(m, _)| Value::bulk(m.to_vec()))
                    .collect();
                scan_reply(next, elements)
            }
            other => unreachable!("{other:?} is not a set read"),
        }
    }

    pub(crate) fn set_write(&mut self, spec: &CommandSpec, mut argv: Vec<Vec<u8>>) -> Value {
        let key = argv[1].clone();
        let now_ms = self.now_ms;
        match spec.command {
            Command::SAdd => {
                let members: Vec<Vec<u8>> = argv.drain(2..).collect();
                let added = attempt!(self.with_set(&key, true, |set| {
                    members
                        .into_iter()
                        .map(|m| usize::from(set.insert(m)))
                        .sum::<usize>()
                }));
                Value::Integer(added.unwrap_or(0) as i64)
            }
            Command::SRem => {
                let removed = attempt!(self.with_set(&key, false, |set| {
                    argv[2..].iter().filter(|m| set.remove(m)).count()
                }));
                Value::Integer(removed.unwrap_or(0) as i64)
            }
            Command::SPop => {
                let count = match argv.len() {
                    2 => None,
                    3 => match crate::resp::parse_i64_strict(&argv[2]) {
                        Some(n) if n >= 0 => Some(n as usize),
                        _ => return Value::error(NOT_POSITIVE),
                    },
                    _ => return Value::error(SYNTAX_ERROR),
                };
                let mut rng = self.rng.clone();
                let popped = attempt!(self.with_set(&key, false, |set| {
                    let take = count.unwrap_or(1).min(set.len());
                    let mut popped = Vec::with_capacity(take);
                    for _ in 0..take {
                        let index = rng.below(set.len());
                        popped.push(set.remove_index(index).expect("below len"));
                    }
                    popped
                }));
                self.rng = rng;
                match (popped, count) {
                    (None, None) => Value::null(),
                    (None, Some(_)) => Value::Array(Some(Vec::new())),
                    (Some(mut members), None) => Value::Bulk(members.pop()),
                    (Some(members), Some(_)) => bulk_array(&members),
                }
            }
            Command::SMove => {
                let Some(source) = attempt!(self.set(&argv[1], now_ms)) else {
                    return Value::Integer(0);
                };
                attempt!(self.set(&argv[2], now_ms));
                if !source.contains(&argv[3]) {
                    return Value::Integer(0);
                }
                if argv[1] == argv[2] {
                    return Value::Integer(1);
                }
                let member = std::mem::take(&mut argv[3]);
                attempt!(self.with_set(&argv[1], false, |set| set.remove(&member)));
                attempt!(self.with_set(&argv[2], true, |set| set.insert(member)));
                Value::Integer(1)
            }
            Command::SInterStore | Command::SUnionStore | Command::SDiffStore => {
                let op = match spec.command {
                    Command::SInterStore => SetOp::Inter,
                    Command::SUnionStore => SetOp::Union,
                    _ => SetOp::Diff,
                };
                let members = attempt!(self.combine_sets(now_ms, &argv[2..], op));
                let mut set = Set::default();
                for member in members {
                    set.insert(member);
                }
                let len = set.len();
                self.keyspace
                    .insert_data(key, Data::Set(Box::new(set)), ExpiryChange::Clear);
                Value::Integer(len as i64)
            }
            other => unreachable!("{other:?} is not a set write"),
        }
    }
}
