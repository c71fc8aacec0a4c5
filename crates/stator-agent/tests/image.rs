//! Images from local sources: OCI layouts, OCI archives and `docker save` archives are
//! unpacked once per digest, whiteouts are honoured, and a corrupt or truncated layer
//! is refused with an error naming it. Needs nothing installed: the images are built
//! here.

use std::fs;
use std::path::Path;

use stator_agent::container::build::{
    blob_file, pack_directory, tar_of_entries, write_docker_archive, write_oci_layout,
};
use stator_agent::container::{ImageCache, ImageRunConfig};
use stator_api::container::ImageRef;
use tempfile::TempDir;

fn run_config() -> ImageRunConfig {
    ImageRunConfig {
        cmd: vec!["/bin/sh".into()],
        env: vec!["GREETING=hello".into()],
        working_dir: Some("/srv".into()),
        ..Default::default()
    }
}

/// Two layers: the second deletes `a/x` (whiteout), hides all of `b/` from the first
/// (opaque whiteout) while adding `b/new`, and replaces `c`.
fn layered_tars() -> Vec<Vec<u8>> {
    let lower = tar_of_entries(&[
        ("a/", b""),
        ("a/x", b"x"),
        ("a/y", b"y"),
        ("b/", b""),
        ("b/old", b"old"),
        ("c", b"v1"),
    ])
    .unwrap();
    let upper = tar_of_entries(&[
        ("a/.wh.x", b""),
        ("b/", b""),
        ("b/.wh..wh..opq", b""),
        ("b/new", b"new"),
        ("c", b"v2"),
    ])
    .unwrap();
    vec![lower, upper]
}

fn oci_ref(dir: &Path, tag: &str) -> ImageRef {
    ImageRef::parse(&format!("oci:{}:{tag}", dir.display())).unwrap()
}

fn assert_layered_rootfs(rootfs: &Path) {
    assert!(!rootfs.join("a/x").exists(), "whiteout of a/x not applied");
    assert_eq!(fs::read(rootfs.join("a/y")).unwrap(), b"y");
    assert!(
        !rootfs.join("b/old").exists(),
        "opaque whiteout of b/ not applied"
    );
    assert_eq!(fs::read(rootfs.join("b/new")).unwrap(), b"new");
    assert_eq!(fs::read(rootfs.join("c")).unwrap(), b"v2");
    assert!(!rootfs.join("a/.wh.x").exists() && !rootfs.join("b/.wh..wh..opq").exists());
}

#[test]
fn an_oci_layout_unpacks_once_with_whiteouts_applied() {
    let work = TempDir::new().unwrap();
    let layout = work.path().join("layout");
    for compress in [true, false] {
        let _ = fs::remove_dir_all(&layout);
        let digest =
            write_oci_layout(&layout, "1.0", &layered_tars(), &run_config(), compress).unwrap();
        let cache = ImageCache::new(work.path().join(format!("cache-{compress}")));
        let image = cache
            .prepare(&oci_ref(&layout, "1.0"), Path::new("/"))
            .unwrap();
        assert_eq!(image.digest, digest);
        assert!(image.unpacked_now);
        assert!(image.rootfs.starts_with(cache.root()));
        assert_layered_rootfs(&image.rootfs);
        assert_eq!(image.config, run_config());

        let again = cache
            .prepare(&oci_ref(&layout, "1.0"), Path::new("/"))
            .unwrap();
        assert!(!again.unpacked_now, "the second start must use the cache");
        assert_eq!(again.rootfs, image.rootfs);
    }
}

#[test]
fn archives_unpack_like_layouts() {
    let work = TempDir::new().unwrap();
    let layout = work.path().join("layout");
    let digest = write_oci_layout(&layout, "v2", &layered_tars(), &run_config(), true).unwrap();
    let archive = work.path().join("image.tar");
    pack_directory(&layout, &archive).unwrap();
    let cache = ImageCache::new(work.path().join("cache"));
    let reference = ImageRef::parse(&format!("oci-archive:{}:v2", archive.display())).unwrap();
    let image = cache.prepare(&reference, Path::new("/")).unwrap();
    assert_eq!(image.digest, digest);
    assert_layered_rootfs(&image.rootfs);
    assert!(
        !cache
            .prepare(&reference, Path::new("/"))
            .unwrap()
            .unpacked_now
    );

    let docker = work.path().join("docker.tar");
    let id = write_docker_archive(&docker, &layered_tars(), &run_config()).unwrap();
    let reference = ImageRef::parse(&format!("docker-archive:{}", docker.display())).unwrap();
    let image = cache.prepare(&reference, Path::new("/")).unwrap();
    assert_eq!(image.digest, id);
    assert_layered_rootfs(&image.rootfs);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
}

