"""A training run's checkpoint → Hugging Face model folders (discriminator, generator) with the tokenizer.

    python jobs/export.py --run s3://bucket/runs/r1 --output out/hf [--step 2000]

Exports the latest checkpoint committed in Ray Train's checkpoint_manager_snapshot.json (or, in a
run folder without one, the highest complete step_XXXXXXXX folder); --step picks another. Writes
OUTPUT/discriminator (ElectraForPreTraining), OUTPUT/generator (ElectraForMaskedLM), each with
model.safetensors, config.json and the run's tokenizer files, and OUTPUT/export.json. No Ray needed.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from electra_ray import cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--run", required=True, help="the run folder, STORAGE/RUN (local path or s3://)")
    p.add_argument("--output", required=True, help="folder to write the HF models to (local path or s3://)")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="export this step's checkpoint (default: the latest committed one)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    from electra_ray.export import export_run

    return export_run(a.run, a.output, step=a.step, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
    sys.exit(cli.run(main))
