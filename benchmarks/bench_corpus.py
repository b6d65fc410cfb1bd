"""Corpus-stage benchmark on the synthetic dump: our cleaner vs WikiExtractor, and the Ray job.

    python benchmarks/bench_corpus.py              # 200 MB of wikitext, 3 repetitions
    python benchmarks/bench_corpus.py --quick      # 20 MB, 1 repetition (about a minute on 2 cores)

What it measures (MB/s are MB = 1e6 bytes of UTF-8 wikitext per second):

1. the cleaner alone on one core (``clean_page`` over the articles of the first
   min(size, 60) MB of wikitext): MB/s, pages/s, sentences kept;
2. WikiExtractor (PyPI ``wikiextractor``, its library API, configured as the CLI with
   ``--no-templates``) on the same pages in the same process: MB/s, pages/s; then the
   "usable sentences" of its output under the filters our cleaner uses, and a rough
   hole indicator for both (share of kept sentences matching :data:`HOLE_PATTERN`);
3. the whole Ray job (``prepare_corpus``, multistream mode with the index, 1000 pages a shard)
   on 1 and on 2 CPUs, each in a fresh subprocess with its own local Ray; MB/s over all the
   dump's wikitext (articles and the rest), pages/s over all its pages, the 2-vs-1 speed-up;
   and once more on 2 CPUs without the index (streaming mode);
4. peak RSS while each Ray job runs (polled every 0.2 s): the largest single Ray worker
   (``ray::`` processes) and the largest total of Ray workers + the driver; without --quick,
   the 2-CPU job also runs on a dump 1/4 the size, to show whether the peak grows with it.

Human-readable lines go to stdout as it runs; the LAST line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from xml.sax.saxutils import escape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.make_synthetic_dump import make  # noqa: E402
from electra_ray.config import CleanConfig, CorpusConfig  # noqa: E402
from electra_ray.data.corpus import ShardStats, clean_page  # noqa: E402
from electra_ray.wiki.clean import Unit  # noqa: E402
from electra_ray.wiki.dump import article_drop_reason, iter_pages  # noqa: E402
from electra_ray.wiki.sentences import sentences_of  # noqa: E402

MB = 1e6
SINGLE_CORE_CAP_MB = 60.0
WARMUP_PAGES = 20
PAGES_PER_SHARD = 1000
POLL_SECONDS = 0.2
RAY_JOB_TIMEOUT = 3 * 3600

#: A rough, visible "hole" indicator: text that reads as if something was cut out of it.
#: Checked on kept sentences (after NFKC, so full-width brackets are ASCII here):
#: a sentence starting with a bare topic particle (``は、…``: the subject was a template),
#: an opening bracket followed by a comma or nothing (``(、``, ``()``, ``「」``, ``『』``),
#: a doubled comma (``、、``), or a comma right before a closing bracket (``、)``).
HOLE_PATTERN = re.compile(
    r"^[はがをもの][、,]|[(「『【〔\[][\s、,・]*[)」』】〕\]]|[(「『【〔\[][、,]|、\s*、|[、,][)」』】〕\]]"
)


def log(msg: str) -> None:
    print(msg, flush=True)


def rnd(x, n=2):
    return None if x is None else round(x, n)


# ---------------------------------------------------------------------------------------------
# single core: our cleaner and WikiExtractor on the same pages


def collect_articles(dump: str, cap_bytes: float) -> tuple[list, int]:
    """The articles among the dump's first ``cap_bytes`` of wikitext (all pages counted)."""
    pages, seen = [], 0
    for page in iter_pages(dump):
        if seen >= cap_bytes:
            break
        seen += len(page.text.encode("utf-8"))
        if article_drop_reason(page) is None:
            pages.append(page)
    return pages, seen


def bench_cleaner(pages: list, nbytes: int, reps: int) -> dict:
    cfg = CleanConfig()
    for p in pages[:WARMUP_PAGES]:
        clean_page(p, cfg, ShardStats())
    best, results, stats = None, None, None
    for _ in range(reps):
        st = ShardStats()
        out = []
        gc.collect()
        t0 = time.perf_counter()
        for p in pages:
            out.append(clean_page(p, cfg, st))
        dt = time.perf_counter() - t0
        if best is None or dt < best:
            best = dt
        results, stats = out, st
    sentences = [s for r in results if r for s in r]
    return {
        "seconds": best,
        "mb_s": nbytes / MB / best,
        "pages_s": len(pages) / best,
        "sentences": sentences,
        "articles_kept": sum(1 for r in results if r),
        "sentence_drops": dict(stats.sentence_drops),
        "page_drops": dict(stats.page_drops),
    }


