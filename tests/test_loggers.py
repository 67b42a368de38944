"""`--logger tensorboard|mlflow`: what each tracker's own reader loads back, and the one-line refusals."""
from __future__ import annotations

import importlib.util
import json

import pytest

from threecad.errors import ThreecadError
from threecad.harness import loggers
from threecad.harness.loggers import RunTags, check_logger, metric_name, start_run

TAGS = RunTags(method="cfrg", category="AI", run_id="cfrg-paper-20260101T000000Z-abc123", study="study")
CONFIG = {"epochs": 2, "lr": 0.0005, "lr_milestones": [0.8, 0.9], "dtd_root": None}
# float32-exact values: TensorBoard stores scalars as float32
HISTORY = [{"epoch": 1, "train_loss": 2.5, "train_dis": 1.0, "val_loss": 3.0},
           {"epoch": 2, "train_loss": 1.25, "train_dis": 0.5, "val_loss": 1.5}]
METRICS = {"i_auroc": 0.75, "p_auroc": 0.875, "au_pro": None}


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_metric_names():
    assert [metric_name(k) for k in ("train_loss", "train_dis", "val_loss", "val", "p_true")] == \
        ["train/loss", "train/dis", "val/loss", "val/loss", "train/p_true"]


def test_unknown_logger_is_refused_in_one_line():
    check_logger(None)
    with pytest.raises(ThreecadError, match=r"^unknown --logger 'wandb'; valid: tensorboard, mlflow$"):
        check_logger("wandb")
    assert start_run(None, "unused", TAGS, CONFIG) is None


@pytest.mark.parametrize("kind, install", [("tensorboard", "pip install tensorboard"),
                                           ("mlflow", "pip install mlflow (or mlflow-skinny)")])
def test_missing_package_says_what_to_install(kind, install, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name, *a: None if name == kind else real(name, *a))
    with pytest.raises(ThreecadError) as err:
        start_run(kind, tmp_path, TAGS, CONFIG)
    assert str(err.value) == f"--logger {kind} needs the {kind} package, which is not installed: {install}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not has("tensorboard"), reason="tensorboard is not installed (pip install tensorboard)")
def test_tensorboard_events_load_in_tensorboards_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with start_run("tensorboard", tmp_path, TAGS, CONFIG) as logger:
        logger.log_history(HISTORY)
        logger.log_metrics(METRICS)
    log_dir = tmp_path / "tensorboard" / "cfrg" / "AI"
    assert logger.log_dir == log_dir and len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scalars == {"train/loss": [(1, 2.5), (2, 1.25)], "train/dis": [(1, 1.0), (2, 0.5)],
                       "val/loss": [(1, 3.0), (2, 1.5)], "test/i_auroc": [(2, 0.75)], "test/p_auroc": [(2, 0.875)]}

    def text(tag: str) -> str:
        return acc.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()

    assert [text(f"tags/{k}") for k in ("method", "category", "run_id", "study", "status")] == \
        ["cfrg", "AI", TAGS.run_id, "study", "ok"]
    config_json = text("config").split("```json\n", 1)[1].rsplit("\n```", 1)[0]
    assert json.loads(config_json) == CONFIG


@pytest.mark.skipif(not has("tensorboard"), reason="tensorboard is not installed (pip install tensorboard)")
def test_tensorboard_run_that_raises_is_marked_failed(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with pytest.raises(RuntimeError):
        with start_run("tensorboard", tmp_path, TAGS, CONFIG) as logger:
            logger.log_epoch(HISTORY[0])
            raise RuntimeError("fit crashed")
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "cfrg" / "AI"))
    acc.Reload()
    assert acc.Tensors("tags/status/text_summary")[-1].tensor_proto.string_val[0] == b"failed"
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5)]


@pytest.mark.skipif(not has("mlflow"), reason="mlflow is not installed (pip install mlflow)")
def test_mlflow_run_reads_back_through_its_client(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored after the test (the logger sets it too)
    for study_tags in (TAGS, RunTags("rd", "AI", "rd-run", "study")):  # two runs, one experiment
        with start_run("mlflow", tmp_path, study_tags, CONFIG) as logger:
            logger.log_history(HISTORY)
            logger.log_metrics(METRICS)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("threecad/study")
    runs = {r.data.tags["mlflow.runName"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["cfrg/AI", "rd/AI"]
    run = runs["cfrg/AI"]
    assert run.info.status == "FINISHED"
    assert {k: v for k, v in run.data.tags.items() if k.startswith("threecad.")} == \
        {"threecad.method": "cfrg", "threecad.category": "AI", "threecad.run_id": TAGS.run_id,
         "threecad.study": "study"}
    assert run.data.params == {"epochs": "2", "lr": "0.0005", "lr_milestones": "[0.8, 0.9]", "dtd_root": "None"}
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(history) == [(1, 2.5), (2, 1.25)]
    assert run.data.metrics == {"train/loss": 1.25, "train/dis": 0.5, "val/loss": 1.5, "test/i_auroc": 0.75,
                                "test/p_auroc": 0.875}


# --- through the harness ---------------------------------------------------------------------

def _cfrg_run(root, out, **kw):
    from threecad.harness import BenchSpec, run_benchmark

    spec = BenchSpec(method="cfrg", root=root, categories=("ACC",), preset="cpu", device="cpu", out=out,
                     overrides={"epochs": "2", "image_size": "64", "batch_size": "4"}, eval_size=64, **kw)
    results, code = run_benchmark(spec, echo=lambda *_: None)
    assert code == 0, results
    return results


def test_a_cfrg_run_writes_its_loss_csv_curve_and_tracker_events(tiny_root, tmp_path, monkeypatch):
    """One short CFRG run: losses/ACC.csv holds both epochs (the last equals the recorded final
    losses), the curve is a PNG, and with --logger tensorboard (when installed) TensorBoard's own
    reader loads the epochs and the metrics."""
    from threecad.harness.losscurves import read_loss_csv

    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))
    tensorboard = has("tensorboard")
    results = _cfrg_run(tiny_root, tmp_path / "run", pictures=1, logger="tensorboard" if tensorboard else None)
    record = results["categories"]["ACC"]
    assert record["losses"] == "losses/ACC.csv" and record["loss_curve"] == "pictures/ACC-losses.png"
    history = read_loss_csv(tmp_path / "run" / record["losses"])
    assert history.epochs == [1, 2]
    last = record["method_info"]["final_train_losses"]
    assert {k: v[-1] for k, v in history.columns.items()} == {f"train_{k}": v for k, v in last.items()}
    assert (tmp_path / "run" / record["loss_curve"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if not tensorboard:
        pytest.skip("tensorboard is not installed (pip install tensorboard): its events were not checked")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "run" / "tensorboard" / "cfrg" / "ACC").iterdir()
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert acc.Scalars("test/i_auroc")[0].value == pytest.approx(record["metrics"]["i_auroc"])


def test_bench_refuses_a_logger_that_is_not_installed_before_writing(tiny_root, tmp_path, monkeypatch):
    from threecad.harness import BenchSpec, run_benchmark

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ThreecadError, match="pip install mlflow"):
        run_benchmark(BenchSpec(method="cfrg", root=tiny_root, preset="cpu", device="cpu", out=tmp_path / "run",
                                logger="mlflow"))
    assert not (tmp_path / "run").exists()
