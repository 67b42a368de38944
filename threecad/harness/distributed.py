"""torchrun support: the ranks of one job share a study, or train one pair together.

Why PyTorch's own machinery and nothing else: `torchrun` (torch.distributed.run) already
launches the processes, restarts them and runs the c10d rendezvous on one node or many;
the job's c10d store (a TCPStore every rank reaches) is all the coordination a study needs.
So this module only reads what torchrun set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), opens that store, and builds on its atomic `add`:

- a work queue: the pairs to run are published once by rank 0; each rank claims the next
  index with `store.add(key, 1)`, so a rank that finishes early takes more, and no pair
  runs twice;
- barriers and all-gathers that poll the store instead of blocking in a collective, so a
  rank may wait for hours (another rank's long training) without a timeout;
- `settle`: every rank reports success or its one-line error, and all stop together, with
  the error printed by rank 0 only;
- `GradientAverager`: the data-parallel hooks `threecad.training.train_epochs` calls under
  `--ddp` (see there why gradients are all-reduced rather than a module wrapped in DDP).

Without torchrun a `Solo` group (one rank, nothing shared) runs the same code.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from threecad.errors import ThreecadError

log = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
POLL_S = 0.05
STORE_TIMEOUT = dt.timedelta(hours=2)  # one store operation; waits poll and never hit it
GROUP_TIMEOUT = dt.timedelta(hours=2)  # one collective of a --ddp fit (ranks are in step there)


class RankStopped(ThreecadError):
    """Raised on ranks other than 0 when the job stops on an error that rank 0 reports."""


@dataclass(frozen=True)
class Launch:
    """What torchrun told this process."""

    rank: int
    world_size: int
    local_rank: int
    restart: int = 0
    run_id: str = "none"


def detect(environ: dict[str, str] | None = None) -> Launch | None:
    """The torchrun launch this process belongs to, or None when it was started on its own.

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK together; a process that has only some of
    them (another tool's variables) is taken as started on its own, as before torchrun support.
    """
    env = os.environ if environ is None else environ
    if any(env.get(k, "") == "" for k in ENV_KEYS):
        return None
    try:
        rank, world, local = (int(env[k]) for k in ENV_KEYS)
    except ValueError:
        raise ThreecadError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                            f"{', '.join(repr(env[k]) for k in ENV_KEYS)}") from None
    if not (0 <= rank < world and local >= 0):
        raise ThreecadError(f"RANK {rank} is outside WORLD_SIZE {world} (or LOCAL_RANK {local} < 0)")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(key):
            raise ThreecadError(f"{key} is not set: start the job with torchrun, which sets it")
    return Launch(rank=rank, world_size=world, local_rank=local,
                  restart=int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
                  run_id=env.get("TORCHELASTIC_RUN_ID", "none"))


class Solo:
    """One process, nothing shared: the group of a command started without torchrun."""

    rank = 0
    world_size = 1
    local_rank = 0
    distributed = False

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._values: dict[str, str] = {}

    def claim(self, key: str) -> int:
        n = self._counters.get(key, 0)
        self._counters[key] = n + 1
        return n

    def publish(self, key: str, make) -> str:
        self._values[key] = make()
        return self._values[key]

    def gather(self, key: str, value: Any) -> list[Any]:
        return [value]

    def barrier(self, key: str) -> None:
        pass

    def settle(self, key: str, error: BaseException | None) -> None:
        if error is not None:
            raise error

    def close(self) -> None:
        pass


class Group(Solo):
    """The ranks of a torchrun job, coordinated through its c10d store."""

    distributed = True

    def __init__(self, launch: Launch):
        super().__init__()
        import torch.distributed as dist

        if not dist.is_available():
            raise ThreecadError("this torch build has no torch.distributed; run without torchrun")
        self.launch = launch
        self.rank, self.world_size, self.local_rank = launch.rank, launch.world_size, launch.local_rank
        try:  # the store torchrun's rendezvous set up (the agent's, or one rank 0 serves), as env:// finds it
            store, _, _ = next(dist.rendezvous("env://", rank=self.rank, world_size=self.world_size,
                                               timeout=STORE_TIMEOUT))
        except (RuntimeError, ValueError, OSError) as exc:
            raise ThreecadError(f"cannot reach the torchrun store at {os.environ.get('MASTER_ADDR')}:"
                                f"{os.environ.get('MASTER_PORT')}: {exc}") from None
        # a restarted attempt (torchrun --max-restarts) must not see the last attempt's keys
        self.store = dist.PrefixStore(f"threecad/{launch.run_id}/{launch.restart}/", store)
        self._process_group = False

    # ------------------------------------------------------------------ store primitives
    def _wait(self, keys: list[str]) -> None:
        while not self.store.check(keys):
            time.sleep(POLL_S)

    def _get(self, key: str) -> str:
        self._wait([key])
        return self.store.get(key).decode("utf-8")

    def claim(self, key: str) -> int:
        """The next index of the counter `key` (atomic across ranks), from 0."""
        return int(self.store.add(key, 1)) - 1

    def publish(self, key: str, make) -> str:
        """Rank 0 computes `make()` and stores it; every rank returns it."""
        if self.rank == 0:
            self.store.set(key, make())
        return self._get(key)

    def gather(self, key: str, value: Any) -> list[Any]:
        """Every rank's `value` (JSON), in rank order, on every rank."""
        self.store.set(f"{key}/{self.rank}", json.dumps(value, sort_keys=True))
        keys = [f"{key}/{r}" for r in range(self.world_size)]
        self._wait(keys)
        return [json.loads(self.store.get(k).decode("utf-8")) for k in keys]

    def barrier(self, key: str) -> None:
        """Wait, by polling, until every rank has reached `key`."""
        self.store.add(f"{key}/arrived", 1)
        while int(self.store.add(f"{key}/arrived", 0)) < self.world_size:
            time.sleep(POLL_S)

    def settle(self, key: str, error: BaseException | None) -> None:
        """Every rank reports how its step went; all raise if any failed.

        Rank 0 raises the first failure (its own, or "rank N: ..." for another's), so the
        user reads one `error:` line; the other ranks raise RankStopped, which is silent.
        """
        message = None if error is None else (str(error) if isinstance(error, ThreecadError)
                                               else f"{type(error).__name__}: {error}")
        outcomes = self.gather(f"settle/{key}", message)
        failed = [(r, m) for r, m in enumerate(outcomes) if m is not None]
        if not failed:
            return
        if self.rank != 0:
            raise RankStopped(failed[0][1])
        if error is not None and isinstance(error, ThreecadError):
            raise error
        rank, msg = failed[0]
        raise ThreecadError(msg if rank == 0 else f"rank {rank}: {msg}")

    # ------------------------------------------------------------------ --ddp
    def init_process_group(self, device: torch.device) -> str:
        """The default process group for a --ddp fit (gloo on the CPU, nccl on CUDA), on this store."""
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if not self._process_group:
            dist.init_process_group(backend, store=dist.PrefixStore("pg/", self.store), rank=self.rank,
                                    world_size=self.world_size, timeout=GROUP_TIMEOUT)
            self._process_group = True
        return backend

    def close(self) -> None:
        if self._process_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._process_group = False


def open_group(launch: Launch | None) -> Solo:
    return Solo() if launch is None else Group(launch)


def rank_device(name: str, launch: Launch | None) -> str:
    """The device string this rank runs on: its LOCAL_RANK GPU when the job runs on CUDA."""
    if launch is None or name.lower() == "cpu":
        return name
    if name.lower() in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ThreecadError(f"LOCAL_RANK {launch.local_rank} has no GPU: {count} visible on this node; "
                                f"start at most {count} processes per node (--nproc-per-node)")
        torch.cuda.set_device(launch.local_rank)
        return f"cuda:{launch.local_rank}"
    return name


class GradientAverager:
    """`threecad.training.GradientSync` over the default process group.

    Gradients of the optimiser's parameters are averaged with one all-reduce per dtype and
    device (flattened), after one small all-reduce that tells which parameters got a gradient
    on any rank: a parameter no rank touched keeps no gradient (Adam skips it as in one
    process), one touched elsewhere gets zeros here, so every rank reduces the same tensors.
    Buffers (BatchNorm statistics) follow rank 0 after every epoch, as DDP's broadcast_buffers.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.is_writer = rank == 0
        self.loops = 0

    def broadcast_state(self, model: torch.nn.Module) -> None:
        import torch.distributed as dist

        for tensor in model.state_dict().values():
            if torch.is_tensor(tensor):
                dist.broadcast(tensor, src=0)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        import torch.distributed as dist

        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if not params:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
        dist.all_reduce(present)
        buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for p, anywhere in zip(params, present.tolist()):
            if anywhere == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            buckets.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for grads in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n

    def mean_losses(self, sums: dict[str, float], count: int) -> dict[str, float]:
        import torch.distributed as dist

        keys = sorted(sums)
        totals = torch.tensor([float(count), *(sums[k] for k in keys)], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        totals = totals.cpu()
        n = max(float(totals[0]), 1.0)
        return {k: float(totals[i + 1]) / n for i, k in enumerate(keys)}
