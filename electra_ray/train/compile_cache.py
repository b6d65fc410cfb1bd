"""The fast step's compiled graphs kept in the run folder, so that a worker on a new node starts warm.

``torch.compile`` keeps what it compiles on the node's local disk (``/tmp/torchinductor_$USER``):
a worker restarted on the same node compiles the fast step from there in seconds, but one on a
node that replaced a lost node, or a run resumed on a new cluster, compiles from scratch (the
``small`` step on an H200: 77 s cold, 19 s from the local cache; 2026-11-30). Here the graphs
travel with the run: each worker loads ``compile_cache/torch-<version>-<device>-<variant>.bin``
from the run folder (local or s3://) before compiling, and rank 0 writes it after compiling when
the file did not hold all the graphs it used.

The file is torch's own portable cache (``torch.compiler.save_cache_artifacts``: Dynamo's and
Inductor's compiled graphs, and on GPUs the Triton kernels bundled with them). Torch writes back
only the graphs a process used, so each variant of the step (``FastStep.variant``: the micro-batch
shape, the masked slots, and the options that change the graphs: the second stream, the fused
projections, the graph cut along gradient buckets) has a file of its own. An elastic run whose
step changes with the worker count (one GPU worker runs the second stream, several cut the graph
instead) keeps one file for each.

Nothing here may stop training: a missing, unreadable or foreign file, or storage that cannot be
reached, costs the compile time and a printed note, never the run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import torch

from electra_ray import storage

FOLDER = "compile_cache"


def device_tag(device: torch.device) -> str:
    """``cpu``, or the GPU's name and compute capability, e.g. ``NVIDIA-H200-sm90``."""
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)}-sm{major}{minor}"


def cache_file(run: str, device: torch.device, variant: str) -> str:
    """The cache file (a URI) in the run folder ``run`` for this torch build, device kind and step
    ``variant`` (``FastStep.variant``: the shapes and options that decide the graphs)."""
    name = re.sub(r"[^A-Za-z0-9.+_-]+", "-", f"torch-{torch.__version__}-{device_tag(device)}-{variant}")
    return storage.join(run, FOLDER, f"{name}.bin")


def _keys(info) -> frozenset[tuple[str, str]]:
    """The (kind, key) of each compiled artifact in a ``CacheInfo`` (None: none)."""
    if info is None:
        return frozenset()
    return frozenset((kind, key) for kind, keys in info.artifacts.items() for key in keys)


def load(
    run: str, device: torch.device, variant: str, *, log: Callable[..., None] = print
) -> frozenset[tuple[str, str]]:
    """Hand torch the compiled graphs of the run folder's cache file; returns their keys (none:
    no file, or none usable)."""
    uri = cache_file(run, device, variant)
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as e:  # storage trouble costs the compile time, not the run
        if not isinstance(e.__cause__, FileNotFoundError):
            log(f"note: could not read the compile cache ({e}); compiling from scratch", flush=True)
        return frozenset()
    torch_log = logging.getLogger("torch.compiler._cache")  # its traceback for a damaged file: our note
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        info, why = torch.compiler.load_cache_artifacts(data), "torch cannot read it"
    except Exception as e:  # noqa: BLE001 — a damaged or foreign file: compile instead
        info, why = None, f"{type(e).__name__}: {e}"
    finally:
        torch_log.setLevel(level)
    if info is None:
        log(
            f"note: the compile cache {uri} ({len(data)} bytes) is not usable ({why}); "
            "compiling from scratch (it is rewritten afterwards)",
            flush=True,
        )
    return _keys(info)


def save(
    run: str,
    device: torch.device,
    variant: str,
    *,
    loaded: frozenset[tuple[str, str]] = frozenset(),
    log: Callable[..., None] = print,
) -> int:
    """Write the graphs this process compiled, or took from a cache, to the cache file if any of them
    is not among the ``loaded`` ones (``load``'s keys), atomically (``storage.write_bytes``).
    Returns the number of graphs written (0: nothing new, or the write failed)."""
    try:
        got = torch.compiler.save_cache_artifacts()
    except Exception as e:  # noqa: BLE001 — torch logs and returns None for its own failures
        log(f"note: the compiled graphs could not be serialized ({e}); the run goes on", flush=True)
        return 0
    if got is None:
        return 0
    data, info = got
    keys = _keys(info)
    if keys <= loaded:
        return 0
    try:
        storage.write_bytes(cache_file(run, device, variant), data)
    except OSError as e:  # StorageError (names the file) or a local write's error
        log(f"note: could not write the compile cache ({e}); the run goes on", flush=True)
        return 0
    return len(keys)
