"""Check the GPU path of every registered method in minutes: `make gpu-check`.

Why: the test suite runs on the CPU only, so `--device cuda`, mixed precision (AMP),
channels-last and pinned memory run for real only when a GPU machine is lent. This
script makes that run short and telling. Each method's `paper` preset (the published
architecture, not the small cpu one) goes through the harness itself (`run_benchmark`,
the path `threecad bench` takes) for a few steps of fit and one test pass, and what must
hold on any device is checked:

- the run finishes; the final train losses and the metrics are finite (a metric the tiny
  test set cannot define stays None);
- the checkpoint loads on the device and on the CPU, and `predict` gives maps (N, h, w),
  square and finite, of the same shape on both, and scores (N,) or None;
- the deterministic methods (PatchCore, PaDiM) fitted and predicted on the device agree
  with the same fitted and predicted on the CPU: mean |map difference| at most TOL_MEAN and
  max at most TOL_MAX of the CPU map's range (the backbone runs in float16 under AMP);
- images/s (steady state) and peak device memory, as the harness measures them.

One markdown table is printed; the exit status is 1 when a check fails (2: bad arguments).

Lengths: `--steps N` sets every length a config declares (`threecad.trained.length`:
epochs and steps N, a first phase N/2, inner repeats and checkpoint intervals 1), as
tests/test_resume.py shortens methods; tests/test_gpu_check.py fails when a method gains a
field that looks like a length and is declared neither a length nor `not_length`. Weights: nothing may download (THREECAD_OFFLINE=1). A backbone's ImageNet
file is used when it is on disk; otherwise random weights, except where random weights make
features vanish under float16 (EfficientNet-B4: about 7e-9 at stride 16, below float16's
smallest number), where the offline EfficientNet-Lite0 stands in.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda|cpu] [--steps N] [--methods a,b] [--root DIR]
        [--category AI] [--image-size PX] [--train-images N] [--out DIR]

Without --root, a small synthetic set (`threecad.synth.generate`, one category) is written
to the work folder. The CPU dry run of the test suite: `--device cpu --steps 1 --image-size 64`.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from threecad.errors import ThreecadError
from threecad.method import uses_amp
from threecad.timm_weights import TIMM_WEIGHTS, local_timm_file
from threecad.trained import short_lengths

log = logging.getLogger("benchmarks.gpu_check")

DETERMINISTIC = ("patchcore", "padim")  # fit and predict without randomness: CPU and device must agree
TOL_MEAN = 0.01  # mean |device map - CPU map| / range of the CPU map
TOL_MAX = 0.10  # max of the same
PREDICT_IMAGES = 4  # test images predicted outside the harness (shape and agreement checks)
BUDGET_S = 480  # the check must fit in 8 minutes on one GPU; a longer run says so
# backbones whose random-init features underflow float16 (so AMP would zero them)
VANISHING_RANDOM = ("efficientnet_b4", "efficientnet_b4_tf")
STAND_IN = "efficientnet_lite0"


@dataclass
class Plan:
    """How one method is run: its paper preset's overrides and what they mean."""

    name: str
    overrides: dict[str, str]
    weights: str  # imagenet | random | efficientnet_lite0 (offline ImageNet) | none needed
    image_size: int
    batch_size: int
    batch_capped: bool
    trains: bool  # has length fields (gradient training), so it reports train losses


@dataclass
class Outcome:
    """What the check measured for one method, and the problems it found."""

    plan: Plan | None
    name: str
    fit_s: float | None = None
    images_per_s: float | None = None
    peak_device_mb: float | None = None
    peak_host_mb: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    map_shape: tuple[int, ...] | None = None
    same_weights_gap: float | None = None  # max |device - CPU| / CPU range, one checkpoint on both
    fit_gap: tuple[float, float] | None = None  # (mean, max): deterministic methods, fitted on each
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def imagenet_on_disk(backbone: str) -> bool:
    """Whether `weights=imagenet` would load a file already here (never a download)."""
    from threecad.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    if spec is None:
        return False
    return any(p.is_file() for p in spec.local_weight_files())


