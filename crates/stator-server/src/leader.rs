//! Controller election: with several servers on one store, exactly one runs the controller.
//!
//! Each server campaigns with `compare_and_swap_with_lease(LEADER_KEY, Absent, my_url,
//! lease)`. The winner keeps the lease alive and runs a controller *term*; the others
//! publish the winner's URL (calls are forwarded there, see [`crate::forward`]) and watch
//! the key, campaigning again when it vanishes (holder stopped, or its lease expired).
//!
//! # Never two controllers
//! A holder stops its controller (aborts the task) before its lease can have expired: it
//! steps down [`STEP_DOWN_MARGIN_MS`] before `last successful renewal sent + TTL`, since
//! etcd counts the TTL from when it processed that renewal, which is later. It also steps
//! down the moment the key changes or vanishes (a watch on it), or a renewal says the
//! lease is gone.
//!
//! # Fenced writes
//! Stepping down on time cannot stop a holder that was paused (SIGSTOP, a GC pause, a slow
//! disk) past its lease and wakes mid-write, nor one whose key an operator deleted. So a
//! term's controller writes only through a [`Fence`]: the leader key with the create
//! revision this term won it at, checked by the store atomically with every write. Once
//! another server has won the key, the deposed controller's next write is refused
//! ([`StoreError::Fenced`]), nothing of it lands, the controller stops and this server
//! steps down and follows.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use stator_store::{CasOutcome, Expected, LeaseId, Store, StoreError, Versioned, WatchEvent};

use crate::controller::ControllerExit;
use crate::error::Result;
use crate::fence::Fence;

/// The key holding the URL of the server that runs the controller, attached to its lease.
pub const LEADER_KEY: &str = "/stator/leader";
/// TTL of the controller lease: a crashed holder is replaced about this long after it
/// died. Three seconds is etcd's shortest practical TTL with its default election timeout
/// (1 s; etcd raises shorter TTLs to 1.5 x that, rounded up) and keeps failover under the
/// 5 s target.
pub const LEADER_LEASE_TTL_MS: u64 = 3_000;
/// How long before the lease could expire the holder stops its controller: covers clock
/// rate differences and a controller task that takes a moment to notice the abort.
pub const STEP_DOWN_MARGIN_MS: u64 = 500;
/// Pause before campaigning again after a store error, so a store outage is not a busy loop.
pub const RETRY_BACKOFF_MS: u64 = 500;
/// Longest wait for a controller to stop by itself at server shutdown before it is
/// aborted; on losing the lease it is aborted at once.
pub const GRACEFUL_STOP_LIMIT_MS: u64 = 2_000;

/// Who answers API and agent calls on this server right now.
#[derive(Clone)]
pub enum ControllerRole {
    /// No holder is known (an election is under way): calls get 503.
    Electing,
    /// This server runs the controller: calls go to this term's router.
    Leading(Router),
    /// Another server runs it: calls are forwarded to its URL.
    Following {
        /// The holder's advertised URL.
        leader_url: String,
    },
}

impl std::fmt::Debug for ControllerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControllerRole::Electing => f.write_str("Electing"),
            ControllerRole::Leading(_) => f.write_str("Leading"),
            ControllerRole::Following { leader_url } => write!(f, "Following({leader_url})"),
        }
    }
}

/// A running controller and the router that talks to it.
pub struct Term {
    /// The API router bound to this term's controller.
    pub router: Router,
    /// Flipped to end this term's event streams.
    pub stop: watch::Sender<bool>,
    /// The controller task; aborted when the term is dropped. It ends by itself only on
    /// [`ControllerExit::Fenced`] or [`ControllerExit::StoreFailed`] (or at shutdown).
    pub controller: JoinHandle<ControllerExit>,
}

impl Term {
    /// Ends the term at once: the controller task is aborted wherever it is. Its store
    /// writes are single atomic guarded batches, so nothing half-written is left behind.
    fn abort(self) {
        // Dropping aborts; the explicit call documents the intent at call sites.
        drop(self);
    }

