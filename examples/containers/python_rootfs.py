#!/usr/bin/env python3
"""Builds a small root file system that runs Python apps: the interpreter running this
script, the shared libraries it and its extension modules load (found with ldd), the
standard-library modules the apps import (found by importing them), and the apps.

    python3 examples/containers/python_rootfs.py ROOTFS examples/apps/game_room.py \\
        examples/apps/stator_sm.py
    python3 examples/containers/make_image.py --rootfs ROOTFS OUT 1 \\
        --env PYTHONHOME=/usr/local --cmd /usr/local/bin/python3 /app/game_room.py

Layout: the interpreter at /usr/local/bin/python3, the modules under
/usr/local/lib/pythonX.Y (and its lib-dynload), the libraries at the paths ldd prints,
the apps in /app; run it with `PYTHONHOME=/usr/local`. Libraries are stripped when
`strip` (binutils) is installed. About 10 MiB with Debian's python3 (against ~30 MiB
for its whole standard library).

Only the modules an app imports at start-up are included: an app importing more
later (inside a function) needs them named with --module.
"""
import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig

PREFIX = "/usr/local"


def imports_of(path):
    """Top-level module names a Python file imports."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def loaded_files(modules):
    """The files of every module loaded by importing `modules` (and the start-up ones)."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {sorted(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values())\n"
        "    if getattr(m, '__file__', None)})))\n"
    )
    output = subprocess.run([sys.executable, "-S", "-c", code], check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output)


def libraries_of(binary):
    """The shared libraries `binary` loads, as ldd names them (the loader included)."""
    output = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    found = []
    for line in output.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            path = parts[parts.index("=>") + 1]
        elif parts and parts[0].startswith("/"):
            path = parts[0]
        else:
            continue
        if os.path.isabs(path):
            found.append(path)
    return found


def copy(source, root, target):
    destination = os.path.join(root, target.lstrip("/"))
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    shutil.copy2(os.path.realpath(source), destination)
    return destination


def strip(path):
    # Debug symbols are most of an unstripped libpython; a failure only costs space.
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-unneeded", path], capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rootfs", help="the directory to write (replaced)")
    parser.add_argument("apps", nargs="+", help="Python files to put in /app")
    parser.add_argument("--module", action="append", default=[],
                        help="another module to include")
    args = parser.parse_args()
    if shutil.which("ldd") is None:
        raise SystemExit("ldd is not installed (it comes with libc-bin)")

    app_names = {os.path.splitext(os.path.basename(app))[0] for app in args.apps}
    # `site` runs at every start (without -S).
    modules = set(args.module) | {"site"}
    for app in args.apps:
        modules |= imports_of(app)
    modules -= app_names

    shutil.rmtree(args.rootfs, ignore_errors=True)
    for directory in ["app", "tmp", "proc", "dev", "sys", "etc", "run"]:
        os.makedirs(os.path.join(args.rootfs, directory), exist_ok=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    platstdlib = os.path.realpath(sysconfig.get_paths()["platstdlib"])
    interpreter = os.path.realpath(sys.executable)
    binaries = [interpreter]
    strip(copy(interpreter, args.rootfs, f"{PREFIX}/bin/python3"))
    for path in loaded_files(modules):
        real = os.path.realpath(path)
        for base in sorted({stdlib, platstdlib}, key=len, reverse=True):
            if real.startswith(base + os.sep):
                relative = os.path.relpath(real, base)
                break
        else:
            # A module outside the standard library (site-packages): keep its path.
            relative = None
        if relative is None:
            copy(real, args.rootfs, real)
        else:
            copy(real, args.rootfs, f"{PREFIX}/lib/{version}/{relative}")
        if real.endswith(".so"):
            binaries.append(real)
    # getpath's landmarks: os.py in lib/pythonX.Y and the lib-dynload directory.
    os.makedirs(os.path.join(args.rootfs, f"{PREFIX.lstrip('/')}/lib/{version}/lib-dynload"),
                exist_ok=True)
    for binary in binaries:
        for library in libraries_of(binary):
            strip(copy(library, args.rootfs, library))
    for app in args.apps:
        copy(app, args.rootfs, f"/app/{os.path.basename(app)}")
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(args.rootfs) for f in files)
    print(f"wrote {args.rootfs}: {size / 1024 / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
