"""One seam for storage: local paths and ``s3://bucket/prefix`` URIs.

Everything that reads or writes job inputs and outputs goes through here, so the same code runs
on a laptop and against S3 (or MinIO, Ceph, moto: any endpoint named by the standard
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` variables).

Contract:
- ``write_bytes`` / ``write_text`` / ``write_json`` are atomic: a reader sees the old object or the
  whole new one, never half of it (local: temp file + ``os.replace``; S3: one PUT or a multipart
  upload, which S3 only makes visible when completed). Jobs write their payload first and a small
  completion marker last.
- Transient failures (connection reset, timeouts, 5xx) are retried with backoff,
  ``ELECTRA_RAY_IO_RETRIES`` times (default 4); missing objects and access errors are not.
- Failures surface as :class:`StorageError` naming the URI and what went wrong.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fsspec

R = TypeVar("R")


class StorageError(OSError):
    """Reading or writing a URI failed; the message names the URI and the cause."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def endpoint_url() -> str | None:
    """The S3 endpoint from the standard variables (None = AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        kwargs: dict[str, Any] = {}
        ep = endpoint_url()
        if ep:
            kwargs["endpoint_url"] = ep
        fs = fsspec.filesystem("s3", **kwargs)
        return fs, uri.split("://", 1)[1]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _explain(uri: str, exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        what = "not found (no such file, bucket or key)"
    elif isinstance(exc, PermissionError):
        what = "access denied (check the credentials and the bucket policy)"
    elif _is_connection_error(exc):
        ep = endpoint_url()
        where = f"endpoint {ep}" if ep else "the S3 endpoint"
        what = f"unreachable: could not connect to {where} ({name}: {exc})"
    else:
        what = f"{name}: {exc}"
    err = StorageError(f"{uri}: {what}")
    err.__cause__ = exc
    return err


def _is_connection_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(
        names
        & {
            "ConnectionError",
            "ConnectionRefusedError",
            "ConnectionResetError",
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ClientConnectorError",
            "ServerDisconnectedError",
            "ClientOSError",
            "TimeoutError",
        }
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _transient(exc: BaseException) -> bool:
    if isinstance(
        exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, StorageError)
    ):
        return False
    if _is_connection_error(exc):
        return True
    text = str(exc)
    return any(code in text for code in ("500", "502", "503", "504", "SlowDown", "InternalError"))


def retry(uri: str, fn: Callable[[], R], *, attempts: int | None = None) -> R:
    """Run ``fn`` with retries on transient errors; raise StorageError naming ``uri``."""
    n = attempts if attempts is not None else int(os.environ.get("ELECTRA_RAY_IO_RETRIES", "4"))
    delay = 0.5
    for i in range(max(1, n)):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - translated below
            if i + 1 >= n or not _transient(exc):
                raise _explain(uri, exc) from exc
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# reads


def _fresh(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Forget cached listings: other processes (Ray workers) write to the same bucket."""
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    _fresh(fs, path)
    return retry(uri, lambda: fs.exists(path))


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    _fresh(fs, path)
    return int(retry(uri, lambda: fs.size(path)))


