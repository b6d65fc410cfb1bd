"""The whole pipeline, small, on the bundled sample dump, on this machine (`make demo`).

Today: the corpus stage (dump → clean sentences). Later stages append themselves here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SAMPLE = os.path.join(ROOT, "data", "sample", "jawiki-sample-pages-articles")
OUT = os.path.join(ROOT, "demo_output")


def run_job(script: str, *args: str) -> dict:
    """Run a job as a user would, show its output, return its last-line JSON result."""
    cmd = [sys.executable, os.path.join(ROOT, "jobs", script), *args]
    print(
        "\n$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:]), flush=True
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    last = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        print("  " + line, end="", flush=True)
        if line.strip():
            last = line
    if proc.wait() != 0:
        sys.exit(f"{script} failed (exit {proc.returncode})")
    return json.loads(last)


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    corpus = os.path.join(OUT, "corpus")
    res = run_job(
        "prepare_corpus.py",
        "--dump",
        SAMPLE + "-multistream.xml.bz2",
        "--index",
        SAMPLE + "-multistream-index.txt.bz2",
        "--output",
        corpus,
        "--format",
        "text",
        "--pages-per-shard",
        "20",
    )

    from electra_ray.data.corpus import read_corpus

    table = read_corpus(corpus)
    print(
        f"\ncorpus: {os.path.relpath(corpus, ROOT)}/ ({res['shards']} Parquet shards, manifest.json, text/)"
    )
    c = res["counts"]
    print(
        f"  {c['articles_kept']} articles and {c['sentences_kept']} sentences kept from {c['pages_in']} pages"
    )
    rows = table.to_pylist()
    for row in rows[:3]:
        print(f"\n  [{row['page_id']}] {row['title']}")
        for s in row["sentences"][:3]:
            print(f"    {s}")
    print("\ndone. Next stages (vocabulary, instances, pretraining) arrive with their issues.")


if __name__ == "__main__":
    main()
