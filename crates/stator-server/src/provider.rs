//! Node providers: how the controller gets a node from a pool and gives one back.
//!
//! The autoscaler decides *that* a node of a pool is needed in a zone, or that an empty
//! node can go; a [`NodeProvider`] carries it out. [`StaticProvider`] stands for a fixed
//! set of machines (it never adds one; releasing a node leaves it drained). The `stator`
//! binary adds a local provider that runs agents as child processes of `stator up`.
//!
//! # To ensure correctness
//! - `provision` returns once the node is *asked for*, not when it is ready: the node
//!   joins later by registering like any agent, under the name `provision` returned and
//!   with the pool's name, capacity and price. The controller counts it as booting until
//!   a node of that name registers or the boot deadline passes.
//! - `release` is only called for a node that hosts nothing (drained, or empty and
//!   cordoned): it may stop the machine at once. Releasing a node twice must be harmless.
//! - Both calls run on their own task, never on the controller's: they may take seconds.

use std::fmt;

use async_trait::async_trait;
use stator_api::spec::NodePoolSpec;

/// Why a provider could not carry out a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// This provider cannot add machines (static machines): add one by hand.
    #[error("the {provider} provider cannot add a node to pool {pool}: start `stator agent --pool {pool}` on a new machine yourself, or run with a provider that provisions")]
    CannotProvision {
        /// Provider name.
        provider: &'static str,
        /// Pool asked for.
        pool: String,
    },
    /// The pool is not one the provider knows.
    #[error("pool {pool} is not configured; add it to the pools file")]
    UnknownPool {
        /// Pool asked for.
        pool: String,
    },
    /// The node to release is not one this provider started.
    #[error("node {name} was not started by the {provider} provider; stop it by hand")]
    UnknownNode {
        /// Provider name.
        provider: &'static str,
        /// Node name.
        name: String,
    },
    /// Starting or stopping the machine failed.
    #[error("{action} failed: {detail}")]
    Failed {
        /// `provision pool X` or `release node Y`.
        action: String,
        /// What went wrong, and what to check.
        detail: String,
    },
}

/// A source of nodes for the pools. See the module doc for the contract.
#[async_trait]
pub trait NodeProvider: Send + Sync + 'static {
    /// Short name for logs and errors (`static`, `local`).
    fn name(&self) -> &'static str;

    /// Asks for one node of `pool` in `zone`; returns the name it will register under.
    async fn provision(&self, pool: &NodePoolSpec, zone: &str) -> Result<String, ProviderError>;

    /// Gives back the empty node `name` (of pool `pool`).
    async fn release(&self, pool: &str, name: &str) -> Result<(), ProviderError>;
}

/// Fixed machines: nothing to provision; a released node simply stays drained (the
/// operator may switch it off).
#[derive(Debug, Default, Clone, Copy)]
pub struct StaticProvider;

#[async_trait]
impl NodeProvider for StaticProvider {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn provision(&self, pool: &NodePoolSpec, _zone: &str) -> Result<String, ProviderError> {
        Err(ProviderError::CannotProvision {
            provider: self.name(),
            pool: pool.name.clone(),
        })
    }

    async fn release(&self, _pool: &str, name: &str) -> Result<(), ProviderError> {
        tracing::info!(
            node = name,
            "static provider: node released (it stays drained)"
        );
        Ok(())
    }
}

impl fmt::Debug for dyn NodeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeProvider({})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::spec::{parse_node_pool, SpecFormat};

    #[tokio::test]
    async fn the_static_provider_never_adds_and_releases_by_draining_only() {
        let pool = parse_node_pool(
            "name = \"small\"\ncpu = \"1\"\nmemory = \"1Gi\"\nprice_per_hour = 0.1\nmax = 4",
            SpecFormat::Toml,
        )
        .unwrap();
        let error = StaticProvider.provision(&pool, "zone-a").await.unwrap_err();
        assert!(matches!(error, ProviderError::CannotProvision { .. }));
        assert!(error.to_string().contains("stator agent --pool small"));
        StaticProvider.release("small", "node-1").await.unwrap();
    }
}
