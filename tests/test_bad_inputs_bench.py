"""Bad input to `threecad bench`: one `error:` line naming the culprit, no traceback, and
neither the dataset root nor the run directory touched (a refused command creates no
--out folder at all), so that the corrected command is never refused in its turn.

Everything is checked before the first write; these cases pin that down through the CLI.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from filelock import FileLock
from PIL import Image

from conftest import make_tiny_dataset
from fake_methods import write_distribution
from refusal import assert_refused
from threecad.cli import main


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "root", n_train=3, n_good=1, n_defect=1, defect_types=("bump",))


@pytest.fixture(autouse=True)
def plugins(tmp_path, monkeypatch):
    """meandist (the test double) and a plug-in whose import fails, both by entry point."""
    site = write_distribution(tmp_path / "site")
    broken = site / "threecad_broken_plugin-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: threecad-broken-plugin\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[threecad.methods]\nbrokenplug = threecad_no_such_module:Thing\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("THREECAD_CACHE", str(tmp_path / "cache"))


def bench(root: Path, out: Path, *more: str, method: str = "meandist") -> list[str]:
    return ["bench", "--method", method, "--root", str(root), "--out", str(out), "--device", "cpu",
            "--eval-size", "64", "--pictures", "0", *more]


@pytest.fixture
def finished(root, tmp_path) -> Path:
    """A finished meandist run on `root`."""
    run = tmp_path / "done"
    result = CliRunner().invoke(main, bench(root, run))
    assert result.exit_code == 0, result.output
    return run


# ------------------------------------------------------------------ settings

SETTINGS = {
    "negative image size": (["--set", "image_size=-5"], "meandist", ["image_size=-5"]),
    "zero batch size": (["--set", "batch_size=0"], "meandist", ["batch_size=0"]),
    "NaN coreset ratio": (["--set", "coreset_ratio=nan"], "patchcore", ["coreset_ratio"]),
    "zero eval size": (["--eval-size", "0"], "meandist", ["--eval-size 0"]),
    "negative pictures": (["--pictures", "-1"], "meandist", ["--pictures -1"]),
    "missing weights file": (["--set", "weights=/missing.pt"], "patchcore", ["/missing.pt"]),
    "unknown method": ([], "nosuchmethod", ["nosuchmethod"]),
    "plug-in that fails to import": ([], "brokenplug", ["brokenplug", "threecad_no_such_module"]),
    "unknown preset": (["--preset", "huge"], "meandist", ["huge"]),
    "unknown --set key": (["--set", "nope=1"], "meandist", ["nope"]),
    "--set without =": (["--set", "image_size"], "meandist", ["image_size"]),
    "unknown protocol": (["--protocol", "mvtec-2019"], "meandist", ["--protocol"]),
    "unknown category": (["--category", "Coper_Stator"], "meandist", ["Coper_Stator", "Copper_Stator"]),
    "negative PaDiM epsilon": (["--set", "epsilon=-5"], "padim", ["epsilon=-5"]),
    "PaDiM stride its backbone lacks": (["--set", "strides=3"], "padim", ["padim", "stride"]),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_bad_setting(case, root, tmp_path):
    extra, method, names = SETTINGS[case]
    out = tmp_path / "run"
    # extra comes last: of a repeated option (--eval-size, --pictures) click takes the last value
    assert_refused(bench(root, out, *extra, method=method), names=names, watch=[root, out])
    assert not out.exists()


@pytest.mark.parametrize("case", [c for c, (extra, _, _) in SETTINGS.items() if extra[:1] == ["--set"]])
def test_model_card_refuses_what_bench_refuses(case, tmp_path):
    """`threecad methods NAME --set ...` validates exactly what bench validates, in the same words."""
    extra, method, names = SETTINGS[case]
    preset = ["--preset", "cpu"] if method != "meandist" else []
    assert_refused(["methods", method, *preset, *extra], names=names, watch=[tmp_path])


def test_weights_file_that_is_text(root, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    out = tmp_path / "run"
    assert_refused(bench(root, out, "--set", f"weights={text}", method="patchcore"),
                   names=[str(text)], watch=[root, out, text])
    assert not out.exists()


# ------------------------------------------------------------------ the dataset


def test_undecodable_image(root, tmp_path):
    bad = root / "Aluminum_Camera_Cover" / "test" / "good" / "000.png"
    bad.write_bytes(b"this is not a png at all")
    out = tmp_path / "run"
    assert_refused(bench(root, out), names=[str(bad), "--allow-layout-problems"], watch=[root, out])
    assert not out.exists()


def test_missing_mask(root, tmp_path):
    mask = root / "Copper_Stator" / "ground_truth" / "bump" / "000.png"
    mask.unlink()
    out = tmp_path / "run"
    assert_refused(bench(root, out), names=["missing_mask", "Copper_Stator"], watch=[root, out])
    assert not out.exists()


def test_mask_of_another_size(root, tmp_path):
    mask = root / "Copper_Stator" / "ground_truth" / "bump" / "000.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    out = tmp_path / "run"
    assert_refused(bench(root, out), names=["mask_size", str(mask)], watch=[root, out])


def test_allow_layout_problems_with_a_missing_mask_is_refused_at_once(root, tmp_path):
    """A missing mask cannot be run past: refused before anything runs, never "running anyway" first."""
    (root / "Copper_Stator" / "ground_truth" / "bump" / "000.png").unlink()
    out = tmp_path / "run"
    result = assert_refused(bench(root, out, "--allow-layout-problems"),
                            names=["missing_mask", "even with --allow-layout-problems"], watch=[root, out])
    assert "running anyway" not in result.output + result.stderr
    assert not out.exists()


def test_layout_error_in_another_category_does_not_block(root, tmp_path):
    """Only the chosen categories' errors matter: ACC alone runs while CS misses a mask."""
    (root / "Copper_Stator" / "ground_truth" / "bump" / "000.png").unlink()
    result = CliRunner().invoke(main, bench(root, tmp_path / "run", "--category", "ACC"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"]["layout_problems"] == 0


def test_damaged_split_manifest(root, tmp_path):
    manifest = root / "split.csv"
    manifest.write_text("category,image,subset\nACC,Aluminum_Camera_Cover/test/good/000.png,train\n")
    out = tmp_path / "run"
    assert_refused(bench(root, out), names=[str(manifest)], watch=[root, out])


def test_missing_root(tmp_path):
    out = tmp_path / "run"
    assert_refused(bench(tmp_path / "nowhere", out), names=[str(tmp_path / "nowhere")], watch=[tmp_path])


# ------------------------------------------------------------------ the run directory


def test_damaged_run_json(root, finished):
    (finished / "run.json").write_text('{"method": "meandist", "config": {')
    assert_refused(bench(root, finished, "--resume"), names=[str(finished / "run.json"), "damaged"],
                   watch=[root, finished])


def test_run_json_that_is_not_a_run(root, finished):
    (finished / "run.json").write_text('[1, 2, 3]\n')
    assert_refused(bench(root, finished, "--resume"), names=["run.json"], watch=[root, finished])


def test_existing_run_without_resume(root, finished):
    assert_refused(bench(root, finished), names=["already holds a run", "--resume"], watch=[root, finished])


def test_resume_with_another_config(root, finished):
    assert_refused(bench(root, finished, "--resume", "--set", "image_size=48"),
                   names=["different config", "image_size"], watch=[root, finished])


def test_resume_with_another_protocol(root, finished):
    assert_refused(bench(root, finished, "--resume", "--protocol", "3cad-paper"),
                   names=["different protocol"], watch=[root, finished])


def test_run_dir_in_use(root, finished):
    lock = FileLock(str(finished / ".lock"))
    lock.acquire(timeout=0)
    try:
        (finished / ".lock.owner").write_text("4242\n")
        assert_refused(bench(root, finished, "--resume"),
                       names=[f"{finished} is in use by another threecad bench (pid 4242)"], watch=[root, finished])
    finally:
        lock.release()
    result = CliRunner().invoke(main, bench(root, finished, "--resume"))  # free again: a no-op resume
    assert result.exit_code == 0, result.output


def test_out_is_a_study_folder(root, tmp_path):
    """One method's run written into a study's folder would break the study's --resume."""
    study = tmp_path / "study"
    result = CliRunner().invoke(main, bench(root, study, "--category", "ACC", method="meandist,padim"))
    assert result.exit_code == 0, result.output
    assert_refused(bench(root, study, "--category", "ACC", method="padim"), names=["study.json", str(study)],
                   watch=[root, study])


def test_resume_with_fewer_categories_keeps_the_others(root, finished):
    """`--resume --category CS` on a finished ACC+CS run keeps ACC in results.json (its record stays)."""
    before = json.loads((finished / "results.json").read_text())["categories"]
    assert sorted(before) == ["ACC", "CS"]
    (finished / "categories" / "CS.json").unlink()  # CS to run again
    result = CliRunner().invoke(main, bench(root, finished, "--resume", "--category", "CS"))
    assert result.exit_code == 0, result.output
    after = json.loads((finished / "results.json").read_text())
    assert list(after["categories"]) == ["ACC", "CS"]
    assert after["categories"]["ACC"] == before["ACC"]
    both = [after["categories"][c]["metrics"]["i_auroc"] for c in ("ACC", "CS")]
    assert after["mean"]["i_auroc"] == pytest.approx(sum(both) / 2)  # the mean is over both again


def test_out_is_a_file(root, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a folder\n")
    assert_refused(bench(root, out), names=[str(out)], watch=[root, out])


def test_out_under_a_read_only_folder_simulated(root, tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "run"
    real_mkdir = os.mkdir

    def mkdir(p, *a, **k):
        if Path(os.fspath(p)).parent == parent:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))
        return real_mkdir(p, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert_refused(bench(root, out), names=[str(out), "permission denied"], watch=[root, parent])


def test_read_only_run_dir(root, finished):
    if os.geteuid() == 0:
        pytest.skip("chmod does not stop root; the simulated read-only --out case covers the message")
    os.chmod(finished, 0o555)
    try:
        assert_refused(bench(root, finished, "--resume", "--category", "ACC,CS"), names=[str(finished)],
                       watch=[root, finished])
    finally:
        os.chmod(finished, 0o755)


def test_image_level_labels_only(tmp_path):
    """A category of one's own without ground_truth/ runs: image metrics, pixel metrics reported as not
    available (3CAD's own categories without masks stay refused: see test_missing_mask)."""
    import shutil

    root = make_tiny_dataset(tmp_path / "byo", categories=("widget",), n_train=3, n_good=2, n_defect=2,
                             defect_types=("bump",))
    shutil.rmtree(root / "widget" / "ground_truth")
    verified = CliRunner().invoke(main, ["verify", "--root", str(root)])
    assert verified.exit_code == 0 and "image_labels_only" in verified.output
    out = tmp_path / "run"
    result = CliRunner().invoke(main, bench(root, out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "categories" / "widget.json").read_text())
    assert record["metrics"]["i_auroc"] is not None
    assert all(record["metrics"][k] is None for k in ("p_auroc", "p_ap", "p_f1max", "au_pro"))
    assert record["notes"] == "image-level labels only (no ground_truth/ folder): pixel metrics are not available"


def test_a_method_name_typo_suggests_the_name_not_a_reinstall(root, tmp_path):
    result = assert_refused(bench(root, tmp_path / "run", method="patchcor"), names=["patchcor", "patchcore"])
    assert "pip install" not in result.stderr


def test_missing_imagenet_weights_advice_fits_the_setting(monkeypatch):
    """The advice to unset THREECAD_OFFLINE is given only when it is set."""
    from threecad.backbones import _missing_weights

    monkeypatch.delenv("THREECAD_OFFLINE", raising=False)
    assert "unset THREECAD_OFFLINE" not in str(_missing_weights("wide_resnet50_2", "download failed"))
    monkeypatch.setenv("THREECAD_OFFLINE", "1")
    assert "unset THREECAD_OFFLINE" in str(_missing_weights("wide_resnet50_2", "not cached"))


def test_resume_on_a_changed_dataset_says_what_changed(root, finished):
    extra = root / "Aluminum_Camera_Cover" / "test" / "good" / "009.png"
    extra.write_bytes((root / "Aluminum_Camera_Cover" / "test" / "good" / "000.png").read_bytes())
    assert_refused(bench(root, finished, "--resume"),
                   names=["different dataset", "fingerprint", "the files under the root changed since"],
                   watch=[root, finished])
