"""The corpus job end to end: real local Ray, the bundled sample dump, local and S3 storage."""

from __future__ import annotations

import bz2
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from electra_ray import storage
from electra_ray.config import CorpusConfig
from electra_ray.data.corpus import read_corpus
from electra_ray.data.pipeline import prepare_corpus

JOB = os.path.join(ROOT, "jobs", "prepare_corpus.py")


def run(ray_local, **kw) -> dict:
    kw.setdefault("pages_per_shard", 10)
    return prepare_corpus(CorpusConfig(**kw), log=lambda *_: None)


def shard_files(out: str) -> dict[str, bytes]:
    files = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".parquet"):
            files[name] = open(os.path.join(out, name), "rb").read()
    return files


@pytest.fixture(scope="module")
def reference(ray_local, sample_dump, tmp_path_factory):
    """The corpus of the multistream sample, with its index: the output every other run must equal."""
    out = str(tmp_path_factory.mktemp("ref") / "corpus")
    manifest = run(
        ray_local,
        dump=sample_dump["multistream"],
        index=sample_dump["index"],
        output=out,
        formats=("parquet", "text"),
    )
    return out, manifest


def test_three_layouts_give_identical_output(ray_local, sample_dump, reference, tmp_path):
    ref_out, ref_manifest = reference
    assert ref_manifest["output"]["shards"] >= 3
    for kind in ("xml", "bz2"):
        out = str(tmp_path / kind)
        m = run(ray_local, dump=sample_dump[kind], output=out)
        assert m["input"]["mode"] == "stream"
        assert shard_files(out) == shard_files(ref_out), kind
        assert m["counts"] == ref_manifest["counts"]
        assert m["page_drops"] == ref_manifest["page_drops"]


def test_manifest_keeps_the_books(reference, sample_dump):
    out, m = reference
    assert m == json.load(open(os.path.join(out, "manifest.json")))
    c = m["counts"]
    assert c["pages_in"] == sum(1 for _ in bz2.open(sample_dump["index"], "rt"))
    # every page is kept or dropped for a reason
    assert c["pages_in"] == c["articles_kept"] + sum(m["page_drops"].values())
    assert c["articles_in"] == c["articles_kept"] + sum(
        v for k, v in m["page_drops"].items() if k in ("too_large", "timeout", "parse_error", "no_sentences")
    )
    table = read_corpus(out)
    assert table.num_rows == c["articles_kept"]
    assert sum(len(s) for s in table.column("sentences").to_pylist()) == c["sentences_kept"]
    assert m["input"]["dump"]["sha256"] and m["input"]["dump"]["bytes"] == os.path.getsize(
        sample_dump["multistream"]
    )
    assert m["versions"]["ray"] and m["config"]["pages_per_shard"] == 10
    assert set(m["page_drops"]) >= {"namespace", "redirect", "disambiguation"}
    assert m["sentence_drops"]["hole"] > 0


def test_schema_and_text_format(reference):
    out, m = reference
    first = pq.read_table(os.path.join(out, m["output"]["files"][0]))
    assert str(first.schema.field("page_id").type) == "int64"
    assert str(first.schema.field("title").type) == "string"
    assert str(first.schema.field("sentences").type) == "list<element: string>"
    table = read_corpus(out)
    docs = table.column("sentences").to_pylist()
    text = "".join(open(os.path.join(out, f), encoding="utf-8").read() for f in m["output"]["text_files"])
    assert text == "".join("\n".join(d) + "\n\n" for d in docs)
    ids = table.column("page_id").to_pylist()
    assert ids == sorted(ids), "rows are in dump order"


def test_sample_quality(reference):
    """The sample's checks: pages kept/dropped as expected, rendered template text present, no markup, no holes."""
    out, m = reference
    import unicodedata

    checks = json.load(open(os.path.join(ROOT, "data", "sample", "checks.json"), encoding="utf-8"))
    table = read_corpus(out)
    by_id = {r["page_id"]: r["sentences"] for r in table.to_pylist()}
    assert sorted(by_id) == sorted(checks["kept"])
    for pid, fragments in checks["must_have"].items():
        sentences = by_id[int(pid)]
        for frag in fragments:
            frag = unicodedata.normalize("NFKC", frag)
            assert any(frag in s for s in sentences), f"page {pid}: {frag!r} not in any sentence"
    everything = "\n".join(s for ss in by_id.values() for s in ss)
    for bad in checks["must_not_have"]:
        assert unicodedata.normalize("NFKC", bad) not in everything, bad
    for leak in ("{{", "}}", "[[", "]]", "<ref", "</", "''", "|", "\x00", "&nbsp;", "&amp;", "__TOC__", "=="):
        assert leak not in everything, leak