def siteinfo_of(dump: str) -> tuple[str, str, set[str]]:
    """(urlbase, template prefix, known namespaces) read from <siteinfo> as WikiExtractor's process_dump does."""
    from wikiextractor.WikiExtractor import decode_open, tagRE

    urlbase, prefix, known = "", "", {"Template"}
    with decode_open(dump) as f:
        for line in f:
            m = tagRE.search(line)
            if not m:
                continue
            tag = m.group(2)
            if tag == "base":
                base = m.group(3)
                urlbase = base[: base.rfind("/")]
            elif tag == "namespace":
                known.add(m.group(3))
                if 'key="10"' in line:
                    prefix = m.group(3) + ":"
            elif tag == "/siteinfo":
                break
    return urlbase, prefix, known


def wikiextractor_kwargs(dump: str) -> tuple[str, dict]:
    """Extractor's constructor arguments exactly as the CLI builds them with default flags
    (no --links/--html/--json/--text, html_safe on), plus the siteinfo values process_dump adds.
    With --no-templates the CLI only skips loading template definitions: each Extractor gets
    an empty template table (templates=None), which is what we pass too."""
    from wikiextractor.extract import _DEFAULT_IGNORED_TAG_PATTERNS, ignoreTag

    urlbase, prefix, known = siteinfo_of(dump)
    kw = {
        "keepLinks": False,
        "HtmlFormatting": False,
        "to_json": False,
        "to_text": False,
        "discard_empty": False,
        "ignored_tag_patterns": list(_DEFAULT_IGNORED_TAG_PATTERNS) + [ignoreTag("a")],
        "templatePrefix": prefix,
        "knownNamespaces": known,
    }
    return urlbase, kw


def bench_wikiextractor(dump: str, pages: list, nbytes: int, reps: int) -> dict:
    from wikiextractor.extract import Extractor

    # The CLI's own logger setup is WARNING+ on its own handler; per-article template errors are
    # below that. Keep its library logging out of our output.
    wl = logging.getLogger("wikiextractor")
    wl.setLevel(logging.ERROR)
    wl.propagate = False
    urlbase, kw = wikiextractor_kwargs(dump)
    # WikiExtractor reads the XML-escaped text lines of the dump (it unescapes inside clean()):
    # give it exactly that (the dump writer escapes with xml.sax.saxutils.escape too).
    jobs = [(str(p.page_id), p.title, [escape(p.text)]) for p in pages]

    def run_one(job) -> str:
        pid, title, lines = job
        out = io.StringIO()
        Extractor(pid, "", urlbase, title, lines, templates=None, redirects=None, **kw).extract(out, True)
        return out.getvalue()

    for job in jobs[:WARMUP_PAGES]:
        run_one(job)
    best, outputs = None, None
    for _ in range(reps):
        outs = []
        gc.collect()
        t0 = time.perf_counter()
        for job in jobs:
            outs.append(run_one(job))
        dt = time.perf_counter() - t0
        if best is None or dt < best:
            best = dt
        outputs = outs
    del jobs
    # usable sentences: its paragraphs (one a line) through our own splitter and filters
    drops: Counter = Counter()
    sentences: list[str] = []
    for text in outputs:
        sentences.extend(
            sentences_of([Unit(par) for par in wikiextractor_paragraphs(text)], CleanConfig(), drops)
        )
    return {
        "seconds": best,
        "mb_s": nbytes / MB / best,
        "pages_s": len(pages) / best,
        "sentences": sentences,
        "sentence_drops": dict(drops),
    }


def wikiextractor_paragraphs(doc: str) -> list[str]:
    """The body lines of one <doc> output: without the <doc>/</doc> lines and the title line."""
    out = []
    title_next = False
    for line in doc.split("\n"):
        if line.startswith("<doc "):
            title_next = True
            continue
        if line.startswith("</doc>"):
            continue
        if title_next:  # the CLI writes the title as the first line of every doc
            title_next = False
            continue
        if line.strip():
            out.append(line)
    return out


def hole_share(sentences: list[str]) -> float | None:
    if not sentences:
        return None
    return sum(1 for s in sentences if HOLE_PATTERN.search(s)) / len(sentences)


# ---------------------------------------------------------------------------------------------
# the Ray job, one subprocess per run, with RSS polling


