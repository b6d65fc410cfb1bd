"""What every job entry point shares: connecting to Ray, clean errors, the final JSON line.

Contract: every job runs as ``python jobs/X.py …`` (starting a local Ray when none is running) and
as ``ray job submit --working-dir . -- python jobs/X.py …``; the last line it prints on stdout is
one JSON object with its result. Errors in the input print one ``error: …`` line naming the file
and what is wrong, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from electra_ray.config import FastStepError
from electra_ray.storage import StorageError

#: Exceptions that mean "bad input, configuration or environment": shown as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    StorageError,
    FileNotFoundError,
    PermissionError,
    FastStepError,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The jobs' ``--help``: the description as written, and each flag's default after its help
    (unless it has none or the help already says what it is)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
            or "default" in text
        ):
            return text
        if isinstance(default, tuple):  # --num-workers MIN:MAX
            default = default[0] if len(set(default)) == 1 else ":".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


# where `ray start --head` records its address for later `ray.init()` calls
RAY_CLUSTER_RECORD = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")


def init_ray() -> None:
    """Connect to the running cluster (``RAY_ADDRESS`` or a local ``ray start``), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None and not recorded_cluster_alive(RAY_CLUSTER_RECORD):
        # `ray start` left a record of a cluster that is gone: ray.init() would wait on it for minutes
        print(
            f"note: {RAY_CLUSTER_RECORD} names a Ray cluster that is not running; starting a local Ray",
            flush=True,
        )
        address = "local"
    ray.init(
        address=address,
        log_to_driver=True,
        # Credentials and the S3 endpoint must reach every worker process.
        runtime_env={"env_vars": _forwarded_env()}
        if _forwarded_env() and os.environ.get("RAY_ADDRESS", "local") == "local"
        else None,
    )


def recorded_cluster_alive(path: str, timeout: float = 2.0) -> bool:
    """False when ``path`` (Ray's record of the last ``ray start --head``) names an address nobody
    listens on; True when it is reachable or there is no record."""
    try:
        with open(path) as f:
            host, _, port = f.read().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False


def _forwarded_env() -> dict[str, str]:
    keys = (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "ELECTRA_RAY_IO_RETRIES",
    )
    return {k: os.environ[k] for k in keys if k in os.environ}


def root_cause(exc: BaseException) -> BaseException:
    """The user-level exception inside Ray's wrappers (RayTaskError, UserCodeException, …), else
    ``exc`` itself."""
    return _ours(exc) or exc


def _ours(exc: BaseException) -> BaseException | None:
    """The outermost ``USER_ERRORS`` exception in ``exc``'s chain (None when there is none)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        wrapper = type(e).__name__.startswith(("RayTaskError", "UserCodeException", "RayError"))
        if isinstance(e, USER_ERRORS) and not wrapper:
            return e  # the outermost real one: it carries our message (file, position)
        failures = getattr(e, "worker_failures", None)  # Ray Train's WorkerGroupError: rank → error
        if isinstance(failures, dict) and failures:
            # the lowest rank whose error is ours, not a collective torn down by its failure
            return next(filter(None, (_ours(failures[r]) for r in sorted(failures))), None)
        cause = getattr(e, "cause", None)
        e = cause if isinstance(cause, BaseException) else (e.__cause__ or e.__context__)
    return None


def run(main: Callable[[list[str] | None], dict[str, Any]], argv: list[str] | None = None) -> int:
    """Run a job's main; print its result as the last stdout line, or one clear error line."""
    try:
        result = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001
        cause = root_cause(exc)
        if isinstance(cause, USER_ERRORS):
            msg = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            print(f"error: {msg}", file=sys.stderr)
            print(json.dumps({"ok": False, "error": msg}, ensure_ascii=False))
            return 2
        raise
    print(json.dumps({"ok": True, **result}, ensure_ascii=False, default=str))
    return 0
