//! The memory budget (`maxmemory`) of one kv replica, with Redis' `noeviction` policy.
//!
//! A write that may grow the data (Redis flags those commands `denyoom`: SET, INCR,
//! LPUSH, SADD, ...) is refused with Redis' exact `OOM command not allowed when used
//! memory > 'maxmemory'.` when the bytes held plus the bytes the command carries would
//! pass the budget. Reads and writes that only remove (DEL, UNLINK, LPOP, EXPIRE,
//! FLUSHALL, ...) always run, so a client can make room. Inside a transaction each
//! queued command is checked on its own as it runs.
//!
//! # Determinism
//! Every replica must refuse the same writes, so the decision uses nothing but the
//! machine's own accounting ([`crate::KvMachine::data_bytes`]: the keyspace's byte
//! count, which every replica computes identically from the same entries) and the
//! command's bytes, decided in `apply`. The process's real memory (allocator overhead,
//! the Raft log, buffers) is not in it: it differs between replicas. The budget itself is
//! fixed when the replica's machine is made; all replicas of a group get the same one
//! from the service's spec.
//!
//! Eviction policies (`allkeys-lru`, `volatile-ttl`, ...) are a next step: an eviction
//! must also be decided in apply, from an order every replica agrees on.

use crate::command::{Command, CommandKind, CommandSpec};
use crate::resp::Value;

/// Redis' reply to a `denyoom` command while used memory is over `maxmemory`.
pub const OOM_ERROR: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// The budget of one machine; `Default` has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes of data the machine may hold; 0: no budget (Redis' `maxmemory 0`).
    pub max_bytes: u64,
}

impl MemoryBudget {
    /// A budget of `max_bytes` (0: none).
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes }
    }

    /// The OOM error reply when `spec` with arguments `argv` must be refused while the
    /// machine holds `used_bytes`; None when it may run.
    pub(crate) fn refusal(
        &self,
        spec: &CommandSpec,
        argv: &[Vec<u8>],
        used_bytes: u64,
    ) -> Option<Value> {
        if self.max_bytes == 0 || spec.kind != CommandKind::Write || !may_grow(spec.command) {
            return None;
        }
        let incoming_bytes: u64 = argv.iter().skip(1).map(|arg| arg.len() as u64).sum();
        (used_bytes.saturating_add(incoming_bytes) > self.max_bytes)
            .then(|| Value::error(OOM_ERROR))
    }
}

impl crate::KvMachine {
    /// An empty machine holding at most `max_bytes` of data (0: no budget).
    pub fn with_maxmemory(max_bytes: u64) -> Self {
        Self {
            budget: MemoryBudget::new(max_bytes),
            ..Self::default()
        }
    }

    /// The machine's budget.
    pub fn memory_budget(&self) -> MemoryBudget {
        self.budget
    }

    /// Replaces the state with a snapshot's, keeping this machine's budget (it is
    /// configuration, not replicated state).
    pub fn restore_keeping_budget(
        &mut self,
        snapshot: &[u8],
    ) -> Result<(), stator_api::app::AppError> {
        let budget = self.budget;
        *self = crate::snapshot::decode(snapshot)?;
        self.budget = budget;
        Ok(())
    }

    /// Like [`KvMachine::restore_keeping_budget`], from shared bytes (a durable replica's
    /// mapped snapshot file): strings of `MIN_SHARED_STR_BYTES` (64) bytes or more stay
    /// slices of `snapshot` until they change or [`KvMachine::release_shared`] copies
    /// them. The budget counts them like owned ones: by their length.
    pub fn restore_shared_keeping_budget(
        &mut self,
        snapshot: &bytes::Bytes,
    ) -> Result<(), stator_api::app::AppError> {
        let budget = self.budget;
        *self = crate::snapshot::decode_shared(snapshot)?;
        self.budget = budget;
        Ok(())
    }
}

