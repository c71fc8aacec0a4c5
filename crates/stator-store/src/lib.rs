//! The control-plane store: where the stator server keeps specs, node records, placement
//! and leases, behind one trait with interchangeable backends.
//!
//! # Layout
//! - [`store`]: the [`Store`] trait (get / put / delete / compare-and-swap / guarded
//!   batches / list / watch / leases) and the contract every backend keeps.
//! - [`types`]: revisions, [`Versioned`] values, [`Expected`] conditions, [`Guard`]s and
//!   [`WriteOp`]s of guarded batches, [`WatchEvent`]s, the [`Watch`] stream, and the size,
//!   batch and TTL limits.
//! - [`embedded`]: [`EmbeddedStore`], a single redb file with in-process watches and
//!   in-memory leases (the default, needs nothing installed).
//! - `conformance` (cargo feature `testing`, for tests only): the test cases every backend
//!   must pass, runnable from any crate with `store_conformance_tests!`.
//! - [`error`]: the crate error type, [`StoreError`].
//! - `etcd` (cargo feature `etcd`, off by default since the etcd client needs `protoc` to
//!   build): `EtcdStore`, the same trait on an etcd v3 cluster. Its tests run it on a real
//!   etcd started by `stator_harness::etcd::LocalEtcd` (a dev-dependency only).

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod embedded;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod store;
pub mod types;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use error::{Result, StoreError};
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;
pub use store::Store;
pub use types::{
    CasOutcome, Expected, Guard, LeaseId, Revision, Versioned, Watch, WatchEvent, WriteOp,
};
