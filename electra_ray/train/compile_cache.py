"""The fast step's compiled graphs kept in the run folder, so that a worker on a new node starts warm.

``torch.compile`` keeps what it compiles on the node's local disk (``/tmp/torchinductor_$USER``):
a worker restarted on the same node compiles the fast step from there in seconds, but one on a
node that replaced a lost node, or a run resumed on a new cluster, compiles from scratch (the
``small`` step on an H200: 77 s cold, 19 s from the local cache; 2026-11-30). Here the graphs
travel with the run: each worker loads ``compile_cache/<torch version>-<device>.bin`` from the run
folder (local or s3://) before compiling, and rank 0 writes it back after compiling whenever it
compiled something the file did not hold. The file is torch's own portable cache
(``torch.compiler.save_cache_artifacts``: Dynamo's and Inductor's compiled graphs, and on GPUs
the Triton kernels bundled with them); a file torch cannot use is skipped with a note.

Nothing here may stop training: a missing, unreadable or foreign file, or storage that cannot be
reached, costs the compile time and a printed note, never the run.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable

import torch

FOLDER = "compile_cache"


def device_tag(device: torch.device) -> str:
    """``cpu``, or the GPU's name and compute capability, e.g. ``NVIDIA-H200-sm90``."""
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)}-sm{major}{minor}"


def cache_file(root: str, device: torch.device) -> str:
    """The run folder's cache file for this torch build and device kind (a pyarrow path)."""
    name = re.sub(r"[^A-Za-z0-9.+_-]+", "-", f"torch-{torch.__version__}-{device_tag(device)}")
    return f"{root.rstrip('/')}/{FOLDER}/{name}.bin"


def _count(info) -> int:
    """Compiled artifacts in a ``CacheInfo`` (None: none)."""
    return sum(len(v) for v in info.artifacts.values()) if info is not None else 0


def _why(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def load(filesystem, root: str, device: torch.device, *, log: Callable[..., None] = print) -> int:
    """Hand torch the compiled graphs of the run folder's cache file; how many (0: none usable)."""
    import pyarrow.fs as pafs

    path = cache_file(root, device)
    try:
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            return 0
        with filesystem.open_input_stream(path) as f:
            data = f.read()
    except Exception as e:  # noqa: BLE001 — storage trouble costs the compile time, not the run
        log(f"note: could not read the compile cache {path} ({_why(e)}); compiling from scratch", flush=True)
        return 0
    torch_log = logging.getLogger("torch.compiler._cache")  # its traceback for a damaged file: our note
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        info, why = torch.compiler.load_cache_artifacts(data), "torch cannot read it"
    except Exception as e:  # noqa: BLE001 — a damaged or foreign file: compile instead
        info, why = None, _why(e)
    finally:
        torch_log.setLevel(level)
    if info is None:
        log(
            f"note: the compile cache {path} ({len(data)} bytes) is not usable ({why}); "
            "compiling from scratch (it is rewritten afterwards)",
            flush=True,
        )
    return _count(info)


def save(
    filesystem, root: str, device: torch.device, *, loaded: int, log: Callable[..., None] = print
) -> int:
    """Write every graph this process compiled or loaded to the cache file, if that is more than the
    ``loaded`` graphs it came with; written so that a reader sees the old file or the new one, never
    part of one (an S3 object appears when its upload completes; a local file is renamed into place). Returns the graphs written (0: nothing new, or it failed)."""
    got = torch.compiler.save_cache_artifacts()
    if got is None:
        return 0
    data, info = got
    n = _count(info)
    if n <= loaded:
        return 0
    path = cache_file(root, device)
    # an S3 object appears whole when its upload completes; elsewhere: a temporary file, renamed
    local = filesystem.type_name != "s3"
    tmp = f"{path.rsplit('/', 1)[0]}/.tmp-{uuid.uuid4().hex}.bin" if local else path
    try:
        if local:
            filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(tmp) as f:
            f.write(data)
        if local:
            filesystem.move(tmp, path)
    except Exception as e:  # noqa: BLE001
        log(f"note: could not write the compile cache {path} ({_why(e)}); the run goes on", flush=True)
        if local:
            try:
                filesystem.delete_file(tmp)
            except Exception:  # noqa: BLE001 — it may not exist
                pass
        return 0
    return n