def info(uri: str) -> dict[str, Any]:
    fs, path = filesystem(uri)
    _fresh(fs, path)
    return retry(uri, lambda: fs.info(path))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return retry(uri, lambda: fs.cat_file(path))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes [start, end) in one ranged read."""
    fs, path = filesystem(uri)
    data = retry(uri, lambda: fs.cat_file(path, start=start, end=end))
    if len(data) != end - start:
        raise StorageError(
            f"{uri}: asked for bytes {start}-{end} but got {len(data)} bytes (file changed or truncated?)"
        )
    return data


def iter_chunks(uri: str, chunk_size: int = 4 << 20, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """Stream a file as (offset, chunk) pairs with bounded memory."""
    fs, path = filesystem(uri)
    f = retry(uri, lambda: fs.open(path, "rb", block_size=chunk_size))
    try:
        if start:
            f.seek(start)
        pos = start
        while True:
            chunk = retry(uri, lambda: f.read(chunk_size))
            if not chunk:
                return
            yield pos, chunk
            pos += len(chunk)
    finally:
        f.close()


def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of the files directly under a folder (sorted); [] when the folder does not exist."""
    fs, path = filesystem(uri)
    _fresh(fs, path)
    try:
        entries = retry(uri, lambda: fs.ls(path, detail=True))
    except StorageError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return []
        raise
    prefix = uri.rstrip("/")
    out = []
    for e in entries:
        # an S3 folder made by pyarrow (Ray Train's checkpoint uploads, ``makedirs``) has an empty
        # "folder/" object, which s3fs lists as a file inside the folder itself
        if e.get("type") != "file" or e["name"].endswith("/"):
            continue
        name = e["name"].rsplit("/", 1)[-1]
        if name.endswith(suffix):
            out.append(f"{prefix}/{name}")
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# atomic writes


def write_bytes(uri: str, data: bytes) -> None:
    """Write the whole object atomically."""
    fs, path = filesystem(uri)
    if not is_remote(uri):
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    # S3: an object becomes visible only when its PUT (or multipart upload) completes.
    retry(uri, lambda: fs.pipe_file(path, data))


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def makedirs(uri: str) -> None:
    if not is_remote(uri):
        fs, path = filesystem(uri)
        os.makedirs(path, exist_ok=True)
    # S3 has no folders.


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        retry(uri, lambda: fs.rm(path))
    except StorageError as e:
        if not isinstance(e.__cause__, FileNotFoundError):
            raise


def parquet_bytes(table: Any, **kwargs: Any) -> bytes:
    """Serialize a pyarrow Table to Parquet bytes (then write them with write_bytes)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


# Attempts per request of the pyarrow S3 filesystem (AWS_MAX_ATTEMPTS overrides). Ray Train's
# controller writes its checkpoint bookkeeping through it, synchronously, and a failed write ends
# the run (a controller error, which --max-failures does not cover); pyarrow's default of 3
# attempts gives up after ~1.5 s. `python benchmarks/s3_outage_window.py` (moto behind a cut TCP
# relay; the SDK's backoff is jittered): 3 attempts give up after 1.2-1.5 s, 8 after 37-43 s, 10
# after 72-102 s; an 8-s outage is ridden out by 8 attempts or more (the write ends 15-26 s later).
S3_ATTEMPTS = 10


def pyarrow_filesystem(uri: str):
    """A pyarrow filesystem for ``uri`` (Ray Data readers, Ray Train's storage), with the same
    endpoint rules, retrying a request through an outage of a minute or more."""
    import pyarrow.fs as pafs

    if uri.startswith(("s3://", "s3a://")):
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or S3_ATTEMPTS)
        kwargs: dict[str, Any] = {
            "region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, attempts)),
        }
        ep = endpoint_url()
        if ep:
            kwargs["endpoint_override"] = ep
        return pafs.S3FileSystem(**kwargs)
    return pafs.LocalFileSystem()


def to_pyarrow_path(uri: str) -> str:
    """The path of ``uri`` inside its pyarrow filesystem (``bucket/key`` for S3)."""
    if "://" in uri and not uri.startswith("file://"):
        return uri.split("://", 1)[1]
    return filesystem(uri)[1]


# ------------------------------------------------------------------ local scratch folders


def scratch_folder(prefix: str) -> str:
    """A fresh folder in the local temp folder, named ``{prefix}{pid}-…`` after this process."""
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_dead_scratch(prefix: str, tmp: str | None = None) -> list[str]:
    """Remove the ``scratch_folder(prefix)`` folders of processes that no longer exist (killed
    before they could clean up); return their paths."""
    removed = []
    for path in glob.glob(os.path.join(tmp or tempfile.gettempdir(), f"{prefix}*-*")):
        pid = os.path.basename(path)[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
