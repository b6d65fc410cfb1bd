"""What a checkpoint holds, and how it is written and read.

A checkpoint is a folder (Ray Train uploads it to ``{storage}/{run}/step_XXXXXXXX/``):

    model.pt        ElectraPretrainer.state_dict()
    train_state.pt  optimizer, schedule, step, epoch, RNG states (per rank where they differ)
    meta.json       format version, step, model config, training config — written last

A resume refuses a checkpoint whose format version, model config or global batch differ from the
run's, saying what differs.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "train_state.pt", "meta.json"


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
            "the run folder holds checkpoints of a different run; use another --name, or the same settings:\n  "
            + "\n  ".join(diffs)
        )