def weights_overrides(config) -> tuple[dict[str, str], str]:
    """The paper preset's backbone with ImageNet weights from disk, else random (or the stand-in)."""
    if not hasattr(config, "weights"):
        return {}, "none needed"
    key = "backbone" if hasattr(config, "backbone") else "teacher" if hasattr(config, "teacher") else None
    backbone = getattr(config, key) if key else None
    if str(config.weights) in TIMM_WEIGHTS:  # timm's retrained file (RealNet): from disk, else random
        return ({}, str(config.weights)) if local_timm_file(config.weights) else ({"weights": "none"}, "random")
    if str(config.weights).lower() != "imagenet" or backbone is None or imagenet_on_disk(backbone):
        return {}, str(config.weights)
    if backbone in VANISHING_RANDOM and imagenet_on_disk(STAND_IN):
        return {key: STAND_IN}, f"{STAND_IN} (offline ImageNet)"
    return {"weights": "none"}, "random"


def make_plan(cls, steps: int, image_size: int | None, n_train: int) -> Plan:
    """The overrides of `cls`'s paper preset for this check (refused configs raise ThreecadError)."""
    from threecad.method import build_config

    paper = build_config(cls, "paper")
    lengths = short_lengths(cls.config_class, steps)
    overrides = {k: str(v) for k, v in lengths.items()}
    overrides["precision"] = "amp"  # the float16 path is the one the CPU suite cannot exercise
    w_over, weights = weights_overrides(paper)
    overrides.update(w_over)
    size = paper.image_size
    if image_size is not None:  # the smallest of S, 2S, 4S, ... that the config accepts
        for candidate in (image_size * 2 ** k for k in range(6)):
            try:
                build_config(cls, "paper", {**overrides, "image_size": str(candidate)})
            except ThreecadError:
                continue
            size = candidate
            break
        overrides["image_size"] = str(size)
    batch = paper.batch_size
    capped = batch > n_train
    if capped:
        overrides["batch_size"] = str(n_train)
        batch = n_train
    build_config(cls, "paper", overrides)  # refused here, before anything runs
    return Plan(cls.name, overrides, weights, size, batch, capped, trains=bool(lengths))


