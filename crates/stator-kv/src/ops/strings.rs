//! String commands beyond the core set: GETEX, GETRANGE, SETRANGE.

use super::int_arg;
use crate::keyspace::ExpiryChange;
use crate::machine::{attempt, invalid_expire, KvMachine, SYNTAX_ERROR};
use crate::resp::{Value, MAX_BULK_BYTES};

const TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

impl KvMachine {
    /// `GETRANGE key start end`.
    pub(crate) fn getrange(&self, now_ms: u64, argv: &[Vec<u8>]) -> Value {
        let start = attempt!(int_arg(&argv[2]));
        let end = attempt!(int_arg(&argv[3]));
        let value = attempt!(self.string(&argv[1], now_ms));
        let Some(value) = value else {
            return Value::bulk(Vec::new());
        };
        let len = value.len() as i64;
        if start < 0 && end < 0 && start > end {
            return Value::bulk(Vec::new());
        }
        let start = if start < 0 {
            (len + start).max(0)
        } else {
            start
        };
        let end = if end < 0 { (len + end).max(0) } else { end };
        let end = end.min(len - 1);
        if start > end || len == 0 {
            return Value::bulk(Vec::new());
        }
        Value::bulk(value[start as usize..=end as usize].to_vec())
    }

    /// `SETRANGE key offset value`.
    pub(crate) fn setrange(&mut self, mut argv: Vec<Vec<u8>>) -> Value {
        let offset = attempt!(int_arg(&argv[2]));
        if offset < 0 {
            return Value::error("ERR offset is out of range");
        }
        let offset = offset as usize;
        let now_ms = self.now_ms;
        let current_len = attempt!(self.string(&argv[1], now_ms)).map(<[u8]>::len);
        let patch = std::mem::take(&mut argv[3]);
        if patch.is_empty() {
            return Value::Integer(current_len.unwrap_or(0) as i64);
        }
        if offset + patch.len() > MAX_BULK_BYTES {
            return Value::error(TOO_LONG);
        }
        let write = |value: &mut Vec<u8>| {
            if value.len() < offset + patch.len() {
                value.resize(offset + patch.len(), 0);
            }
            value[offset..offset + patch.len()].copy_from_slice(&patch);
            value.len()
        };
        let new_len = match current_len {
            Some(_) => self
                .keyspace
                .update_value(&argv[1], write)
                .expect("exists: checked above"),
            None => {
                let mut value = Vec::new();
                let len = write(&mut value);
                self.keyspace
                    .insert(std::mem::take(&mut argv[1]), value, ExpiryChange::Clear);
                len
            }
        };
        Value::Integer(new_len as i64)
    }

    /// `GETEX key [EX s | PX ms | EXAT s | PXAT ms | PERSIST]`.
    pub(crate) fn getex(&mut self, argv: Vec<Vec<u8>>) -> Value {
        let now_ms = self.now_ms;
        // Redis checks the syntax, then the key and its type, and only then the number.
        let mut change: Option<Option<(&[u8], &[u8])>> = None;
        let mut index = 2;
        while index < argv.len() {
            let option = &argv[index];
            let has_next = index + 1 < argv.len();
            let upper = option.to_ascii_uppercase();
            match upper.as_slice() {
                b"PERSIST" if change.is_none() => change = Some(None),
                b"EX" | b"PX" | b"EXAT" | b"PXAT" if change.is_none() && has_next => {
                    change = Some(Some((option, &argv[index + 1])));
                    index += 1;
                }
                _ => return Value::error(SYNTAX_ERROR),
            }
            index += 1;
        }
        let Some(value) = attempt!(self.string(&argv[1], now_ms)).map(<[u8]>::to_vec) else {
            return Value::null();
        };
        let at_ms = match change {
            None => return Value::bulk(value),
            Some(None) => None,
            Some(Some((option, amount))) => {
                let amount = attempt!(int_arg(amount));
                let option = option.to_ascii_uppercase();
                let seconds = option == b"EX" || option == b"EXAT";
                let Some(amount_ms) = (if seconds {
                    amount.checked_mul(1000)
                } else {
                    Some(amount)
                }) else {
                    return invalid_expire("getex");
                };
                if amount <= 0 {
                    return invalid_expire("getex");
                }
                let at_ms = if option == b"EX" || option == b"PX" {
                    i128::from(amount_ms) + i128::from(now_ms)
                } else {
                    i128::from(amount_ms)
                };
                if at_ms > i128::from(i64::MAX) {
                    return invalid_expire("getex");
                }
                Some(at_ms)
            }
        };
        match at_ms {
            None => {
                self.keyspace.set_expiry(&argv[1], None);
            }
            Some(at_ms) if at_ms <= i128::from(now_ms) => {
                self.keyspace.remove(&argv[1]);
            }
            Some(at_ms) => {
                self.keyspace.set_expiry(&argv[1], Some(at_ms as u64));
            }
        }
        Value::bulk(value)
    }
}