    /// Ends the term at server shutdown: the controller finishes the command in hand.
    pub async fn stop_gracefully(mut self) {
        let _ = self.stop.send(true);
        let limit = Duration::from_millis(GRACEFUL_STOP_LIMIT_MS);
        // The controller ends at its next loop turn; abort it if it does not in time.
        let _ = tokio::time::timeout(limit, &mut self.controller).await;
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.controller.abort();
    }
}

/// Starts a controller term whose writes go through the given fence: loads the cluster
/// from the store and spawns the controller.
pub type StartTerm =
    Arc<dyn Fn(Fence) -> futures::future::BoxFuture<'static, Result<Term>> + Send + Sync + 'static>;

/// Everything the election task needs.
pub struct Election {
    /// The shared store.
    pub store: Arc<dyn Store>,
    /// This server's advertised URL, the value it writes under [`LEADER_KEY`].
    pub me: String,
    /// Lease TTL.
    pub ttl_ms: u64,
    /// Starts a term on winning.
    pub start_term: StartTerm,
    /// Where the current role is published.
    pub role: watch::Sender<ControllerRole>,
    /// Server shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// How one round of the election ended.
enum RoundEnd {
    /// Campaign again.
    Again,
    /// The server is shutting down.
    Shutdown,
}

/// Renewal news from the keep-alive task to the holder.
#[derive(Debug, Clone, Copy)]
enum Renewal {
    /// The renewal sent at this instant succeeded.
    Renewed(Instant),
    /// The store says the lease is gone.
    Lost,
}

impl Election {
    /// Campaigns, leads and follows until shutdown.
    pub async fn run(mut self) {
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            match self.round().await {
                Ok(RoundEnd::Shutdown) => return,
                Ok(RoundEnd::Again) => {}
                Err(error) => {
                    self.role.send_replace(ControllerRole::Electing);
                    tracing::warn!(%error, "controller election failed; retrying");
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = stopping(&mut shutdown) => return,
                        _ = tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)) => {}
                    }
                }
            }
        }
    }

    /// One round: read the key; campaign if it is free; then lead or follow until that ends.
    async fn round(&mut self) -> Result<RoundEnd> {
        // Watch before reading, so a delete between the read and the watch is not missed.
        let mut watch = self.store.watch(LEADER_KEY).await?;
        let current = match self.store.get(LEADER_KEY).await? {
            Some(current) => current,
            None => {
                // Measured before the grant: the lease cannot expire earlier than
                // `granted_at + TTL`.
                let granted_at = Instant::now();
                let lease = self.store.grant_lease(self.ttl_ms).await?;
                let outcome = self
                    .store
                    .compare_and_swap_with_lease(
                        LEADER_KEY,
                        Expected::Absent,
                        Some(Bytes::from(self.me.clone())),
                        Some(lease),
                    )
                    .await;
                match outcome {
                    Ok(CasOutcome::Swapped { revision }) => {
                        // The swap created the key: its create revision is `revision`.
                        let fence = Fence::leader(LEADER_KEY, revision);
                        return self.lead(lease, granted_at, fence, &mut watch).await;
                    }
                    Ok(CasOutcome::Mismatch { current }) => {
                        self.release(lease).await;
                        match current {
                            Some(current) => current,
                            None => return Ok(RoundEnd::Again),
                        }
                    }
                    Err(error) => {
                        self.release(lease).await;
                        return Err(error.into());
                    }
                }
            }
        };
        self.follow(current, &mut watch).await
    }

    /// Publishes the holder and waits until the key changes hands or vanishes.
    async fn follow(
        &mut self,
        current: Versioned,
        watch: &mut stator_store::Watch,
    ) -> Result<RoundEnd> {
        self.publish_holder(&current.value);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = stopping(&mut shutdown) => return Ok(RoundEnd::Shutdown),
                event = watch.next() => match event {
                    Some(Ok(WatchEvent::Delete { key, .. })) if key == LEADER_KEY => {
                        self.role.send_replace(ControllerRole::Electing);
                        return Ok(RoundEnd::Again);
                    }
                    Some(Ok(WatchEvent::Put { key, value })) if key == LEADER_KEY => {
                        self.publish_holder(&value.value);
                    }
                    // Another key under the same prefix.
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(StoreError::Closed.into()),
                }
            }
        }
    }

    fn publish_holder(&self, value: &Bytes) {
        let url = String::from_utf8_lossy(value).into_owned();
        if url == self.me {
            // Our own key from before a restart: not ours to use (its lease is not ours),
            // and forwarding to ourselves would loop. Wait for it to expire.
            self.role.send_replace(ControllerRole::Electing);
        } else {
            self.role
                .send_replace(ControllerRole::Following { leader_url: url });
        }
    }

    /// Holds the lease: keeps it alive, runs a controller term, and steps down the moment
    /// the lease may be lost.
    async fn lead(
        &mut self,
        lease: LeaseId,
        granted_at: Instant,
        fence: Fence,
        watch: &mut stator_store::Watch,
    ) -> Result<RoundEnd> {
        tracing::info!(url = %self.me, lease, "won the controller lease");
        let ttl = Duration::from_millis(self.ttl_ms);
        let margin = Duration::from_millis(STEP_DOWN_MARGIN_MS.min(self.ttl_ms / 3));
        let mut deadline = granted_at + ttl - margin;
        let (renewals_tx, mut renewals) = watch::channel(Renewal::Renewed(granted_at));
        let renewer = AbortOnDrop(tokio::spawn(keep_lease_alive(
            self.store.clone(),
            lease,
            ttl / 3,
            renewals_tx,
        )));
        let start = (self.start_term)(fence);
        tokio::pin!(start);
        let mut term: Option<Term> = None;
        let mut shutdown = self.shutdown.clone();
        let end = loop {
            tokio::select! {
                biased;
                _ = stopping(&mut shutdown) => {
                    self.role.send_replace(ControllerRole::Electing);
                    if let Some(term) = term.take() {
                        term.stop_gracefully().await;
                    }
                    break Ok(RoundEnd::Shutdown);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("could not renew the controller lease in time; stepping down");
                    break Ok(RoundEnd::Again);
                }
                changed = renewals.changed() => {
                    match (changed, *renewals.borrow_and_update()) {
                        (Ok(()), Renewal::Renewed(sent_at)) => deadline = sent_at + ttl - margin,
                        _ => {
                            tracing::warn!("the controller lease is gone; stepping down");
                            break Ok(RoundEnd::Again);
                        }
                    }
                }
                event = watch.next() => match event {
                    Some(Ok(WatchEvent::Put { key, value }))
                        if key == LEADER_KEY && value.value == self.me.as_bytes() => {}
                    Some(Ok(event)) if event.key() == LEADER_KEY => {
                        tracing::warn!("the controller lease key changed hands; stepping down");
                        break Ok(RoundEnd::Again);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break Err(error.into()),
                    None => break Err(StoreError::Closed.into()),
                },
                exit = controller_exit(&mut term) => {
                    match exit {
                        ControllerExit::Fenced => tracing::warn!(
                            url = %self.me,
                            "deposed: the store refused a controller write because \
                             {LEADER_KEY} changed hands; controller stopped, following"
                        ),
                        ControllerExit::StoreFailed => tracing::warn!(
                            url = %self.me,
                            "a controller write failed; stepping down to campaign again \
                             and reload the cluster from the store"
                        ),
                        ControllerExit::Stopped => {
                            tracing::warn!("the controller stopped by itself; stepping down")
                        }
                    }
                    break Ok(RoundEnd::Again);
                }
                started = &mut start, if term.is_none() => match started {
                    Ok(started) => {
                        tracing::info!(url = %self.me, "controller running");
                        self.role.send_replace(ControllerRole::Leading(started.router.clone()));
                        term = Some(started);
                    }
                    Err(error) => break Err(error),
                },
            }
        };
        // Stop serving from this term first, then stop its controller, then free the lease
        // so the next holder need not wait for it to expire.
        if !matches!(end, Ok(RoundEnd::Shutdown)) {
            self.role.send_replace(ControllerRole::Electing);
        }
        if let Some(term) = term.take() {
            term.abort();
        }
        drop(renewer);
        self.release(lease).await;
        end
    }

    /// Revokes `lease`, best effort: if it fails the lease simply expires.
    async fn release(&self, lease: LeaseId) {
        if let Err(error) = self.store.revoke(lease).await {
            if !matches!(error, StoreError::LeaseNotFound { .. }) {
                tracing::debug!(%error, lease, "could not revoke the controller lease");
            }
        }
    }
}

