"""A training run's checkpoint → two Hugging Face model folders (discriminator, generator) + tokenizer.

    export_run("s3://bucket/runs/r1", "out/hf")  # the latest committed checkpoint
    export_run("runs/r1", "out/hf", step=2000)   # a specific one

The run folder (``{storage}/{run}/``, local or s3://) is read, never written:

- ``tokenizer/`` — vocab.txt, tokenizer_config.json, special_tokens_map.json;
- ``step_XXXXXXXX/`` — checkpoints (model.pt, train_state.pt, meta.json; see train/checkpoint.py);
- ``checkpoint_manager_snapshot.json`` — Ray Train's (V2) record of the *committed* checkpoints.

Which checkpoint: Ray Train uploads a checkpoint folder first and registers it afterwards, and it
deletes old ones (``num_to_keep``) after rewriting the snapshot; so a ``step_*`` folder that the
snapshot does not list may be half uploaded or about to be deleted. With a snapshot, only the
checkpoints it lists count: the default is its ``latest_checkpoint_result`` (the last registered
one), ``--step N`` must be one of its ``checkpoint_results``. Without a snapshot (a run folder
written without Ray Train, or copied without it) the complete ``step_*`` folders count, those with a
meta.json (written last): the default is the highest step.

The snapshot (Ray 2.60, ``ray/train/v2/_internal/execution/checkpoint/checkpoint_manager.py``,
``_CheckpointManagerState`` serialized with pydantic ``.json()``)::

    {"ray_version": "2.60.0",
     "checkpoint_results": [{"version": 0, "checkpoint_dir_name": "step_00000200", "metrics": {...}}, ...],
     "checkpoint_report_indices": [1, ...],
     "latest_checkpoint_result": {"version": 0, "checkpoint_dir_name": "step_00000200", "metrics": {...}} | null,
     "pending_training_results": [...], "pending_validation_specs": [...], "current_report_index": 2,
     "validated_checkpoint_dir_names": [], "timed_out_validation_checkpoint_dir_names": [],
     "failed_validation_checkpoint_dir_names": []}

``checkpoint_dir_name`` is relative to the run folder. ``checkpoint_results`` is in registration
order, or sorted by score when ``CheckpointConfig.checkpoint_score_attribute`` is set — hence the
latest is taken from ``latest_checkpoint_result``, not from the list's end.

The output folder (local or s3://)::

    discriminator/  config.json, model.safetensors (ElectraForPreTraining) + tokenizer files
    generator/      config.json, model.safetensors (ElectraForMaskedLM, output layer tied) + tokenizer files
    export.json     run, step, checkpoint, model config, tokenizer facts — written last

Local output is built in a temporary sibling folder and renamed into place, so a crashed export
leaves the old output (or none), never half of one. S3 output is built locally and uploaded file by
file, export.json last (its presence marks a complete export). An existing output is replaced only
when it holds nothing but an earlier export's files.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

from electra_ray import storage
from electra_ray.config import ModelConfig
from electra_ray.tokenization.vocab import TOKENIZER_FILES
from electra_ray.train.checkpoint import META_FILE, MODEL_FILE, CheckpointMismatch, parse_meta

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
TOKENIZER_DIR = "tokenizer"
EXPORT_FILE = "export.json"
EXPORT_FORMAT_VERSION = 1
MODEL_DIRS = ("discriminator", "generator")
STEP_DIR = re.compile(r"^step_(\d+)$")


class ExportError(ValueError):
    """The run folder cannot be exported as asked; the message names the folder and what is wrong."""


@dataclass(frozen=True)
class Selected:
    """The checkpoint chosen for export."""

    uri: str  # the checkpoint folder
    dir_name: str  # its name inside the run folder
    how: str  # "snapshot" (latest committed), "folders" (highest complete step folder) or "step"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _step_of(dir_name: str) -> int | None:
    m = STEP_DIR.match(dir_name.strip("/"))
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# finding the checkpoint


def _subfolders(uri: str) -> list[str]:
    """Names of the folders directly under ``uri`` ([] when it does not exist)."""
    fs, path = storage.filesystem(uri)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    try:
        entries = storage.retry(uri, lambda: fs.ls(path, detail=True))
    except storage.StorageError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return []
        raise
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")


def read_snapshot(run_uri: str) -> dict[str, Any] | None:
    """Ray Train's checkpoint manager snapshot of the run, or None when the run folder has none."""
    uri = storage.join(run_uri, SNAPSHOT_FILE)
    if not storage.exists(uri):
        return None
    try:
        snap = json.loads(storage.read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{uri}: not valid JSON ({e})") from e
    if not isinstance(snap, dict) or not isinstance(snap.get("checkpoint_results"), list):
        raise ExportError(f"{uri}: no checkpoint_results list; not a Ray Train checkpoint manager snapshot")
    return snap


def _dir_name(entry: Any, uri: str) -> str:
    name = entry.get("checkpoint_dir_name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        raise ExportError(f"{uri}: a checkpoint entry has no checkpoint_dir_name: {entry!r}")
    return name.strip("/")


def committed_checkpoints(snapshot: dict[str, Any], run_uri: str) -> tuple[list[str], str | None]:
    """(committed checkpoint folder names, the latest one) from a snapshot."""
    uri = storage.join(run_uri, SNAPSHOT_FILE)
    names = [_dir_name(e, uri) for e in snapshot["checkpoint_results"]]
    latest = snapshot.get("latest_checkpoint_result")
    latest_name = _dir_name(latest, uri) if latest is not None else None
    if latest_name is None and names:
        # not written by Ray (it always sets the latest when it keeps a checkpoint): take the highest step
        stepped = [n for n in names if _step_of(n) is not None]
        latest_name = max(stepped, key=_step_of) if stepped else names[-1]
    return names, latest_name


def _is_complete(ckpt_uri: str) -> bool:
    return storage.exists(storage.join(ckpt_uri, META_FILE))


def find_checkpoint(run_uri: str, step: int | None = None) -> Selected:
    """The checkpoint to export: see the module docstring for the rules."""
    snapshot = read_snapshot(run_uri)
    if snapshot is not None:
        names, latest = committed_checkpoints(snapshot, run_uri)
        if step is None:
            if latest is None:
                raise ExportError(
                    f"{run_uri}: no checkpoints: {SNAPSHOT_FILE} lists no committed checkpoint yet"
                )
            sel = Selected(storage.join(run_uri, latest), latest, "snapshot")
        else:
            by_step = {_step_of(n): n for n in names if _step_of(n) is not None}
            if step not in by_step:
                listed = sorted(by_step)
                on_disk = step_dir_name(step) in _subfolders(run_uri)
                why = (
                    f"the folder {step_dir_name(step)} exists but is not committed (an upload in progress, "
                    "an interrupted one, or one being deleted)"
                    if on_disk
                    else "there is no such checkpoint"
                )
                raise ExportError(
                    f"{run_uri}: step {step}: {why}; committed steps in {SNAPSHOT_FILE}: {listed or 'none'}"
                )
            sel = Selected(storage.join(run_uri, by_step[step]), by_step[step], "step")
        if not _is_complete(sel.uri):
            raise ExportError(
                f"{run_uri}: {SNAPSHOT_FILE} lists {sel.dir_name} but {sel.uri}/{META_FILE} is missing "
                "(the checkpoint was deleted or the run folder was copied partly)"
            )
        return sel

    steps = {_step_of(n): n for n in _subfolders(run_uri) if _step_of(n) is not None}
    if not steps and not storage.exists(run_uri):
        raise FileNotFoundError(f"{run_uri}: no such run folder")
    if step is not None:
        name = steps.get(step)
        if name is None or not _is_complete(storage.join(run_uri, name)):
            have = sorted(s for s, n in steps.items() if _is_complete(storage.join(run_uri, n)))
            raise ExportError(
                f"{run_uri}: step {step}: no complete checkpoint folder {step_dir_name(step)} "
                f"(with {META_FILE}); complete steps: {have or 'none'}"
            )
        return Selected(storage.join(run_uri, name), name, "step")
    for s in sorted(steps, reverse=True):
        name = steps[s]
        if _is_complete(storage.join(run_uri, name)):
            return Selected(storage.join(run_uri, name), name, "folders")
    raise ExportError(
        f"{run_uri}: no checkpoints (no {SNAPSHOT_FILE} and no step_XXXXXXXX folder with a {META_FILE})"
    )


# ---------------------------------------------------------------------------------------------
# reading


def _fetch(uri: str, dest: str) -> str:
    """A local path holding ``uri`` (downloaded to ``dest`` when remote)."""
    if not storage.is_remote(uri):
        return storage.filesystem(uri)[1]
    fs, path = storage.filesystem(uri)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    storage.retry(uri, lambda: fs.get_file(path, dest))
    return dest


def _read_meta(ckpt_uri: str) -> dict[str, Any]:
    uri = storage.join(ckpt_uri, META_FILE)
    try:
        return parse_meta(storage.read_text(uri), uri)
    except CheckpointMismatch as e:
        raise ExportError(str(e)) from e


def _fetch_tokenizer(run_uri: str, dest: str) -> str:
    """The run's tokenizer files, copied into the local folder ``dest``; checked."""
    from electra_ray.tokenization.wordpiece import read_folder_config

    src = storage.join(run_uri, TOKENIZER_DIR)
    missing = [n for n in TOKENIZER_FILES if not storage.exists(storage.join(src, n))]
    if missing:
        raise ExportError(
            f"{run_uri}: the tokenizer folder {src} is missing {', '.join(missing)} "
            "(the training driver copies the tokenizer there at start)"
        )
    os.makedirs(dest, exist_ok=True)
    for n in TOKENIZER_FILES:
        storage.write_bytes(os.path.join(dest, n), storage.read_bytes(storage.join(src, n)))
    read_folder_config(dest)  # raises TokenizerFolderError (a ValueError) naming what to fix
    return dest


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop wrapper prefixes (DDP ``module.``, torch.compile ``_orig_mod.``) if every key has one."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


# ---------------------------------------------------------------------------------------------
# writing


def _save_pretrained(model, folder: str) -> None:
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:  # transformers 4.x
        kwargs["safe_serialization"] = True  # 5.x always writes safetensors
    model.save_pretrained(folder, **kwargs)
    if not any(n.endswith(".safetensors") for n in os.listdir(folder)):
        raise RuntimeError(f"{folder}: save_pretrained wrote no .safetensors file")


def _fit_model_max_length(path: str, max_positions: int) -> list[str]:
    """Lower tokenizer_config.json's model_max_length to the model's position table (in place).

    The tokenizer folder says 512 by default; a model with fewer positions would fail on longer
    inputs that the tokenizer lets through (pipelines truncate to model_max_length).
    """
    with open(path, encoding="utf-8") as f:
        tok_cfg = json.load(f)
    cur = tok_cfg.get("model_max_length")
    if isinstance(cur, int) and 0 < cur <= max_positions:
        return []
    tok_cfg["model_max_length"] = max_positions
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")
    return [
        f"tokenizer_config.json: model_max_length {cur!r} -> {max_positions} (the model's position table)"
    ]


def _relative_files(folder: str) -> list[str]:
    out = []
    for base, _, files in os.walk(folder):
        for f in files:
            out.append(os.path.relpath(os.path.join(base, f), folder).replace(os.sep, "/"))
    return sorted(out)


def _is_export_path(rel: str) -> bool:
    rel = rel.strip("/")
    return rel == EXPORT_FILE or rel in MODEL_DIRS or rel.split("/", 1)[0] in MODEL_DIRS


def _check_replaceable(output: str, existing: list[str]) -> None:
    foreign = [p for p in existing if not _is_export_path(p)]
    if foreign:
        raise ExportError(
            f"{output}: the output folder holds files that are not an export ({', '.join(foreign[:5])}); "
            "choose an empty or new --output"
        )


def _existing_output(output: str) -> list[str]:
    """Paths (relative, files and for local output also top-level entries) already under ``output``."""
    if not storage.is_remote(output):
        path = storage.filesystem(output)[1]
        if not os.path.exists(path):
            return []
        if not os.path.isdir(path):
            raise ExportError(f"{output}: exists and is not a folder")
        return sorted(os.listdir(path))
    fs, path = storage.filesystem(output)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    try:
        found = storage.retry(output, lambda: fs.find(path))
    except storage.StorageError as e:
        if not isinstance(e.__cause__, FileNotFoundError):
            raise
        found = []
    prefix = path.rstrip("/") + "/"
    return sorted(p[len(prefix) :] for p in found if p.startswith(prefix))


def _publish_local(built: str, output: str) -> None:
    """Rename the built folder into place (replacing an earlier export)."""
    path = storage.filesystem(output)[1]
    old = None
    if os.path.exists(path):
        _check_replaceable(output, _existing_output(output))
        old = f"{path}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
    try:
        os.rename(built, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _publish_remote(built: str, output: str) -> None:
    """Upload the built folder: the export marker goes first (removed) and last (written)."""
    existing_rel = _existing_output(output)
    _check_replaceable(output, existing_rel)
    if EXPORT_FILE in existing_rel:
        storage.remove(storage.join(output, EXPORT_FILE))
    new = _relative_files(built)
    for rel in new:
        if rel != EXPORT_FILE:
            with open(os.path.join(built, rel), "rb") as f:
                storage.write_bytes(storage.join(output, rel), f.read())
    for rel in existing_rel:  # files of an earlier export that this one does not have
        if rel not in new:
            storage.remove(storage.join(output, rel))
    with open(os.path.join(built, EXPORT_FILE), "rb") as f:
        storage.write_bytes(storage.join(output, EXPORT_FILE), f.read())


# ---------------------------------------------------------------------------------------------


def export_run(run_uri: str, output: str, step: int | None = None, *, log=None) -> dict[str, Any]:
    """Export a run's checkpoint (the latest committed one, or ``step``) as HF model folders."""
    import torch

    from electra_ray.model.electra import ElectraPretrainer
    from electra_ray.tokenization.wordpiece import load_vocab

    log = log or (lambda *_: None)
    run_uri = run_uri.rstrip("/")
    output = output.rstrip("/")
    if not run_uri or not output:
        raise ExportError("both the run folder and the output folder are required")
    if step is not None and step < 0:
        raise ExportError(f"{run_uri}: step must be >= 0, got {step}")
    sel = find_checkpoint(run_uri, step)
    meta = _read_meta(sel.uri)
    folder_step = _step_of(sel.dir_name)
    if folder_step is not None and meta.get("step") != folder_step:
        raise ExportError(
            f"{sel.uri}/{META_FILE}: step {meta.get('step')!r}, but the folder says {folder_step}"
        )
    cfg = ModelConfig.from_dict(meta["model"])
    _check_replaceable(output, _existing_output(output))  # fail before the work, checked again at the end
    log(f"export: {sel.uri} (step {meta.get('step')}, chosen by {sel.how})")

    local_output = not storage.is_remote(output)
    if local_output:
        out_path = storage.filesystem(output)[1]
        parent = os.path.dirname(out_path)
        os.makedirs(parent, exist_ok=True)
        # a hidden sibling: the rename into place stays on one filesystem
        work = tempfile.mkdtemp(prefix=f".{os.path.basename(out_path)}.tmp-", dir=parent)
    else:
        work = tempfile.mkdtemp(prefix="electra_ray_export-")
    try:
        built = os.path.join(work, "out")
        inputs = os.path.join(work, "in")
        tok_dir = _fetch_tokenizer(run_uri, os.path.join(inputs, "tokenizer"))
        vocab = load_vocab(os.path.join(tok_dir, "vocab.txt"))
        n_vocab = max(vocab.values()) + 1 if vocab else 0
        if n_vocab != cfg.vocab_size:
            raise ExportError(
                f"{run_uri}: the tokenizer has {n_vocab} entries but the model's vocab_size is {cfg.vocab_size} "
                f"({storage.join(run_uri, TOKENIZER_DIR)} is not the tokenizer this run trained with)"
            )
        if vocab.get("[PAD]") != cfg.pad_token_id:
            raise ExportError(
                f"{run_uri}: the tokenizer's [PAD] id is {vocab.get('[PAD]')} but the model's pad_token_id is "
                f"{cfg.pad_token_id}"
            )

        model_path = _fetch(storage.join(sel.uri, MODEL_FILE), os.path.join(inputs, "checkpoint", MODEL_FILE))
        if not os.path.isfile(model_path):
            raise ExportError(f"{run_uri}: {sel.uri}/{MODEL_FILE} is missing")
        state = _strip_prefixes(torch.load(model_path, map_location="cpu", weights_only=True))
        model = ElectraPretrainer(cfg)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ExportError(
                f"{sel.uri}/{MODEL_FILE}: does not match the model config in {META_FILE}: {str(e).splitlines()[0]}"
            ) from e
        del state
        model.check_tying()
        model.eval()

        notes = _fit_model_max_length(
            os.path.join(tok_dir, "tokenizer_config.json"), cfg.max_position_embeddings
        )
        for name, net in (("discriminator", model.discriminator), ("generator", model.generator)):
            dest = os.path.join(built, name)
            _save_pretrained(net, dest)
            for fname in TOKENIZER_FILES:
                shutil.copyfile(os.path.join(tok_dir, fname), os.path.join(dest, fname))
        with open(os.path.join(tok_dir, "vocab.txt"), "rb") as f:
            vocab_sha = hashlib.sha256(f.read()).hexdigest()

        import transformers

        record = {
            "format_version": EXPORT_FORMAT_VERSION,
            "run": run_uri,
            "step": meta.get("step"),
            "checkpoint": sel.uri,
            "selected_by": sel.how,
            "model": cfg.to_dict(),
            "tokenizer": {"vocab_size": n_vocab, "vocab_sha256": vocab_sha},
            "folders": {n: sorted(os.listdir(os.path.join(built, n))) for n in MODEL_DIRS},
            "notes": notes,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        with open(os.path.join(built, EXPORT_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False, indent=2, sort_keys=True)
            f.write("\n")

        if local_output:
            _publish_local(built, output)
        else:
            _publish_remote(built, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"export: wrote {output} ({', '.join(MODEL_DIRS)}, {EXPORT_FILE})")
    return {
        "run": run_uri,
        "output": output,
        "step": meta.get("step"),
        "checkpoint": sel.uri,
        "selected_by": sel.how,
        "discriminator": storage.join(output, "discriminator"),
        "generator": storage.join(output, "generator"),
    }
