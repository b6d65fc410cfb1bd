"""What a checkpoint holds, and how it is written and read.

A checkpoint is a folder (Ray Train uploads it to ``{storage}/{run}/step_XXXXXXXX/``):

    model.pt        ElectraPretrainer.state_dict()
    train_state.pt  optimizer, schedule, progress (step, data cursor, tokens seen, non-finite steps,
                    rollbacks), RNG states of rank 0 (all randomness is keyed by (seed, batch), so
                    they are kept for completeness, not needed for an exact resume)
    meta.json       format version, step, model config, training config — written last

A resume refuses a checkpoint whose format version, model config or global batch differ from the
run's, saying what differs.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from electra_ray import storage

FORMAT_VERSION = 1
MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "train_state.pt", "meta.json"
LOCAL_PREFIX = "electra-ckpt-"


def local_checkpoint_folder() -> str:
    """A fresh local folder for one checkpoint before its upload (``CheckpointUploads`` deletes it after).

    A worker killed before that leaves a whole checkpoint behind (model and optimizer state: ~0.2 GB
    for ``small``, ~1.3 GB for ``base``); ``remove_stale_checkpoint_folders``, run when a worker
    starts, removes those of dead processes, so restarts on a long run do not fill the node's disk.
    """
    return storage.scratch_folder(LOCAL_PREFIX)


def remove_stale_checkpoint_folders(tmp: str | None = None) -> list[str]:
    return storage.remove_dead_scratch(LOCAL_PREFIX, tmp)


@dataclass
class Progress:
    """Where a run stands; saved in train_state.pt with its own format version.

    ``cursor`` counts the global batches the data stream has handed out (the sample index is
    ``cursor × batch_size``, independent of the worker count). It equals ``step`` unless a rollback
    after non-finite losses skipped the batches between the checkpoint and the failure.
    """

    VERSION = 1
    step: int = 0
    cursor: int = 0
    tokens_seen: int = 0
    nonfinite_steps: int = 0
    rollbacks: int = 0

    def state_dict(self, batch_size: int | None = None) -> dict[str, Any]:
        d = {"version": self.VERSION, **asdict(self)}
        if batch_size is not None:
            d["sample_index"] = self.cursor * batch_size
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("version") != self.VERSION:
            raise CheckpointMismatch(
                f"progress state version {d.get('version')!r}, this code reads {self.VERSION}"
            )
        for f in fields(self):
            setattr(self, f.name, int(d[f.name]))


class CheckpointMismatch(ValueError):
    """A checkpoint cannot continue this run; the message says which setting differs."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: str,
    *,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    step: int,
    model_config: dict[str, Any],
    train_config: dict[str, Any],
) -> None:
    os.makedirs(folder, exist_ok=True)
    torch.save(model_state, os.path.join(folder, MODEL_FILE))
    torch.save(train_state, os.path.join(folder, STATE_FILE))
    meta = {"format_version": FORMAT_VERSION, "step": step, "model": model_config, "train": train_config}
    with open(os.path.join(folder, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=2, sort_keys=True)


def parse_meta(text: str, where: str) -> dict[str, Any]:
    """meta.json's content, checked: valid JSON, this format version, a model config."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointMismatch(f"{where}: not valid JSON ({e})") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointMismatch(
            f"{where}: checkpoint format {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    if not isinstance(meta.get("model"), dict):
        raise CheckpointMismatch(f"{where}: no model config")
    return meta


def read_meta(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        raise CheckpointMismatch(f"{folder}: no {META_FILE}: not a complete electra_ray checkpoint")
    with open(path, encoding="utf-8") as f:
        return parse_meta(f.read(), path)


def load_model_state(folder: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(folder, MODEL_FILE), map_location="cpu", weights_only=True)


def load_train_state(folder: str) -> dict[str, Any]:
    return torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=False)


def check_compatible(
    meta: dict[str, Any], model_config: dict[str, Any], train_config: dict[str, Any], keys: tuple[str, ...]
) -> None:
    """Refuse to resume across a different model or a different global batch/sequence length/seed."""
    diffs = [
        f"model.{k}: checkpoint {v!r}, run {model_config.get(k)!r}"
        for k, v in meta["model"].items()
        if model_config.get(k) != v
    ]
    diffs += [
        f"{k}: checkpoint {meta['train'].get(k)!r}, run {train_config.get(k)!r}"
        for k in keys
        if meta["train"].get(k) != train_config.get(k)
    ]
    if diffs:
        raise CheckpointMismatch(
            "the run folder holds checkpoints of a different run; use another --name, or the same settings: "
            + "; ".join(diffs)
        )


def upload_checkpoint(
    local_dir: str, filesystem, dest: str, *, retry_s: float, log=print, sleep=time.sleep
) -> None:
    """Copy a checkpoint folder to ``dest`` on a pyarrow ``filesystem``, ``meta.json`` last.

    Each file is retried with exponential backoff (1 s … 30 s) for up to ``retry_s`` seconds in all,
    so a storage outage shorter than that delays the checkpoint instead of failing the run. A folder
    without ``meta.json`` is never a checkpoint (``read_meta`` refuses it), and a checkpoint is only
    reported to Ray Train (committed) once this function has returned.
    """
    import pyarrow.fs as pafs

    local = pafs.LocalFileSystem()
    names = sorted(os.listdir(local_dir), key=lambda n: (n == META_FILE, n))
    deadline = time.monotonic() + retry_s
    delay, failures = 1.0, 0
    for name in names:
        while True:
            try:
                if name == names[0]:
                    filesystem.create_dir(dest, recursive=True)
                pafs.copy_files(
                    os.path.join(local_dir, name),
                    f"{dest}/{name}",
                    source_filesystem=local,
                    destination_filesystem=filesystem,
                )
                break
            except OSError as e:  # pyarrow raises OSError subclasses for network and service errors
                failures += 1
                if time.monotonic() + delay > deadline:
                    raise OSError(
                        f"checkpoint upload to {dest} failed for {retry_s:.0f} s ({failures} attempts); "
                        f"last error: {_first_line(e)}"
                    ) from e
                log(
                    f"checkpoint upload to {dest}: {name} failed ({_first_line(e)}); retrying in {delay:.0f} s",
                    flush=True,
                )
                sleep(delay)
                delay = min(delay * 2, 30.0)
    if failures:
        log(f"checkpoint upload to {dest}: complete after {failures} failed attempt(s)", flush=True)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


class CheckpointUploads:
    """Checkpoint uploads off the training thread, one at a time, in the order the checkpoints were made.

    Ray Train's own ``CheckpointUploadMode.ASYNC`` keeps reports in order: every later
    ``ray.train.report`` waits until the upload has ended, so with metrics reported every few
    seconds a slow upload (``base``: 1.3 GB) or a storage outage held training up for as long as it
    lasted. Here the loop goes on reporting metrics while a checkpoint uploads, and reports the
    checkpoint to Ray (already in the run folder: ``NO_UPLOAD``) at the first report after its
    upload ended; Ray commits it then. A new checkpoint waits for the previous upload to end.
    """

    def __init__(self, filesystem, root: str, *, retry_s: float) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.filesystem, self.root, self.retry_s = filesystem, root.rstrip("/"), retry_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-upload")
        self._pending = None  # (future, destination)

    def start(self, folder: str, name: str) -> None:
        """Upload the local checkpoint ``folder`` to ``{root}/{name}``, then delete the folder."""
        if self._pending is not None:
            raise RuntimeError("the previous checkpoint upload was not collected (finished(wait=True))")
        import shutil

        dest = f"{self.root}/{name}"

        def run() -> None:
            upload_checkpoint(folder, self.filesystem, dest, retry_s=self.retry_s)
            shutil.rmtree(folder, ignore_errors=True)

        self._pending = (self._pool.submit(run), dest)

    def finished(self, *, wait: bool = False):
        """The uploaded checkpoint (a ``ray.train.Checkpoint``) not yet handed out, if its upload has
        ended (with ``wait``: once it has); None if there is none. Re-raises the upload's error."""
        if self._pending is None or (not wait and not self._pending[0].done()):
            return None
        future, dest = self._pending
        self._pending = None
        future.result()
        import ray.train

        return ray.train.Checkpoint(path=dest, filesystem=self.filesystem)
