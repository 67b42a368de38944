"""Digests of what each registered method's cpu preset computes, to pin behaviour across refactors.

Each method is benched (in process, one thread, CPU) on one category of `threecad synth
--scale 0.005 --max-size 64 --seed 0`, with every declared training length cut to a two-step
fit (`threecad.trained.short_lengths(config, 2)`). The digest covers the checkpoint's content
(every tensor's dtype, shape and bytes; every plain value), the category's metrics and its
loss history: equal digests mean byte-identical weights and identical numbers. The config
the run recorded is kept as it is, so that a test can check each recorded field kept its value.

`python tests/behaviour_digests.py [NAME...]` rewrites tests/data/behaviour_digests.json; do
that only for a deliberate change of behaviour, and say so in the commit.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "behaviour_digests.json"
CATEGORY = "AMF"
SYNTH = ["--scale", "0.005", "--max-size", "64", "--seed", "0", "--category", CATEGORY]


def _update(h: "hashlib._Hash", value: Any) -> None:
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"dict{")
        for key in sorted(value, key=str):
            h.update(repr(key).encode() + b":")
            _update(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"seq[")
        for item in value:
            _update(h, item)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


def state_digest(state: Any) -> str:
    h = hashlib.sha256()
    _update(h, state)
    return h.hexdigest()


def _without_config(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint less its copy of the config: a new config field (with a default that keeps
    behaviour) must not change the digest; the config is compared field by field instead."""
    return {k: v for k, v in state.items() if k != "config"}


def synth_root(out: Path) -> Path:
    from click.testing import CliRunner

    from threecad.cli import main

    res = CliRunner().invoke(main, ["synth", "--out", str(out), *SYNTH], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def measure(name: str, root: Path, out: Path) -> dict[str, Any]:
    """Bench one method's cpu preset on `root` and digest what it wrote."""
    from click.testing import CliRunner

    from threecad.cli import main
    from threecad.registry import available_methods
    from threecad.trained import short_lengths

    torch.set_num_threads(1)
    overrides = {k: str(v) for k, v in short_lengths(available_methods()[name].config_class, 2).items()}
    args = ["bench", "--method", name, "--root", str(root), "--category", CATEGORY, "--preset", "cpu",
            "--device", "cpu", "--out", str(out)]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    checkpoints = sorted((out / "checkpoints").glob("*.pt"))
    record = json.loads((out / "categories" / f"{CATEGORY}.json").read_text())
    losses = out / "losses" / f"{CATEGORY}.csv"
    return {
        "overrides": overrides,
        "checkpoint": {p.name: state_digest(_without_config(torch.load(p, map_location="cpu", weights_only=True)))
                       for p in checkpoints},
        "config": json.loads((out / "run.json").read_text())["config"],
        "metrics": record["metrics"],
        "losses": hashlib.sha256(losses.read_bytes()).hexdigest() if losses.is_file() else None,
    }


def measure_one_thread(name: str, root: Path, out: Path) -> dict[str, Any]:
    """`measure` in a process whose OpenMP pool has one thread from the start (setting torch's
    thread count later is not enough for identical sums); in this process when it has."""
    import os
    import subprocess

    if os.environ.get("OMP_NUM_THREADS") == "1":
        return measure(name, root, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", name, str(root), str(out)],
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    import tempfile
    import time

    from threecad.registry import available_methods

    if argv[:1] == ["--measure"]:
        name, root, out = argv[1:4]
        print(json.dumps(measure(name, Path(root), Path(out))))
        return
    names = argv or sorted(available_methods())
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        root = synth_root(Path(tmp) / "data")
        for name in names:
            start = time.perf_counter()
            golden[name] = measure_one_thread(name, root, Path(tmp) / f"run-{name}")
            print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main(sys.argv[1:])
