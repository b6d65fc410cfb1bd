"""Where the training metrics go: metrics.jsonl and TensorBoard events in the run folder, and curves.

``MetricsLogger`` is a Ray Train ``UserCallback``: it runs in the train controller (on the driver's
node, so the driver can remove its local TensorBoard folder at the end), receives rank
0's metrics after every ``ray.train.report``, and a writer thread copies them to the run folder
(local or s3://) every few seconds, so a killed run keeps its history (all but the last seconds).
A resumed run continues the files: rows at or after the resume step are replaced (TensorBoard's
``purge_step`` does the same for the event files). Rollbacks after non-finite losses are also kept
in ``{run}/events.jsonl`` (metrics.jsonl keeps only the steps the model actually has).
``plot_curves`` draws ``plots/curves.png`` from metrics.jsonl at the end of a launch.
"""

from __future__ import annotations

import glob
import io
import json
import os
from typing import Any

from ray.train import UserCallback
from ray.train.v2._internal.execution.callback import ControllerCallback

from electra_ray import storage

TB_PREFIX = "electra-tb-"  # the local TensorBoard folder: storage.scratch_folder(TB_PREFIX), by the driver

WRITE_EVERY_S = 5.0  # at most one write of the run folder's metrics files per this many seconds
WRITE_SHARE = 0.1  # ... and at most this share of the writer's time (the files are rewritten whole)
RETRY_S = 5.0  # after a failed write (storage outage), the next attempt
CLOSE_TIMEOUT_S = 60.0  # the final write, when the controller shuts down

_LOGGERS: dict[str, MetricsLogger] = {}  # in the controller process: MetricsFlush finds its logger here


