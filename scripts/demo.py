"""The whole pipeline, small, on the bundled sample dump, on this machine (`make demo`).

Today: corpus (dump → clean sentences) → vocabulary (MeCab + WordPiece) → pretraining instances.
Later stages (pretraining, export) append themselves here.
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

    tokenizer = os.path.join(OUT, "tokenizer")
    tok = run_job(
        "train_tokenizer.py",
        "--corpus",
        corpus,
        "--output",
        tokenizer,
        "--vocab-size",
        "3000",
        "--limit-alphabet",
        "1200",
        "--heldout-fraction",
        "0.1",
    )
    instances = os.path.join(OUT, "instances")
    inst = run_job("tokenize_corpus.py", "--corpus", corpus, "--tokenizer", tokenizer, "--output", instances)

    from transformers import AutoTokenizer

    from electra_ray.tokenization import JapaneseWordPieceTokenizer

    hf = AutoTokenizer.from_pretrained(tokenizer)
    fast = JapaneseWordPieceTokenizer.from_pretrained(tokenizer)
    sentence = rows[0]["sentences"][0]
    print(
        f"\ntokenizer: {os.path.relpath(tokenizer, ROOT)}/ ({tok['vocab_size']} entries; loads as {type(hf).__name__}; "
        f"held-out UNK rate {tok['unk_rate']})"
    )
    print(f"  {sentence}")
    print(f"  → {' '.join(fast.tokenize(sentence))}")
    print(
        f"  ids {fast.encode(sentence)[:16]}… (identical to BertJapaneseTokenizer: "
        f"{fast.encode(sentence) == hf(sentence, add_special_tokens=False)['input_ids']})"
    )
    print(
        f"\ninstances: {os.path.relpath(instances, ROOT)}/ ({inst['instances']} instances of ≤128 tokens, "
        f"{inst['tokens']} tokens)"
    )
    print("\ndone. Pretraining and export arrive with their issues.")


if __name__ == "__main__":
    main()
