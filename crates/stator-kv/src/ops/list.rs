//! List commands, and the blocking pops in their non-blocking form.
//!
//! A blocking pop (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH) pops at once when a list has data; when
//! none has, the machine answers the null array at once, the reply Redis gives at timeout.
//! The gateway owns the waiting: see "Blocking commands" in the crate doc.

use super::{bulk_array, index_range, int_arg};
use crate::command::{Command, CommandSpec};
use crate::machine::{attempt, KvMachine, NOT_POSITIVE, NO_SUCH_KEY, SYNTAX_ERROR, WRONG_TYPE};
use crate::resp::Value;
use crate::types::Data;

/// Which end of a list.
#[derive(Clone, Copy)]
enum End {
    Left,
    Right,
}

impl End {
    fn parse(arg: &[u8]) -> Option<End> {
        if arg.eq_ignore_ascii_case(b"LEFT") {
            Some(End::Left)
        } else if arg.eq_ignore_ascii_case(b"RIGHT") {
            Some(End::Right)
        } else {
            None
        }
    }
    fn is_front(self) -> bool {
        matches!(self, End::Left)
    }
}

/// Parses a blocking command's timeout (seconds, may be fractional) as Redis checks it.
pub(crate) fn parse_timeout(arg: &[u8]) -> Result<f64, Value> {
    let timeout = super::parse_double(arg)
        .filter(|t| t.is_finite())
        .ok_or_else(|| Value::error("ERR timeout is not a float or out of range"))?;
    if timeout < 0.0 {
        return Err(Value::error("ERR timeout is negative"));
    }
    Ok(timeout)
}

impl KvMachine {
    pub(crate) fn list_read(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        match spec.command {
            Command::LRange => {
                let start = attempt!(int_arg(&argv[2]));
                let stop = attempt!(int_arg(&argv[3]));
                let Some(list) = attempt!(self.list(&argv[1], now_ms)) else {
                    return Value::Array(Some(Vec::new()));
                };
                match index_range(start, stop, list.len()) {
                    Some((start, stop)) => bulk_array(list.items.range(start..=stop)),
                    None => Value::Array(Some(Vec::new())),
                }
            }
            Command::LLen => {
                Value::Integer(attempt!(self.list(&argv[1], now_ms)).map_or(0, |l| l.len()) as i64)
            }
            Command::LIndex => {
                let Some(list) = attempt!(self.list(&argv[1], now_ms)) else {
                    return Value::null();
                };
                let index = attempt!(int_arg(&argv[2]));
                let index = if index < 0 {
                    list.len() as i64 + index
                } else {
                    index
                };
                Value::Bulk(
                    usize::try_from(index)
                        .ok()
                        .and_then(|i| list.items.get(i))
                        .cloned(),
                )
            }
            Command::LPos => self.lpos(now_ms, argv),
            other => unreachable!("{other:?} is not a list read"),
        }
    }

    /// `LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len]`.
    fn lpos(&self, now_ms: u64, argv: &[Vec<u8>]) -> Value {
        let (mut rank, mut count, mut max_len) = (1i64, None::<i64>, 0i64);
        let mut index = 3;
        while index < argv.len() {
            if index + 1 >= argv.len() {
                return Value::error(SYNTAX_ERROR);
            }
            let value = &argv[index + 1];
            match argv[index].to_ascii_uppercase().as_slice() {
                b"RANK" => {
                    rank = attempt!(int_arg(value));
                    if rank == 0 {
                        return Value::error(
                            "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
                        );
                    }
                    if rank == i64::MIN {
                        return Value::error("ERR value is out of range");
                    }
                }
                b"COUNT" => match crate::resp::parse_i64_strict(value) {
                    Some(number) if number >= 0 => count = Some(number),
                    _ => return Value::error("ERR COUNT can't be negative"),
                },
                b"MAXLEN" => match crate::resp::parse_i64_strict(value) {
                    Some(number) if number >= 0 => max_len = number,
                    _ => return Value::error("ERR MAXLEN can't be negative"),
                },
                _ => return Value::error(SYNTAX_ERROR),
            }
            index += 2;
        }
        let list = attempt!(self.list(&argv[1], now_ms));
        let Some(list) = list else {
            return if count.is_some() {
                Value::Array(Some(Vec::new()))
            } else {
                Value::null()
            };
        };
        let wanted = match count {
            Some(0) => usize::MAX,
            Some(n) => n as usize,
            None => 1,
        };
        let len = list.len();
        let scan_len = if max_len == 0 {
            len
        } else {
            (max_len as usize).min(len)
        };
        let mut skip = rank.unsigned_abs() - 1;
        let mut found = Vec::new();
        for step in 0..scan_len {
            let position = if rank > 0 { step } else { len - 1 - step };
            if list.items[position] == argv[2] {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                found.push(Value::Integer(position as i64));
                if found.len() >= wanted {
                    break;
                }
            }
        }
        match count {
            Some(_) => Value::Array(Some(found)),
            None => found.pop().unwrap_or(Value::null()),
        }
    }

