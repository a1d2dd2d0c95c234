"""Processes that share this machine's cores: one OpenMP thread pool each, sized to its share."""

from __future__ import annotations

import os


def usable() -> int:
    """Cores this process may run on (taskset, a cgroup's cpuset), which can be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_env(processes: int) -> dict[str, str]:
    """The environment for one of `processes` processes on this machine. Each running one thread per core
    oversubscribes the cores and spins in OpenMP barriers (measured 2.8x slower with two study workers on 2
    cores). The user's own OMP_NUM_THREADS wins."""
    return {"OMP_NUM_THREADS": str(max(1, usable() // processes)), **os.environ}
