"""Build the bundled sample dump (plain, bz2, multistream + index) from data/sample/pages/*.wiki.

python scripts/build_sample_dump.py            # rewrite data/sample/jawiki-sample-*
python scripts/build_sample_dump.py --check    # exit 1 if the committed files are stale
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from electra_ray.wiki.dumpwriter import write_dump  # noqa: E402
from electra_ray.wiki.sample import SAMPLE_PAGES_PER_STREAM, read_sample_pages  # noqa: E402

SAMPLE = os.path.join(ROOT, "data", "sample")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    a = ap.parse_args()
    pages = read_sample_pages(os.path.join(SAMPLE, "pages"))
    if a.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = write_dump(pages, tmp, pages_per_stream=SAMPLE_PAGES_PER_STREAM)
            stale = [
                k
                for k, p in fresh.items()
                if not filecmp.cmp(p, os.path.join(SAMPLE, os.path.basename(p)), shallow=False)
            ]
        if stale:
            print(f"stale sample files: {stale}; run python scripts/build_sample_dump.py")
            return 1
        print("sample dump is up to date")
        return 0
    paths = write_dump(pages, SAMPLE, pages_per_stream=SAMPLE_PAGES_PER_STREAM)
    for kind, p in paths.items():
        print(f"{kind:12s} {os.path.relpath(p, ROOT)} ({os.path.getsize(p)} bytes)")
    print(f"{len(pages)} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
