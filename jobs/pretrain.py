r"""Instances → ELECTRA (generator + discriminator) on Ray Train; checkpoints in the run folder.

    python jobs/pretrain.py --data out/instances --tokenizer out/tokenizer \
        --storage-path s3://bucket/runs --name electra-small [--preset small] [--num-workers 2:8] [--use-gpu]

The run folder is STORAGE_PATH/NAME; starting the job again with the same name resumes from its
latest committed checkpoint. --batch-size is the global batch (sequences per optimizer step),
whatever the number of workers: each worker accumulates gradients over its share.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from electra_ray import cli  # noqa: E402
from electra_ray.config import MODEL_PRESETS, ConfigError, TrainConfig, help_of, parse_model_set  # noqa: E402


def workers(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(":")
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--num-workers takes N or MIN:MAX, got {text!r}") from None


def parse_args(argv: list[str] | None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    h = lambda name: help_of(TrainConfig, name)  # noqa: E731
    d = TrainConfig.__dataclass_fields__
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help=h("data"))
    src.add_argument("--corpus", help=h("corpus"))
    p.add_argument("--tokenizer", required=True, help=h("tokenizer"))
    p.add_argument("--storage-path", required=True, help=h("storage_path"))
    p.add_argument("--name", required=True, help=h("name"))
    p.add_argument("--preset", default="small", choices=sorted(MODEL_PRESETS), help=h("preset"))
    p.add_argument(
        "--model-set",
        action="append",
        default=None,
        metavar="FIELD=VALUE",
        help=h("model_set") + " (repeatable)",
    )
    p.add_argument("--num-workers", type=workers, default=(1, 1), help="N, or MIN:MAX for an elastic run")
    p.add_argument("--use-gpu", action="store_true", help=h("use_gpu"))
    for name in ("fast_step", "fast_overlap", "fast_fuse_linears"):
        p.add_argument(
            "--" + name.replace("_", "-"), choices=("auto", "on", "off"), default="auto", help=h(name)
        )
    p.add_argument("--fast-compile-cache", choices=("on", "off"), default="on", help=h("fast_compile_cache"))
    p.add_argument("--allreduce-dtype", choices=("fp32", "bf16"), default="fp32", help=h("allreduce_dtype"))
    for flag, typ in (
        ("max_steps", int),
        ("total_steps", int),
        ("batch_size", int),
        ("micro_batch_size", int),
        ("lr", float),
        ("warmup_steps", int),
        ("weight_decay", float),
        ("clip_norm", float),
        ("seed", int),
        ("checkpoint_every", int),
        ("keep_checkpoints", int),
        ("max_failures", int),
        ("cpus_per_worker", int),
        ("max_seq_length", int),
        ("log_every", int),
        ("eval_every", int),
        ("eval_instances", int),
        ("nonfinite_rollback", int),
        ("max_rollbacks", int),
        ("upload_retry_s", float),
        ("resize_check_s", float),
        ("allreduce_bucket_mb", float),
    ):
        p.add_argument("--" + flag.replace("_", "-"), type=typ, default=d[flag].default, help=h(flag))
    a = p.parse_args(argv)
    try:
        model_set = parse_model_set(a.model_set or [])
    except ConfigError as e:
        p.error(str(e))
    kw = {
        k: getattr(a, k)
        for k in (
            "data",
            "tokenizer",
            "storage_path",
            "name",
            "preset",
            "use_gpu",
            "fast_step",
            "fast_overlap",
            "fast_fuse_linears",
            "fast_compile_cache",
            "allreduce_bucket_mb",
            "allreduce_dtype",
            "max_steps",
            "total_steps",
            "batch_size",
            "micro_batch_size",
            "lr",
            "warmup_steps",
            "weight_decay",
            "clip_norm",
            "seed",
            "checkpoint_every",
            "keep_checkpoints",
            "max_failures",
            "cpus_per_worker",
            "max_seq_length",
            "corpus",
            "log_every",
            "eval_every",
            "eval_instances",
            "nonfinite_rollback",
            "max_rollbacks",
            "upload_retry_s",
            "resize_check_s",
        )
    }
    return TrainConfig(
        num_workers_min=a.num_workers[0], num_workers_max=a.num_workers[1], model_set=model_set, **kw
    )


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    print(cfg.describe(), flush=True)
    from electra_ray.data.tokenize import check_tokenizer
    from electra_ray.train.trainer import check_instances_folder, pretrain

    # fail fast, before starting Ray: the tokenizer, and the instance folder against it
    tok = check_tokenizer(cfg.tokenizer, "auto")
    if cfg.data:
        check_instances_folder(cfg, tok["sha256"])
    cli.init_ray()

    s = pretrain(cfg)
    f = s["final"]
    print(
        f"run {s['run']}: step {s['step']}, loss {f.get('loss', float('nan')):.4f}, generator accuracy "
        f"{f.get('gen_acc', float('nan')):.3f}, discriminator accuracy {f.get('disc_acc', float('nan')):.3f}",
        flush=True,
    )
    out = {"run": s["run"], "step": s["step"], "checkpoint": s["checkpoint"], "metrics": f}
    if s.get("fast_step"):  # compile seconds, graphs from and to the run folder's compile cache
        out["fast_step"] = s["fast_step"]
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
