//! The `app = { container = {...} }` spec: an OCI image from a local source, run by the
//! agent's container driver (runc), and the parsed image reference.
//!
//! ```toml
//! [app.container]
//! image = "oci:images/web:1.0"        # or "oci-archive:web.tar:1.0", "docker-archive:web.tar"
//! command = ["/bin/httpd", "-f"]      # optional: the image's entrypoint + cmd otherwise
//! env = { GREETING = "hello" }
//! user = "1000:1000"                  # numeric uid[:gid]; the image's user otherwise
//! read_only_rootfs = true
//! mounts = [{ source = "/srv/data", target = "/data", read_only = true }]
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

use crate::spec::{validate_command_and_env, SpecError};

/// Most bind mounts one container may declare: each is a mount in the container's
/// namespace, and real services need a handful.
pub const MAX_CONTAINER_MOUNTS: usize = 32;
/// Longest image tag (the OCI distribution spec's limit).
pub const MAX_TAG_BYTES: usize = 128;

/// A container to run: an image plus what to change about how it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Where the image comes from: `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or
    /// `docker-archive:FILE` (see [`ImageRef`]). Relative paths are read from the agent's
    /// working directory.
    pub image: String,
    /// Program and arguments inside the container; the image's entrypoint and cmd when
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment added to the image's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Directory (inside the container) to start in; the image's, or `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Numeric `uid` or `uid:gid` to run as; the image's user (numeric only), or root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Mount the image's file system read-only (writes then fail, except in mounts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_rootfs: bool,
    /// Host directories or files bound into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
}

/// A host path bound into a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// Absolute path on the host.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Bind read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl ContainerSpec {
    /// Checks the spec; the error names the field under `field` (e.g. `app.container`).
    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        ImageRef::parse(&self.image)
            .map_err(|reason| SpecError::invalid(format!("{field}.image"), reason))?;
        if self.command.first().is_some_and(|p| p.trim().is_empty()) {
            return Err(SpecError::invalid(
                format!("{field}.command"),
                "must name a program, e.g. command = [\"/bin/sh\", \"-c\", \"...\"], or be left out to run the image's entrypoint",
            ));
        }
        validate_command_and_env(field, &self.command, &self.env)?;
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                return Err(SpecError::invalid(
                    format!("{field}.working_dir"),
                    format!("must be an absolute path inside the container, got {dir:?}"),
                ));
            }
        }
        if let Some(user) = &self.user {
            parse_user(user)
                .map_err(|reason| SpecError::invalid(format!("{field}.user"), reason))?;
        }
        if self.mounts.len() > MAX_CONTAINER_MOUNTS {
            return Err(SpecError::invalid(
                format!("{field}.mounts"),
                format!(
                    "at most {MAX_CONTAINER_MOUNTS} mounts, got {}",
                    self.mounts.len()
                ),
            ));
        }
        for (index, mount) in self.mounts.iter().enumerate() {
            for (name, path) in [("source", &mount.source), ("target", &mount.target)] {
                if !path.starts_with('/') || path.split('/').any(|part| part == "..") {
                    return Err(SpecError::invalid(
                        format!("{field}.mounts[{index}].{name}"),
                        format!("must be an absolute path without '..', got {path:?}"),
                    ));
                }
            }
            if mount.target == "/" {
                return Err(SpecError::invalid(
                    format!("{field}.mounts[{index}].target"),
                    "cannot replace the container's root; mount below it, e.g. \"/data\"",
                ));
            }
        }
        Ok(())
    }
}

/// Parses a numeric `uid` or `uid:gid` (the gid is the uid when absent).
pub fn parse_user(user: &str) -> Result<(u32, u32), String> {
    let bad = || {
        format!(
            "must be a numeric uid or uid:gid like \"1000\" or \"1000:1000\" (names need the image's /etc/passwd, which stator does not read), got {user:?}"
        )
    };
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = match gid {
        Some(gid) => gid.parse().map_err(|_| bad())?,
        None => uid,
    };
    Ok((uid, gid))
}

/// Where an image comes from. All sources are local: nothing is pulled over the network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// `oci:DIR[:TAG]`: an OCI image layout directory; the manifest whose
    /// `org.opencontainers.image.ref.name` is `TAG`, or the only one when no tag is given.
    OciDir {
        /// The layout directory.
        dir: String,
        /// The tag to pick.
        tag: Option<String>,
    },
    /// `oci-archive:FILE[:TAG]`: an OCI image layout packed in a tar file.
    OciArchive {
        /// The tar file.
        file: String,
        /// The tag to pick.
        tag: Option<String>,
    },
    /// `docker-archive:FILE`: what `docker save` writes (one image).
    DockerArchive {
        /// The tar file.
        file: String,
    },
}

impl ImageRef {
    /// Parses `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or `docker-archive:FILE`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let split_tag = |rest: &str| -> Result<(String, Option<String>), String> {
            // The tag follows the last ':' unless that part looks like a path.
            let (path, tag) = match rest.rsplit_once(':') {
                Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
                _ => (rest, None),
            };
            if path.is_empty() {
                return Err(format!(
                    "{text:?} names no path; write e.g. \"oci:images/web:1.0\""
                ));
            }
            if let Some(tag) = tag {
                let valid = !tag.is_empty()
                    && tag.len() <= MAX_TAG_BYTES
                    && tag
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                if !valid {
                    return Err(format!(
                        "tag {tag:?} of {text:?} must be 1 to {MAX_TAG_BYTES} letters, digits, '_', '.' or '-'"
                    ));
                }
            }
            Ok((path.to_string(), tag.map(str::to_string)))
        };
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest)?;
            Ok(ImageRef::OciDir { dir, tag })
        } else if let Some(rest) = text.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest)?;
            Ok(ImageRef::OciArchive { file, tag })
        } else if let Some(file) = text.strip_prefix("docker-archive:") {
            if file.is_empty() {
                return Err(format!(
                    "{text:?} names no file; write e.g. \"docker-archive:web.tar\""
                ));
            }
            Ok(ImageRef::DockerArchive {
                file: file.to_string(),
            })
        } else {
            Err(format!(
                "{text:?} is not a local image source: write \"oci:DIR:TAG\" (an OCI layout), \"oci-archive:FILE:TAG\" or \"docker-archive:FILE\" (docker save); registries are not supported yet"
            ))
        }
    }

    /// The file or directory the image is read from.
    pub fn path(&self) -> &str {
        match self {
            ImageRef::OciDir { dir, .. } => dir,
            ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file } => file,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, path, tag) = match self {
            ImageRef::OciDir { dir, tag } => ("oci", dir, tag.as_deref()),
            ImageRef::OciArchive { file, tag } => ("oci-archive", file, tag.as_deref()),
            ImageRef::DockerArchive { file } => ("docker-archive", file, None),
        };
        write!(f, "{prefix}:{path}")?;
        match tag {
            Some(tag) => write!(f, ":{tag}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_image_sources() {
        assert_eq!(
            ImageRef::parse("oci:images/web:1.0"),
            Ok(ImageRef::OciDir {
                dir: "images/web".into(),
                tag: Some("1.0".into())
            })
        );
        assert_eq!(
            ImageRef::parse("oci:/abs/dir"),
            Ok(ImageRef::OciDir {
                dir: "/abs/dir".into(),
                tag: None
            })
        );
        assert_eq!(
            ImageRef::parse("oci-archive:web.tar:latest"),
            Ok(ImageRef::OciArchive {
                file: "web.tar".into(),
                tag: Some("latest".into())
            })
        );
        assert_eq!(
            ImageRef::parse("docker-archive:/tmp/a.tar"),
            Ok(ImageRef::DockerArchive {
                file: "/tmp/a.tar".into()
            })
        );
        for text in [
            "oci:images/web:1.0",
            "oci-archive:a.tar",
            "docker-archive:x.tar",
        ] {
            assert_eq!(ImageRef::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_image_sources_saying_what_to_write() {
        for bad in [
            "docker.io/library/nginx",
            "oci:",
            "oci::1",
            "oci:dir:bad tag",
            "docker-archive:",
        ] {
            let error = ImageRef::parse(bad).unwrap_err();
            assert!(
                error.contains("write") || error.contains("must"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn validation_names_the_container_field() {
        let ok = ContainerSpec {
            image: "oci:img:1".into(),
            ..Default::default()
        };
        assert!(ok.validate("app.container").is_ok());
        let field_of = |spec: ContainerSpec| match spec.validate("app.container") {
            Err(SpecError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        assert_eq!(
            field_of(ContainerSpec {
                image: "nginx".into(),
                ..ok.clone()
            }),
            "app.container.image"
        );
        assert_eq!(
            field_of(ContainerSpec {
                user: Some("nobody".into()),
                ..ok.clone()
            }),
            "app.container.user"
        );
        assert_eq!(
            field_of(ContainerSpec {
                working_dir: Some("relative".into()),
                ..ok.clone()
            }),
            "app.container.working_dir"
        );
        assert_eq!(
            field_of(ContainerSpec {
                mounts: vec![MountSpec {
                    source: "/srv".into(),
                    target: "../x".into(),
                    read_only: false
                }],
                ..ok.clone()
            }),
            "app.container.mounts[0].target"
        );
        assert_eq!(parse_user("1000"), Ok((1000, 1000)));
        assert_eq!(parse_user("1:2"), Ok((1, 2)));
    }
}