def test_s3_in_and_out(ray_local, sample_dump, reference, bucket):
    ref_out, _ = reference
    for kind in ("multistream", "index"):
        storage.write_bytes(
            f"{bucket}/dumps/{os.path.basename(sample_dump[kind])}", open(sample_dump[kind], "rb").read()
        )
    dump = f"{bucket}/dumps/{os.path.basename(sample_dump['multistream'])}"
    index = f"{bucket}/dumps/{os.path.basename(sample_dump['index'])}"
    out = f"{bucket}/corpus"
    m = run(ray_local, dump=dump, index=index, output=out, formats=("parquet", "text"))
    assert m["input"]["dump"]["etag"]
    remote = {storage.basename(u): storage.read_bytes(u) for u in storage.list_files(out, ".parquet")}
    assert remote == shard_files(ref_out)
    assert storage.read_json(f"{out}/manifest.json")["complete"] is True
    # the streaming reader reads from S3 too
    m2 = run(ray_local, dump=dump, output=f"{bucket}/corpus2")
    assert m2["counts"] == m["counts"]


def test_relaunch_skips_complete_shards_and_repairs_the_rest(ray_local, sample_dump, reference, tmp_path):
    ref_out, ref_m = reference
    out = str(tmp_path / "c")
    shutil.copytree(ref_out, out)
    os.remove(os.path.join(out, "manifest.json"))
    # a crash after shard 1's Parquet was written but before its marker; shard 2 never started
    os.remove(os.path.join(out, "_shards", "part-00001.json"))
    with open(os.path.join(out, "part-00001.parquet"), "wb") as f:
        f.write(b"half-written")
    os.remove(os.path.join(out, "_shards", "part-00002.json"))
    os.remove(os.path.join(out, "part-00002.parquet"))
    m = run(
        ray_local,
        dump=sample_dump["multistream"],
        index=sample_dump["index"],
        output=out,
        formats=("parquet", "text"),
    )
    assert m["shards_resumed"] == ref_m["output"]["shards"] - 2
    assert shard_files(out) == shard_files(ref_out)
    assert m["counts"] == ref_m["counts"]


def test_relaunch_of_a_complete_output_is_a_no_op(ray_local, sample_dump, reference):
    out, m = reference
    again = run(
        ray_local,
        dump=sample_dump["multistream"],
        index=sample_dump["index"],
        output=out,
        formats=("parquet", "text"),
    )
    assert again == m


def test_relaunch_with_other_settings_refuses(ray_local, sample_dump, reference, tmp_path):
    ref_out, _ = reference
    out = str(tmp_path / "c")
    shutil.copytree(ref_out, out)
    os.remove(os.path.join(out, "manifest.json"))
    with pytest.raises(ValueError, match="other settings or another dump"):
        run(
            ray_local,
            dump=sample_dump["multistream"],
            index=sample_dump["index"],
            output=out,
            pages_per_shard=7,
        )


@pytest.mark.slow
def test_killed_job_relaunched_gives_the_uninterrupted_output(ray_local, tmp_path):
    """SIGKILL the whole job (driver, its Ray, its workers) midway, relaunch, compare."""
    from electra_ray.wiki.dumpwriter import write_multistream
    from electra_ray.wiki.sample import read_sample_pages
    from electra_ray.wiki.synthetic import synthetic_pages

    seeds = read_sample_pages(os.path.join(ROOT, "data", "sample", "pages"))
    dump, index = str(tmp_path / "d-multistream.xml.bz2"), str(tmp_path / "d-index.txt.bz2")
    write_multistream(synthetic_pages(seeds, 6_000_000, seed=1), dump, index, level=1)
    args = ["--dump", dump, "--index", index, "--pages-per-shard", "100", "--max-workers", "1"]
    out = str(tmp_path / "killed")
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, JOB, *args, "--output", out],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    markers = os.path.join(out, "_shards")
    deadline = time.time() + 120
    while time.time() < deadline and (not os.path.isdir(markers) or len(os.listdir(markers)) < 2):
        assert proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(os.listdir(markers))
    assert not os.path.exists(os.path.join(out, "manifest.json"))

    m = run(ray_local, dump=dump, index=index, output=out, pages_per_shard=100)
    assert m["shards_resumed"] >= done_before >= 2
    assert m["shards_resumed"] < m["output"]["shards"]
    full = str(tmp_path / "uninterrupted")
    m_full = run(ray_local, dump=dump, index=index, output=full, pages_per_shard=100)
    assert shard_files(out) == shard_files(full)
    assert m["counts"] == m_full["counts"]


