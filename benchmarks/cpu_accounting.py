"""Where the CPU goes while a command runs: CPU seconds per process, sampled from /proc.

    python benchmarks/cpu_accounting.py -- python jobs/prepare_corpus.py --dump … --index … --output …

Samples every process's utime+stime every 0.3 s while the command runs (processes that exit
between samples lose their last 0.3 s) and prints the top consumers, e.g. to see how much of a
small machine Ray's own services (driver, raylet, stats and autoscaling actors) take next to the
workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def snapshot() -> dict[str, tuple[int, str]]:
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12]), cmd)
    return out


def cpu_seconds(
    before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]
) -> list[tuple[float, str]]:
    """(CPU seconds, command line) of each process in ``after`` since ``before``."""
    hz = os.sysconf("SC_CLK_TCK")
    return [
        ((ticks - before.get(pid, (0, ""))[0]) / hz, cmd or f"pid {pid}")
        for pid, (ticks, cmd) in after.items()
    ]


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    before = snapshot()
    t0 = time.time()
    proc = subprocess.Popen(argv)
    last: dict[str, tuple[int, str]] = {}
    while proc.poll() is None:
        last.update(snapshot())
        time.sleep(0.3)
    wall = time.time() - t0
    rows = sorted(cpu_seconds(before, last))
    rows = [r for r in reversed(rows) if r[0] > 0]
    print(
        f"\nwall {wall:.1f} s, CPU {sum(r[0] for r in rows):.1f} s over {len(rows)} processes (exit {proc.returncode})"
    )
    for secs, cmd in rows[:15]:
        print(f"{secs:8.2f} s  {cmd}")


if __name__ == "__main__":
    main()
