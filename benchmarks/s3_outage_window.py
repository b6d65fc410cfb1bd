"""How long an S3 outage the pyarrow filesystem rides out, by number of attempts per request.

    python benchmarks/s3_outage_window.py [--attempts 3,8,10] [--outage 8] [--long 300]

Ray Train's controller writes its checkpoint bookkeeping through the pyarrow S3 filesystem that
``electra_ray.storage.pyarrow_filesystem`` builds, and a failed write ends the run. This starts a
moto S3 server on 127.0.0.1 behind a TCP relay that can be cut (tests/relay.py), then for each
attempt count: (1) cuts the relay for ``--outage`` seconds during one write and reports whether
the write went through and after how long; (2) cuts it for ``--long`` seconds and reports after
how long the write gives up, which is the longest outage that count rides out. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_through_cut(fs, path: str, proxy, seconds: float) -> dict:
    """One write while the relay is down for ``seconds``; outcome and time taken."""
    proxy.cut()
    timer = threading.Timer(seconds, proxy.restore)
    timer.start()
    t = time.perf_counter()
    try:
        with fs.open_output_stream(path) as out:
            out.write(b"{}")
        ok = True
    except OSError:
        ok = False
    took = time.perf_counter() - t
    timer.cancel()
    proxy.restore()
    return {"ok": ok, "seconds": round(took, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attempts", default="3,8,10", help="attempt counts to measure (comma-separated)")
    ap.add_argument("--outage", type=float, default=8.0, help="seconds of the short cut")
    ap.add_argument("--long", type=float, default=300.0, help="seconds of the cut that outlasts the retries")
    a = ap.parse_args()

    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    import boto3
    from moto.server import ThreadedMotoServer
    from relay import FlakyProxy

    from electra_ray import storage

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "benchmark")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "benchmark")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="outage")
    proxy = FlakyProxy(endpoint)
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    rows = []
    try:
        for n in (int(x) for x in a.attempts.split(",")):
            os.environ["AWS_MAX_ATTEMPTS"] = str(n)  # the filesystem the project builds, n attempts
            fs = storage.pyarrow_filesystem("s3://outage")
            short = write_through_cut(fs, f"outage/short-{n}.json", proxy, a.outage)
            long = write_through_cut(fs, f"outage/long-{n}.json", proxy, a.long)
            row = {"attempts": n, f"outage_{a.outage:g}s": short, f"outage_{a.long:g}s": long}
            print(
                f"{n:3d} attempts: {a.outage:g}-s outage {'ridden out' if short['ok'] else 'failed'} "
                f"after {short['seconds']} s; a {a.long:g}-s outage "
                f"{'ridden out' if long['ok'] else 'gives up'} after {long['seconds']} s",
                flush=True,
            )
            rows.append(row)
    finally:
        proxy.close()
        server.stop()
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