# ---------------------------------------------------------------------------------------------
# errors a user sees: one line naming the file and what is wrong, exit status 2


def job(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, JOB, *args], capture_output=True, text=True, env=e, timeout=300)


def test_cli_success_prints_a_json_last_line(sample_dump, tmp_path, ray_local):
    address = ray_local.get_runtime_context().gcs_address
    r = job("--dump", sample_dump["bz2"], "--output", str(tmp_path / "o"), env={"RAY_ADDRESS": address})
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["counts"]["articles_kept"] > 20


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", r"error: .*nope\.xml\.bz2: not found"),
        ("truncated", r"error: .*cut\.xml\.bz2: truncated bz2 data"),
        ("wrong_index", r"error: .*does not (belong to|match)"),
        ("not_mediawiki", r"error: .*page\.xml: not a MediaWiki XML export"),
    ],
)
def test_cli_bad_input(case, pattern, sample_dump, tmp_path, ray_local):
    address = ray_local.get_runtime_context().gcs_address
    args = ["--output", str(tmp_path / "o")]
    if case == "missing":
        args += ["--dump", str(tmp_path / "nope.xml.bz2")]
    elif case == "truncated":
        data = open(sample_dump["bz2"], "rb").read()
        (tmp_path / "cut.xml.bz2").write_bytes(data[: len(data) * 2 // 3])
        args += ["--dump", str(tmp_path / "cut.xml.bz2")]
    elif case == "wrong_index":
        lines = bz2.decompress(open(sample_dump["index"], "rb").read()).decode().splitlines()
        shifted = [f"{int(o) + 7}:{p}:{t}" for o, p, t in (ln.split(":", 2) for ln in lines)]
        (tmp_path / "idx.txt").write_text("\n".join(shifted) + "\n", encoding="utf-8")
        args += ["--dump", sample_dump["multistream"], "--index", str(tmp_path / "idx.txt")]
    elif case == "not_mediawiki":
        (tmp_path / "page.xml").write_text("<html><body>not a dump</body></html>")
        args += ["--dump", str(tmp_path / "page.xml")]
    r = job(*args, env={"RAY_ADDRESS": address})
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-3000:])
    assert __import__("re").search(pattern, r.stderr), r.stderr[-3000:]
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


def test_unreachable_and_missing_bucket(s3_server, tmp_path, monkeypatch, sample_dump):
    from electra_ray import cli

    sys.path.insert(0, os.path.dirname(JOB))
    import prepare_corpus as job_module

    monkeypatch.setenv("ELECTRA_RAY_IO_RETRIES", "1")
    rc = cli.run(
        job_module.main, ["--dump", "s3://no-such-bucket-x/d.xml.bz2", "--output", str(tmp_path / "o")]
    )
    assert rc == 2
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    t0 = time.time()
    with pytest.raises(
        storage.StorageError,
        match=r"s3://bucket/d\.xml\.bz2: unreachable: could not connect to endpoint http://127\.0\.0\.1:9",
    ):
        storage.size("s3://bucket/d.xml.bz2")
    assert time.time() - t0 < 60


def test_forbidden_bucket(tmp_path, monkeypatch):
    """A moto server that enforces credentials (after its first request): unknown keys get 403."""
    import socket

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "from moto.server import ThreadedMotoServer; import time; "
        f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False); s.start(); time.sleep(120)"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "moto server did not start"
                time.sleep(0.2)
        creds = {
            "aws_access_key_id": "unknown",
            "aws_secret_access_key": "unknown",
            "region_name": "us-east-1",
        }
        boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(
            Bucket="locked"
        )  # the one free request
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unknown")
        monkeypatch.setenv("ELECTRA_RAY_IO_RETRIES", "1")
        with pytest.raises(storage.StorageError, match=r"s3://locked/dump\.xml\.bz2: access denied"):
            storage.size("s3://locked/dump.xml.bz2")
    finally:
        server.kill()
        server.wait()
