//! Hash commands.

use super::{
    bulk_array, distinct_indexes, glob_match, int_arg, parse_cursor, parse_scan_options, scan_page,
    scan_reply,
};
use crate::command::{Command, CommandSpec};
use crate::machine::{
    attempt, format_f64, parse_f64_strict, wrong_arity, KvMachine, NOT_A_FLOAT, OVERFLOW,
    SYNTAX_ERROR,
};
use crate::resp::{parse_i64_strict, push_decimal, Value};
use crate::types::Data;

impl KvMachine {
    pub(crate) fn hash_read(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        // Redis parses these arguments before it looks at the key.
        if spec.command == Command::HScan {
            attempt!(parse_cursor(&argv[2]));
        }
        if spec.command == Command::HRandField && argv.len() >= 3 {
            attempt!(int_arg(&argv[2]));
            if argv.len() > 4 || (argv.len() == 4 && !argv[3].eq_ignore_ascii_case(b"WITHVALUES")) {
                return Value::error(SYNTAX_ERROR);
            }
        }
        let hash = attempt!(self.hash(&argv[1], now_ms));
        match spec.command {
            Command::HGet => Value::Bulk(hash.and_then(|h| h.get(&argv[2])).map(<[u8]>::to_vec)),
            Command::HMGet => Value::Array(Some(
                argv[2..]
                    .iter()
                    .map(|field| Value::Bulk(hash.and_then(|h| h.get(field)).map(<[u8]>::to_vec)))
                    .collect(),
            )),
            Command::HGetAll => Value::Array(Some(
                hash.into_iter()
                    .flat_map(|h| h.iter())
                    .flat_map(|(f, v)| [Value::bulk(f.to_vec()), Value::bulk(v.to_vec())])
                    .collect(),
            )),
            Command::HKeys => bulk_array(hash.into_iter().flat_map(|h| h.iter().map(|(f, _)| f))),
            Command::HVals => bulk_array(hash.into_iter().flat_map(|h| h.iter().map(|(_, v)| v))),
            Command::HExists => {
                Value::Integer(i64::from(hash.is_some_and(|h| h.get(&argv[2]).is_some())))
            }
            Command::HLen => Value::Integer(hash.map_or(0, |h| h.len()) as i64),
            Command::HStrLen => {
                Value::Integer(hash.and_then(|h| h.get(&argv[2])).map_or(0, <[u8]>::len) as i64)
            }
            Command::HRandField => self.hrandfield(hash, argv),
            Command::HScan => {
                let cursor = attempt!(parse_cursor(&argv[2]));
                let Some(hash) = hash else {
                    return scan_reply(0, Vec::new());
                };
                let options = attempt!(parse_scan_options(&argv[3..], false));
                let small = Data::Hash(Box::new(hash.clone())).encoding() == "listpack";
                let (next, page) = if small {
                    (0, hash.iter().collect())
                } else {
                    scan_page(cursor, options.count, hash.iter())
                };
                let elements = page
                    .into_iter()
                    .filter(|(field, _)| options.pattern.is_none_or(|p| glob_match(p, field)))
                    .flat_map(|(field, value)| {
                        [Value::bulk(field.to_vec()), Value::bulk(value.to_vec())]
                    })
                    .collect();
                scan_reply(next, elements)
            }
            other => unreachable!("{other:?} is not a hash read"),
        }
    }

    /// `HRANDFIELD key [count [WITHVALUES]]`: a read, so its randomness is not replicated;
    /// it draws from the machine's current entry seed and the clock.
    fn hrandfield(&self, hash: Option<&crate::types::Hash>, argv: &[Vec<u8>]) -> Value {
        let mut rng = self.read_rng();
        if argv.len() == 2 {
            return Value::Bulk(
                hash.and_then(|h| h.get_index(rng.below(h.len())).map(|(f, _)| f.to_vec())),
            );
        }
        let count = attempt!(int_arg(&argv[2]));
        let with_values = match argv.len() {
            3 => false,
            4 if argv[3].eq_ignore_ascii_case(b"WITHVALUES") => true,
            _ => return Value::error(SYNTAX_ERROR),
        };
        let Some(hash) = hash else {
            return Value::Array(Some(Vec::new()));
        };
        let indexes: Vec<usize> = if count >= 0 {
            distinct_indexes(&mut rng, hash.len(), count as usize)
        } else {
            (0..count.unsigned_abs())
                .map(|_| rng.below(hash.len()))
                .collect()
        };
        let mut reply = Vec::new();
        for index in indexes {
            let (field, value) = hash.get_index(index).expect("index below len");
            reply.push(Value::bulk(field.to_vec()));
            if with_values {
                reply.push(Value::bulk(value.to_vec()));
            }
        }
        Value::Array(Some(reply))
    }

