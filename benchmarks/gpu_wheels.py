"""Wheels that let the GPU machine run Ray Train: what its image lacks, small enough to carry.

    python benchmarks/gpu_wheels.py                      # → .whl/ (ignored by git), for Python 3.12
    python benchmarks/gpu_wheels.py --python-version 3.11 --output /tmp/whl311   # for a local dry run

The lent GPU machine (docs: the device tool's KINDS.md) has PyTorch, transformers, pandas, pyarrow,
aiohttp, … but no Ray, and a device call carries at most 64 MiB with the working tree. Ray's
wheel is 79 MB, 34 MB of it a Java jar; this downloads the wheels the image lacks for Ray Train
(Ray itself, jsonschema, pydantic, tensorboardX and what they need, at the versions this checkout's
environment runs), and repacks Ray without what training never imports (the Java jar, the
dashboard's web client, RLlib, Serve, the LLM libraries): about 42 MB. MeCab (fugashi, ipadic) is
not among them: the GPU check trains on instance shards made here.

`benchmarks/gpu_check.sh` installs them into /tmp/site when `.whl/` travels (`carry: [".whl",
"demo_output/instances", "demo_output/tokenizer"]`) and runs `jobs/pretrain.py --use-gpu`.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Not in the GPU image (its package list, read 2026-11-17), needed to import and run Ray Train.
MISSING = (
    "ray",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "tensorboardX",
)
# Folders of Ray's wheel that Ray Train never imports.
RAY_DROP = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/", "ray/llm/")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
)
CARRY_LIMIT = 64 * 2**20


def download(name: str, version: str, python: str, dest: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python, "--implementation", "cp", "-d", dest, f"{name}=={version}"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd, check=True)


def slim_ray(path: str) -> None:
    """Rewrite Ray's wheel in place without RAY_DROP (RECORD rewritten to match)."""
    tmp = path + ".tmp"
    with (
        zipfile.ZipFile(path) as src,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst,
    ):
        kept = [i for i in src.infolist() if not i.filename.startswith(RAY_DROP)]
        record = next(i for i in kept if i.filename.endswith(".dist-info/RECORD"))
        names = {i.filename for i in kept}
        for info in kept:
            data = src.read(info)
            if info is record:
                lines = data.decode().splitlines(keepends=True)
                data = "".join(ln for ln in lines if ln.split(",", 1)[0] in names).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=os.path.join(ROOT, ".whl"))
    ap.add_argument("--python-version", default="3.12", help="the GPU image's Python (default 3.12)")
    a = ap.parse_args()

    versions = {}
    for name in MISSING:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            sys.exit(
                f"{name} is not installed here: run `make install` first (its version is taken from here)"
            )
    os.makedirs(a.output, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in versions.items():
            download(name, version, a.python_version, tmp)
        for path in glob.glob(os.path.join(tmp, "ray-*.whl")):
            before = os.path.getsize(path)
            slim_ray(path)
            print(
                f"ray: {before / 1e6:.1f} MB → {os.path.getsize(path) / 1e6:.1f} MB without {', '.join(RAY_DROP)}"
            )
        for old in glob.glob(os.path.join(a.output, "*.whl")):
            os.remove(old)
        for path in sorted(glob.glob(os.path.join(tmp, "*.whl"))):
            shutil.move(path, a.output)
    total = 0
    for path in sorted(glob.glob(os.path.join(a.output, "*.whl"))):
        size = os.path.getsize(path)
        total += size
        print(f"  {os.path.basename(path):<70} {size / 1e6:6.1f} MB")
    print(
        f"{total / 1e6:.1f} MB in {a.output} (a device call carries {CARRY_LIMIT / 2**20:.0f} MiB with the tree)"
    )
    if total > CARRY_LIMIT * 0.85:
        sys.exit("too large to travel with the working tree")


if __name__ == "__main__":
    main()
