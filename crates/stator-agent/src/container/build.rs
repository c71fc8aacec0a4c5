//! Builds small images locally, for tests, benchmarks and examples: layer tars from
//! directories, written as an OCI image layout (optionally packed as an `oci-archive`)
//! or as a `docker save` archive. Nothing here touches the network.
//!
//! [`busybox_rootfs`] makes a minimal root file system from Debian's `busybox-static`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::image::ImageRunConfig;

/// Where Debian's `busybox-static` installs its binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// Applets linked in [`busybox_rootfs`]: what the examples and tests call.
pub const BUSYBOX_APPLETS: [&str; 16] = [
    "sh", "echo", "cat", "sleep", "ls", "mkdir", "rm", "touch", "httpd", "head", "dd", "env", "id",
    "hostname", "true", "wc",
];

/// A tag-able image document: its bytes and digest.
struct Blob {
    bytes: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        Self { bytes, digest }
    }

    fn hex(&self) -> &str {
        &self.digest["sha256:".len()..]
    }
}

/// Makes `dir` a minimal root: `/bin/busybox` (static) and links for
/// [`BUSYBOX_APPLETS`], plus empty `/tmp`, `/proc`, `/dev`, `/sys`, `/etc`.
/// Fails (`NotFound`) when busybox-static is not installed.
pub fn busybox_rootfs(dir: &Path) -> io::Result<()> {
    let busybox = Path::new(BUSYBOX_PATH);
    if !busybox.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "busybox is not installed (apt-get install busybox-static)",
        ));
    }
    fs::create_dir_all(dir.join("bin"))?;
    for empty in ["tmp", "proc", "dev", "sys", "etc"] {
        fs::create_dir_all(dir.join(empty))?;
    }
    fs::copy(busybox, dir.join("bin/busybox"))?;
    for applet in BUSYBOX_APPLETS {
        let link = dir.join("bin").join(applet);
        if fs::symlink_metadata(&link).is_err() {
            symlink("busybox", link)?;
        }
    }
    Ok(())
}

/// A tar of everything under `dir` (paths relative to it; symlinks kept as links).
pub fn tar_directory(dir: &Path) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

/// A tar with one entry per `(path, contents)`; a path ending in `/` is a directory.
pub fn tar_of_entries(entries: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in entries {
        let mut header = new_header();
        if let Some(dir) = path.strip_suffix('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, dir, io::empty())?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(contents.len() as u64);
            builder.append_data(&mut header, path, *contents)?;
        }
    }
    builder.into_inner()
}

/// A header owned by root with a fixed time (so images built twice are identical).
fn new_header() -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// Gzip of `bytes` (fast level: test images are about speed, not size).
pub fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes)?;
    encoder.finish()
}

fn config_document(config: &ImageRunConfig, diff_ids: &[String]) -> Blob {
    let mut run = serde_json::Map::new();
    if !config.entrypoint.is_empty() {
        run.insert("Entrypoint".into(), json!(config.entrypoint));
    }
    if !config.cmd.is_empty() {
        run.insert("Cmd".into(), json!(config.cmd));
    }
    if !config.env.is_empty() {
        run.insert("Env".into(), json!(config.env));
    }
    if let Some(dir) = &config.working_dir {
        run.insert("WorkingDir".into(), json!(dir));
    }
    if let Some(user) = &config.user {
        run.insert("User".into(), json!(user));
    }
    let document = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    Blob::new(serde_json::to_vec(&document).expect("JSON serializes"))
}

/// Writes an OCI image layout to `out` holding one image tagged `tag`, whose layers are
/// the given tars (gzip-compressed when `compress`). Returns the manifest's digest.
pub fn write_oci_layout(
    out: &Path,
    tag: &str,
    layer_tars: &[Vec<u8>],
    config: &ImageRunConfig,
    compress: bool,
) -> io::Result<String> {
    let blobs_dir = out.join("blobs/sha256");
    fs::create_dir_all(&blobs_dir)?;
    let write_blob = |blob: &Blob| fs::write(blobs_dir.join(blob.hex()), &blob.bytes);
    let mut diff_ids = Vec::new();
    let mut layer_descriptors = Vec::new();
    for tar in layer_tars {
        diff_ids.push(Blob::new(tar.clone()).digest);
        let (blob, media_type) = if compress {
            (
                Blob::new(gzip(tar)?),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (
                Blob::new(tar.clone()),
                "application/vnd.oci.image.layer.v1.tar",
            )
        };
        write_blob(&blob)?;
        layer_descriptors.push(json!({
            "mediaType": media_type, "digest": blob.digest, "size": blob.bytes.len()
        }));
    }
    let config_blob = config_document(config, &diff_ids);
    write_blob(&config_blob)?;
    let manifest = Blob::new(
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_blob.digest, "size": config_blob.bytes.len()
            },
            "layers": layer_descriptors,
        }))
        .expect("JSON serializes"),
    );
    write_blob(&manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest, "size": manifest.bytes.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag }
        }]
    });
    fs::write(
        out.join("index.json"),
        serde_json::to_vec(&index).expect("JSON serializes"),
    )?;
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(manifest.digest)
}

/// Packs the directory `layout` (an OCI layout) into the tar file `out`: an
/// `oci-archive`.
pub fn pack_directory(layout: &Path, out: &Path) -> io::Result<()> {
    fs::write(out, tar_directory(layout)?)
}

/// Writes a `docker save` archive of one image to `out`: `manifest.json`, the config
/// as `<hex>.json` and each layer as `<n>/layer.tar`. Returns the image id (the config's
/// digest).
pub fn write_docker_archive(
    out: &Path,
    layer_tars: &[Vec<u8>],
    config: &ImageRunConfig,
) -> io::Result<String> {
    let diff_ids: Vec<String> = layer_tars
        .iter()
        .map(|tar| Blob::new(tar.clone()).digest)
        .collect();
    let config_blob = config_document(config, &diff_ids);
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |path: &str, bytes: &[u8]| {
        let mut header = new_header();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        builder.append_data(&mut header, path, bytes)
    };
    let config_name = format!("{}.json", config_blob.hex());
    append(&config_name, &config_blob.bytes)?;
    let mut layer_names = Vec::new();
    for (n, tar) in layer_tars.iter().enumerate() {
        let name = format!("{n}/layer.tar");
        append(&name, tar)?;
        layer_names.push(name);
    }
    let manifest = json!([{
        "Config": config_name, "RepoTags": ["stator/test:latest"], "Layers": layer_names
    }]);
    append(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("JSON serializes"),
    )?;
    fs::write(out, builder.into_inner()?)?;
    Ok(config_blob.digest)
}

/// The blob file of `digest` in the layout `layout` (to corrupt it in tests).
pub fn blob_file(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}