    pub(crate) fn list_write(&mut self, spec: &CommandSpec, argv: Vec<Vec<u8>>) -> Value {
        match spec.command {
            Command::LPush | Command::RPush | Command::LPushX | Command::RPushX => {
                self.list_push(spec, argv)
            }
            Command::LPop | Command::RPop => self.list_pop(spec, &argv),
            Command::LSet => self.list_set(argv),
            Command::LRem => self.list_remove(argv),
            Command::LTrim => self.list_trim(&argv),
            Command::LInsert => self.list_insert(argv),
            Command::LMove | Command::BLMove => {
                let (Some(from), Some(to)) = (End::parse(&argv[3]), End::parse(&argv[4])) else {
                    return Value::error(SYNTAX_ERROR);
                };
                if spec.command == Command::BLMove {
                    attempt!(parse_timeout(&argv[5]));
                }
                self.list_move(
                    &argv[1],
                    &argv[2],
                    from,
                    to,
                    spec.command == Command::BLMove,
                )
            }
            Command::RPopLPush | Command::BRPopLPush => {
                if spec.command == Command::BRPopLPush {
                    attempt!(parse_timeout(&argv[3]));
                }
                let blocking = spec.command == Command::BRPopLPush;
                self.list_move(&argv[1], &argv[2], End::Right, End::Left, blocking)
            }
            Command::BLPop | Command::BRPop => self.list_pop_first(spec, &argv),
            Command::LMPop | Command::BLMPop => self.list_multi_pop(spec, &argv),
            other => unreachable!("{other:?} is not a list write"),
        }
    }

    /// LPUSH, RPUSH, LPUSHX, RPUSHX: pushes every item onto one end; answers the new length.
    fn list_push(&mut self, spec: &CommandSpec, mut argv: Vec<Vec<u8>>) -> Value {
        let key = argv[1].clone();
        let front = matches!(spec.command, Command::LPush | Command::LPushX);
        let create = matches!(spec.command, Command::LPush | Command::RPush);
        let items: Vec<Vec<u8>> = argv.drain(2..).collect();
        let len = attempt!(self.with_list(&key, create, |list| {
            for item in items {
                list.push(item, front);
            }
            list.len()
        }));
        Value::Integer(len.unwrap_or(0) as i64)
    }

    /// LPOP, RPOP: one item, or up to COUNT items as an array.
    fn list_pop(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let key = argv[1].clone();
        let front = spec.command == Command::LPop;
        if argv.len() > 3 {
            return crate::machine::wrong_arity(spec.name);
        }
        let count = match argv.get(2) {
            None => None,
            Some(arg) => match crate::resp::parse_i64_strict(arg) {
                Some(n) if n >= 0 => Some(n as usize),
                _ => return Value::error(NOT_POSITIVE),
            },
        };
        let popped = attempt!(self.with_list(&key, false, |list| {
            let take = count.unwrap_or(1).min(list.len());
            (0..take)
                .map(|_| list.pop(front).expect("within len"))
                .collect::<Vec<_>>()
        }));
        match (popped, count) {
            (None, None) => Value::null(),
            (None, Some(_)) => Value::Array(None),
            (Some(mut items), None) => Value::Bulk(items.pop()),
            (Some(items), Some(_)) => bulk_array(&items),
        }
    }

    /// LSET: replaces the item at an index (negative from the end).
    fn list_set(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        let key = argv[1].clone();
        let now_ms = self.now_ms;
        let Some(list) = attempt!(self.list(&key, now_ms)) else {
            return Value::error(NO_SUCH_KEY);
        };
        let index = attempt!(int_arg(&argv[2]));
        let index = if index < 0 {
            list.len() as i64 + index
        } else {
            index
        };
        let Some(index) = usize::try_from(index).ok().filter(|&i| i < list.len()) else {
            return Value::error("ERR index out of range");
        };
        let item = std::mem::take(&mut argv[3]);
        attempt!(self.with_list(&key, false, |list| list.set(index, item)));
        Value::ok()
    }

    /// LREM: removes up to COUNT items equal to the element (from the tail when negative, all when 0).
    fn list_remove(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        let key = argv[1].clone();
        let count = attempt!(int_arg(&argv[2]));
        let target = std::mem::take(&mut argv[3]);
        let removed = attempt!(self.with_list(&key, false, |list| {
            let limit = if count == 0 {
                usize::MAX
            } else {
                count.unsigned_abs() as usize
            };
            let mut removed = 0;
            if count >= 0 {
                let mut position = 0;
                while position < list.items.len() && removed < limit {
                    if list.items[position] == target {
                        list.items.remove(position);
                        removed += 1;
                    } else {
                        position += 1;
                    }
                }
            } else {
                let mut position = list.items.len();
                while position > 0 && removed < limit {
                    position -= 1;
                    if list.items[position] == target {
                        list.items.remove(position);
                        removed += 1;
                    }
                }
            }
            list.recount();
            removed
        }));
        Value::Integer(removed.unwrap_or(0) as i64)
    }

