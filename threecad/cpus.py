"""How many CPU threads threecad uses, decided in one place for every pool.

Why: on a shared machine, pools sized to the machine's core count (torch's intra-op threads,
OpenMP's spin-waiting workers, numba, BLAS, cache-building threads, data-loader workers) all
compete for the cores another job is using, and a fit slows far beyond the load factor. So the
budget is what this process may use (its CPU affinity and its cgroup quota, not the machine's
count), or `--threads N` / `OMP_NUM_THREADS`, and every pool follows it. OpenMP workers wait
passively (OMP_WAIT_POLICY=PASSIVE, set before torch loads) instead of spinning on cores that
another process needs.

    budget = apply_threads(None)      # the harness, once per command: what run.json records
    pool_size()                       # cache building, mask statistics: the same budget
"""
from __future__ import annotations

import math
import os
from pathlib import Path

_applied: int | None = None


def quiet_openmp() -> None:
    """Ask OpenMP to wait passively; effective only before the OpenMP runtime loads (torch's import),
    so the command line calls it first. A value the user set is kept."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def _cgroup_quota() -> int | None:
    """The CPU quota of this process's cgroup, rounded up to whole CPUs; None when unlimited."""
    try:  # cgroup v2: "max 100000" or "150000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else math.ceil(quota / period)
    except (OSError, ValueError):
        return None


def requested_threads(threads: int | None) -> tuple[int, str]:
    """(threads, where the number comes from): `threads` when given, else OMP_NUM_THREADS, else the
    CPUs this process may use."""
    if threads is not None:
        return max(1, int(threads)), "--threads"
    try:
        env = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        env = 0
    if env > 0:
        return env, "OMP_NUM_THREADS"
    return available_cpus(), "the CPUs this process may use (affinity and cgroup quota)"


def apply_threads(threads: int | None) -> dict[str, object]:
    """Size every pool to one budget; returns what was set (run.json records it)."""
    global _applied
    import torch

    n, source = requested_threads(threads)
    torch.set_num_threads(n)
    set_pools = {"torch": n}
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        set_pools["numba"] = numba.get_num_threads()
    except (ImportError, ValueError):
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)  # BLAS and OpenMP pools numpy and scipy loaded
        set_pools["blas"] = n
    except ImportError:
        pass
    _applied = n
    return {"threads": n, "source": source, "pools": set_pools,
            "openmp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


def pool_size() -> int:
    """Threads for threecad's own pools (cache building, mask statistics): the budget applied, else
    what `apply_threads(None)` would choose."""
    return _applied if _applied is not None else requested_threads(None)[0]
