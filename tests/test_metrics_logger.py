"""The controller's metrics writer: reports are recorded at once and written to the run folder by a
thread (coalesced), a resumed run's history is continued, and an unwritable run folder never holds
up ``after_report``. Without Ray: the callback's methods are called as the controller would."""

from __future__ import annotations

import json
import os
import time

from electra_ray.train.metrics import _LOGGERS, MetricsLogger


def rows(run: str) -> list[dict]:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f]


def report(logger: MetricsLogger, step: int, **extra) -> None:
    logger.after_report(None, [{"step": step, "loss": 10.0 / step, **extra}, {"step": step}], None)


def test_reports_are_coalesced_and_all_written_at_close(tmp_path):
    run = str(tmp_path / "run")
    logger = MetricsLogger(run, str(tmp_path / "tb"))
    for step in range(1, 201):
        report(logger, step)
    report(logger, 200)  # the loop's final report again (it carries the last checkpoint): no new row
    assert logger.key in _LOGGERS
    assert logger.close()
    assert logger.key not in _LOGGERS
    assert [r["step"] for r in rows(run)] == list(range(1, 201))
    # one write as the first report came, then at most one every WRITE_EVERY_S, and the last at close
    assert 1 <= logger.writes <= 3, logger.writes
    assert os.listdir(os.path.join(run, "tensorboard")), "the event files are in the run folder"


def test_a_resumed_run_continues_the_history(tmp_path):
    run = str(tmp_path / "run")
    first = MetricsLogger(run, str(tmp_path / "tb1"))
    for step in range(2, 21, 2):
        report(first, step)
    report(first, 12, rolled_back_to=12)
    assert first.close()
    assert [r["step"] for r in rows(run)] == [2, 4, 6, 8, 10, 12]  # rows after the rollback dropped
    second = MetricsLogger(run, str(tmp_path / "tb2"))  # resumed from the step-8 checkpoint
    for step in range(10, 15, 2):
        report(second, step)
    assert second.close()
    assert [r["step"] for r in rows(run)] == [2, 4, 6, 8, 10, 12, 14]
    assert rows(run)[-2]["loss"] == 10.0 / 12 and "rolled_back_to" not in rows(run)[-2]
    with open(os.path.join(run, "events.jsonl")) as f:
        assert [json.loads(ln)["rolled_back_to"] for ln in f] == [12], "the rollback stays on record"


def test_an_unreachable_store_does_not_hold_reports_up(tmp_path, monkeypatch, capfd):
    """Storage calls retry transient errors (here: nothing listens at the endpoint); the controller's
    ``after_report`` must not wait for them, or the workers wait in ``ray.train.report``."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("ELECTRA_RAY_IO_RETRIES", "2")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries
    logger = MetricsLogger("s3://nowhere/run", str(tmp_path / "tb"))
    t0 = time.perf_counter()
    for step in range(1, 51):
        report(logger, step)
        time.sleep(0.01)
    assert time.perf_counter() - t0 < 2.0, "after_report waited for the storage"
    assert not logger.close(timeout=60)
    out = capfd.readouterr().out
    assert "metrics: cannot write to s3://nowhere/run" in out
    assert "the last reports could not be written" in out
