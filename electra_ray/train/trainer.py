"""The driver side of pretraining: load the instances into the object store, build the TorchTrainer.

Run folder ``{storage_path}/{name}/``: ``tokenizer/`` (copied at start), ``train_config.json``, and
the checkpoints ``step_XXXXXXXX/`` Ray Train writes (with its own bookkeeping files). Starting the
job again with the same name resumes from the latest committed checkpoint.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from electra_ray import storage
from electra_ray.config import ModelConfig, TrainConfig, model_preset
from electra_ray.data.tokenize import local_tokenizer, open_tokenizer
from electra_ray.tokenization.vocab import TOKENIZER_FILES
from electra_ray.tokenization.wordpiece import JapaneseWordPieceTokenizer

# Ray Train (2.60) hands each report to the controller through a one-slot queue per worker that the
# controller drains when it polls the workers, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default): a loop that reports more often than that blocks in ray.train.report until the next poll
# (seen here: 60 tiny steps reported every 2 took 57 s instead of ~5). The driver's value of the
# variable is passed on to the controller; we poll every 0.2 s unless it is set.
REPORT_POLL_S = "0.2"
# Ray Train also sends every print() of a worker to its root logger, which prints it again: each log
# line would show twice on the driver's console. Off unless set (the driver's value reaches workers).
PRINT_PATCH = "0"


def run_folder(cfg: TrainConfig) -> str:
    return storage.join(cfg.storage_path, cfg.name)


def model_config_for(cfg: TrainConfig, enc: JapaneseWordPieceTokenizer) -> tuple[ModelConfig, dict[str, int]]:
    """The preset (with --model-set's overrides) with the tokenizer's vocabulary size and special ids."""
    vocab_size = max(enc.vocab.values()) + 1
    special = {}
    for key, token in (("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("mask", "[MASK]")):
        if token not in enc.vocab:
            raise ValueError(f"{cfg.tokenizer}/vocab.txt has no {token}")
        special[key] = enc.vocab[token]
    mcfg = model_preset(cfg.preset, **cfg.model_set, vocab_size=vocab_size, pad_token_id=special["pad"])
    return mcfg, special


def check_instances_folder(cfg: TrainConfig, vocab_sha256: str) -> None:
    """The --data folder without reading a shard: it holds instance shards, and its manifest (when
    there is one) names the tokenizer's vocabulary. Cheap: the job runs it before starting Ray, so a
    wrong folder fails in seconds."""
    from electra_ray.train.data import instance_shards

    instance_shards(cfg.data)
    instances_manifest(cfg, vocab_sha256)


def instances_manifest(cfg: TrainConfig, vocab_sha256: str) -> dict[str, Any]:
    """The --data folder's manifest ({} without one), refused when it names another vocabulary."""
    manifest_uri = storage.join(cfg.data, "manifest.json")
    m = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else {}
    tok_sha = (m.get("tokenizer") or {}).get("sha256")
    if tok_sha and tok_sha != vocab_sha256:
        raise ValueError(
            f"{cfg.data} was tokenized with another vocabulary (sha256 {tok_sha[:12]}…) than {cfg.tokenizer} "
            f"({vocab_sha256[:12]}…); pass the tokenizer the instances were made with"
        )
    return m


def check_data(cfg: TrainConfig, arrays, vocab_size: int, vocab_sha256: str) -> int:
    """Instances against the tokenizer and the batch; returns the sequence length."""
    source = cfg.data or cfg.corpus
    seq_len = cfg.max_seq_length if cfg.corpus else None
    if cfg.data:
        seq_len = instances_manifest(cfg, vocab_sha256).get("config", {}).get("max_seq_length")
    max_id = int(arrays.ids.max()) if len(arrays.ids) else -1
    if max_id >= vocab_size:
        raise ValueError(
            f"{source} holds token id {max_id}, outside the tokenizer's {vocab_size}-entry vocabulary"
        )
    lengths = arrays.offsets[1:] - arrays.offsets[:-1]
    seq_len = seq_len or int(lengths.max())
    n_train = arrays.n - cfg.eval_instances
    if n_train < cfg.batch_size:
        raise ValueError(
            f"{source} has {arrays.n} instances: fewer than one global batch of {cfg.batch_size} after holding out "
            f"{cfg.eval_instances} for evaluation; lower --batch-size or --eval-instances"
        )
    return seq_len


def check_resume(run: str, mcfg: ModelConfig, cfg: TrainConfig) -> str | None:
    """The run folder's latest committed checkpoint (None for a new run), refused on the driver,
    before anything is written or started, when it cannot continue this run's settings (a refusal
    inside the workers would be retried as a failure)."""
    from electra_ray.export import committed_checkpoints, read_snapshot
    from electra_ray.train.checkpoint import META_FILE, check_compatible, parse_meta
    from electra_ray.train.loop import RESUME_KEYS

    snapshot = read_snapshot(run)
    if snapshot is None:
        return None
    _, latest = committed_checkpoints(snapshot, run)
    if latest is None:
        return None
    meta_uri = storage.join(run, latest, META_FILE)
    check_compatible(
        parse_meta(storage.read_text(meta_uri), meta_uri), mcfg.to_dict(), cfg.to_dict(), RESUME_KEYS
    )
    return storage.join(run, latest)


def storage_for_ray(path: str) -> dict[str, Any]:
    """RunConfig storage arguments: a pyarrow S3 filesystem (endpoint included) for s3:// paths."""
    if storage.is_remote(path):
        return {
            "storage_path": storage.to_pyarrow_path(path),
            "storage_filesystem": storage.pyarrow_filesystem(path),
        }
    return {"storage_path": os.path.abspath(path)}


def _started_here() -> bool:
    """True when this process started the Ray it is connected to (``ray.init`` with no cluster to
    join): such a Ray has no autoscaler and never grows."""
    try:
        import ray._private.worker as worker

        node = worker._global_node
        return bool(node is not None and node.head)
    except Exception:  # noqa: BLE001 - a Ray without this attribute: assume it may grow
        return False


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What one training worker reserves."""
    return {"CPU": float(cfg.cpus_per_worker), **({"GPU": 1.0} if cfg.use_gpu else {})}


def check_cluster_fits(cfg: TrainConfig, *, log=print) -> None:
    """Fail at once, with what is missing, when the smallest worker group cannot be placed on a
    Ray that cannot grow; on a cluster that may (an autoscaler, nodes still joining), say what the
    run waits for. Without this, Ray Train retries the placement for minutes, then fails with a
    generic timeout."""
    import ray

    need = worker_resources(cfg)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = sum(min(int(res.get(k, 0.0) // v) for k, v in need.items()) for res in nodes)
    if fits >= cfg.num_workers_min:
        return
    have = ", ".join(f"{sum(res.get(k, 0.0) for res in nodes):g} {k}" for k in need)
    want = " + ".join(f"{v:g} {k}" for k, v in need.items())
    msg = (
        f"{cfg.num_workers_min} training worker(s) of {want} each do not fit on this Ray "
        f"({len(nodes)} node(s), {have}; room for {fits})"
    )
    if _started_here():
        hint = (
            "drop --use-gpu or run on a GPU cluster"
            if cfg.use_gpu and not any(res.get("GPU", 0.0) for res in nodes)
            else "lower --num-workers or --cpus-per-worker"
        )
        raise ValueError(
            f"{msg}: this job started a local Ray, which cannot grow; {hint} (or set RAY_ADDRESS)"
        )
    log(f"note: {msg}; waiting for the cluster to add nodes (an autoscaler, or nodes still joining)")


def pretrain(cfg: TrainConfig, *, log=print) -> dict[str, Any]:
    """Run (or resume) a pretraining run; Ray must be initialized."""
    import pyarrow.fs as pafs
    import ray
    import ray.train

    from electra_ray.train.data import arrays_from_tables, load_instances
    from electra_ray.train.failures import Trainer  # TorchTrainer, without restarts that cannot help
    from electra_ray.train.loop import train_loop_per_worker
    from electra_ray.train.metrics import TB_PREFIX, MetricsLogger, plot_curves

    check_cluster_fits(cfg, log=log)
    enc, tok = open_tokenizer(cfg.tokenizer)
    tok_folder = local_tokenizer(cfg.tokenizer)
    mcfg, special = model_config_for(cfg, enc)
    if cfg.corpus:
        from electra_ray.data.tokenize import instances_dataset

        log(f"tokenizing {cfg.corpus} into the object store (no Parquet written)")
        ds = instances_dataset(cfg.corpus, cfg.tokenizer, max_seq_length=cfg.max_seq_length, seed=cfg.seed)
        arrays = arrays_from_tables(ray.get(ref) for ref in ds.to_arrow_refs())
        if arrays.n == 0:
            raise ValueError(f"{cfg.corpus}: the corpus gave no instances")
    else:
        arrays = load_instances(cfg.data)
    seq_len = check_data(cfg, arrays, mcfg.vocab_size, tok["sha256"])
    if seq_len > mcfg.max_position_embeddings:
        raise ValueError(
            f"instances of {seq_len} tokens exceed the {cfg.preset} preset's {mcfg.max_position_embeddings} positions"
        )
    run = run_folder(cfg)
    resume_from = check_resume(run, mcfg, cfg)
    if resume_from:
        log(f"resuming from {resume_from} (the latest committed checkpoint)")
    for name in TOKENIZER_FILES:
        src = os.path.join(tok_folder, name)
        if os.path.isfile(src):
            storage.write_bytes(storage.join(run, "tokenizer", name), open(src, "rb").read())
    storage.write_json(
        storage.join(run, "train_config.json"),
        {"train": cfg.to_dict(), "model": mcfg.to_dict(), "seq_len": seq_len},
    )
    overrides = "".join(f", {k}={v}" for k, v in sorted(cfg.model_set.items()))
    log(
        f"{arrays.n} instances of ≤{seq_len} tokens ({arrays.n - cfg.eval_instances} for training); "
        f"preset {cfg.preset}{overrides}; global batch {cfg.batch_size}; run folder {run}"
    )

    data_ref = ray.put(arrays)
    where = storage_for_ray(cfg.storage_path)
    store = {  # where workers upload checkpoints (the endpoint travels in the filesystem object)
        "filesystem": where.get("storage_filesystem") or pafs.LocalFileSystem(),
        "root": f"{where['storage_path'].rstrip('/')}/{cfg.name}",
    }
    workers = (
        cfg.num_workers_min
        if cfg.num_workers_min == cfg.num_workers_max
        else (cfg.num_workers_min, cfg.num_workers_max)
    )
    # the controller's local TensorBoard files (a killed driver's are removed by the next run)
    storage.remove_dead_scratch(TB_PREFIX)
    tb_dir = storage.scratch_folder(TB_PREFIX)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", PRINT_PATCH)
    trainer = Trainer(
        train_loop_per_worker,
        train_loop_config={
            "train": cfg.to_dict(),
            "model": mcfg.to_dict(),
            "special": special,
            "seq_len": seq_len,
            "data_ref": data_ref,
            "store": store,
            "run": run,  # the same folder as a URI (train/compile_cache.py writes through storage.py)
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=worker_resources(cfg),
            **(
                {"elastic_resize_monitor_interval_s": cfg.resize_check_s}
                if cfg.num_workers_min != cfg.num_workers_max
                else {}
            ),
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            **where,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=MetricsLogger(run, tb_dir).callbacks(),
        ),
    )
    try:
        result = trainer.fit()
    finally:  # the controller (on this node) wrote its event files there; they are in the run folder
        shutil.rmtree(tb_dir, ignore_errors=True)
    if result.error:
        raise result.error
    ret = result.return_value or {}
    history = ret.get("history", [])
    final = history[-1] if history else {}
    summary = {
        "rank0_pid": ret.get("pid"),
        "run": run,
        "step": ret.get("step"),
        "final": final,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "history": history,  # rank 0's reports of this launch (the last worker group's)
        "progress": ret.get("progress"),
        "fast_step": ret.get("fast_step") or {},  # compile seconds, graphs from/to the run folder
    }
    summary["curves"] = plot_curves(run)
    return summary
