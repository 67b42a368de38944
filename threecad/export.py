"""One category's model of a run as a single inference graph: ONNX or TorchScript.

Why: what is deployed should compute what was benchmarked. The graph is traced through the
function the benchmark scored its test images with (`threecad.harness.evaluation.score_batch`):
the method's `predict` (its networks traced; memory banks, Gaussians and the like as fixed
weights of the graph), the run protocol's treatment (the method's declared post-processing under
`standard`: torch ops, so inside the graph) and the bilinear resize to the evaluation grid.

Input `image`: float32 (N, 3, S, S) in [0, 1], N free: the image read through the method's
declared preprocess (resize library, geometry, channel order) as uint8 and divided by 255,
before any normalisation (the graph normalises for its own backbone). Outputs: `score` (N,),
the score the run's protocol ranks images by, and `map` (N, E, E) at the evaluation size E,
as the run's metrics took it. Under `3cad-paper` the map is the raw one (the release blurs
it before its pixel metrics) and the score is the max of that blur, computed in float32 by
`threecad.smoothing.gaussian_smooth` where the release uses scipy in float64.

Nothing is kept unchecked: the written file, run by onnxruntime or `torch.jit.load`, must
give `SavedModel.predict_pixels`' maps and scores on a batch of another size than the
tracing batch, or the export is refused. A sidecar FILE.json records the input contract,
the pre- and post-processing, the outputs, the run, the check and any decision threshold.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from threecad.choices import STANDARD
from threecad.errors import ThreecadError
from threecad.harness.evaluation import score_batch
from threecad.metrics.protocols import PAPER_BLUR_SIGMA, recorded_postprocess
from threecad.method import config_dict
from threecad.saved_run import DEFAULT_FPR, SavedModel, SavedRun
from threecad.smoothing import gaussian_smooth

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
TRACE_BATCH, CHECK_BATCH = 2, 3  # the check runs another batch size than the trace saw
TOLERANCE = 1e-4  # of the range of predict's maps on the check batch, for maps and scores
ULPS = 8  # float32 rounding allowed on top, in units of the largest value's last place
INSTALL = "pip install 'threecad[export]'"


class InferenceGraph(nn.Module):
    """images (N, 3, S, S) in [0, 1] -> (scores (N,), maps (N, E, E)), as the run scored them."""

    def __init__(self, model: SavedModel):
        super().__init__()
        self.model = model
        # the method's networks as submodules, so that the trace keeps their weights as parameters
        self.networks = nn.ModuleDict({name: value for name, value in vars(model.method).items()
                                       if isinstance(value, nn.Module)})
        # and its fitted tensors (memory bank, Gaussians) as buffers: weights of the graph, which ONNX
        # can keep in a file of their own past protobuf's 2 GiB, where traced constants cannot go
        for name, value in vars(model.method).items():
            if isinstance(value, torch.Tensor):
                self.register_buffer(f"fitted_{name}", value)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        scores, maps = score_batch(m.method, m.post, m.protocol, images, m.eval_size)
        if scores is None:  # 3cad-paper: ranked by the max of the release's blur
            scores = gaussian_smooth(maps, PAPER_BLUR_SIGMA).flatten(1).amax(dim=1)
        return scores, maps


def export_run(run: SavedRun, category: str, fmt: str, out: Path) -> dict[str, Any]:
    """Export `category`'s model of `run` to `out` (with its sidecar `out`.json); returns the sidecar."""
    from threecad.fsutil import atomic_write_json
    from threecad.registry import load_method

    if fmt not in FORMATS:
        raise ThreecadError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    for path in (out, data_path(out), sidecar_path(out)):
        if path.exists():
            raise ThreecadError(f"--out {out}: {path} exists; export writes new files only")
    method_cls = load_method(run.method)
    if method_cls.export_refusal:
        raise ThreecadError(f"{method_cls.name} cannot be exported: {method_cls.export_refusal}")
    if fmt == "onnx":
        require_onnx()  # before the model is loaded
    record = export_model(run.model(category), fmt, out)
    atomic_write_json(sidecar_path(out), record)
    return record


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def data_path(out: Path) -> Path:
    """Where an ONNX graph past protobuf's 2 GiB keeps its weights (PaDiM's Gaussians at 256 px)."""
    return out.with_name(out.name + ".data")


