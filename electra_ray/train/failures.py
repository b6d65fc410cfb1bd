"""When Ray Train restarts the worker group, and when a restart cannot help.

Ray Train 2.60 restarts a failed worker group up to ``--max-failures`` times whatever the workers
raised. A fast step that cannot compile on a node (``FastStepError``: no C++ compiler for Inductor,
a GPU Triton refuses, a CUDA-graph capture that fails) fails the same way on every restart, and
each restart compiles again first: minutes on a GPU before the error the first attempt already
gave. ``Trainer`` is ``TorchTrainer`` with a failure policy that ends the run at the first such
failure; every other failure (a dead node, a lost connection, an unreachable bucket) is retried as
before. Ray has no public hook for this: the policy replaces the one Ray builds in ``fit``
(``_initialize_and_run_controller``, Ray 2.60.0, pinned in pyproject.toml;
tests/test_pretrain.py checks that a compile failure ends after one attempt).
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy

from electra_ray.cli import root_cause
from electra_ray.config import FastStepError

NOT_RETRIED: tuple[type[BaseException], ...] = (FastStepError,)


def cannot_be_cured_by_a_restart(error: BaseException) -> bool:
    """Whether any failed worker raised one of ``NOT_RETRIED`` (inside Ray's wrappers)."""
    failures = getattr(error, "worker_failures", None)  # WorkerGroupError: rank → error
    if not isinstance(failures, dict):
        return False
    return any(isinstance(root_cause(e), NOT_RETRIED) for e in failures.values())


class FailurePolicy(DefaultFailurePolicy):
    """Ray Train's default policy, except for the failures a restart cannot cure."""

    def _is_retryable_error(self, training_failed_error) -> bool:  # noqa: ANN001 - Ray's signature
        if cannot_be_cured_by_a_restart(training_failed_error):
            return False
        return super()._is_retryable_error(training_failed_error)


class Trainer(TorchTrainer):
    """``TorchTrainer`` whose controller uses :class:`FailurePolicy`."""

    def _initialize_and_run_controller(self, **controller_init_kwargs):  # noqa: ANN003
        controller_init_kwargs["failure_policy"] = FailurePolicy(self.run_config.failure_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
