"""Write a large deterministic synthetic multistream dump (+ index) for the benchmarks.

    python benchmarks/make_synthetic_dump.py --size-mb 200 --output bench_output/synthetic

Prints one JSON line: paths, pages, wikitext bytes, compressed bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from electra_ray.wiki.dumpwriter import write_multistream  # noqa: E402
from electra_ray.wiki.sample import read_sample_pages  # noqa: E402
from electra_ray.wiki.synthetic import synthetic_pages  # noqa: E402


def make(output: str, size_mb: float, seed: int = 0) -> dict:
    os.makedirs(output, exist_ok=True)
    dump = os.path.join(output, "jawiki-synthetic-pages-articles-multistream.xml.bz2")
    index = os.path.join(output, "jawiki-synthetic-pages-articles-multistream-index.txt.bz2")
    meta = os.path.join(output, "synthetic.json")
    want = {"size_mb": size_mb, "seed": seed}
    if os.path.exists(meta) and os.path.exists(dump):
        with open(meta) as f:
            old = json.load(f)
        if {k: old.get(k) for k in want} == want:
            return old
    seeds = read_sample_pages(os.path.join(ROOT, "data", "sample", "pages"))
    stats = {"pages": 0, "wikitext_bytes": 0}

    def counted():
        for p in synthetic_pages(seeds, int(size_mb * 1e6), seed):
            stats["pages"] += 1
            stats["wikitext_bytes"] += len(p.text.encode())
            yield p

    t0 = time.time()
    write_multistream(counted(), dump, index, pages_per_stream=100, level=9)
    out = {
        **want,
        **stats,
        "dump": dump,
        "index": index,
        "dump_bytes": os.path.getsize(dump),
        "seconds": round(time.time() - t0, 1),
    }
    with open(meta, "w") as f:
        json.dump(out, f, indent=2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=200.0, help="MB of wikitext to generate (default 200)")
    ap.add_argument("--output", default=os.path.join(ROOT, "bench_output", "synthetic"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(make(a.output, a.size_mb, a.seed), ensure_ascii=False))


if __name__ == "__main__":
    main()
