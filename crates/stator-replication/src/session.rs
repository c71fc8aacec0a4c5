//! Exactly-once client sessions, replicated with the state machine.
//!
//! Every write carries `(client_id, seq)`. The group remembers the last sequence number
//! and reply per client, so a client that retries after a timeout or a failover gets the
//! first answer again instead of applying its command twice. The table is bounded: past
//! [`MAX_SESSIONS`] clients the one idle for the most log entries is forgotten, and that
//! choice depends only on the log, so every replica forgets the same client.

use crate::types::CommandReply;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::BTreeMap;

/// Clients remembered per group. A forgotten client that retries a very old request
/// gets it applied again, so this is sized well above the number of gateways and SDK
/// clients a partition sees at once.
pub const MAX_SESSIONS: usize = 65_536;

/// A remembered reply's buffer up to this size (or twice the new reply's) is reused for
/// the client's next reply instead of allocating a new one.
const REUSED_REPLY_BUFFER_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    last_reply: CommandReply,
    /// Where its last write was applied: (log index, position in the entry's batch).
    last_at: (u64, u32),
}

/// What to do with an incoming write.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionCheck {
    /// New sequence number: apply it.
    Apply,
    /// Already applied: answer with the stored reply, apply nothing.
    Duplicate(CommandReply),
}

/// The per-group session table.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    /// Fx-hashed: one multiply per lookup instead of SipHash, on the path of every write.
    /// Client ids are random 64-bit numbers drawn by gateways and SDK clients, not keys a
    /// client picks to collide, and the table is bounded by [`MAX_SESSIONS`].
    by_client: FxHashMap<u64, Session>,
    /// `last_at -> client`, oldest first, for deterministic eviction.
    by_age: BTreeMap<(u64, u32), u64>,
}

impl Sessions {
    /// Decides whether `(client_id, seq)` must be applied. Client 0 has no session.
    pub fn check(&self, client_id: u64, seq: u64) -> SessionCheck {
        if client_id == 0 {
            return SessionCheck::Apply;
        }
        match self.by_client.get(&client_id) {
            Some(s) if seq == s.last_seq => SessionCheck::Duplicate(s.last_reply.clone()),
            Some(s) if seq < s.last_seq => SessionCheck::Duplicate(CommandReply::StaleSequence {
                last_seq: s.last_seq,
            }),
            _ => SessionCheck::Apply,
        }
    }

    /// Records the reply to `(client_id, seq)` applied at `at` (log index, position of
    /// the write in that entry's batch).
    pub fn record(&mut self, client_id: u64, seq: u64, at: (u64, u32), reply: &CommandReply) {
        if client_id == 0 {
            return;
        }
        // One lookup; a known client's stored reply reuses its buffer (a copy, no
        // allocation, in the common case of a client writing again and again).
        let previous_at = match self.by_client.entry(client_id) {
            MapEntry::Occupied(mut occupied) => {
                let session = occupied.get_mut();
                let previous_at = session.last_at;
                session.last_seq = seq;
                session.last_at = at;
                match (&mut session.last_reply, reply) {
                    // Not a buffer far larger than the reply: one big reply must not pin
                    // its memory for as long as the client is remembered.
                    (CommandReply::Applied(stored), CommandReply::Applied(bytes))
                        if stored.capacity() <= REUSED_REPLY_BUFFER_BYTES.max(bytes.len() * 2) =>
                    {
                        stored.clear();
                        stored.extend_from_slice(bytes.as_slice());
                    }
                    (stored, reply) => *stored = reply.clone(),
                }
                Some(previous_at)
            }
            MapEntry::Vacant(vacant) => {
                vacant.insert(Session {
                    last_seq: seq,
                    last_reply: reply.clone(),
                    last_at: at,
                });
                None
            }
        };
        if let Some(previous_at) = previous_at {
            self.by_age.remove(&previous_at);
        }
        self.by_age.insert(at, client_id);
        while self.by_client.len() > MAX_SESSIONS {
            let (_, oldest) = self
                .by_age
                .pop_first()
                .expect("age index matches the session map");
            self.by_client.remove(&oldest);
        }
    }

    /// Number of clients remembered.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> CommandReply {
        CommandReply::Applied(s.as_bytes().to_vec())
    }

    #[test]
    fn duplicate_returns_first_reply_and_old_seq_is_stale() {
        let mut s = Sessions::default();
        assert_eq!(s.check(7, 1), SessionCheck::Apply);
        s.record(7, 1, (10, 0), &reply("a"));
        assert_eq!(s.check(7, 1), SessionCheck::Duplicate(reply("a")));
        assert_eq!(s.check(7, 2), SessionCheck::Apply);
        s.record(7, 2, (10, 1), &reply("b"));
        assert_eq!(
            s.check(7, 2),
            SessionCheck::Duplicate(reply("b")),
            "the stored reply is replaced, not appended to"
        );
        s.record(7, 3, (11, 0), &CommandReply::AppFailed("boom".into()));
        s.record(7, 4, (12, 0), &reply("c"));
        assert_eq!(s.check(7, 4), SessionCheck::Duplicate(reply("c")));
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.check(7, 1),
            SessionCheck::Duplicate(CommandReply::StaleSequence { last_seq: 4 })
        );
        assert_eq!(
            s.check(0, 1),
            SessionCheck::Apply,
            "client 0 has no session"
        );
    }

    #[test]
    fn eviction_is_bounded_and_forgets_the_oldest() {
        let mut s = Sessions::default();
        for client in 1..=(MAX_SESSIONS as u64 + 3) {
            s.record(client, 1, (client / 2, (client % 2) as u32), &reply("x"));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(
            s.check(1, 1),
            SessionCheck::Apply,
            "oldest client forgotten"
        );
        assert_eq!(
            s.check(MAX_SESSIONS as u64 + 3, 1),
            SessionCheck::Duplicate(reply("x"))
        );
    }
}
