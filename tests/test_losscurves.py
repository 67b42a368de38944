"""Loss history files: the CSV holds exactly the epochs' numbers, the picture draws them, and a
bad history writes nothing."""
from __future__ import annotations

import math

import pytest

from threecad.errors import ThreecadError
from threecad.harness.losscurves import (LossHistory, loss_csv_file, loss_curve_file, loss_figure, read_loss_csv,
                                         uses_log_scale, write_loss_history)

HISTORY = [  # as LoopResult.history gives it, keys in the loop's order
    {"epoch": 1, "train_dis": 0.5, "train_rec": 1.0 / 3.0, "train_loss": 0.8333333333333334, "val_loss": 0.9},
    {"epoch": 2, "train_dis": 0.25, "train_rec": 0.125, "train_loss": 0.375, "val_loss": 0.5},
    {"epoch": 3, "train_dis": 0.0625, "train_rec": 0.0078125, "train_loss": 0.0703125, "val_loss": 0.1},
]


def test_csv_holds_the_numbers_in_a_stable_column_order(tmp_path):
    paths = write_loss_history(tmp_path, "AI", HISTORY, title="cfrg on AI", selected_epoch=3)
    assert paths == (tmp_path / "losses" / "AI.csv", tmp_path / "pictures" / "AI-losses.png")
    assert paths == (loss_csv_file(tmp_path, "AI"), loss_curve_file(tmp_path, "AI"))
    assert paths[0].read_text() == (
        "epoch,train_loss,train_dis,train_rec,val_loss\n"
        "1,0.8333333333333334,0.5,0.3333333333333333,0.9\n"
        "2,0.375,0.25,0.125,0.5\n"
        "3,0.0703125,0.0625,0.0078125,0.1\n")
    back = read_loss_csv(paths[0])
    assert back.epochs == [1, 2, 3]
    assert back.columns["train_rec"][0] == 1.0 / 3.0  # round-trips exactly
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["AI-losses.png", "AI.csv"]  # no temp left


def test_missing_values_are_empty_cells_and_nan_is_kept(tmp_path):
    rows = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": float("nan"), "val": 1.5}]
    csv_path, _ = write_loss_history(tmp_path, "CS", rows, title="t")
    assert csv_path.read_text() == "epoch,train_loss,val\n1,2.0,\n2,nan,1.5\n"
    back = read_loss_csv(csv_path)
    assert back.columns["val"] == [None, 1.5] and math.isnan(back.columns["train_loss"][1])


def test_no_history_writes_nothing(tmp_path):
    assert write_loss_history(tmp_path, "AI", [], title="patchcore") is None
    assert write_loss_history(tmp_path, "AI", None, title="patchcore") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rows, message", [
    ([{"train_loss": 1.0}], "loss history row 1 has no 'epoch'"),
    ([{"epoch": 2, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}], "loss history row 2: epoch 2 after epoch 2"),
    ([{"epoch": 1.5, "train_loss": 1.0}], "loss history row 1: epoch 1.5 is not a whole number"),
    ([{"epoch": 1, "train_loss": "low"}], "loss history epoch 1: train_loss='low' is not a number"),
])
def test_bad_history_is_refused_before_any_write(tmp_path, rows, message):
    with pytest.raises(ThreecadError) as err:
        write_loss_history(tmp_path, "AI", rows, title="t")
    assert str(err.value) == message
    assert list(tmp_path.iterdir()) == []


def test_log_scale_only_for_positive_values_spanning_a_decade():
    assert uses_log_scale([0.05, 0.5]) and uses_log_scale([float("nan"), 0.01, 1.0, None])
    assert not uses_log_scale([0.2, 1.0]) and not uses_log_scale([-1.0, 100.0]) and not uses_log_scale([])


def test_figure_draws_totals_and_terms_on_their_own_scales():
    rows = [{"epoch": 1, "train_loss": 265.4, "train_ce": 0.66, "train_mse": 264.74},  # RealNet-like terms
            {"epoch": 2, "train_loss": 120.5, "train_ce": 0.5, "train_mse": 120.0}]
    fig = loss_figure(LossHistory.from_rows(rows), "realnet on AI", selected_epoch=2)
    left, right = fig.axes
    assert left.get_yscale() == "linear" and right.get_yscale() == "log"
    assert left.get_xlabel() == right.get_xlabel() == "epoch"
    assert right.get_ylabel() == "loss terms (log scale)"
    assert [line.get_label() for line in right.lines] == ["train ce", "train mse"]
    assert list(right.lines[1].get_ydata()) == [264.74, 120.0]
    assert list(left.lines[0].get_xdata()) == [1, 2] and list(left.lines[0].get_ydata()) == [265.4, 120.5]
    assert left.lines[1].get_label() == "selected epoch 2"
    assert fig.texts[0].get_text() == "realnet on AI"


def test_figure_with_negative_losses_stays_linear_and_one_panel():
    rows = [{"epoch": e, "train_loss": -1000.0 - 5 * e} for e in range(1, 4)]  # FastFlow's log-likelihood loss
    fig = loss_figure(LossHistory.from_rows(rows), "fastflow")
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "linear"
    assert list(fig.axes[0].lines[0].get_ydata()) == [-1005.0, -1010.0, -1015.0]