    pub(crate) fn hash_write(&mut self, spec: &CommandSpec, mut argv: Vec<Vec<u8>>) -> Value {
        let key = argv[1].clone();
        match spec.command {
            Command::HSet | Command::HMSet => {
                if argv.len() % 2 != 0 {
                    return wrong_arity(spec.name);
                }
                let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(argv.len() / 2 - 1);
                let mut rest = argv.drain(2..);
                while let (Some(field), Some(value)) = (rest.next(), rest.next()) {
                    pairs.push((field, value));
                }
                drop(rest);
                let added = attempt!(self.with_hash(&key, true, |hash| {
                    pairs
                        .into_iter()
                        .map(|(field, value)| usize::from(hash.insert(field, value)))
                        .sum::<usize>()
                }))
                .expect("created");
                if spec.command == Command::HMSet {
                    Value::ok()
                } else {
                    Value::Integer(added as i64)
                }
            }
            Command::HSetNx => {
                let field = std::mem::take(&mut argv[2]);
                let value = std::mem::take(&mut argv[3]);
                let now_ms = self.now_ms;
                if attempt!(self.hash(&key, now_ms)).is_some_and(|h| h.get(&field).is_some()) {
                    return Value::Integer(0);
                }
                attempt!(self.with_hash(&key, true, |hash| hash.insert(field, value)));
                Value::Integer(1)
            }
            Command::HDel => {
                let removed = attempt!(self.with_hash(&key, false, |hash| {
                    argv[2..].iter().filter(|field| hash.remove(field)).count()
                }));
                Value::Integer(removed.unwrap_or(0) as i64)
            }
            Command::HIncrBy => {
                let delta = attempt!(int_arg(&argv[3]));
                let now_ms = self.now_ms;
                let current = match attempt!(self.hash(&key, now_ms)).and_then(|h| h.get(&argv[2]))
                {
                    None => 0,
                    Some(value) => match parse_i64_strict(value) {
                        Some(number) => number,
                        None => return Value::error("ERR hash value is not an integer"),
                    },
                };
                let Some(updated) = current.checked_add(delta) else {
                    return Value::error(OVERFLOW);
                };
                let mut text = Vec::with_capacity(20);
                push_decimal(&mut text, updated);
                let field = std::mem::take(&mut argv[2]);
                attempt!(self.with_hash(&key, true, |hash| hash.insert(field, text)));
                Value::Integer(updated)
            }
            Command::HIncrByFloat => {
                let Some(delta) = parse_f64_strict(&argv[3]) else {
                    return Value::error(NOT_A_FLOAT);
                };
                if delta.is_infinite() {
                    return Value::error("ERR value is NaN or Infinity");
                }
                let now_ms = self.now_ms;
                let current = match attempt!(self.hash(&key, now_ms)).and_then(|h| h.get(&argv[2]))
                {
                    None => 0.0,
                    Some(value) => match parse_f64_strict(value) {
                        Some(number) => number,
                        None => return Value::error("ERR hash value is not a float"),
                    },
                };
                let updated = current + delta;
                if !updated.is_finite() {
                    return Value::error("ERR increment would produce NaN or Infinity");
                }
                let text = format_f64(updated);
                let field = std::mem::take(&mut argv[2]);
                let stored = text.clone();
                attempt!(self.with_hash(&key, true, |hash| hash.insert(field, stored)));
                Value::bulk(text)
            }
            other => unreachable!("{other:?} is not a hash write"),
        }
    }
}