def export_model(model: SavedModel, fmt: str, out: Path) -> dict[str, Any]:
    """Trace `model`, write it to `out` in `fmt` and check the written file; returns the sidecar record.
    The files are made in a hidden folder beside `out` and moved into place once checked."""
    from threecad.fsutil import check_writable, ensure_dir, write_error

    check_writable(out)
    if fmt == "onnx":
        require_onnx()
    graph = InferenceGraph(model)
    size = model.preprocess.size
    trace_input = torch.from_numpy(_noise(TRACE_BATCH, size, seed=1)).float().div_(255.0)
    check_pixels = _noise(CHECK_BATCH, size, seed=2)
    expected = model.predict_pixels(check_pixels)
    name = model.method.name
    try:
        staging = tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=ensure_dir(out.parent))
    except OSError as exc:
        raise write_error(out, exc) from None
    with staging as folder:
        staged = Path(folder) / out.name
        try:
            with torch.no_grad(), _quiet_exporters():
                if fmt == "torchscript":
                    torch.jit.save(torch.jit.trace(graph, trace_input, check_trace=False), str(staged))
                else:
                    _write_onnx(graph, trace_input, staged)
        except ThreecadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a graph the tracer cannot take, said in one line
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ThreecadError(f"{name} could not be exported to {fmt}: {type(exc).__name__}: {first}") from exc
        scores, maps = run_exported(staged, fmt, check_pixels.astype(np.float32) / 255.0)
        check = compare(expected.maps, expected.scores, maps, scores)
        if not check["passed"]:
            raise ThreecadError(
                f"the exported {name} graph does not reproduce predict on a check batch: maps differ by "
                f"{check['map_max_abs_diff']:.3g}, scores by {check['score_max_abs_diff']:.3g} (tolerance "
                f"{check['tolerance']:.3g}, {TOLERANCE:g} of the maps' range {check['map_range']:.3g}); "
                "nothing written")
        files = sorted(p.name for p in Path(folder).iterdir())
        for file in sorted(files, key=lambda f: f == out.name):  # the weights before the graph that names them
            try:
                os.replace(Path(folder) / file, out.parent / file)
            except OSError as exc:
                raise write_error(out.parent / file, exc) from None
    return describe(model, fmt, out, check, files)


def _write_onnx(graph: nn.Module, trace_input: torch.Tensor, path: Path) -> None:
    """The TorchScript-based exporter (`dynamo=False`): the same trace as the TorchScript format.
    Past protobuf's 2 GiB it writes one file per weight; they are gathered into `data_path`."""
    import onnx

    raw = path.parent / "exporter"
    raw.mkdir()
    with _affine_batchnorms(graph):
        torch.onnx.export(graph, (trace_input,), str(raw / path.name), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=["score", "map"],
                          dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "map": {0: "batch"}})
    if len(list(raw.iterdir())) == 1:
        os.replace(raw / path.name, path)
    else:
        onnx.save_model(onnx.load_model(str(raw / path.name)), str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_path(path).name)
    shutil.rmtree(raw)


def require_onnx() -> None:
    """The exporter serialises through onnx; onnxruntime runs the check before the file is kept."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise ThreecadError(f"--format onnx needs {module}: {INSTALL}") from None


def run_exported(path: Path, fmt: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, maps) of float32 (N, 3, S, S) `images` through the exported file at `path`."""
    if fmt == "torchscript":
        with _quiet_exporters():
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            scores, maps = loaded(torch.from_numpy(images))
        return scores.numpy(), maps.numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, maps = session.run(["score", "map"], {"image": images})
    return scores, maps


