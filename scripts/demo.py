"""The whole pipeline, small, on the bundled sample dump, on this machine (`make demo`).

corpus (dump → clean sentences) → vocabulary (MeCab + WordPiece) → pretraining instances →
a `tiny` ELECTRA pretrained on 2 Ray Train workers → Hugging Face export → what the model says.
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
# transformers' progress bars (writing and loading one small shard) only clutter the demo's output
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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
        "4000",
        "--limit-alphabet",
        "1500",
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

    runs = os.path.join(OUT, "runs")
    pre = run_job(
        "pretrain.py",
        "--data",
        instances,
        "--tokenizer",
        tokenizer,
        "--storage-path",
        runs,
        "--name",
        "demo-tiny",
        "--preset",
        "tiny",
        "--num-workers",
        "2",
        "--max-steps",
        "1000",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "100",
        "--checkpoint-every",
        "500",
        "--log-every",
        "100",
        "--eval-every",
        "500",
        "--eval-instances",
        "64",
    )
    show_heldout(pre["metrics"], tok["vocab_size"])
    hf_out = os.path.join(OUT, "hf")
    run_job("export.py", "--run", pre["run"], "--output", hf_out)
    show_model(hf_out)
    print(
        f"\ndone: corpus, tokenizer, instances, run and Hugging Face folders are under {os.path.relpath(OUT, ROOT)}/"
    )


def show_heldout(m: dict, vocab_size: int) -> None:
    """The held-out evaluation of the last step, next to chance."""
    if "eval_gen_acc" not in m:
        return
    base = 1 - m["eval_replaced_share"]
    print(
        f"\nheld-out instances: generator masked accuracy {m['eval_gen_acc']:.3f} (chance 1/{vocab_size} = "
        f"{1 / vocab_size:.5f}); discriminator accuracy {m['eval_disc_acc']:.3f} vs {base:.3f} for always "
        f"'original', replaced-token recall {m['eval_replaced_recall']:.3f}"
    )
    print(
        "  (in a minute the generator learns which tokens are likely, and the discriminator starts to flag\n"
        "   its samples, drawn at temperature 3 for this tiny model: see 'What the demo's tiny model\n"
        "   learns' in README.md)"
    )


def show_model(hf_out: str) -> None:
    """Fill-mask from the generator; per-token 'replaced' scores from the discriminator."""
    import torch
    from transformers import AutoModelForPreTraining, AutoTokenizer, pipeline

    gen = os.path.join(hf_out, "generator")
    disc = os.path.join(hf_out, "discriminator")
    fill = pipeline("fill-mask", model=gen, tokenizer=gen)
    text = "柚木川は東京湾に注ぐ[MASK]である。"
    print(f"\nfill-mask ({os.path.relpath(gen, ROOT)}): {text}")
    for p in fill(text, top_k=5):
        print(f"  {p['token_str']:<8} {p['score']:.3f}")
    tok = AutoTokenizer.from_pretrained(disc)
    model = AutoModelForPreTraining.from_pretrained(disc).eval()
    swapped = "柚木川は東京湾に注ぐ二級博物館である。"
    enc = tok(swapped, return_tensors="pt")
    with torch.no_grad():
        scores = torch.sigmoid(model(**enc).logits[0])
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
    print(f"\ndiscriminator ({os.path.relpath(disc, ROOT)}): P(replaced) per token of {swapped!r}")
    print("  " + "  ".join(f"{t}:{s:.2f}" for t, s in zip(tokens, scores.tolist())))


if __name__ == "__main__":
    main()
