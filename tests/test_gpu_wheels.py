"""benchmarks/gpu_wheels.py: Ray's wheel repacked without what training never imports still
installs (pip checks the repacked RECORD), and keeps everything else byte for byte."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_wheels", os.path.join(ROOT, "benchmarks", "gpu_wheels.py"))
gpu_wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_wheels)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
    return f"{name},sha256={digest},{len(data)}\n"


def test_slim_ray_drops_the_unused_folders_and_installs(tmp_path):
    files = {
        "ray/__init__.py": b"__version__ = '0.0.1'\n",
        "ray/train/__init__.py": b"",
        "ray/jars/ray_dist.jar": b"J" * 1000,
        "ray/dashboard/client/build/index.html": b"<html/>",
        "ray/dashboard/head.py": b"# kept: only the web client goes\n",
        "ray/rllib/__init__.py": b"",
        "ray/serve/__init__.py": b"",
        "ray/llm/__init__.py": b"",
        "ray-0.0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: ray\nVersion: 0.0.1\n",
        "ray-0.0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(_record_line(n, d) for n, d in files.items()) + "ray-0.0.1.dist-info/RECORD,,\n"
    wheel = tmp_path / "ray-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("ray-0.0.1.dist-info/RECORD", record)

    gpu_wheels.slim_ray(str(wheel))

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        kept = {n for n in files if not n.startswith(gpu_wheels.RAY_DROP)}
        assert names == kept | {"ray-0.0.1.dist-info/RECORD"}
        assert all(z.read(n) == files[n] for n in kept)
        listed = {ln.split(",", 1)[0] for ln in z.read("ray-0.0.1.dist-info/RECORD").decode().splitlines()}
    assert listed == names
    target = tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (target / "ray" / "dashboard" / "head.py").exists()
    assert not (target / "ray" / "jars").exists() and not (target / "ray" / "rllib").exists()
