#!/usr/bin/env python3
"""Builds a small OCI image layout locally, with nothing but Python's standard library.

    python3 examples/containers/make_image.py --busybox examples/containers/busybox 1
        a root file system of Debian's busybox-static (apt-get install busybox-static),
        written as the OCI layout directory examples/containers/busybox tagged "1":
        use it as image = "oci:examples/containers/busybox:1".
    python3 examples/containers/make_image.py --rootfs DIR OUT TAG [--cmd ARG ...]
        packs any directory as the image's single layer.
    ... --env KEY=VALUE  sets a variable in the image's config (repeatable).
    ... --archive FILE   also packs the layout as an oci-archive tar file.
    A Python app's root: see python_rootfs.py (the game room image).

The layout has one gzip layer, a config (cmd, PATH) and a manifest, each named by its
sha256 digest, as `skopeo copy ... oci:OUT:TAG` would write them.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "echo", "cat", "sleep", "ls", "mkdir", "rm", "touch", "httpd", "head",
           "dd", "env", "id", "hostname", "true", "wc"]


def busybox_rootfs(root):
    if not os.path.isfile(BUSYBOX):
        raise SystemExit("busybox is not installed: apt-get install busybox-static")
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin/busybox"))
    for applet in APPLETS:
        link = os.path.join(root, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(out, "blobs/sha256"), exist_ok=True)
    with open(os.path.join(out, "blobs/sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--busybox", action="store_true", help="a busybox-static root")
    source.add_argument("--rootfs", help="a directory to pack as the root")
    parser.add_argument("out", help="the OCI layout directory to write")
    parser.add_argument("tag")
    parser.add_argument("--cmd", nargs="+", default=["sh"], help="the image's Cmd")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable of the image (repeatable)")
    parser.add_argument("--archive", help="also write the layout as this oci-archive")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.rootfs
        if args.busybox:
            root = os.path.join(scratch, "rootfs")
            busybox_rootfs(root)
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(root, arcname=".")
        layer = layer.getvalue()
        diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
        shutil.rmtree(args.out, ignore_errors=True)
        layer_desc = blob(args.out, gzip.compress(layer, compresslevel=6, mtime=0))
        layer_desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        config = {
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": args.cmd, "Env": ["PATH=/bin"] + args.env},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        config_desc = blob(args.out, json.dumps(config).encode())
        config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json"
        manifest = {"schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = blob(args.out, json.dumps(manifest).encode())
        manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
        manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": args.tag}
        with open(os.path.join(args.out, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, f)
        with open(os.path.join(args.out, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
    if args.archive:
        with tarfile.open(args.archive, "w") as tar:
            for name in sorted(os.listdir(args.out)):
                tar.add(os.path.join(args.out, name), arcname=name)
    print(f"wrote oci:{args.out}:{args.tag} ({manifest_desc['digest']})")


if __name__ == "__main__":
    main()
