//! The container driver's parts: local OCI images and runc.
//!
//! - [`image`]: `oci:`, `oci-archive:` and `docker-archive:` images, verified and unpacked
//!   once per digest into a content-addressed cache.
//! - [`runtime`]: the bundle (an overlay rootfs and the generated OCI runtime config)
//!   and the runc calls: run, kill, delete, and the sweep at agent start.
//! - [`replica`]: runs the stator-sm/1 app of a replicated service's replica in a
//!   container (a launcher for the stator-sm host: socket directory bind-mounted in).
//! - [`build`]: builds small images locally (for tests, benchmarks and examples).
//!
//! The instance supervisor ([`crate::driver`]) runs a container exactly like a process,
//! with `runc run` as the child it watches; see [`runtime`] for the isolation it gets.
//! A replica's app machine ([`stator_sm::host::ProcessMachine`]) does the same through
//! [`replica::ContainerLauncher`].

pub mod build;
pub mod image;
pub mod replica;
pub mod runtime;

pub use image::{Image, ImageCache, ImageError, ImageRunConfig};
pub use replica::ContainerLauncher;
pub use runtime::{ContainerRuntime, PreparedContainer};
