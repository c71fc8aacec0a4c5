//! Images from local sources, unpacked once per digest into a content-addressed cache.
//!
//! [`ImageCache::prepare`] resolves an [`ImageRef`] to a digest (the manifest's for OCI
//! layouts, the config's, i.e. the image id, for `docker save` archives), and unpacks the
//! image's layers into `<cache>/sha256/<hex>/rootfs` unless that is already there. An
//! unpack goes to a scratch directory first and is renamed into place when complete, so a
//! crash mid-way leaves nothing a later start could mistake for an image.
//!
//! # To ensure correctness
//! - Every blob is checked before use: a manifest, config or compressed layer against its
//!   descriptor's digest and size, and every layer's uncompressed stream against the
//!   config's `rootfs.diff_ids` while it unpacks. A mismatch or a truncated stream is an
//!   [`ImageError`] naming the layer.
//! - Whiteouts (`.wh.NAME` deletes `NAME` of lower layers, `.wh..wh..opq` empties its
//!   directory of lower layers' entries) are applied, never written out.
//! - Nothing lands outside the rootfs: paths with `..` are refused, the tar crate refuses
//!   links that escape, and a whiteout's directory must resolve inside the rootfs.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use stator_api::container::ImageRef;

/// Directory, under the cache, of unpacked images by sha256 hex digest.
const IMAGES_DIR: &str = "sha256";
/// Directory, under the cache, of unpacks and archive extractions in progress.
const SCRATCH_DIR: &str = "tmp";
/// File, in an unpacked image's directory, holding its [`ImageRunConfig`].
const RUN_CONFIG_FILE: &str = "image.json";
/// Directory, in an unpacked image's directory, holding its file system.
const ROOTFS_DIR: &str = "rootfs";
/// Largest JSON document (index, manifest, config) read: real ones are a few KiB.
pub const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;
/// Most layers an image may have (Docker's own limit is 127).
pub const MAX_LAYERS: usize = 256;
/// Annotation naming a manifest's tag in an OCI layout's index.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Whiteout prefix: `.wh.NAME` deletes `NAME` from the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Opaque whiteout: the directory holding it hides everything of the layers below.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Why an image could not be prepared. Each message names the image part at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image source could not be read (missing file, permissions).
    #[error("{what} {path}: {source} (check the image path; relative paths are read from the agent's working directory)")]
    Read {
        /// What was being read.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The image is not what its format requires (bad JSON, no such tag, ...).
    #[error("{0}")]
    Invalid(String),
    /// A blob's content does not match its digest or size: corrupt or truncated.
    #[error(
        "{what} {digest}: {problem}; the image is corrupt or truncated, rebuild or re-export it"
    )]
    Mismatch {
        /// The part of the image (`manifest`, `config`, `layer 2 of 3`).
        what: String,
        /// The digest it should have.
        digest: String,
        /// What differs.
        problem: String,
    },
    /// A layer could not be unpacked (bad compression, bad tar, unsafe path).
    #[error("{what} {digest}: {problem}")]
    Layer {
        /// `layer N of M`.
        what: String,
        /// The layer's digest.
        digest: String,
        /// What went wrong.
        problem: String,
    },
    /// The cache directory could not be written.
    #[error("image cache {path}: {source} (check that the agent's data dir is writable)")]
    Cache {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// What the image says about how to run it (from its config), kept next to the rootfs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd` (arguments to the entrypoint, or the command when there is none).
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
}

/// An unpacked image, ready to be a container's lower layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<hex>`: the cache key.
    pub digest: String,
    /// The unpacked file system (never written to: containers get an overlay on top).
    pub rootfs: PathBuf,
    /// How the image wants to be run.
    pub config: ImageRunConfig,
    /// Whether this call unpacked it (false: it was cached).
    pub unpacked_now: bool,
}

/// The content-addressed cache of unpacked images.
#[derive(Debug)]
pub struct ImageCache {
    root: PathBuf,
    /// Held while preparing, so two instances of one image unpack it once. A std mutex:
    /// preparing is blocking file IO, run off the async threads.
    preparing: Mutex<ArchiveDigests>,
}