/// How the running term's controller task ended; pending while it runs or before a term
/// started. A task that panicked counts as stopped.
async fn controller_exit(term: &mut Option<Term>) -> ControllerExit {
    match term {
        Some(term) => (&mut term.controller)
            .await
            .unwrap_or(ControllerExit::Stopped),
        None => std::future::pending().await,
    }
}

/// Resolves once the server is shutting down.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the server is gone too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Renews `lease` every `interval`, reporting each success (with the instant it was sent)
/// and the lease's loss; store errors are retried at the next tick (the holder steps down
/// by itself if none succeeds in time).
async fn keep_lease_alive(
    store: Arc<dyn Store>,
    lease: LeaseId,
    interval: Duration,
    renewals: watch::Sender<Renewal>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let sent_at = Instant::now();
        match store.keep_alive(lease).await {
            Ok(()) => {
                if renewals.send(Renewal::Renewed(sent_at)).is_err() {
                    return;
                }
            }
            Err(StoreError::LeaseNotFound { .. }) => {
                let _ = renewals.send(Renewal::Lost);
                return;
            }
            Err(error) => tracing::warn!(%error, "renewing the controller lease failed"),
        }
    }
}

/// A task aborted when this is dropped, so it cannot outlive its owner.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use stator_store::EmbeddedStore;
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// Longest wait for the election to act; generous for a loaded machine.
    const WAIT_LIMIT: Duration = Duration::from_secs(30);

    /// A term as the election sees it, and the switch that makes its controller end with
    /// `Fenced` (as a real one does when the store refuses its write).
    type StartedTerm = (Fence, oneshot::Sender<()>);

    /// A controller that ends with `Fenced` ends the term even though the key did not
    /// change under the watch: the server releases the lease and campaigns again, and the
    /// next term has a new fence.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fenced_controller_ends_the_term() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let (terms_tx, mut terms) = mpsc::unbounded_channel::<StartedTerm>();
        let start_term: StartTerm = Arc::new(move |fence| {
            let terms_tx = terms_tx.clone();
            Box::pin(async move {
                let (depose, deposed) = oneshot::channel::<()>();
                terms_tx
                    .send((fence, depose))
                    .expect("the test is listening");
                let controller = tokio::spawn(async move {
                    let _ = deposed.await;
                    ControllerExit::Fenced
                });
                let (stop, _) = watch::channel(false);
                Ok(Term {
                    router: Router::new(),
                    stop,
                    controller,
                })
            })
        });
        let (role_tx, _role) = watch::channel(ControllerRole::Electing);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let election = tokio::spawn(
            Election {
                store: store.clone(),
                me: "http://me".to_string(),
                ttl_ms: LEADER_LEASE_TTL_MS,
                start_term,
                role: role_tx,
                shutdown,
            }
            .run(),
        );
        let (first, depose_first) = tokio::time::timeout(WAIT_LIMIT, terms.recv())
            .await
            .expect("a term starts")
            .expect("the election runs");
        let held = store
            .get(LEADER_KEY)
            .await
            .unwrap()
            .expect("the key is won");
        assert_eq!(
            first.guard().map(|guard| &guard.expected),
            Some(&Expected::CreateRevision(held.create_revision)),
            "the fence is the create revision of the win"
        );
        depose_first.send(()).unwrap();
        let (second, _keep_second) = tokio::time::timeout(WAIT_LIMIT, terms.recv())
            .await
            .expect("a new term starts")
            .expect("the election runs");
        assert_ne!(
            first.guard(),
            second.guard(),
            "the old term ended, its lease was released and the key won anew"
        );
        shutdown_tx.send(true).unwrap();
        tokio::time::timeout(WAIT_LIMIT, election)
            .await
            .expect("the election stops at shutdown")
            .unwrap();
    }
}
