//! The `kv` machine behind the replica contract: RESP bytes in, RESP bytes out.

use crate::machine::KvMachine;
use crate::resp::parse_whole_command;
use crate::snapshot;
use async_trait::async_trait;
use stator_api::app::{AppError, SnapshotFinish, StateMachine, StateMachineFactory};
use stator_api::ids::GroupId;

#[async_trait]
impl StateMachine for KvMachine {
    /// `command` is one RESP command array. A malformed command gets a protocol error
    /// reply rather than an `AppError`: every replica sees the same bytes, and stopping all
    /// of them over one client's garbage would take the partition down.
    async fn apply(
        &mut self,
        index: u64,
        time_ms: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, AppError> {
        Ok(self.apply_entry(index, time_ms, command))
    }

    fn apply_now(
        &mut self,
        index: u64,
        time_ms: u64,
        command: &[u8],
    ) -> Option<Result<Vec<u8>, AppError>> {
        Some(Ok(self.apply_entry(index, time_ms, command)))
    }

    async fn query(&mut self, time_ms: u64, request: &[u8]) -> Result<Vec<u8>, AppError> {
        let reply = match parse_whole_command(request) {
            Ok(argv) => self.query_argv(time_ms, &argv),
            Err(error) => error.to_reply(),
        };
        Ok(reply.to_bytes())
    }

    async fn snapshot(&mut self) -> Result<Vec<u8>, AppError> {
        Ok(snapshot::encode(self))
    }

    /// The table frozen here (each shard shared, none walked); the walk over it, the sort
    /// by key and the assembly in the closure, while writes go on (a write to a shard the
    /// walk has not reached encodes it for the walk first, see `key_table`).
    async fn snapshot_in_parts(&mut self) -> Result<SnapshotFinish, AppError> {
        let captured = snapshot::capture(self);
        Ok(Box::new(move || captured.encode().finish()))
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
        self.restore_keeping_budget(snapshot)
    }

    async fn restore_shared(&mut self, snapshot: bytes::Bytes) -> Result<(), AppError> {
        self.restore_shared_keeping_budget(&snapshot)
    }

    fn release_shared(&mut self, max_bytes: u64) -> bool {
        KvMachine::release_shared(self, max_bytes)
    }

    fn state_bytes(&self) -> u64 {
        self.data_bytes()
    }
}

impl KvMachine {
    /// The snapshot bytes of this machine (what `StateMachine::snapshot` returns).
    pub fn to_snapshot(&self) -> Vec<u8> {
        snapshot::encode(self)
    }

    /// A machine rebuilt from [`KvMachine::to_snapshot`] output.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, AppError> {
        snapshot::decode(bytes)
    }

    /// Like [`KvMachine::from_snapshot`], keeping strings of 64 bytes or more as slices
    /// of `bytes` (see [`KvMachine::restore_shared_keeping_budget`]).
    pub fn from_shared_snapshot(bytes: &bytes::Bytes) -> Result<Self, AppError> {
        snapshot::decode_shared(bytes)
    }

    /// Copies up to about `max_bytes` of strings still shared with the snapshot this
    /// machine was restored from into its own memory; true once none is shared.
    pub fn release_shared(&mut self, max_bytes: u64) -> bool {
        snapshot::release_shared(self, max_bytes)
    }

    /// Whether some string may still be a slice of a restored snapshot.
    pub fn holds_shared_snapshot(&self) -> bool {
        self.shared_snapshot.is_some()
    }
}

/// Builds empty [`KvMachine`]s: the `builtin = "kv"` app.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvFactory;

impl StateMachineFactory for KvFactory {
    fn create(&self, _group: GroupId) -> Box<dyn StateMachine> {
        Box::new(KvMachine::new())
    }
}

impl KvMachine {
    /// [`StateMachine::apply`] without the future: the kv machine never waits, and a
    /// caller that holds a `KvMachine` (the notifying wrapper) calls this rather than
    /// boxing a future per log entry.
    pub fn apply_entry(&mut self, index: u64, time_ms: u64, command: &[u8]) -> Vec<u8> {
        self.set_entry_index(index);
        if let Some(reply) = self.apply_exec_entry(time_ms, command) {
            // A pipeline batch or a transaction: parsed without copying its layout.
            return reply;
        }
        let reply = match parse_whole_command(command) {
            Ok(argv) => self.apply_owned(time_ms, argv),
            Err(error) => {
                self.advance_clock(time_ms);
                error.to_reply()
            }
        };
        reply.to_bytes()
    }
}