/// The digest of each archive already read, by (path, length, modification time), so a
/// cached archive image starts without being extracted again.
type ArchiveDigests = HashMap<(PathBuf, u64, Option<SystemTime>), String>;

/// Numbers scratch directories within this process.
static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One layer to apply, in order.
struct LayerBlob {
    path: PathBuf,
    /// Digest and size of the blob as stored (OCI layouts), checked before unpacking.
    stored: Option<(String, u64)>,
    /// sha256 of the uncompressed tar (the config's diff id), checked while unpacking.
    diff_id: Option<String>,
}

/// An image located and checked, not yet unpacked.
struct Resolved {
    digest: String,
    config: ImageRunConfig,
    layers: Vec<LayerBlob>,
}

impl ImageCache {
    /// A cache under `root`; removes scratch left by an agent that died mid-unpack.
    pub fn new(root: PathBuf) -> Self {
        let _ = fs::remove_dir_all(root.join(SCRATCH_DIR));
        Self {
            root,
            preparing: Mutex::new(HashMap::new()),
        }
    }

    /// Where the cache lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Finds or unpacks `image`, reading relative paths from `base_dir`. Blocking.
    pub fn prepare(&self, image: &ImageRef, base_dir: &Path) -> Result<Image, ImageError> {
        let mut archive_digests = self
            .preparing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let source = base_dir.join(image.path());
        match image {
            ImageRef::OciDir { tag, .. } => {
                let resolved = resolve_oci_layout(&source, tag.as_deref())?;
                self.unpack_unless_cached(resolved)
            }
            ImageRef::OciArchive { .. } | ImageRef::DockerArchive { .. } => {
                let tag = match image {
                    ImageRef::OciArchive { tag, .. } => tag.as_deref(),
                    _ => None,
                };
                let meta = fs::metadata(&source).map_err(|source_error| ImageError::Read {
                    what: "image archive",
                    path: source.clone(),
                    source: source_error,
                })?;
                let key = (source.clone(), meta.len(), meta.modified().ok());
                if let Some(digest) = archive_digests.get(&key) {
                    if let Some(image) = self.cached(digest)? {
                        return Ok(image);
                    }
                }
                let staging = self.scratch_dir("archive")?;
                let result = extract_archive(&source, &staging).and_then(|()| {
                    let resolved = match image {
                        ImageRef::DockerArchive { .. } => resolve_docker_archive(&staging)?,
                        _ => resolve_oci_layout(&staging, tag)?,
                    };
                    let digest = resolved.digest.clone();
                    let image = self.unpack_unless_cached(resolved)?;
                    archive_digests.insert(key, digest);
                    Ok(image)
                });
                let _ = fs::remove_dir_all(&staging);
                result
            }
        }
    }

    /// The cached image of `digest`, if it is unpacked.
    fn cached(&self, digest: &str) -> Result<Option<Image>, ImageError> {
        let dir = self.image_dir(digest);
        let Ok(text) = fs::read(dir.join(RUN_CONFIG_FILE)) else {
            return Ok(None);
        };
        let config: ImageRunConfig = serde_json::from_slice(&text).map_err(|e| {
            ImageError::Invalid(format!(
                "cached image {} is damaged ({e}); delete {} and start again",
                digest,
                dir.display()
            ))
        })?;
        Ok(Some(Image {
            digest: digest.to_string(),
            rootfs: dir.join(ROOTFS_DIR),
            config,
            unpacked_now: false,
        }))
    }

    fn image_dir(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join(IMAGES_DIR).join(hex)
    }