class MetricsLogger(UserCallback):
    """Writes each report of rank 0 to ``{run}/metrics.jsonl`` and ``{run}/tensorboard/``.

    ``after_report`` runs in the controller's event loop, and the controller only takes the
    workers' next reports (Ray Train's one-slot queue per worker) once it returns: so it only
    records the report in memory and in the local TensorBoard files; a writer thread copies them to
    the run folder at most every ``WRITE_EVERY_S`` (storage retries, outages and slow uploads
    never hold training up). ``MetricsFlush`` (a controller callback, pass both: ``callbacks()``)
    makes the last write before ``fit()`` returns.
    """

    def __init__(self, run: str, tb_dir: str) -> None:
        import uuid

        self.key = uuid.uuid4().hex
        self.run = run
        # the controller's environment is the Ray node's, not the driver's: write where the driver does
        self.endpoint = storage.endpoint_url()
        self.tb_dir = tb_dir  # local event files, copied to {run}/tensorboard/; the driver removes it
        self.first_step: int | None = None
        self.rows: list[dict[str, Any]] = []  # this launch's reports
        self.events: list[dict[str, Any]] = []  # this launch's rollbacks
        self.writer = None  # writer and thread: made in the controller, at the first report
        self._thread = None

    # --- in the controller's event loop ---------------------------------------------------------

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0] if metrics else {}
        if "step" not in m:
            return
        step = int(m["step"])
        if self.rows and self.rows[-1] == m:  # the loop's last report again, with the last checkpoint
            return
        if self._thread is None:
            self._start(step)
        with self._cond:
            self.rows = [r for r in self.rows if r["step"] < step] + [m]
            if "rolled_back_to" in m:  # metrics.jsonl drops the abandoned steps; the event stays on record
                self.events.append({"event": "rollback", **m})
            for key, value in m.items():
                if isinstance(value, (int, float)) and key != "step":
                    group = "eval" if key.startswith("eval_") else "train"
                    self.writer.add_scalar(f"{group}/{key.removeprefix('eval_')}", value, step)
            self._dirty = True
            self._cond.notify()

    def _start(self, first_step: int) -> None:
        import threading

        from torch.utils.tensorboard import SummaryWriter

        self.first_step = first_step
        if self.endpoint and storage.endpoint_url() != self.endpoint:  # this process runs only this run
            os.environ["AWS_ENDPOINT_URL_S3"] = self.endpoint
        os.makedirs(self.tb_dir, exist_ok=True)
        self.writer = SummaryWriter(self.tb_dir, purge_step=first_step)
        self._cond = threading.Condition()
        self._dirty = False
        self._closing = False
        self._failing = False
        self._prior: tuple[list, list] | None = None  # the run folder's rows and events before this launch
        self.writes = 0
        _LOGGERS[self.key] = self
        self._thread = threading.Thread(target=self._write_loop, name="metrics-writer", daemon=True)
        self._thread.start()

    # --- in the writer thread -------------------------------------------------------------------

    def _write_once(self) -> None:
        # a resumed run continues the files: rows from the resume step on are replaced
        if self._prior is None:
            self._prior = (
                [r for r in read_metrics(self.run) if r.get("step", 0) < self.first_step],
                read_metrics(self.run, "events.jsonl"),
            )
        with self._cond:
            rows, events = self._prior[0] + self.rows, self._prior[1] + self.events
            self._dirty = False
            self.writer.flush()
        storage.write_text(
            storage.join(self.run, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows)
        )
        if events:
            storage.write_text(
                storage.join(self.run, "events.jsonl"), "".join(json.dumps(r) + "\n" for r in events)
            )
        for f in glob.glob(os.path.join(self.tb_dir, "events.*")):
            with open(f, "rb") as fh:
                storage.write_bytes(storage.join(self.run, "tensorboard", os.path.basename(f)), fh.read())
        self.writes += 1

    def _write_loop(self) -> None:
        import time

        while True:
            with self._cond:
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if not self._dirty:
                    return
            t0 = time.monotonic()
            try:
                self._write_once()
            except (storage.StorageError, OSError) as e:
                with self._cond:
                    self._dirty = True
                if not self._failing:
                    print(
                        f"metrics: cannot write to {self.run} ({e}); training goes on, will retry", flush=True
                    )
                self._failing = True
                pause = RETRY_S
            else:
                if self._failing:
                    print(f"metrics: {self.run} is writable again; metrics.jsonl caught up", flush=True)
                self._failing = False
                pause = max(WRITE_EVERY_S, (time.monotonic() - t0) * (1 - WRITE_SHARE) / WRITE_SHARE)
            with self._cond:  # the final write (close) does not wait for the pause
                self._cond.wait_for(lambda: self._closing, timeout=pause)
                if self._closing and self._failing:
                    return  # close() makes the last attempt itself

    # --- at the end ---------------------------------------------------------------------------

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Write what is not written yet and stop the writer; False if the run folder stayed unwritable."""
        _LOGGERS.pop(self.key, None)
        if self._thread is None:
            return True
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            print(f"metrics: the last write to {self.run} did not finish in {timeout:.0f} s", flush=True)
            return False
        if self._failing or self._dirty:
            try:
                self._write_once()
            except (storage.StorageError, OSError) as e:
                print(f"metrics: the last reports could not be written to {self.run} ({e})", flush=True)
                return False
        self.writer.close()
        return True

    def callbacks(self) -> list:
        """For ``RunConfig(callbacks=...)``: this logger and the controller hook that flushes it."""
        return [self, MetricsFlush(self.key)]


class MetricsFlush(ControllerCallback):
    """Flushes the run's ``MetricsLogger`` when the controller shuts down (ended, failed or aborted)."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def before_controller_shutdown(self) -> None:
        import asyncio

        logger = _LOGGERS.get(self.key)
        if logger is not None:
            await asyncio.to_thread(logger.close)

    def before_controller_abort(self) -> None:
        logger = _LOGGERS.get(self.key)
        if logger is not None:
            logger.close(timeout=10.0)


def read_metrics(run: str, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """The rows of ``{run}/{name}`` (metrics.jsonl or events.jsonl); [] when there is none yet."""
    path = storage.join(run, name)
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
