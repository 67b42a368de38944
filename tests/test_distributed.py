"""`threecad bench` under torchrun: ranks share a study's pairs, or fit one pair with --ddp.

Real launches: `python -m torch.distributed.run --standalone --nproc-per-node 2 -m threecad
bench ...` on CPU (gloo), with real registered methods shortened to 64 px and one epoch.
The sweep must split the pairs between the two ranks (each pair run once) and give the
study table of a single-process run, byte for byte; a --ddp fit of RD must give finite
losses and one record. The gradient averaging itself is checked on two spawned processes.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import baselines
import cfrg
import threecad

from conftest import make_tiny_dataset
from refusal import assert_refused
from threecad.cli import main
from threecad.errors import ThreecadError
from threecad.harness import distributed
from threecad.registry import available_methods

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SHORT = ["--preset", "cpu", "--device", "cpu", "--eval-size", "64", "--pictures", "0"]
FAST_MEMORY_BANKS = ["--set", "image_size=64"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("dist") / "tiny")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.getbasetemp() / "cache"
    return dict(os.environ, THREECAD_CACHE=str(cache), OMP_NUM_THREADS="1")


def torchrun(args: list[str], env: dict[str, str], *, python: bool = True) -> subprocess.CompletedProcess:
    head = TORCHRUN + (["-m", "threecad"] if python else ["--no-python"])
    return subprocess.run(head + args, env=env, capture_output=True, text=True, timeout=240)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_sweep_splits_pairs_and_matches_one_process(root, env, tmp_path, monkeypatch):
    args = ["bench", "--method", "patchcore,padim", "--root", str(root), "--category", "ACC,CS",
            *SHORT, *FAST_MEMORY_BANKS]
    shared = torchrun([*args, "--out", str(tmp_path / "S")], env)
    assert shared.returncode == 0, shared.stdout + shared.stderr

    # every pair ran exactly once, and both ranks took some
    ran = re.findall(r"^\[rank (\d)\] (\w+) (ACC|CS): i_auroc", shared.stdout, re.M)
    assert sorted((m, c) for _, m, c in ran) == sorted((m, c) for m in ("padim", "patchcore") for c in ("ACC", "CS"))
    assert {r for r, _, _ in ran} == {"0", "1"}

    monkeypatch.setenv("THREECAD_CACHE", env["THREECAD_CACHE"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    alone = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "one")])
    assert alone.exit_code == 0, alone.output

    for name in ("study.md", "study.csv"):
        assert (tmp_path / "S" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert "| patchcore |" in (tmp_path / "S" / "study.md").read_text()
    for method in ("patchcore", "padim"):
        a = json.loads((tmp_path / "S" / method / "results.json").read_text())
        b = json.loads((tmp_path / "one" / method / "results.json").read_text())
        assert a["finished"] and list(a["categories"]) == ["ACC", "CS"]  # rebuilt by rank 0, catalog order
        assert {k: v["metrics"] for k, v in a["categories"].items()} == {
            k: v["metrics"] for k, v in b["categories"].items()}
        assert a["mean"] == b["mean"]
    assert shared.stdout.count("## I-AUROC") == 1  # the table printed once, by rank 0


def test_ddp_fit_of_rd_gives_one_record(root, env, tmp_path):
    out = tmp_path / "D"
    proc = torchrun(["bench", "--method", "rd", "--root", str(root), "--category", "ACC", *SHORT, "--ddp",
                     "--set", "image_size=64", "--set", "epochs=1", "--out", str(out)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "categories" / "ACC.json").read_text())
    assert record["status"] == "ok"
    assert record["ddp"] == {"world_size": 2, "backend": "gloo", "batch_per_rank": 2}
    losses = record["method_info"]["final_train_losses"]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses.values())
    assert all(math.isfinite(record["metrics"][k]) for k in ("i_auroc", "p_auroc"))
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] and list(results["categories"]) == ["ACC"] and results["ddp"] is True
    assert proc.stdout.count("rd ACC: i_auroc") == 1  # evaluated by rank 0 only
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", ".lock.owner", ".manifest.lock", "categories", "checkpoints", "config.yaml", "losses", "manifest.json",
        "predictions", "report.html", "results.csv", "results.json", "results.md", "run.json", "work"]
    assert not any((out / "work").iterdir())  # the epoch checkpoint removed when the fit ended


def test_ranks_disagreeing_on_arguments_refused(root, env, tmp_path):
    # each rank is given another --out: rank 0 refuses in one line, nothing is written
    cmd = (f"exec {sys.executable} -m threecad bench --method padim --root {root} --category ACC "
           f"--preset cpu --device cpu --out {tmp_path}/out$RANK")
    proc = torchrun(["bash", "-c", cmd], env, python=False)
    assert proc.returncode != 0
    errors = error_lines(proc.stdout + proc.stderr)
    assert len(errors) == 1 and "rank 1" in errors[0] and "--out" in errors[0], proc.stderr
    ours = [str(Path(pkg.__file__).parent) for pkg in (threecad, baselines, cfrg)]
    before = proc.stderr.split("ChildFailedError")[0]
    assert not [d for d in ours if f'File "{d}' in before], before  # no traceback through our code
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ddp_without_torchrun_refused(root, tmp_path):
    assert_refused(["bench", "--method", "rd", "--root", str(root), "--category", "ACC", *SHORT, "--ddp",
                    "--out", str(tmp_path / "D")], names=["--ddp", "torchrun"], watch=[tmp_path, root])


def test_only_gradient_methods_can_share_a_fit():
    methods = available_methods()
    shared = {name for name, cls in methods.items() if cls.trains_by_gradient}
    assert {"patchcore", "padim"}.isdisjoint(shared)
    assert {"cfrg", "rd", "rdpp", "draem", "simplenet", "fastflow", "uniad", "crad", "realnet"} <= shared


@pytest.mark.parametrize("env_vars, expected", [
    ({}, None),
    ({"RANK": "1"}, None),  # another tool's variable alone: not a torchrun job
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     distributed.Launch(rank=1, world_size=2, local_rank=1)),
])
def test_detect(env_vars, expected):
    assert distributed.detect(env_vars) == expected


def test_detect_refuses_a_rank_outside_the_world():
    with pytest.raises(ThreecadError, match="RANK 2 is outside WORLD_SIZE 2"):
        distributed.detect({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h",
                            "MASTER_PORT": "1"})


def _average_on_two_ranks(rank: int, store_file: str, results: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_file, 2), rank=rank, world_size=2)
    torch.manual_seed(rank)  # different starting weights: broadcast_state gives rank 0's to both
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(3, 1),
                                 "unused": torch.nn.Linear(1, 1), "bn": torch.nn.BatchNorm1d(2)})
    sync = distributed.GradientAverager(rank, 2, torch.device("cpu"))
    sync.broadcast_state(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.full((4, 3), float(rank + 1))
    loss = model["a"](x).sum() if rank == 0 else model["a"](x).sum() + model["b"](x).sum()  # b: rank 1 only
    loss.backward()
    model["bn"](torch.randn(8, 2) + rank)  # rank-dependent running statistics
    sync.reduce_gradients(opt)
    sync.sync_buffers(model)
    means = sync.mean_losses({"loss": 10.0 * (rank + 1)}, count=rank + 1)  # 10 over 1 batch, 20 over 2
    torch.save({"grads": {n: None if p.grad is None else p.grad for n, p in model.named_parameters()},
                "state": model.state_dict(), "means": means}, f"{results}.{rank}")
    dist.destroy_process_group()


def test_gradient_averager_on_two_processes(tmp_path):
    import torch.multiprocessing as mp

    results = str(tmp_path / "out")
    # fork: the children reuse this process's imports (seconds saved); no CUDA is initialised here
    mp.start_processes(_average_on_two_ranks, args=(str(tmp_path / "store"), results), nprocs=2, join=True,
                       start_method="fork")
    r0, r1 = (torch.load(f"{results}.{r}", weights_only=True) for r in (0, 1))
    for key, value in r0["state"].items():  # the same weights and buffers on both ranks
        assert torch.equal(value, r1["state"][key]), key
    for name in ("a.weight", "a.bias", "b.weight", "b.bias"):
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name
    # d(sum of a(x))/d a.weight = sum over rows of x: 4*1 on rank 0, 4*2 on rank 1 -> mean 6
    assert torch.equal(r0["grads"]["a.weight"], torch.full((2, 3), 6.0))
    assert torch.equal(r0["grads"]["b.weight"], torch.full((1, 3), 4.0))  # rank 1's 8, rank 0's zeros
    assert r0["grads"]["unused.weight"] is None and r1["grads"]["unused.weight"] is None
    assert r0["means"] == r1["means"] == {"loss": pytest.approx(30.0 / 3)}


# ---------------------------------------------------------------------- the training loop
def _tiny_fit(epochs: int, work_dir: Path | None, fail_at: int | None = None, rank: int = 0, world: int = 1,
              sync=None):
    """train_epochs on a linear model, 2 batches of 4 fixed samples; rank r of `world` takes every world-th
    sample of each batch."""
    from threecad import training

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    data = torch.arange(16, dtype=torch.float32).reshape(8, 2) / 16
    loader = [{"image": data[i:i + 4][rank::world]} for i in range(0, 8, 4)]
    calls = {"n": 0}

    def step(batch):
        calls["n"] += 1
        if fail_at is not None and calls["n"] > fail_at:
            raise KeyboardInterrupt  # the process dies mid-epoch
        return {"loss": model(batch["image"]).pow(2).mean(), "half": model(batch["image"]).abs().mean() / 2}

    loop = training.train_epochs(model, opt, sched, scaler, step, loader, epochs=epochs, device=torch.device("cpu"),
                                 channels_last=False, work_dir=work_dir, select="last", sync=sync)
    return loop, model


def test_loss_history_survives_a_resume(tmp_path):
    whole, _ = _tiny_fit(3, tmp_path / "a")
    assert [h["epoch"] for h in whole.history] == [1, 2, 3]
    assert set(whole.history[0]) == {"epoch", "train_loss", "train_half"}
    assert whole.history[-1]["train_loss"] == whole.last_losses["loss"] < whole.history[0]["train_loss"]
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(3, tmp_path / "b", fail_at=5)  # 2 batches an epoch: dies in epoch 3
    resumed, _ = _tiny_fit(3, tmp_path / "b")
    assert resumed.resumed_after == 2 and resumed.history == whole.history

    # an epoch checkpoint written before history existed still loads: history from the resume on
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(3, tmp_path / "c", fail_at=5)
    ckpt = tmp_path / "c" / "epoch.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["history"]
    from threecad import integrity

    integrity.remove_checked(ckpt)
    integrity.save_checked(state, ckpt)
    old, _ = _tiny_fit(3, tmp_path / "c")
    assert old.history == whole.history[2:]


def _fit_on_two_ranks(rank: int, store_file: str, results: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_file, 2), rank=rank, world_size=2)
    sync = distributed.GradientAverager(rank, 2, torch.device("cpu"))
    loop, model = _tiny_fit(2, Path(results).parent / "work", rank=rank, world=2, sync=sync)
    torch.save({"state": model.state_dict(), "history": loop.history, "loops": sync.loops}, f"{results}.{rank}")
    dist.destroy_process_group()


def test_data_parallel_fit_equals_one_process_on_the_whole_batch(tmp_path):
    """Two ranks, each on half of every batch, gradients averaged: the weights and losses of
    one process training on the whole batches (the loss is a mean, so the halves' mean is it)."""
    import torch.multiprocessing as mp

    results = str(tmp_path / "out")
    mp.start_processes(_fit_on_two_ranks, args=(str(tmp_path / "store"), results), nprocs=2, join=True,
                       start_method="fork")
    r0, r1 = (torch.load(f"{results}.{r}", weights_only=True) for r in (0, 1))
    alone, model = _tiny_fit(2, None)
    assert r0["loops"] == r1["loops"] == 1
    for key, value in model.state_dict().items():
        assert torch.allclose(r0["state"][key], value, atol=1e-6) and torch.equal(r0["state"][key], r1["state"][key])
    assert r0["history"] == r1["history"]
    assert [h["train_loss"] for h in r0["history"]] == pytest.approx([h["train_loss"] for h in alone.history])
    assert not (tmp_path / "work" / "epoch.pt").exists()  # written by rank 0 only, removed at the end