    fn scratch_dir(&self, what: &str) -> Result<PathBuf, ImageError> {
        let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join(SCRATCH_DIR)
            .join(format!("{what}-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|source| ImageError::Cache {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    fn unpack_unless_cached(&self, resolved: Resolved) -> Result<Image, ImageError> {
        if let Some(image) = self.cached(&resolved.digest)? {
            return Ok(image);
        }
        let scratch = self.scratch_dir("unpack")?;
        let result = self.unpack_into(&resolved, &scratch);
        if result.is_err() {
            let _ = fs::remove_dir_all(&scratch);
        }
        result?;
        let dir = self.image_dir(&resolved.digest);
        let cache_error = |path: &Path, source| ImageError::Cache {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(|e| cache_error(parent, e))?;
        }
        // A leftover of a crash between the rename and nothing else: replace it.
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&scratch, &dir).map_err(|e| cache_error(&dir, e))?;
        tracing::info!(digest = %resolved.digest, layers = resolved.layers.len(), "image unpacked");
        Ok(Image {
            digest: resolved.digest,
            rootfs: dir.join(ROOTFS_DIR),
            config: resolved.config,
            unpacked_now: true,
        })
    }

    fn unpack_into(&self, resolved: &Resolved, scratch: &Path) -> Result<(), ImageError> {
        let rootfs = scratch.join(ROOTFS_DIR);
        fs::create_dir_all(&rootfs).map_err(|source| ImageError::Cache {
            path: rootfs.clone(),
            source,
        })?;
        let count = resolved.layers.len();
        for (index, layer) in resolved.layers.iter().enumerate() {
            let what = format!("layer {} of {count}", index + 1);
            let digest = layer
                .stored
                .as_ref()
                .map(|(digest, _)| digest.clone())
                .or_else(|| layer.diff_id.clone())
                .unwrap_or_else(|| layer.path.display().to_string());
            if let Some((digest, size)) = &layer.stored {
                verify_blob(&layer.path, digest, *size, &what)?;
            }
            apply_layer(&layer.path, &rootfs, layer.diff_id.as_deref()).map_err(|problem| {
                ImageError::Layer {
                    what: what.clone(),
                    digest: digest.clone(),
                    problem,
                }
            })?;
        }
        let config =
            serde_json::to_vec_pretty(&resolved.config).expect("the run config serializes");
        let path = scratch.join(RUN_CONFIG_FILE);
        fs::write(&path, config).map_err(|source| ImageError::Cache { path, source })
    }
}

/// Unpacks the tar file `archive` into `dir`.
fn extract_archive(archive: &Path, dir: &Path) -> Result<(), ImageError> {
    let file = File::open(archive).map_err(|source| ImageError::Read {
        what: "image archive",
        path: archive.to_path_buf(),
        source,
    })?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    tar.set_overwrite(true);
    tar.unpack(dir).map_err(|e| {
        ImageError::Invalid(format!(
            "image archive {} does not unpack: {e} (is it a complete tar file?)",
            archive.display()
        ))
    })
}

/// `sha256:<hex>` of `bytes`.
fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The blob file of `digest` in the OCI layout `dir`.
fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let (algorithm, hex) = digest.split_once(':').ok_or_else(|| {
        ImageError::Invalid(format!("digest {digest:?} is not like \"sha256:<hex>\""))
    })?;
    if algorithm != "sha256" {
        return Err(ImageError::Invalid(format!(
            "digest {digest}: only sha256 digests are supported"
        )));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageError::Invalid(format!(
            "digest {digest:?} does not hold 64 hex digits"
        )));
    }
    Ok(dir.join("blobs").join(algorithm).join(hex))
}

/// Reads a small JSON blob, checking its digest and size.
fn read_verified_json(
    dir: &Path,
    digest: &str,
    size: u64,
    what: &'static str,
) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(dir, digest)?;
    let bytes = read_limited(&path, what)?;
    if bytes.len() as u64 != size {
        return Err(ImageError::Mismatch {
            what: what.to_string(),
            digest: digest.to_string(),
            problem: format!("{} bytes where the descriptor says {size}", bytes.len()),
        });
    }
    let actual = sha256_of(&bytes);
    if actual != digest {
        return Err(ImageError::Mismatch {
            what: what.to_string(),
            digest: digest.to_string(),
            problem: format!("content hashes to {actual}"),
        });
    }
    Ok(bytes)
}

