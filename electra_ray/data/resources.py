"""Sizing Ray Data actor pools from the cluster's resources.

A pool starts with as many actors as the cluster has CPUs now (capped by ``--max-workers`` and by
the work there is): starting at one actor and waiting for Ray Data to scale up wastes the first
minutes of a short job. ``--max-workers`` above the current CPU count lets the pool grow into nodes
an autoscaling cluster adds mid-job; a lost node's actors are restarted by Ray Data.
"""

from __future__ import annotations


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def pool_size(max_workers: int | None, work_items: int | None = None) -> tuple[int, int]:
    """(min_size, max_size) for an ActorPoolStrategy."""
    cpus = cluster_cpus()
    hi = max_workers or cpus
    lo = min(cpus, hi)
    if work_items is not None:
        hi = max(1, min(hi, work_items))
        lo = max(1, min(lo, work_items))
    return lo, hi


def actor_pool(max_workers: int | None, work_items: int | None = None):
    import ray

    lo, hi = pool_size(max_workers, work_items)
    return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