/// Whether a write may grow the data: every write except those that only remove,
/// expire, rename or touch (Redis' writes without the `denyoom` flag). `STATOR.EXEC` is
/// let through: its queued commands are checked one by one.
fn may_grow(command: Command) -> bool {
    use Command as C;
    !matches!(
        command,
        C::StatorAclKeys
            | C::Del
            | C::Unlink
            | C::GetDel
            | C::GetEx
            | C::LPop
            | C::RPop
            | C::BLPop
            | C::BRPop
            | C::LRem
            | C::LTrim
            | C::HDel
            | C::SRem
            | C::SPop
            | C::SMove
            | C::ZRem
            | C::ZRemRangeByRank
            | C::ZRemRangeByScore
            | C::ZRemRangeByLex
            | C::ZPopMin
            | C::ZPopMax
            | C::BZPopMin
            | C::BZPopMax
            | C::Expire
            | C::PExpire
            | C::ExpireAt
            | C::PExpireAt
            | C::Persist
            | C::Rename
            | C::RenameNx
            | C::Touch
            | C::FlushAll
            | C::FlushDb
            | C::StatorVersion
            | C::StatorExec
    )
}

#[cfg(test)]
mod tests {
    use crate::resp::Value;
    use crate::KvMachine;

    fn run(machine: &mut KvMachine, args: &[&str]) -> Value {
        let argv: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        machine.apply_argv(1, &argv)
    }

    fn is_oom(reply: &Value) -> bool {
        matches!(reply, Value::Error(message) if message == super::OOM_ERROR)
    }

    #[test]
    fn writes_past_the_budget_are_refused_while_reads_and_deletes_work() {
        let mut machine = KvMachine::with_maxmemory(1000);
        let value = "v".repeat(200);
        let mut stored = 0;
        for n in 0..20 {
            let reply = run(&mut machine, &["SET", &format!("key{n}"), &value]);
            if is_oom(&reply) {
                break;
            }
            stored += 1;
        }
        assert!((1..20).contains(&stored), "stored {stored} of 20");
        assert!(machine.data_bytes() <= 1000, "{}", machine.data_bytes());
        // Every growing write is refused, in a transaction too; nothing changed.
        let before = machine.data_bytes();
        for command in [
            &["SET", "other", &value][..],
            &["LPUSH", "list", &value],
            &["SADD", "set", &value],
            &["HSET", "hash", "field", &value],
            &["APPEND", "key0", &value],
        ] {
            assert!(is_oom(&run(&mut machine, command)), "{command:?}");
        }
        assert_eq!(machine.data_bytes(), before);
        // Reads and deletes still work, and a delete makes room again.
        assert_eq!(
            run(&mut machine, &["GET", "key0"]),
            Value::Bulk(Some(value.clone().into_bytes()))
        );
        assert_eq!(
            run(&mut machine, &["EXPIRE", "key1", "100"]),
            Value::Integer(1)
        );
        assert_eq!(run(&mut machine, &["DEL", "key0"]), Value::Integer(1));
        assert!(!is_oom(&run(&mut machine, &["SET", "small", "x"])));
    }

    #[test]
    fn no_budget_means_no_limit_and_replicas_agree() {
        let mut unlimited = KvMachine::with_maxmemory(0);
        for n in 0..100 {
            assert!(!is_oom(&run(
                &mut unlimited,
                &["SET", &format!("k{n}"), "value"]
            )));
        }
        // Two replicas applying the same entries refuse the same ones.
        let (mut a, mut b) = (
            KvMachine::with_maxmemory(500),
            KvMachine::with_maxmemory(500),
        );
        let replies = |machine: &mut KvMachine| -> Vec<bool> {
            (0..50)
                .map(|n| is_oom(&run(machine, &["SET", &format!("k{n}"), "0123456789"])))
                .collect()
        };
        assert_eq!(replies(&mut a), replies(&mut b));
        assert_eq!(a.data_bytes(), b.data_bytes());
    }

    #[test]
    fn the_budget_survives_a_restore() {
        let mut machine = KvMachine::with_maxmemory(300);
        run(&mut machine, &["SET", "a", &"v".repeat(250)]);
        let snapshot = machine.to_snapshot();
        machine.restore_keeping_budget(&snapshot).unwrap();
        assert!(is_oom(&run(&mut machine, &["SET", "b", &"v".repeat(100)])));
    }
}