    /// LTRIM: keeps only the items in the range.
    fn list_trim(&mut self, argv: &[Vec<u8>]) -> Value {
        let key = argv[1].clone();
        let start = attempt!(int_arg(&argv[2]));
        let stop = attempt!(int_arg(&argv[3]));
        attempt!(self.with_list(&key, false, |list| {
            match index_range(start, stop, list.len()) {
                Some((start, stop)) => {
                    list.items.truncate(stop + 1);
                    list.items.drain(..start);
                }
                None => list.items.clear(),
            }
            list.recount();
        }));
        Value::ok()
    }

    /// LINSERT: inserts before or after the first item equal to the pivot.
    fn list_insert(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        let key = argv[1].clone();
        let now_ms = self.now_ms;
        let before = if argv[2].eq_ignore_ascii_case(b"BEFORE") {
            true
        } else if argv[2].eq_ignore_ascii_case(b"AFTER") {
            false
        } else {
            return Value::error(SYNTAX_ERROR);
        };
        let Some(list) = attempt!(self.list(&key, now_ms)) else {
            return Value::Integer(0);
        };
        let Some(position) = list.items.iter().position(|item| *item == argv[3]) else {
            return Value::Integer(-1);
        };
        let item = std::mem::take(&mut argv[4]);
        let at = if before { position } else { position + 1 };
        let len = attempt!(self.with_list(&key, false, |list| {
            list.insert(at, item);
            list.len()
        }));
        Value::Integer(len.unwrap_or(0) as i64)
    }

    /// BLPOP, BRPOP in their non-blocking form: pops from the first of the keys that holds a list.
    fn list_pop_first(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let now_ms = self.now_ms;
        attempt!(parse_timeout(argv.last().expect("arity checked")));
        let front = spec.command == Command::BLPop;
        for key in &argv[1..argv.len() - 1] {
            if attempt!(self.list(key, now_ms)).is_some() {
                let item = attempt!(self.with_list(key, false, |list| list.pop(front)))
                    .flatten()
                    .expect("a stored list is never empty");
                return Value::Array(Some(vec![Value::bulk(key.clone()), Value::bulk(item)]));
            }
        }
        Value::Array(None)
    }

    /// LMPOP, BLMPOP in their non-blocking form: up to COUNT items from the first of the keys that holds a list.
    fn list_multi_pop(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let blocking = spec.command == Command::BLMPop;
        let at = if blocking { 2 } else { 1 };
        let pop = attempt!(super::parse_multi_pop(argv, at, ["LEFT", "RIGHT"]));
        // Redis checks the timeout after the other arguments.
        if blocking {
            attempt!(parse_timeout(&argv[1]));
        }
        let front = match pop.end.as_slice() {
            b"LEFT" => true,
            b"RIGHT" => false,
            _ => return Value::error(SYNTAX_ERROR),
        };
        for key in pop.keys {
            let popped = attempt!(self.with_list(key, false, |list| {
                let take = pop.count.min(list.len());
                (0..take)
                    .map(|_| list.pop(front).expect("within len"))
                    .collect::<Vec<_>>()
            }));
            if let Some(items) = popped {
                return Value::Array(Some(vec![Value::bulk(key.clone()), bulk_array(&items)]));
            }
        }
        Value::Array(None)
    }

    /// LMOVE and its kin: pops from `source`'s `from` end and pushes onto `destination`'s
    /// `to` end. A missing source answers null (the null array for the blocking forms).
    fn list_move(
        &mut self,
        source: &[u8],
        destination: &[u8],
        from: End,
        to: End,
        blocking: bool,
    ) -> Value {
        let now_ms = self.now_ms;
        if attempt!(self.list(source, now_ms)).is_none() {
            // Inside a transaction Redis never blocks and answers as LMOVE does.
            return if blocking && !self.in_transaction {
                Value::Array(None)
            } else {
                Value::null()
            };
        }
        if let Some(entry) = self.live(destination, now_ms) {
            if !matches!(entry.data, Data::List(_)) {
                return Value::error(WRONG_TYPE);
            }
        }
        let item = attempt!(self.with_list(source, false, |list| list.pop(from.is_front())))
            .flatten()
            .expect("a stored list is never empty");
        let pushed = item.clone();
        attempt!(self.with_list(destination, true, |list| list.push(pushed, to.is_front())));
        Value::bulk(item)
    }
}