fn read_limited(path: &Path, what: &'static str) -> Result<Vec<u8>, ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImageError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(ImageError::Invalid(format!(
            "{what} {} is over {MAX_JSON_BYTES} bytes; this is not an image document",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Checks a layer blob's size and digest by reading it once.
fn verify_blob(path: &Path, digest: &str, size: u64, what: &str) -> Result<(), ImageError> {
    let file = File::open(path).map_err(|e| ImageError::Mismatch {
        what: what.to_string(),
        digest: digest.to_string(),
        problem: format!("blob {} cannot be read: {e}", path.display()),
    })?;
    let mut hasher = HashingReader::new(file);
    io::copy(&mut hasher, &mut io::sink()).map_err(|e| ImageError::Mismatch {
        what: what.to_string(),
        digest: digest.to_string(),
        problem: format!("blob {} cannot be read: {e}", path.display()),
    })?;
    let (actual, length) = hasher.finish();
    if length != size {
        return Err(ImageError::Mismatch {
            what: what.to_string(),
            digest: digest.to_string(),
            problem: format!("{length} bytes where the manifest says {size}"),
        });
    }
    if actual != digest {
        return Err(ImageError::Mismatch {
            what: what.to_string(),
            digest: digest.to_string(),
            problem: format!("content hashes to {actual}"),
        });
    }
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Invalid(format!("{what} is not valid: {e}")))
}

