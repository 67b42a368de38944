"""How a fit slows down when other CPU-bound jobs share the machine, before and after the thread budget.

The demo's first category (CFRG, cpu preset at the demo's 128 px / 24 epochs, ACC of the demo's
synthetic set) is fitted quietly, then beside one and two busy processes (a numpy loop each),
by this checkout and, with --old WORKTREE, by another (e.g. `git worktree add /tmp/old 8daf5bb`,
the commit before threecad.cpus). Each line gives the fit seconds, the slowdown against the quiet
fit of the same code, and the load factor: (busy processes + the fit's threads) / cores, what a
fair share alone would give. The target: a slowdown within about 1.5x of the load factor.

    .venv/bin/python benchmarks/contention.py --old /tmp/old [--timeout 600]

Run it on an otherwise quiet machine: other jobs are load the table does not count.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def busy() -> None:
    import numpy as np

    a = np.random.rand(300, 300)
    while True:
        a = a @ a
        a /= np.abs(a).max()


def fit_seconds(checkout: Path, data: Path, out: Path, timeout: float) -> float | None:
    """The fit time a run records, or None when it did not finish within `timeout`."""
    cmd = [sys.executable, "-m", "threecad", "bench", "--method", "cfrg", "--root", str(data), "--category", "ACC",
           "--preset", "cpu", "--set", "image_size=128", "--set", "epochs=24", "--device", "cpu", "--pictures", "0",
           "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(PYTHONPATH=str(checkout), THREECAD_OFFLINE="1", THREECAD_CACHE=str(out.parent / "cache"))
    try:
        subprocess.run(cmd, cwd=checkout, env=env, check=True, timeout=timeout, capture_output=True)
    except subprocess.TimeoutExpired:
        return None
    return json.loads((out / "categories" / "ACC.json").read_text())["timings"]["fit_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, default=None, help="a worktree of the code to compare with")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a fit counts as '> timeout'")
    parser.add_argument("--loads", default="0,1,2", help="busy processes beside the fit")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    checkouts = [("this checkout", HERE)] + ([("old", args.old.resolve())] if args.old else [])
    print(f"load before: {os.getloadavg()[0]:.2f}; {cores} cores; the fit uses all of them (threads = {cores})")
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        data = Path(tmp) / "demo-data"
        subprocess.run([sys.executable, "-m", "threecad", "synth", "--out", str(data), "--scale", "0.01",
                        "--max-size", "256", "--seed", "0"], cwd=HERE, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(HERE)})
        print(f"{'code':<14} {'busy':>4} {'fit s':>8} {'slowdown':>9} {'load factor':>12}")
        for label, checkout in checkouts:
            quiet = None
            for k in (int(x) for x in args.loads.split(",")):
                workers = [mp.Process(target=busy, daemon=True) for _ in range(k)]
                for w in workers:
                    w.start()
                try:
                    seconds = fit_seconds(checkout, data, Path(tmp) / f"{label}-{k}".replace(" ", "_"), args.timeout)
                finally:
                    for w in workers:
                        w.terminate()
                    time.sleep(1)
                if k == 0:
                    quiet = seconds
                factor = (k + cores) / cores
                shown = f"{seconds:8.1f}" if seconds is not None else f">{args.timeout:7.0f}"
                slow = f"{seconds / quiet:9.2f}" if seconds is not None and quiet else f"{'-':>9}"
                print(f"{label:<14} {k:>4} {shown} {slow} {factor:12.2f}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
