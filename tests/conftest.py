"""Shared fixtures: one local Ray per test session, one S3 server (moto over HTTP on 127.0.0.1).

The S3 variables are set before Ray starts, so every Ray worker talks to the same server through
the same s3fs/pyarrow code paths that talk to AWS.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
TEST_ACCESS_KEY = "AKIAELECTRARAYTEST01"
TEST_SECRET_KEY = "electra-ray-test-secret-9f3b27c1d0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (random port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        # distinctive values, so tests can check that no credential is printed or written anywhere
        AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def bucket(s3_server):
    """A fresh, empty bucket; yields 's3://<name>'."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the whole session (2 CPUs, a modest object store)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=1 << 30,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_dump():
    """Paths of the bundled sample dump in its three layouts."""
    base = os.path.join(SAMPLE, "jawiki-sample-pages-articles")
    paths = {
        "xml": base + ".xml",
        "bz2": base + ".xml.bz2",
        "multistream": base + "-multistream.xml.bz2",
        "index": base + "-multistream-index.txt.bz2",
    }
    for p in paths.values():
        assert os.path.exists(p), f"{p} is missing: run python scripts/build_sample_dump.py"
    return paths


@pytest.fixture(scope="session")
def prepared(ray_local, sample_dump, tmp_path_factory):
    """Corpus → tokenizer (2,000 entries) → 64-token instances of the sample, once per session."""
    from electra_ray.config import CorpusConfig, InstancesConfig, TokenizerConfig
    from electra_ray.data.pipeline import prepare_corpus
    from electra_ray.data.tokenize import tokenize_corpus
    from electra_ray.data.vocab import train_tokenizer

    quiet = {"log": lambda *_: None}
    root = tmp_path_factory.mktemp("pre")
    corpus, tok, inst = str(root / "corpus"), str(root / "tok"), str(root / "inst")
    prepare_corpus(
        CorpusConfig(
            dump=sample_dump["multistream"], index=sample_dump["index"], output=corpus, pages_per_shard=15
        ),
        **quiet,
    )
    train_tokenizer(
        TokenizerConfig(corpus=corpus, output=tok, vocab_size=2000, limit_alphabet=700, heldout_fraction=0.0),
        **quiet,
    )
    tokenize_corpus(InstancesConfig(corpus=corpus, tokenizer=tok, output=inst, max_seq_length=64), **quiet)
    return {"data": inst, "tokenizer": tok, "corpus": corpus}