/// Picks the manifest of `tag` in the OCI layout `dir` and reads what it names.
fn resolve_oci_layout(dir: &Path, tag: Option<&str>) -> Result<Resolved, ImageError> {
    if !dir.join("oci-layout").is_file() {
        return Err(ImageError::Invalid(format!(
            "{} is not an OCI image layout (no oci-layout file); export one with e.g. `skopeo copy docker-daemon:IMG oci:DIR:TAG`",
            dir.display()
        )));
    }
    let index: ImageIndex = parse_json(
        &read_limited(&dir.join("index.json"), "image index")?,
        "index.json",
    )?;
    let manifests = index.manifests();
    let tag_of = |descriptor: &oci_spec::image::Descriptor| {
        descriptor
            .annotations()
            .as_ref()
            .and_then(|annotations| annotations.get(REF_NAME_ANNOTATION).cloned())
    };
    let chosen = match tag {
        Some(tag) => manifests
            .iter()
            .find(|descriptor| tag_of(descriptor).as_deref() == Some(tag))
            .ok_or_else(|| {
                let tags: Vec<String> = manifests.iter().filter_map(tag_of).collect();
                ImageError::Invalid(format!(
                    "{} has no image tagged {tag:?}; its tags are {tags:?}",
                    dir.display()
                ))
            })?,
        None => match manifests.as_slice() {
            [only] => only,
            _ => {
                let tags: Vec<String> = manifests.iter().filter_map(tag_of).collect();
                return Err(ImageError::Invalid(format!(
                    "{} holds {} images: name one with \":TAG\" (tags: {tags:?})",
                    dir.display(),
                    manifests.len()
                )));
            }
        },
    };
    let manifest_digest = chosen.digest().to_string();
    let manifest_bytes = read_verified_json(dir, &manifest_digest, chosen.size(), "manifest")?;
    let manifest: ImageManifest =
        parse_json(&manifest_bytes, "the image manifest").map_err(|e| {
            ImageError::Invalid(format!(
                "{e} (a multi-platform index is not supported: export a single-platform image)"
            ))
        })?;
    let config_digest = manifest.config().digest().to_string();
    let config_bytes = read_verified_json(dir, &config_digest, manifest.config().size(), "config")?;
    let (config, diff_ids) = run_config_of(&config_bytes)?;
    let layers = manifest.layers();
    if layers.len() > MAX_LAYERS {
        return Err(ImageError::Invalid(format!(
            "the image has {} layers; at most {MAX_LAYERS} are supported",
            layers.len()
        )));
    }
    if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
        return Err(ImageError::Invalid(format!(
            "the config lists {} diff ids for {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    let layers = layers
        .iter()
        .enumerate()
        .map(|(index, descriptor)| {
            let digest = descriptor.digest().to_string();
            Ok(LayerBlob {
                path: blob_path(dir, &digest)?,
                stored: Some((digest, descriptor.size())),
                diff_id: diff_ids.get(index).cloned(),
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    Ok(Resolved {
        digest: manifest_digest,
        config,
        layers,
    })
}

/// One entry of a `docker save` archive's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    layers: Vec<String>,
}

/// Reads the image of an extracted `docker save` archive.
fn resolve_docker_archive(dir: &Path) -> Result<Resolved, ImageError> {
    let entries: Vec<DockerManifestEntry> = parse_json(
        &read_limited(&dir.join("manifest.json"), "docker archive manifest")?,
        "manifest.json of the docker archive",
    )?;
    let entry = match entries.as_slice() {
        [only] => only,
        _ => {
            return Err(ImageError::Invalid(format!(
                "the docker archive holds {} images; save one image per archive",
                entries.len()
            )))
        }
    };
    let inside = |name: &str| -> Result<PathBuf, ImageError> {
        let relative = Path::new(name);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(ImageError::Invalid(format!(
                "the docker archive names {name:?}, a path outside the archive"
            )));
        }
        Ok(dir.join(relative))
    };
    let config_bytes = read_limited(&inside(&entry.config)?, "image config")?;
    let digest = sha256_of(&config_bytes);
    // The config's file is named by its digest (`<hex>.json`, or `blobs/sha256/<hex>`).
    let named_hex = Path::new(&entry.config)
        .file_name()
        .and_then(|name| name.to_str())
        .map(|name| name.trim_end_matches(".json").to_string())
        .unwrap_or_default();
    if named_hex.len() == 64 && format!("sha256:{named_hex}") != digest {
        return Err(ImageError::Mismatch {
            what: "config".into(),
            digest: format!("sha256:{named_hex}"),
            problem: format!("content hashes to {digest}"),
        });
    }
    let (config, diff_ids) = run_config_of(&config_bytes)?;
    if entry.layers.len() > MAX_LAYERS {
        return Err(ImageError::Invalid(format!(
            "the image has {} layers; at most {MAX_LAYERS} are supported",
            entry.layers.len()
        )));
    }
    if diff_ids.len() != entry.layers.len() {
        return Err(ImageError::Invalid(format!(
            "the config lists {} diff ids for {} layers",
            diff_ids.len(),
            entry.layers.len()
        )));
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| {
            Ok(LayerBlob {
                path: inside(name)?,
                stored: None,
                diff_id: Some(diff_id),
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    Ok(Resolved {
        digest,
        config,
        layers,
    })
}

/// The run config and the layers' diff ids of an image config document.
fn run_config_of(bytes: &[u8]) -> Result<(ImageRunConfig, Vec<String>), ImageError> {
    let image: ImageConfiguration = parse_json(bytes, "the image config")?;
    let diff_ids = image.rootfs().diff_ids().to_vec();
    let config = image
        .config()
        .as_ref()
        .map(|config| ImageRunConfig {
            entrypoint: config.entrypoint().clone().unwrap_or_default(),
            cmd: config.cmd().clone().unwrap_or_default(),
            env: config.env().clone().unwrap_or_default(),
            working_dir: config.working_dir().clone().filter(|dir| !dir.is_empty()),
            user: config.user().clone().filter(|user| !user.is_empty()),
        })
        .unwrap_or_default();
    Ok((config, diff_ids))
}

/// A reader that hashes (sha256) and counts what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    length: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            length: 0,
        }
    }

    fn finish(self) -> (String, u64) {
        (format!("sha256:{:x}", self.hasher.finalize()), self.length)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.length += n as u64;
        Ok(n)
    }
}

/// Applies the layer tar (plain or gzip) at `path` onto `rootfs`, checking the
/// uncompressed stream against `diff_id` when given.
fn apply_layer(path: &Path, rootfs: &Path, diff_id: Option<&str>) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut buffered = BufReader::new(file);
    let magic = buffered
        .fill_buf()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let stream: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err("zstd-compressed layers are not supported; export the image with gzip or uncompressed layers".into());
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(HashingReader::new(stream));
    archive.set_overwrite(true);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    let rootfs_real = rootfs
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", rootfs.display()))?;
    let mut written: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar stream: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("bad tar entry (truncated?): {e}"))?;
        let raw_path = entry
            .path()
            .map_err(|e| format!("bad entry path: {e}"))?
            .into_owned();
        let relative = clean_relative(&raw_path)?;
        let Some(name) = relative.file_name().and_then(|name| name.to_str()) else {
            continue; // the root directory itself
        };
        if name == OPAQUE_WHITEOUT {
            let dir = inside_rootfs(&rootfs_real, relative.parent().unwrap_or(Path::new("")))?;
            empty_lower_entries(&dir, &relative, &written)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let dir = inside_rootfs(&rootfs_real, relative.parent().unwrap_or(Path::new("")))?;
            remove_any(&dir.join(hidden))?;
            continue;
        }
        let target = rootfs.join(&relative);
        // A directory replaces a file and a file replaces a directory of lower layers.
        if let Ok(existing) = fs::symlink_metadata(&target) {
            let is_dir = entry.header().entry_type().is_dir();
            if existing.is_dir() != is_dir || (!is_dir && existing.file_type().is_symlink()) {
                remove_any(&target)?;
            }
        }
        entry
            .unpack_in(rootfs)
            .map_err(|e| format!("cannot unpack {}: {}", relative.display(), error_chain(&e)))?;
        written.insert(relative);
    }
    let mut hashing = archive.into_inner();
    // The tar's end marker may come before the stream's end: hash all of it.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| format!("bad stream (truncated?): {e}"))?;
    let (actual, _) = hashing.finish();
    if let Some(diff_id) = diff_id {
        if actual != diff_id {
            return Err(format!(
                "uncompressed content hashes to {actual}, the config's diff id is {diff_id}; the image is corrupt or truncated"
            ));
        }
    }
    Ok(())
}

/// An error and its sources, `: `-separated (the tar crate puts the cause in the source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `path` without `./` or a leading `/`; an error for `..`.
fn clean_relative(path: &Path) -> Result<PathBuf, String> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("entry {} leaves the image's root", path.display()))
            }
        }
    }
    Ok(clean)
}

