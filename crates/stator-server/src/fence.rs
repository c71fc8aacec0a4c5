//! The fence on the controller's store writes: every write of a controller term is one
//! guarded batch that the store applies only while the leader key is still the one this
//! term won.
//!
//! Why: a holder paused past its lease (SIGSTOP, a GC pause, a slow disk) wakes up still
//! believing it leads; stepping down on a timer or a watch event cannot stop the write it
//! was about to make. The guard is checked by the store in the same atomic step as the
//! write (etcd: one Txn comparing the key's create revision; embedded: one redb write
//! transaction), so once another server has won the key the write is refused with
//! [`StoreError::Fenced`] and nothing of it lands.

use stator_store::{Expected, Guard, Revision, Store, StoreError, WriteOp};

/// What a controller term's writes are guarded by, and whether one was refused already.
#[derive(Debug, Clone)]
pub struct Fence {
    /// `None` for a server that owns its store alone (embedded, no election).
    guard: Option<Guard>,
    /// Set by the first refused write: the term is over and nothing more is sent.
    deposed: bool,
}

impl Fence {
    /// No guard: for a server that owns its store alone, where no other writer exists.
    pub fn unfenced() -> Fence {
        Fence {
            guard: None,
            deposed: false,
        }
    }

    /// Writes are applied only while `leader_key` still has the create revision this
    /// term's election won it at (the revision of the compare-and-swap that created it).
    pub fn leader(leader_key: &str, won_at: Revision) -> Fence {
        Fence {
            guard: Some(Guard {
                key: leader_key.to_string(),
                expected: Expected::CreateRevision(won_at),
            }),
            deposed: false,
        }
    }

    /// The guard checked with every write, if any.
    pub fn guard(&self) -> Option<&Guard> {
        self.guard.as_ref()
    }

    /// True once a write was refused: the term must end, and no write is sent again.
    pub fn is_deposed(&self) -> bool {
        self.deposed
    }

    /// Applies `ops` as one guarded batch. After a `Fenced` refusal every later call fails
    /// with `Fenced` at once, without reaching the store: a deposed term never writes again,
    /// guarded or not.
    pub async fn write(&mut self, store: &dyn Store, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        if self.deposed {
            return Err(self.fenced_error());
        }
        match store.write_batch(self.guard.as_ref(), ops).await {
            Ok(_) => Ok(()),
            Err(error @ StoreError::Fenced { .. }) => {
                self.deposed = true;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    fn fenced_error(&self) -> StoreError {
        StoreError::Fenced {
            key: self
                .guard
                .as_ref()
                .map(|guard| guard.key.clone())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use stator_store::{CasOutcome, EmbeddedStore};

    use super::*;

    const LEADER: &str = "/stator/leader";

    fn put(key: &str, value: &'static str) -> WriteOp {
        WriteOp::Put {
            key: key.to_string(),
            value: Bytes::from_static(value.as_bytes()),
        }
    }

    /// A store with the leader key won by "a"; returns the revision it was won at.
    async fn won(dir: &tempfile::TempDir) -> (Arc<dyn Store>, Revision) {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let outcome = store
            .compare_and_swap(LEADER, Expected::Absent, Some(Bytes::from_static(b"a")))
            .await
            .unwrap();
        let CasOutcome::Swapped { revision } = outcome else {
            panic!("fresh store: {outcome:?}");
        };
        (store, revision)
    }

    #[tokio::test]
    async fn writes_apply_while_the_term_holds_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, won_at) = won(&dir).await;
        let mut fence = Fence::leader(LEADER, won_at);
        fence.write(&*store, vec![put("/x/a", "1")]).await.unwrap();
        assert_eq!(store.get("/x/a").await.unwrap().unwrap().value, "1");
        assert!(!fence.is_deposed());
    }

    #[tokio::test]
    async fn a_deposed_term_is_refused_and_never_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, won_at) = won(&dir).await;
        let mut fence = Fence::leader(LEADER, won_at);
        // Another server wins the key (same value: only the create revision tells).
        store.delete(LEADER).await.unwrap();
        store.put(LEADER, Bytes::from_static(b"a")).await.unwrap();
        let before = store.revision().await.unwrap();
        let refused = fence.write(&*store, vec![put("/x/a", "stale")]).await;
        assert!(
            matches!(refused, Err(StoreError::Fenced { ref key }) if key == LEADER),
            "{refused:?}"
        );
        assert!(fence.is_deposed());
        // Even if the key came back to this term's revision (it cannot), nothing is sent.
        let again = fence.write(&*store, vec![put("/x/b", "stale")]).await;
        assert!(matches!(again, Err(StoreError::Fenced { .. })), "{again:?}");
        assert_eq!(
            store.revision().await.unwrap(),
            before,
            "nothing was written"
        );
        assert_eq!(store.get("/x/a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_deleted_key_fences_too() {
        let dir = tempfile::tempdir().unwrap();
        let (store, won_at) = won(&dir).await;
        let mut fence = Fence::leader(LEADER, won_at);
        store.delete(LEADER).await.unwrap();
        let refused = fence.write(&*store, vec![put("/x/a", "stale")]).await;
        assert!(
            matches!(refused, Err(StoreError::Fenced { .. })),
            "{refused:?}"
        );
        assert_eq!(store.get("/x/a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn unfenced_writes_ignore_the_leader_key() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let mut fence = Fence::unfenced();
        fence.write(&*store, vec![put("/x/a", "1")]).await.unwrap();
        assert_eq!(store.get("/x/a").await.unwrap().unwrap().value, "1");
    }
}
