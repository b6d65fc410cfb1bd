"""Where the training metrics go: metrics.jsonl and TensorBoard events in the run folder, and curves.

``MetricsLogger`` is a Ray Train ``UserCallback``: it runs in the train controller (on the driver's
node, so the driver can remove its local TensorBoard folder at the end), receives rank
0's metrics after every ``ray.train.report`` and writes them to the run folder (local or s3://) as
they come, so a killed run keeps its history. A resumed run continues the files: rows at or after
the resume step are replaced (TensorBoard's ``purge_step`` does the same for the event files).
Rollbacks after non-finite losses are also kept in ``{run}/events.jsonl`` (metrics.jsonl keeps
only the steps the model actually has). ``plot_curves`` draws ``plots/curves.png`` from metrics.jsonl at the end of a launch.
"""

from __future__ import annotations

import glob
import io
import json
import os
from typing import Any

from electra_ray import storage

PEAK_FLOPS = {  # dense bf16/fp16 tensor-core peaks per GPU, for MFU
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device) -> float | None:
    """The device's peak FLOP/s (None on CPU or an unknown GPU: MFU is then not reported)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None


def _base():
    try:
        from ray.train import UserCallback

        return UserCallback
    except ImportError:  # pragma: no cover - Ray Train always present with the project's deps
        return object


TB_PREFIX = "electra-tb-"  # the local TensorBoard folder: storage.scratch_folder(TB_PREFIX), by the driver


class MetricsLogger(_base()):
    """Writes each report of rank 0 to ``{run}/metrics.jsonl`` and ``{run}/tensorboard/``."""

    def __init__(self, run: str, tb_dir: str) -> None:
        self.run = run
        self.rows: list[dict[str, Any]] | None = None
        self.writer = None
        self.tb_dir = tb_dir  # local event files, copied to {run}/tensorboard/; the driver removes it
        self.failing = False
        self.events: list[dict[str, Any]] = []

    def _start(self, first_step: int) -> None:
        path = storage.join(self.run, "metrics.jsonl")
        rows = []
        if storage.exists(path):
            rows = [json.loads(ln) for ln in storage.read_text(path).splitlines() if ln.strip()]
        self.rows = [r for r in rows if r.get("step", 0) < first_step]
        events = storage.join(self.run, "events.jsonl")
        if storage.exists(events):
            self.events = [json.loads(ln) for ln in storage.read_text(events).splitlines() if ln.strip()]
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(self.tb_dir, exist_ok=True)
        self.writer = SummaryWriter(self.tb_dir, purge_step=first_step)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0] if metrics else {}
        if "step" not in m:
            return
        if self.rows is None:
            self._start(int(m["step"]))
        self.rows = [r for r in self.rows if r["step"] < m["step"]] + [m]
        if "rolled_back_to" in m:  # metrics.jsonl drops the abandoned steps; the event stays on record
            self.events.append({"event": "rollback", **m})
        for key, value in m.items():
            if isinstance(value, (int, float)) and key != "step":
                group = "eval" if key.startswith("eval_") else "train"
                self.writer.add_scalar(f"{group}/{key.removeprefix('eval_')}", value, int(m["step"]))
        self.writer.flush()
        try:  # the files are rewritten whole each time: a write missed in a storage outage is caught up
            storage.write_text(
                storage.join(self.run, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in self.rows)
            )
            if self.events:
                storage.write_text(
                    storage.join(self.run, "events.jsonl"), "".join(json.dumps(r) + "\n" for r in self.events)
                )
            for f in glob.glob(os.path.join(self.tb_dir, "events.*")):
                with open(f, "rb") as fh:
                    storage.write_bytes(storage.join(self.run, "tensorboard", os.path.basename(f)), fh.read())
            if self.failing:
                print(f"metrics: {self.run} is writable again; metrics.jsonl caught up", flush=True)
            self.failing = False
        except (storage.StorageError, OSError) as e:
            if not self.failing:
                print(f"metrics: cannot write to {self.run} ({e}); training goes on, will retry", flush=True)
            self.failing = True


def read_metrics(run: str) -> list[dict[str, Any]]:
    path = storage.join(run, "metrics.jsonl")
    if not storage.exists(path):
        return []
    return [json.loads(ln) for ln in storage.read_text(path).splitlines() if ln.strip()]


def plot_curves(run: str) -> str | None:
    """plots/curves.png: losses and accuracies against steps (train and held-out)."""
    rows = read_metrics(run)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    ev = [r for r in rows if "eval_gen_loss" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("gen_loss", "generator"), ("disc_loss", "discriminator ×50")):
        scale = 50 if key == "disc_loss" else 1
        axes[0].plot(steps, [r[key] * scale for r in rows], label=label)
        if ev:
            axes[0].plot(
                [r["step"] for r in ev],
                [r[f"eval_{key}"] * scale for r in ev],
                "o--",
                label=f"{label} (held out)",
            )
    axes[0].set_title("loss")
    for key, label in (("gen_acc", "generator masked accuracy"), ("disc_acc", "discriminator accuracy")):
        axes[1].plot(steps, [r[key] for r in rows], label=label)
    axes[1].plot(steps, [1 - r["replaced_share"] for r in rows], ":", label="all-'original' baseline")
    axes[1].set_title("accuracy")
    axes[2].plot(steps, [r["lr"] for r in rows])
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    uri = storage.join(run, "plots", "curves.png")
    storage.write_bytes(uri, buf.getvalue())
    return uri