/// `rootfs/relative`, after checking that it resolves (symlinks followed) inside `rootfs`.
fn inside_rootfs(rootfs_real: &Path, relative: &Path) -> Result<PathBuf, String> {
    let dir = rootfs_real.join(relative);
    match dir.canonicalize() {
        Ok(real) if real.starts_with(rootfs_real) => Ok(real),
        Ok(real) => Err(format!(
            "whiteout in {} resolves to {}, outside the image's root",
            relative.display(),
            real.display()
        )),
        // Nothing below to hide.
        Err(_) => Ok(dir),
    }
}

/// Empties `dir` of whatever lower layers put there (an opaque whiteout).
fn empty_lower_entries(
    dir: &Path,
    marker: &Path,
    written: &HashSet<PathBuf>,
) -> Result<(), String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let layer_dir = marker.parent().unwrap_or(Path::new(""));
    for entry in entries.flatten() {
        if !written.contains(&layer_dir.join(entry.file_name())) {
            remove_any(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes a file, symlink or directory tree (never following a symlink); absent is fine.
fn remove_any(path: &Path) -> Result<(), String> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(|e| format!("cannot remove {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside_the_root() {
        assert_eq!(
            clean_relative(Path::new("./etc/passwd")).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            clean_relative(Path::new("/bin/sh")).unwrap(),
            PathBuf::from("bin/sh")
        );
        assert!(clean_relative(Path::new("../escape")).is_err());
        assert!(clean_relative(Path::new("a/../../b")).is_err());
    }

    #[test]
    fn blob_paths_need_sha256_hex() {
        let dir = Path::new("/x");
        let hex = "a".repeat(64);
        assert_eq!(
            blob_path(dir, &format!("sha256:{hex}")).unwrap(),
            PathBuf::from(format!("/x/blobs/sha256/{hex}"))
        );
        assert!(blob_path(dir, "sha512:abc").is_err());
        assert!(blob_path(dir, "sha256:../../etc").is_err());
    }
}