def compare(want_maps: np.ndarray, want_scores: np.ndarray, maps: np.ndarray, scores: np.ndarray
            ) -> dict[str, Any]:
    """How far an exported graph's maps and scores are from predict's, against one tolerance:
    TOLERANCE of the maps' range (the scale scores live on too: each image-score rule moves no
    further than the map it reads), plus ULPS float32 steps of the largest value (a map that
    spans little, as an untrained network's, differs by rounding alone)."""
    want_maps, want_scores = np.asarray(want_maps, np.float64), np.asarray(want_scores, np.float64)
    for key, want, got in (("map", want_maps, maps), ("score", want_scores, scores)):
        if want.shape != np.shape(got):
            raise ThreecadError(f"the exported graph gives {key}s of shape {np.shape(got)}, predict {want.shape}")
    spread = float(np.ptp(want_maps)) if want_maps.size else 0.0
    largest = max([float(np.abs(a).max()) for a in (want_maps, want_scores) if a.size] or [0.0])
    tolerance = TOLERANCE * spread + ULPS * float(np.spacing(np.float32(largest)))
    out = {"map_range": spread, "tolerance": tolerance,
           "map_max_abs_diff": float(np.abs(want_maps - maps).max()) if want_maps.size else 0.0,
           "score_max_abs_diff": float(np.abs(want_scores - scores).max()) if want_scores.size else 0.0}
    out["passed"] = bool(out["map_max_abs_diff"] <= tolerance and out["score_max_abs_diff"] <= tolerance)
    return out


def describe(model: SavedModel, fmt: str, out: Path, check: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """The sidecar: what goes in, what comes out, what was applied, and from which run."""
    pre = model.preprocess
    run = model.run
    record: dict[str, Any] = {
        "file": out.name,
        "format": fmt,
        "files": files,
        **({"onnx_opset": ONNX_OPSET} if fmt == "onnx" else {}),
        "torch": torch.__version__,
        "run_id": run.spec.get("run_id"),
        "run": str(run.path),
        "method": model.method.name,
        "category": model.category,
        "config": config_dict(model.config),
        "input": {
            "name": "image", "shape": ["N", 3, pre.size, pre.size], "dtype": "float32", "range": [0.0, 1.0],
            "channels": pre.colour,
            "how": "the image read through `preprocess` (resized, cropped, channels ordered as it says) as "
                   "uint8, divided by 255; not normalised (the graph normalises for its backbone)"},
        "preprocess": pre.as_dict(),
        "outputs": {
            "score": "(N,) float32: the image score the run's protocol ranks images by; higher is more anomalous",
            "map": f"(N, {model.eval_size}, {model.eval_size}) float32: the anomaly map at the run's evaluation "
                   "size, " + ("post-processed as `postprocess` says" if model.protocol == STANDARD else
                               "raw (the 3cad-paper protocol blurs it, sigma 4, before its pixel metrics; the "
                               "score is the max of that blur, in float32 here)")},
        "postprocess": {**recorded_postprocess(model.protocol, model.post), "in_graph": True},
        "protocol": model.protocol,
        "eval_size": model.eval_size,
        "precision": "fp32 (traced on the CPU)" + (
            "; the run predicted under float16 autocast on CUDA" if model.config.precision == "amp" else ""),
        "check": {"images": f"{CHECK_BATCH} seeded uniform-noise images (the trace used {TRACE_BATCH})",
                  "against": "SavedModel.predict_pixels", **check},
    }
    held_out = model.record.get("threshold_calibration")
    if held_out and held_out.get("scores"):
        record["threshold"] = {"source": held_out.get("source"), "images": held_out.get("images"),
                               "fpr": DEFAULT_FPR, "value": model.threshold(DEFAULT_FPR),
                               "held_out_scores": held_out["scores"]}
    json.dumps(record)  # plain JSON
    return record


def _noise(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


@contextlib.contextmanager
def _affine_batchnorms(graph: nn.Module) -> Iterator[None]:
    """Give every affine-free BatchNorm a unit scale and zero shift while the ONNX exporter runs
    (the same numbers): the exporter builds them from the channel count, which it loses after a
    traced resize (RealNet's residual ranking)."""
    changed = []
    for module in graph.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is None:
            channels = module.num_features
            module.weight = nn.Parameter(torch.ones(channels), requires_grad=False)
            module.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)
            changed.append(module)
    try:
        yield
    finally:
        for module in changed:
            module.weight = module.bias = None


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence what the tracer and the exporters warn of: Python values fixed by the trace, ops
    that may export wrongly (index_add with repeated indices), their own deprecation. The check
    of the written file against predict settles each of them, for this model."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for module in (r"torch\.jit", r"torch\.onnx"):
            warnings.filterwarnings("ignore", module=module)
        yield
