"""Device choice and the environment facts a result must record (hardware, versions, revision)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

import threecad
from threecad.cpus import apply_threads, pool_size
from threecad.errors import ThreecadError


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; `cuda` without CUDA is an error, not a fallback."""
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ThreecadError("--device cuda was asked for but no CUDA device is visible "
                                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
                                "use --device cpu or --device auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ThreecadError(f"unknown device '{name}'; use auto, cpu or cuda")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loader_workers(device: torch.device) -> int:
    """DataLoader workers: none on small CPU budgets (the cache makes loading cheap and the
    threads are busy with the model), several on a GPU machine where the CPU only feeds it;
    within the thread budget (threecad.cpus) either way."""
    budget = pool_size()
    if device.type == "cuda":
        return min(8, max(1, budget - 1))
    return 0 if budget <= 4 else min(4, budget // 4)


def configure_threads(device: torch.device, threads: int | None = None) -> dict:
    """Every CPU pool sized to one budget (threecad.cpus); what was set, for run.json."""
    return apply_threads(threads)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu_count()} cores, {model}"


def versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {"threecad": threecad.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "cuda": str(torch.version.cuda)}


def code_revision() -> str:
    """Short git revision of the threecad checkout (`-dirty` with local changes), else "unknown"."""
    here = Path(threecad.__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