def synthesize(root: Path, category: str, size: int, train_images: int) -> Path:
    from threecad.synth import generate

    return generate(root, scale=0.001, seed=0, categories=[category], max_size=size, workers=None,
                    progress=False, min_train=train_images, min_test_good=max(2, train_images // 4))


def train_count(root: Path, category: str) -> tuple[str, int]:
    from threecad.catalog import resolve_categories
    from threecad.layout import scan_root

    scan = scan_root(root)
    cats = resolve_categories((category,), scan.categories)
    if len(cats) != 1:
        raise ThreecadError(f"--category {category}: name one category")
    abbr = cats[0].abbreviation
    table = scan.table
    return abbr, int(((table["category"] == abbr) & (table["split"] == "train")).sum())


def predict_batch(cls, config, checkpoint: Path, device: torch.device, images: torch.Tensor):
    """Load the checkpoint into a fresh method on `device` (AMP on CUDA, as the harness) and predict."""
    from threecad.integrity import load_checked
    from threecad.training import seed_everything

    seed_everything(config.seed)
    method = cls(config, device=device, amp=uses_amp(config, device))
    method.load_state_dict(load_checked(checkpoint))
    with torch.inference_mode():
        scores, maps = method.predict(images.to(device))
    return (None if scores is None else scores.float().cpu()), maps.float().cpu()


def map_gap(maps: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(mean, max) of |maps - reference| over the reference's range (max - min)."""
    span = float(reference.max() - reference.min()) or 1.0
    diff = (maps.double() - reference.double()).abs()
    return float(diff.mean()) / span, float(diff.max()) / span


def shape_problems(scores, maps: torch.Tensor, n: int, where: str) -> list[str]:
    out = []
    if maps.ndim != 3 or maps.shape[0] != n or maps.shape[1] != maps.shape[2]:
        out.append(f"{where}: maps of shape {tuple(maps.shape)}, expected ({n}, h, h)")
    elif not torch.isfinite(maps).all():
        out.append(f"{where}: non-finite map values")
    if scores is not None and (tuple(scores.shape) != (n,) or not torch.isfinite(scores).all()):
        out.append(f"{where}: scores of shape {tuple(scores.shape)} (finite: {bool(torch.isfinite(scores).all())})")
    return out


def run_harness(name: str, plan: Plan, root: Path, abbr: str, device: str, out: Path, eval_size: int):
    from threecad.harness import BenchSpec, run_benchmark

    spec = BenchSpec(method=name, root=root, categories=(abbr,), preset="paper", overrides=plan.overrides,
                     device=device, out=out, eval_size=eval_size, pictures=0)
    results, _ = run_benchmark(spec, echo=lambda msg: log.info("%s [%s] %s", name, device, msg))
    # a unified paper preset (UniAD, CRAD) fits its one model on this one category: unified.pt
    stem = "unified" if results.get("setting") == "unified" else abbr
    return results["categories"][abbr], out / "checkpoints" / f"{stem}.pt"


def check_method(name: str, cls, args: argparse.Namespace, root: Path, abbr: str, n_train: int,
                 work: Path, eval_size: int) -> Outcome:
    from threecad.dataset import ThreeCAD
    from threecad.method import build_config

    started = time.perf_counter()
    outcome = Outcome(plan=None, name=name)
    try:
        if isinstance(cls, Exception):
            raise ThreecadError(f"does not load: {cls}")
        plan = outcome.plan = make_plan(cls, args.steps, args.image_size, n_train)
        config = build_config(cls, "paper", plan.overrides)
        record, ckpt = run_harness(name, plan, root, abbr, args.device, work / name / args.device, eval_size)
        if record.get("status") != "ok":
            raise ThreecadError(f"the run failed: {record.get('error')}")
        outcome.fit_s = record["timings"]["fit_s"]
        outcome.images_per_s = record["timings"]["infer_images_per_s"]
        outcome.peak_device_mb = record["memory"].get("peak_device_mb")
        outcome.peak_host_mb = record["memory"].get("peak_host_rss_mb")
        outcome.losses = dict((record.get("method_info") or {}).get("final_train_losses") or {})
        bad = sorted(k for k, v in outcome.losses.items() if not math.isfinite(float(v)))
        if bad:
            outcome.problems.append(f"non-finite train losses: {', '.join(bad)}")
        bad = sorted(k for k, v in record["metrics"].items() if v is not None and not math.isfinite(v))
        if bad:
            outcome.problems.append(f"non-finite metrics: {', '.join(bad)}")

        test = ThreeCAD(root, abbr, "test", image_size=config.image_size, cache=False)
        n = min(PREDICT_IMAGES, len(test))
        images = torch.stack([test[i]["image"] for i in range(n)])
        device = torch.device(args.device)
        scores, maps = predict_batch(cls, config, ckpt, device, images)
        outcome.map_shape = tuple(maps.shape)
        outcome.problems += shape_problems(scores, maps, n, args.device)
        if device.type != "cpu":  # the device's checkpoint on the CPU: loads, same shapes
            cpu_scores, cpu_maps = predict_batch(cls, config, ckpt, torch.device("cpu"), images)
            outcome.problems += shape_problems(cpu_scores, cpu_maps, n, "cpu")
            if cpu_maps.shape != maps.shape:
                outcome.problems.append(f"map shape {tuple(maps.shape)} on {args.device}, "
                                        f"{tuple(cpu_maps.shape)} on the CPU")
            else:
                outcome.same_weights_gap = map_gap(maps, cpu_maps)[1]
        else:
            cpu_maps = maps
            outcome.same_weights_gap = 0.0
        if name in DETERMINISTIC:  # fitted on each: the whole path must agree
            if device.type != "cpu":
                _, ref_ckpt = run_harness(name, plan, root, abbr, "cpu", work / name / "cpu-reference", eval_size)
                _, ref_maps = predict_batch(cls, config, ref_ckpt, torch.device("cpu"), images)
            else:
                ref_maps = cpu_maps
            if ref_maps.shape != maps.shape:
                outcome.problems.append(f"map shape {tuple(maps.shape)} fitted on {args.device}, "
                                        f"{tuple(ref_maps.shape)} fitted on the CPU")
            else:
                outcome.fit_gap = map_gap(maps, ref_maps)
                mean, worst = outcome.fit_gap
                if mean > TOL_MEAN or worst > TOL_MAX:
                    outcome.problems.append(f"CPU and {args.device} disagree: mean {100 * mean:.2f}% / max "
                                            f"{100 * worst:.2f}% of the map range (allowed {100 * TOL_MEAN:g}% / "
                                            f"{100 * TOL_MAX:g}%)")
    except Exception as exc:  # noqa: BLE001 - one method's failure is its row, the others still run
        first = (str(exc).strip().splitlines() or [""])[0]
        outcome.problems.append(first if isinstance(exc, ThreecadError) else f"{type(exc).__name__}: {first}")
        log.debug("%s failed", name, exc_info=True)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.3g}%"


def table(outcomes: list[Outcome], device: str) -> str:
    head = ["method", "weights", "size", "batch", "fit s", "img/s", f"peak {device} MB", "final train loss",
            "map", f"same weights: {device} vs cpu (max)", f"own fit: {device} vs cpu (mean / max)", "check", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in outcomes:
        p = o.plan
        if o.losses:
            loss = _num(o.losses.get("loss", next(iter(o.losses.values()))), ".4g")
        else:
            loss = "-" if p is None or p.trains else "n/a (no training)"
        peak = o.peak_device_mb if device != "cpu" else o.peak_host_mb
        row = [o.name, p.weights if p else "-", str(p.image_size) if p else "-",
               (f"{p.batch_size}{' (capped)' if p.batch_capped else ''}") if p else "-",
               _num(o.fit_s, ".1f"), _num(o.images_per_s, ".1f"), _num(peak, ".0f"), loss,
               "x".join(map(str, o.map_shape)) if o.map_shape else "-", _pct(o.same_weights_gap),
               f"{_pct(o.fit_gap[0])} / {_pct(o.fit_gap[1])}" if o.fit_gap else "-",
               "ok" if o.ok else "FAIL: " + "; ".join(o.problems).replace("|", "/"), f"{o.seconds:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run). Default: cuda.")
    ap.add_argument("--steps", type=int, default=2, help="Epochs / steps / meta-epochs of fit (default 2).")
    ap.add_argument("--methods", default="all", help="Comma list of registered methods (default: all).")
    ap.add_argument("--root", type=Path, default=None, help="Dataset root; default: a synthetic set.")
    ap.add_argument("--category", default="AI", help="The one category run (default AI).")
    ap.add_argument("--image-size", type=int, default=None,
                    help="Input side instead of the paper's (the smallest multiple S*2^k a config accepts).")
    ap.add_argument("--train-images", type=int, default=32,
                    help="Training images of the synthetic set (default 32: the largest paper batch).")
    ap.add_argument("--out", type=Path, default=None, help="Keep the run directories here (default: removed).")
    ap.add_argument("-v", "--verbose", action="store_true", help="Log the harness's progress.")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    if args.train_images < 1:
        ap.error("--train-images must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["THREECAD_OFFLINE"] = "1"  # a weights file that is not on disk is never downloaded
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    work = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="threecad-gpu-check-"))
    try:
        from threecad.harness import devices
        from threecad.registry import available_methods

        device = devices.pick_device(args.device)
        args.device = str(device)
        registered = available_methods()
        names = sorted(registered) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in registered]
        if unknown:
            raise ThreecadError(f"unknown method {', '.join(unknown)}; registered: {', '.join(sorted(registered))}")
        os.environ.setdefault("THREECAD_CACHE", str(work / "cache"))
        root = args.root
        if root is None:
            root = synthesize(work / "data", args.category, args.image_size or 256, args.train_images)
        abbr, n_train = train_count(Path(root), args.category)
        eval_size = args.image_size or 256
        amp = "AMP float16" if device.type == "cuda" else "no AMP (CPU)"
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"gpu check: {len(names)} methods, paper presets, {args.steps} step(s) of fit, {abbr} of {root} "
              f"({n_train} train images), {where}, {amp}, torch {torch.__version__}", flush=True)
        outcomes = []
        for name in names:
            outcome = check_method(name, registered[name], args, Path(root), abbr, n_train, work, eval_size)
            log.info("%s: %s in %.1fs", name, "ok" if outcome.ok else "; ".join(outcome.problems), outcome.seconds)
            outcomes.append(outcome)
    except ThreecadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    print(table(outcomes, args.device))
    print(f"\ntolerance (deterministic methods, own fit): mean {100 * TOL_MEAN:g}% and max {100 * TOL_MAX:g}% "
          "of the CPU map's range")
    failed = [o.name for o in outcomes if not o.ok]
    over = f" (over the {BUDGET_S // 60}-minute budget)" if total > BUDGET_S and device.type == "cuda" else ""
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} methods passed in {total:.0f}s{over}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