def _proc_snapshot() -> dict[int, tuple[int, str, int]]:
    """pid → (ppid, command line, RSS bytes) for every process we can read.

    Read from /proc where there is one (about 3 ms a scan, against about 40 ms through psutil:
    the poller must not steal much of a 2-core machine from the job it measures); psutil elsewhere.
    """
    snap: dict[int, tuple[int, str, int]] = {}
    if not os.path.isdir("/proc/self"):
        import psutil

        for p in psutil.process_iter(["pid", "ppid", "cmdline", "memory_info"]):
            info = p.info
            if info.get("memory_info") is None:
                continue
            snap[info["pid"]] = (
                info["ppid"] or 0,
                " ".join(info.get("cmdline") or []),
                info["memory_info"].rss,
            )
        return snap
    page = os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss = int(f.read().split()[1]) * page
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        # the fields after the ")" that closes the command name: state, ppid, …
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        snap[pid] = (ppid, cmd, rss)
    return snap


def _descendants(snap: dict[int, tuple[int, str, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in snap.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the job subprocess we started (its own session: the driver and the Ray it started)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _pool_shard(args: tuple) -> int:
    """One shard's whole job (ranged read, parse, clean, write), as the Ray task does it."""
    dump, head, spec, output = args
    from electra_ray.config import CleanConfig
    from electra_ray.data.pipeline import _shard_block, process_shard_rows
    from electra_ray.wiki.dump import read_shard

    block = _shard_block(spec.shard, read_shard(dump, head, spec))
    process_shard_rows(
        block, output=output, clean=CleanConfig().to_dict(), formats=("parquet",), fingerprint="bench"
    )
    return spec.shard


def bench_process_pool(info: dict, output: str, shards: int = 24) -> dict:
    """The Ray job's per-shard work on a plain multiprocessing pool of 1 and 2 processes: how well
    the work itself scales on this machine, without Ray's services sharing the cores."""
    from multiprocessing import get_context

    from electra_ray.wiki.dump import plan_shards, read_head, read_index

    index = read_index(info["index"])
    specs = plan_shards(index, os.path.getsize(info["dump"]), 1000)[:shards]
    head = read_head(info["dump"], index.offsets[0])
    out = os.path.join(output, "pool-run")
    rates = {}
    for n in (1, 2):
        with get_context("spawn").Pool(n) as pool:
            pool.map(_pool_shard, [(info["dump"], head, s, out) for s in specs[:n]])  # warm the processes
            t = time.perf_counter()
            pool.map(_pool_shard, [(info["dump"], head, s, out) for s in specs], chunksize=1)
            rates[n] = len(specs) / (time.perf_counter() - t)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "pool_1proc_shards_s": rnd(rates[1]),
        "pool_2proc_shards_s": rnd(rates[2]),
        "pool_speedup_2v1": rnd(rates[2] / rates[1], 3),
    }


def run_ray_job(name: str, info: dict, cpus: int, with_index: bool, output: str) -> dict:
    """Run prepare_corpus in a subprocess with a fresh local Ray of ``cpus`` CPUs; poll RSS."""
    run_dir = os.path.join(output, "ray-runs", name)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    corpus_dir = os.path.join(run_dir, "corpus")
    result_file = os.path.join(run_dir, "result.json")
    log_file = os.path.join(run_dir, "job.log")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_ray-worker",
        str(cpus),
        "--_dump",
        info["dump"],
        "--_out",
        corpus_dir,
        "--_result",
        result_file,
    ]
    if with_index:
        cmd += ["--_index", info["index"]]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    peak_worker = peak_total = peak_tree = 0
    max_workers_seen = 0
    max_busy = 0  # most cleaning tasks seen running at once (sampled)
    by_title: dict[str, int] = {}  # process title after "ray::" (task, actor, agent) -> peak RSS
    t0 = time.time()
    with open(log_file, "wb") as lf:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while proc.poll() is None:
                if time.time() - t0 > RAY_JOB_TIMEOUT:
                    raise TimeoutError(f"{name}: the Ray job ran past {RAY_JOB_TIMEOUT} s")
                snap = _proc_snapshot()
                tree = _descendants(snap, proc.pid)
                workers = [snap[p][2] for p in tree if "ray::" in snap[p][1]]
                driver = snap[proc.pid][2] if proc.pid in snap else 0
                busy = 0
                for p in tree:
                    cmd = snap[p][1]
                    if "ray::" in cmd:
                        title = cmd.split("ray::", 1)[1].strip()[:100]
                        by_title[title] = max(by_title.get(title, 0), snap[p][2])
                        # a cleaning task running (multistream), or a cleaner actor inside a call (stream)
                        if "MapBatches(process_shard_rows)" in title or (
                            "MapBatches(" in title and title.endswith(".submit")
                        ):
                            busy += 1
                max_busy = max(max_busy, busy)
                if workers:
                    peak_worker = max(peak_worker, max(workers))
                    max_workers_seen = max(max_workers_seen, len(workers))
                peak_total = max(peak_total, sum(workers) + driver)
                peak_tree = max(peak_tree, driver + sum(snap[p][2] for p in tree))
                time.sleep(POLL_SECONDS)
        except BaseException:
            _stop_group(proc)
            raise
    wall = time.time() - t0
    out = {
        "name": name,
        "cpus": cpus,
        "mode": "multistream" if with_index else "stream",
        "rc": proc.returncode,
        "subprocess_wall_s": round(wall, 2),
        "log": log_file,
        "peak_worker_rss_mb": rnd(peak_worker / MB, 1),
        "peak_total_rss_mb": rnd(peak_total / MB, 1),
        "peak_tree_rss_mb": rnd(peak_tree / MB, 1),
        "ray_workers_seen": max_workers_seen,
        "max_cleaners_running_seen": max_busy,
        "peak_rss_mb_by_ray_process": {
            t: rnd(v / MB, 1) for t, v in sorted(by_title.items(), key=lambda kv: -kv[1])
        },
    }
    if proc.returncode != 0 or not os.path.exists(result_file):
        with open(log_file, "rb") as f:
            tail = f.read()[-3000:].decode("utf-8", "replace")
        out["error"] = f"exit status {proc.returncode}; log tail:\n{tail}"
        return out
    with open(result_file) as f:
        res = json.load(f)
    secs = res["seconds"]
    out.update(res)
    out["mb_s"] = info["wikitext_bytes"] / MB / secs
    out["pages_s"] = info["pages"] / secs
    return out


def ray_worker(a: argparse.Namespace) -> None:
    """Hidden mode: one Ray job, timed around prepare_corpus alone; result to --_result."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(
        address="local",
        num_cpus=a._ray_worker,
        include_dashboard=False,
        object_store_memory=1 << 30,
        log_to_driver=False,
    )
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        from electra_ray.data.pipeline import prepare_corpus

        cfg = CorpusConfig(dump=a._dump, index=a._index, output=a._out, pages_per_shard=PAGES_PER_SHARD)
        t0 = time.perf_counter()
        m = prepare_corpus(cfg, log=lambda s: print(s, flush=True))
        secs = time.perf_counter() - t0
    finally:
        ray.shutdown()
    res = {
        "seconds": secs,
        "counts": m["counts"],
        "shards": m["output"]["shards"],
        "job_mode": m["input"]["mode"],
    }
    with open(a._result, "w") as f:
        json.dump(res, f)
    print(json.dumps(res))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--size-mb", type=float, default=None, help="MB of synthetic wikitext (default 200; 20 with --quick)"
    )
    ap.add_argument("--quick", action="store_true", help="20 MB, one repetition, no 1/4-size memory run")
    ap.add_argument(
        "--output", default=os.path.join(ROOT, "bench_output"), help="folder for dumps and job outputs"
    )
    ap.add_argument("--skip-ray", action="store_true", help="skip the Ray job runs")
    ap.add_argument("--skip-wikiextractor", action="store_true", help="skip the WikiExtractor baseline")
    ap.add_argument("--_ray-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_dump", help=argparse.SUPPRESS)
    ap.add_argument("--_index", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._ray_worker is not None:
        ray_worker(a)
        return

    size = a.size_mb if a.size_mb is not None else (20.0 if a.quick else 200.0)
    reps = 1 if a.quick else 3
    output = os.path.abspath(a.output)
    figures: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "size_mb": size,
        "quick": a.quick,
        "repetitions": reps,
    }

    # 1. the dump
    t0 = time.time()
    info = make(os.path.join(output, f"synthetic-{size:g}mb"), size)
    info = {**info, "dump": os.path.abspath(info["dump"]), "index": os.path.abspath(info["index"])}
    log(
        f"dump: {info['pages']} pages, {info['wikitext_bytes'] / MB:.1f} MB wikitext, "
        f"{info['dump_bytes'] / MB:.1f} MB bz2 ({time.time() - t0:.1f} s) at {info['dump']}"
    )
    figures.update(
        dump_pages=info["pages"],
        dump_wikitext_mb=rnd(info["wikitext_bytes"] / MB, 1),
        dump_bz2_mb=rnd(info["dump_bytes"] / MB, 1),
    )

    # 2. the articles for the single-core measurements
    cap = min(size, SINGLE_CORE_CAP_MB) * MB
    pages, seen = collect_articles(info["dump"], cap)
    nbytes = sum(len(p.text.encode("utf-8")) for p in pages)
    log(
        f"single core: {len(pages)} articles, {nbytes / MB:.1f} MB wikitext (from the first {seen / MB:.1f} MB of the dump)"
    )
    figures.update(single_core_articles=len(pages), single_core_wikitext_mb=rnd(nbytes / MB, 1))

    # 3. our cleaner alone
    ours = bench_cleaner(pages, nbytes, reps)
    log(
        f"cleaner (1 core): {ours['mb_s']:.2f} MB/s, {ours['pages_s']:.0f} pages/s, "
        f"{len(ours['sentences'])} sentences from {ours['articles_kept']} articles ({ours['seconds']:.1f} s)"
    )
    figures.update(
        cleaner_mb_s=rnd(ours["mb_s"]),
        cleaner_pages_s=rnd(ours["pages_s"], 1),
        sentences_ours=len(ours["sentences"]),
        hole_share_ours=rnd(hole_share(ours["sentences"]), 5),
        sentence_drops_ours=ours["sentence_drops"],
        page_drops_ours=ours["page_drops"],
    )

    # 4. WikiExtractor on the same pages
    if not a.skip_wikiextractor:
        import wikiextractor.WikiExtractor as we_mod

        we = bench_wikiextractor(info["dump"], pages, nbytes, reps)
        log(
            f"WikiExtractor {we_mod.__version__} (1 core, --no-templates): {we['mb_s']:.2f} MB/s, "
            f"{we['pages_s']:.0f} pages/s, {len(we['sentences'])} usable sentences ({we['seconds']:.1f} s)"
        )
        hs_we, hs_ours = hole_share(we["sentences"]), hole_share(ours["sentences"])
        log(
            f"cleaner vs WikiExtractor: {ours['mb_s'] / we['mb_s']:.2f}x speed, "
            f"{len(ours['sentences'])} vs {len(we['sentences'])} usable sentences; "
            f"hole-pattern share {hs_ours:.2%} (ours) vs {hs_we:.2%} (WikiExtractor)"
        )
        figures.update(
            wikiextractor_version=we_mod.__version__,
            wikiextractor_mb_s=rnd(we["mb_s"]),
            wikiextractor_pages_s=rnd(we["pages_s"], 1),
            cleaner_vs_wikiextractor=rnd(ours["mb_s"] / we["mb_s"], 3),
            sentences_wikiextractor=len(we["sentences"]),
            sentences_ours_vs_wikiextractor=rnd(len(ours["sentences"]) / max(1, len(we["sentences"])), 3),
            hole_share_wikiextractor=rnd(hs_we, 5),
            sentence_drops_wikiextractor=we["sentence_drops"],
        )
        del we
    figures["hole_pattern"] = HOLE_PATTERN.pattern
    del pages, ours
    gc.collect()

    # 5./6. the Ray job
    if not a.skip_ray:
        pool = bench_process_pool(info, output)
        figures.update(pool)
        log(
            f"the same per-shard work on a process pool (no Ray): {pool['pool_1proc_shards_s']} vs "
            f"{pool['pool_2proc_shards_s']} shards/s = {pool['pool_speedup_2v1']:.2f}x"
        )
        runs = {}
        plan = [
            ("multistream-1cpu", info, 1, True),
            ("multistream-2cpu", info, 2, True),
            ("stream-2cpu", info, 2, False),
        ]
        if not a.quick:
            small = make(os.path.join(output, f"synthetic-{size / 4:g}mb"), size / 4)
            small = {
                **small,
                "dump": os.path.abspath(small["dump"]),
                "index": os.path.abspath(small["index"]),
            }
            plan.append(("multistream-1cpu-quarter", small, 1, True))
            plan.append(("multistream-2cpu-quarter", small, 2, True))
        for name, inf, cpus, with_index in plan:
            log(
                f"ray job {name}: {inf['wikitext_bytes'] / MB:.0f} MB wikitext, {cpus} CPU(s), "
                f"{'with' if with_index else 'without'} the index …"
            )
            r = run_ray_job(name, inf, cpus, with_index, output)
            runs[name] = r
            if "error" in r:
                log(f"  FAILED: {r['error']}")
                continue
            log(
                f"  {r['mb_s']:.2f} MB/s, {r['pages_s']:.0f} pages/s ({r['seconds']:.1f} s in prepare_corpus, "
                f"{r['subprocess_wall_s']:.1f} s with Ray start/stop); {r['counts']['sentences_kept']} sentences; "
                f"peak RSS: worker {r['peak_worker_rss_mb']} MB, workers+driver {r['peak_total_rss_mb']} MB "
                f"(whole process tree incl. raylet/GCS {r['peak_tree_rss_mb']} MB)"
            )

        def fig(name, key, n=2):
            r = runs.get(name)
            return rnd(r[key], n) if r and key in r and r[key] is not None else None

        one, two = fig("multistream-1cpu", "mb_s"), fig("multistream-2cpu", "mb_s")
        speedup = (
            rnd(runs["multistream-2cpu"]["mb_s"] / runs["multistream-1cpu"]["mb_s"], 3)
            if one and two
            else None
        )
        full = [r for n, r in runs.items() if not n.endswith("quarter") and "error" not in r]
        figures.update(
            ray_1cpu_mb_s=one,
            ray_1cpu_pages_s=fig("multistream-1cpu", "pages_s", 1),
            ray_2cpu_mb_s=two,
            ray_2cpu_pages_s=fig("multistream-2cpu", "pages_s", 1),
            ray_speedup_2v1=speedup,
            ray_stream_2cpu_mb_s=fig("stream-2cpu", "mb_s"),
            ray_stream_2cpu_pages_s=fig("stream-2cpu", "pages_s", 1),
            sentences_ray=(runs["multistream-2cpu"].get("counts") or {}).get("sentences_kept")
            if "multistream-2cpu" in runs
            else None,
            peak_worker_rss_mb=max((r["peak_worker_rss_mb"] for r in full), default=None),
            peak_total_rss_mb=max((r["peak_total_rss_mb"] for r in full), default=None),
            peak_tree_rss_mb=max((r["peak_tree_rss_mb"] for r in full), default=None),
            peak_worker_rss_mb_2cpu=fig("multistream-2cpu", "peak_worker_rss_mb", 1),
            peak_total_rss_mb_2cpu=fig("multistream-2cpu", "peak_total_rss_mb", 1),
        )

        def marginal(cpus: int) -> tuple[float, float] | None:
            """(MB/s on the extra 3/4 of the data, fixed seconds): separates Ray's start-up from throughput."""
            big, small = runs.get(f"multistream-{cpus}cpu"), runs.get(f"multistream-{cpus}cpu-quarter")
            if not big or not small or "error" in big or "error" in small:
                return None
            mb = (big["counts"]["wikitext_bytes"] - small["counts"]["wikitext_bytes"]) / MB
            rate = mb / (big["seconds"] - small["seconds"])
            return rate, big["seconds"] - big["counts"]["wikitext_bytes"] / MB / rate

        m1, m2 = marginal(1), marginal(2)
        if m1 and m2:
            figures.update(
                ray_1cpu_marginal_mb_s=rnd(m1[0]),
                ray_2cpu_marginal_mb_s=rnd(m2[0]),
                ray_marginal_speedup_2v1=rnd(m2[0] / m1[0], 3),
                ray_fixed_seconds_1cpu=rnd(m1[1]),
                ray_fixed_seconds_2cpu=rnd(m2[1]),
            )
            log(
                f"steady state (the extra 3/4 of the data): {m1[0]:.2f} MB/s on 1 CPU, {m2[0]:.2f} MB/s on 2 CPUs "
                f"= {m2[0] / m1[0]:.2f}x; fixed start-up ~{m1[1]:.1f} s / {m2[1]:.1f} s"
            )
        if "multistream-2cpu-quarter" in runs:
            figures.update(
                small_size_mb=size / 4,
                ray_2cpu_small_mb_s=fig("multistream-2cpu-quarter", "mb_s"),
                peak_worker_rss_mb_small=fig("multistream-2cpu-quarter", "peak_worker_rss_mb", 1),
                peak_total_rss_mb_small=fig("multistream-2cpu-quarter", "peak_total_rss_mb", 1),
            )
        figures["ray_runs"] = {
            n: {k: (rnd(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k not in ("name",)}
            for n, r in runs.items()
        }
        if speedup is not None:
            log(f"ray speed-up 2 CPUs vs 1: {speedup:.2f}x")

    print(json.dumps(figures, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