#[test]
fn a_corrupt_or_truncated_layer_is_refused_naming_it() {
    let work = TempDir::new().unwrap();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, "1", &layered_tars(), &run_config(), true).unwrap();
    let manifest: serde_json::Value = {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        serde_json::from_slice(&fs::read(blob_file(&layout, &digest)).unwrap()).unwrap()
    };
    let second_layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = blob_file(&layout, &second_layer);
    let original = fs::read(&blob).unwrap();

    // Truncated: half the blob.
    fs::write(&blob, &original[..original.len() / 2]).unwrap();
    let cache = ImageCache::new(work.path().join("cache"));
    let error = cache
        .prepare(&oci_ref(&layout, "1"), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("layer 2 of 2") && error.contains(&second_layer),
        "{error}"
    );

    // Same size, one byte flipped.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    fs::write(&blob, &flipped).unwrap();
    let error = cache
        .prepare(&oci_ref(&layout, "1"), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("layer 2 of 2") && error.contains("hashes to"),
        "{error}"
    );

    // Nothing half-unpacked was left where a later start would take it for the image.
    fs::write(&blob, &original).unwrap();
    assert!(
        cache
            .prepare(&oci_ref(&layout, "1"), Path::new("/"))
            .unwrap()
            .unpacked_now
    );

    // A docker archive whose layer does not match the config's diff id.
    let docker = work.path().join("docker.tar");
    let mut tars = layered_tars();
    write_docker_archive(&docker, &tars, &run_config()).unwrap();
    let bytes = fs::read(&docker).unwrap();
    tars[0] = tar_of_entries(&[("evil", b"!")]).unwrap();
    let good_config_with_bad_layer = {
        // Rebuild the archive with the first layer swapped but the old config.
        let other = work.path().join("other.tar");
        write_docker_archive(&other, &tars, &run_config()).unwrap();
        let mut original = tar::Archive::new(&bytes[..]);
        let mut swapped = tar::Archive::new(fs::File::open(&other).unwrap());
        let layer0: Vec<u8> = swapped
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|entry| entry.path().unwrap().to_str() == Some("0/layer.tar"))
            .map(|mut entry| {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                data
            })
            .unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        for entry in original.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if path.to_str() == Some("0/layer.tar") {
                data = layer0.clone();
            }
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, &path, &data[..]).unwrap();
        }
        builder.into_inner().unwrap()
    };
    fs::write(&docker, good_config_with_bad_layer).unwrap();
    let reference = ImageRef::parse(&format!("docker-archive:{}", docker.display())).unwrap();
    let error = cache
        .prepare(&reference, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("layer 1 of 2") && error.contains("diff id"),
        "{error}"
    );
}

#[test]
fn a_missing_tag_or_image_says_what_exists() {
    let work = TempDir::new().unwrap();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, "1.0", &layered_tars(), &run_config(), true).unwrap();
    let cache = ImageCache::new(work.path().join("cache"));
    let error = cache
        .prepare(&oci_ref(&layout, "2.0"), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("\"2.0\"") && error.contains("1.0"),
        "{error}"
    );
    let error = cache
        .prepare(&oci_ref(&work.path().join("nowhere"), "1"), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("not an OCI image layout"), "{error}");
}

#[test]
fn a_layer_cannot_write_outside_the_rootfs() {
    let work = TempDir::new().unwrap();
    let layout = work.path().join("layout");
    // The tar crate refuses `..` when building, so write the escaping name by hand.
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(1);
    header.set_mode(0o644);
    let name = b"../escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    let mut evil = Vec::new();
    evil.extend_from_slice(header.as_bytes());
    evil.extend_from_slice(&[b'!'; 512][..512]);
    evil.extend_from_slice(&[0u8; 1024]);
    write_oci_layout(&layout, "1", &[evil], &run_config(), false).unwrap();
    let cache = ImageCache::new(work.path().join("cache"));
    let error = cache
        .prepare(&oci_ref(&layout, "1"), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("layer 1 of 1") && error.contains("leaves"),
        "{error}"
    );
    assert!(!work.path().join("cache/escaped").exists());
}
