"""The leaderboard: seeding from the paper, validation, submit (locked, atomic), views and README."""
from __future__ import annotations

import copy
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from threecad.cli import main
from threecad.leaderboard import (
    COLUMNS, LeaderboardError, checkout_csv_path, default_csv_path, display_name, init_table, read_table,
    rows_from_run, submit_run,
)
from threecad.leaderboard.readme import BEGIN, END

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "threecad" / "data" / "3cad_paper_results.csv"
METRICS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "au_pro")

ACC = {"i_auroc": 0.97, "i_ap": 0.98, "i_f1max": 0.95, "p_auroc": 0.96, "p_ap": 0.41, "p_f1max": 0.45, "au_pro": 0.88}
IS = {"i_auroc": 0.81, "i_ap": 0.86, "i_f1max": 0.80, "p_auroc": 0.915, "p_ap": 0.1234, "p_f1max": 0.2, "au_pro": 0.7}


def run_results(run_id: str = "cfrg-cpu-20261128T231500Z-3f2a9c", **overrides) -> dict:
    """A finished run as the harness records it: two ok categories (ACC, IS); `write_run` adds the mean."""
    def ok(metrics: dict) -> dict:
        return {"status": "ok", "metrics": dict(metrics),
                "breakdowns": {"au_pro_by_size": {"small": 0.5}, "i_auroc_by_type": {"scratch": 0.9}},
                "timings": {"fit_s": 12.3, "infer_images_per_s": 40.1},
                "memory": {"peak_host_rss_mb": 900.0, "peak_device_mb": None}, "n_train": 8, "n_test": 15}

    data = {
        "schema": "threecad.run/1", "run_id": run_id, "method": "cfrg", "preset": "cpu",
        "config": {"image_size": 128, "epochs": 1}, "protocol": "standard", "eval_size": 256,
        "dataset": {"name": "3cad", "root": "/abs/path", "fingerprint": "1a2b3c4d5e6f7a8b"},
        "seed": 42, "device": "cpu",
        "categories": {"ACC": ok(ACC), "IS": ok(IS)},
        "versions": {"threecad": "0.1.0", "torch": "2.14.1", "python": "3.11.7"},
        "code_revision": "61085fd", "hardware": "cpu: 2 cores, AMD EPYC 7B13",
        "started": "2026-11-28T23:15:00Z", "finished": "2026-11-28T23:25:00Z",
    }
    data.update(overrides)
    return data


FAILED_CS = {"status": "failed", "error": "RuntimeError: out of memory\nsecond line", "traceback": "failures/CS.txt"}
_AGGREGATE = ("schema", "categories", "mean", "versions", "code_revision", "hardware", "finished")


def write_run(run_dir: Path, data: dict, finished: bool = True) -> Path:
    """Lay `data` out as `threecad bench --out` does, with the harness's own writer: run.json,
    categories/<ABBR>.json, results.json (mean computed by the harness), results.csv/md."""
    from threecad.harness.rundir import RunDir

    run = RunDir(run_dir)
    spec = {k: v for k, v in data.items() if k not in _AGGREGATE}
    run.write_spec(spec)
    for abbr, record in data["categories"].items():
        run.write_category(abbr, record)
    extra = {k: data[k] for k in ("versions", "code_revision", "hardware") if k in data}
    if finished:
        extra["finished"] = data["finished"]
    run.write_results(spec, data["categories"], extra)
    return run_dir


def edit_results(run_dir: Path, change) -> None:
    """Change results.json only (as a hand edit would), leaving the records as they are."""
    path = run_dir / "results.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "lb" / "results.csv"
    init_table(path)
    return path


def cli(*args: str):
    return CliRunner().invoke(main, ["leaderboard", *args], catch_exceptions=False)


def run_rows(csv: Path, run_id: str) -> pd.DataFrame:
    return read_table(csv).query("reference == @run_id")


# --- the seeded table -------------------------------------------------------------------------

def test_seeded_table_is_every_published_number():
    assert checkout_csv_path() == REPO / "leaderboard" / "results.csv"
    seeded = read_table(checkout_csv_path())
    paper = pd.read_csv(PAPER_CSV, dtype=str)
    assert len(seeded) == len(paper)
    assert set(seeded["source"]) == {"paper"} and set(seeded["protocol"]) == {"3cad-paper"}
    assert set(seeded["reference"]) == {"arXiv:2502.05761"} and set(seeded["dataset"]) == {"3cad"}
    merged = paper.merge(seeded, on=["method", "category", "metric"], how="left", validate="one_to_one")
    assert (merged["value"] == merged["value_percent"]).all()  # same text: the paper's own means too


def test_must_show_paper_p_auroc_with_cfrg_on_top():
    result = cli("show", "--protocol", "3cad-paper", "--metric", "p_auroc")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| ") and "Method" not in line]
    paper = pd.read_csv(PAPER_CSV).query("metric == 'p_auroc'")
    means = paper.query("category == 'Mean'").set_index("method")["value_percent"]
    assert len(rows) == len(means) == 11
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert cells[0][0] == "CFRG" and cells[0][-1] == "**93.4**"
    shown = [float(c[-1].strip("*")) for c in cells]
    assert shown == sorted(means.values, reverse=True)
    assert {c[0] for c in cells} == set(means.index)
    assert "ignores false positives on good images" in result.output


# --- submit --------------------------------------------------------------------------------

def test_submit_turns_a_run_into_rows(tmp_path, table):
    before = len(read_table(table))
    run = write_run(tmp_path / "run", run_results())
    result = cli("submit", str(run), "--csv", str(table))
    assert result.exit_code == 0, result.output
    rows = run_rows(table, "cfrg-cpu-20261128T231500Z-3f2a9c")
    assert len(read_table(table)) == before + len(rows) == before + 3 * len(METRICS)
    assert set(rows["category"]) == {"ACC", "IS", "Mean"}
    row = rows.iloc[0]
    assert (row["method"], row["variant"], row["source"], row["protocol"], row["dataset"]) == \
        ("CFRG", "cpu", "run", "standard", "3cad")  # method spelled as the paper spells it
    assert (row["seed"], row["eval_size"], row["date"], row["code_revision"]) == ("42", "256", "2026-11-28", "61085fd")
    assert row["hardware"] == "cpu: 2 cores, AMD EPYC 7B13"
    values = rows.set_index(["category", "metric"])["value"].astype(float)
    for m in METRICS:
        assert values["ACC", m] == pytest.approx(100 * ACC[m])
        assert values["IS", m] == pytest.approx(100 * IS[m])
        assert values["Mean", m] == pytest.approx(50 * (ACC[m] + IS[m]), abs=1e-4)
    assert "the Mean is over 2 categories (ACC, IS)" in result.output


def test_submit_again_is_refused_and_replace_overwrites(tmp_path, table):
    run = write_run(tmp_path / "run", run_results())
    assert cli("submit", str(run), "--csv", str(table)).exit_code == 0
    before = table.read_bytes()
    again = cli("submit", str(run), "--csv", str(table))
    assert again.exit_code != 0 and "already in" in again.output and "--replace" in again.output
    assert table.read_bytes() == before
    # the same run id re-run on ACC alone: --replace removes the stale IS rows too
    data = run_results()
    data["categories"]["ACC"]["metrics"]["i_auroc"] = 0.5
    del data["categories"]["IS"]
    rerun = write_run(tmp_path / "rerun", data)
    assert cli("submit", str(rerun), "--csv", str(table), "--replace").exit_code == 0
    rows = run_rows(table, data["run_id"]).set_index(["category", "metric"])["value"].astype(float)
    assert set(rows.index.get_level_values(0)) == {"ACC", "Mean"}
    assert rows["ACC", "i_auroc"] == 50.0 and rows["Mean", "i_auroc"] == 50.0


def test_a_run_that_matches_its_records_passes_the_check(tmp_path):
    """The check recomputes the mean as the harness does (`rundir.mean_metrics`), for both protocols."""
    from threecad.harness.rundir import mean_metrics
    from threecad.leaderboard.runcheck import records_mean

    for protocol in ("standard", "3cad-paper"):
        data = run_results(protocol=protocol)
        data["categories"]["ACC"]["metrics"]["p_auroc"] = 0.93449  # rounds differently under 3cad-paper
        data["categories"]["IS"]["metrics"]["au_pro"] = None  # a metric without a value
        assert records_mean(data["categories"], protocol) == mean_metrics(data["categories"], protocol)
        converted = rows_from_run(write_run(tmp_path / protocol, data))
        values = converted.rows.set_index(["category", "metric"])["value"]
        assert values["Mean", "au_pro"] == "88" and ("IS", "au_pro") not in values.index
        assert any("IS au_pro is null" in note for note in converted.notes)


@pytest.mark.parametrize("how,message", [
    ("value", "categories.ACC.metrics.p_auroc is 0.99 but"),
    ("mean", "mean.i_auroc is 0.99 but the mean of the category records is 0.89"),
    ("status", "categories.IS.status is 'ok' but"),
    ("unfinished", "has no 'finished' time"),
    ("lone results.json", "holds no category records"),
    ("record missing", "lists category IS but"),
    ("category dropped", "IS.json is a record of category IS, which"),
    ("failed category", "category CS has status 'failed' (RuntimeError: out of memory)"),
    ("other run.json", "run_id is 'cfrg-cpu-20261128T231500Z-3f2a9c' but"),
])
def test_a_run_that_disagrees_with_its_records_is_refused(tmp_path, table, how, message):
    data = run_results()
    if how == "failed category":
        data["categories"]["CS"] = FAILED_CS
    run = write_run(tmp_path / "run", data, finished=how != "unfinished")
    if how == "value":
        edit_results(run, lambda d: d["categories"]["ACC"]["metrics"].update(p_auroc=0.99))
    elif how == "mean":
        edit_results(run, lambda d: d["mean"].update(i_auroc=0.99))
    elif how == "status":  # a failed category passed off as ok
        (run / "categories" / "IS.json").write_text(json.dumps(FAILED_CS))
    elif how == "lone results.json":
        shutil.rmtree(run / "categories")
    elif how == "record missing":
        (run / "categories" / "IS.json").unlink()
    elif how == "category dropped":  # a failed category cut out of the summary
        edit_results(run, lambda d: d["categories"].pop("IS"))
    elif how == "other run.json":
        spec = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**spec, "run_id": "another-run"}))
    before = table.read_bytes()
    with pytest.raises(LeaderboardError) as err:
        submit_run(run, table)
    assert message in str(err.value)
    assert table.read_bytes() == before


def _break(data: dict, how: str) -> dict:
    data = copy.deepcopy(data)
    if how == "value out of range":
        data["categories"]["ACC"]["metrics"]["p_auroc"] = 96.0  # percent where a fraction belongs
    elif how == "unknown protocol":
        data["protocol"] = "mvtec-ish"
    elif how == "wrong schema":
        data["schema"] = "threecad.run/9"
    elif how == "unknown category":
        data["categories"]["bottle"] = data["categories"].pop("ACC")
    elif how == "missing run id":
        data["run_id"] = ""
    return data


@pytest.mark.parametrize("how", ["value out of range", "unknown protocol", "wrong schema",
                                 "unknown category", "missing run id", "not json", "no results.json"])
def test_broken_run_exits_nonzero_and_leaves_csv_identical(tmp_path, table, how):
    run = tmp_path / "broken"
    run.mkdir()
    if how not in ("no results.json", "not json"):
        broken = _break(run_results(), how)
        write_run(run, broken)
        if how == "wrong schema":
            edit_results(run, lambda d: d.update(schema="threecad.run/9"))
    elif how == "not json":
        write_run(run, run_results())
        (run / "results.json").write_text('{"schema": "threecad.run/1", "categories": {')
    before = table.read_bytes()
    result = CliRunner().invoke(main, ["leaderboard", "submit", str(run), "--csv", str(table)])
    assert result.exit_code != 0
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert table.read_bytes() == before


def _submit_many(csv: str, prefix: str, n: int, barrier) -> None:
    barrier.wait()
    for i in range(n):
        submit_run(Path(csv).parent / f"{prefix}{i}", csv)


def test_concurrent_submits_all_land(tmp_path, table):
    n = 4
    for prefix in ("a", "b"):
        for i in range(n):
            write_run(tmp_path / "lb" / f"{prefix}{i}", run_results(run_id=f"run-{prefix}{i}"))
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_submit_many, args=(str(table), p, n, barrier)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    final = read_table(table)
    landed = set(final.loc[final["source"] == "run", "reference"])
    assert landed == {f"run-{p}{i}" for p in "ab" for i in range(n)}
    assert len(final) == 306 + 2 * n * 3 * len(METRICS)


def test_paper_protocol_run_rounds_categories_and_mvtec_names(tmp_path):
    data = run_results(protocol="3cad-paper", dataset={"name": "mvtec", "root": "/x", "fingerprint": "0"})
    data["categories"] = {"bottle": data["categories"]["ACC"], "Screw": data["categories"]["IS"]}
    data["categories"]["bottle"]["metrics"]["p_auroc"] = 0.93449
    data["categories"]["Screw"]["metrics"]["p_auroc"] = 0.91251
    converted = rows_from_run(write_run(tmp_path / "run", data))
    values = converted.rows.set_index(["category", "metric"])["value"].astype(float)
    assert set(converted.rows["category"]) == {"bottle", "screw", "Mean"}
    assert values["bottle", "p_auroc"] == 93.4 and values["screw", "p_auroc"] == 91.3
    assert values["Mean", "p_auroc"] == pytest.approx((93.4 + 91.3) / 2)


# --- validation ----------------------------------------------------------------------------

def _edit(csv: Path, line: int, column: str, value: str) -> None:
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.loc[line - 2, column] = value
    frame.to_csv(csv, index=False)


@pytest.mark.parametrize("column,value,expected", [
    ("value", "120", "outside [0, 100]"),
    ("metric", "pauroc", "unknown metric"),
    ("protocol", "mvtec", "unknown protocol"),
    ("category", "XYZ", "unknown category"),
    ("method", "", "required"),
    ("date", "2025-13-01", "not a valid date"),
])
def test_validation_names_line_and_column(table, column, value, expected):
    _edit(table, 10, column, value)
    with pytest.raises(LeaderboardError, match=re.escape(f"line 10, column '{column}'")) as err:
        read_table(table)
    assert expected in str(err.value)
    result = CliRunner().invoke(main, ["leaderboard", "show", "--csv", str(table)])
    assert result.exit_code != 0 and "line 10" in result.output and "Traceback" not in result.output


def test_validation_finds_duplicates_and_missing_columns(table):
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    pd.concat([frame, frame.iloc[[3]]]).to_csv(table, index=False)
    with pytest.raises(LeaderboardError, match=f"line {len(frame) + 2}: duplicate of line 5"):
        read_table(table)
    frame.drop(columns=["seed"]).to_csv(table, index=False)
    with pytest.raises(LeaderboardError, match="column 'seed': required column is missing"):
        read_table(table)


# --- views -----------------------------------------------------------------------------------

def test_show_plain_csv_and_ties(tmp_path, table):
    for run_id, value in (("r1", 0.999), ("r2", 0.999)):  # two runs tie on ACC p_auroc
        data = run_results(run_id=run_id)
        data["categories"]["ACC"]["metrics"]["p_auroc"] = value
        submit_run(write_run(tmp_path / run_id, data), table)
    plain = cli("show", "--csv", str(table), "--protocol", "standard", "--metric", "P-AUROC", "--format", "plain")
    assert plain.exit_code == 0
    lines = [line for line in plain.output.splitlines() if line.startswith("CFRG")]
    assert len(lines) == 2 and all("99.9*" in line for line in lines)
    assert "ignores false positives" not in plain.output  # the caveat belongs to 3cad-paper only
    wide = pd.read_csv(io.StringIO(cli("show", "--csv", str(table), "--format", "csv").stdout))
    cfrg = wide.query("protocol == '3cad-paper' and metric == 'au_pro' and method == 'CFRG'")
    assert cfrg["Mean"].tolist() == [82.0]
    assert list(wide.columns[-9:]) == ["ACC", "AI", "AMF", "ANMF", "ANI", "AP", "CS", "IS", "Mean"]
    assert set(wide.loc[wide["source"] == "run", "reference"]) == {"r1", "r2"}


def test_partial_mean_ranks_after_complete_entries(tmp_path, table):
    data = run_results(protocol="3cad-paper")  # ACC and IS only, but a Mean above the paper's CFRG
    data["categories"]["ACC"]["metrics"]["p_auroc"] = data["categories"]["IS"]["metrics"]["p_auroc"] = 0.99
    submit_run(write_run(tmp_path / "run", data), table)
    md = cli("show", "--csv", str(table), "--protocol", "3cad-paper", "--metric", "p_auroc").output
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ") and "Method" not in line]
    assert len(rows) == 12 and rows[0][0] == "CFRG" and rows[0][2].startswith("paper") and rows[0][-1] == "**93.4**"
    assert rows[-1][2] == f"run {data['run_id']} (claimed)" and rows[-1][-1] == "99.0\u2020"  # submitted without --root
    assert rows[-1][3] == "**99.0**"  # its ACC still counts as the best ACC
    assert "\u2020 Mean over fewer categories" in md
    assert "claimed: the run's own numbers, not computed again" in md


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs


def test_html_page_is_self_contained(tmp_path, table):
    submit_run(write_run(tmp_path / "run", run_results()), table)
    out = tmp_path / "page.html"
    assert cli("show", "--csv", str(table), "--format", "html", "--out", str(out)).exit_code == 0
    page = _Page()
    page.feed(out.read_text())
    assert "link" not in page.tags and "img" not in page.tags and "iframe" not in page.tags
    assert not [a for a in page.attrs if a[0] in ("src", "href") and not (a[1] or "").startswith("#")]
    assert "http" not in out.read_text()
    # 4 paper metrics + 7 of the run, each a sortable table with a bar chart
    assert page.tags.count("table") == page.tags.count("svg") == 11
    assert page.tags.count("script") == page.tags.count("style") == 1
    assert "ignores false positives on good images" in out.read_text()


# --- README ----------------------------------------------------------------------------------

def test_repository_readme_is_current():
    result = cli("render-readme", "--check", "--csv", str(checkout_csv_path()))
    assert result.exit_code == 0, result.output


def test_render_readme_replaces_only_the_block(tmp_path, table):
    readme = table.parent / "README.md"
    readme.write_text(f"# Mine\n\nkept text\n\n{BEGIN}\nold tables\n{END}\n\ntail\n")
    submit_run(write_run(tmp_path / "run", run_results()), table)
    assert cli("render-readme", "--csv", str(table), "--check").exit_code == 1
    assert "old tables" in readme.read_text()
    assert cli("render-readme", "--csv", str(table)).exit_code == 0
    text = readme.read_text()
    assert text.startswith("# Mine\n\nkept text\n\n") and text.endswith(f"{END}\n\ntail\n")
    assert "old tables" not in text and "1 submitted run." in text
    assert "### 3CAD, protocol `standard`: P-AUROC (%)" in text and "**93.4**" in text
    assert cli("render-readme", "--csv", str(table), "--check").exit_code == 0


def test_csv_columns_are_documented():
    readme = (REPO / "leaderboard" / "README.md").read_text()
    for column in COLUMNS:
        assert f"| `{column}` |" in readme


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("given,shown", [
    ("patchcore", "PatchCore"), ("PADIM", "PaDiM"), ("rd", "RD"), ("reverse_distillation", "RD"),
    ("rd++", "RD++"), ("cfrg", "CFRG"), ("destseg", "DeSTSeg"), ("simplenet", "SimpleNet"),
    ("realnet", "RealNet"), ("fastflow", "FastFlow"), ("uniad", "UniAD"), ("crad", "CRAD"),
    ("draem", "DRAEM"), ("my-method", "my-method"),
])
def test_display_name_is_the_papers_spelling(given, shown):
    assert display_name(given) == shown


def test_runs_and_hand_edited_rows_share_one_spelling(tmp_path, table):
    submit_run(write_run(tmp_path / "pc", run_results(run_id="pc-run", method="patchcore")), table)
    assert set(run_rows(table, "pc-run")["method"]) == {"PatchCore"}
    # a row typed by hand in lower case is shown (and sorted) under the paper's spelling
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame.loc[frame["method"] == "PaDiM", "method"] = "padim"
    frame.to_csv(table, index=False)
    md = cli("show", "--csv", str(table), "--protocol", "3cad-paper", "--metric", "p_auroc").output
    methods = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "Method" not in line]
    assert "PaDiM" in methods and "padim" not in methods
    # an unknown method takes the spelling the table already has
    submit_run(write_run(tmp_path / "m1", run_results(run_id="m1", method="MyNet")), table)
    submit_run(write_run(tmp_path / "m2", run_results(run_id="m2", method="mynet")), table)
    assert set(run_rows(table, "m2")["method"]) == {"MyNet"}


@pytest.mark.parametrize("field,value", [
    ("method", '=HYPERLINK("http://example.invalid","x")'), ("method", "+cmd"), ("method", "@SUM(A1)"),
    ("method", "-x"), ("method", "rd;drop"), ("preset", "=1+1"), ("run_id", "run/../x"), ("method", " cfrg"),
])
def test_unsafe_names_are_refused(tmp_path, table, field, value):
    run = write_run(tmp_path / "run", run_results(**{field: value}))
    before = table.read_bytes()
    with pytest.raises(LeaderboardError, match=f"results.json: {field}: "):
        submit_run(run, table)
    assert table.read_bytes() == before


def test_a_hand_edited_formula_fails_validation(table):
    _edit(table, 7, "method", "=HYPERLINK(1)")
    with pytest.raises(LeaderboardError, match=r"line 7, column 'method': .*formula"):
        read_table(table)
    _edit(table, 7, "method", "PaDiM")
    _edit(table, 8, "hardware", "@cmd")
    with pytest.raises(LeaderboardError, match=r"line 8, column 'hardware': .*formula"):
        read_table(table)


# --- where the table is, and whether it may be written ------------------------------------------

def test_submit_creates_a_table_only_with_create(tmp_path):
    run = write_run(tmp_path / "run", run_results())
    new = tmp_path / "new" / "board.csv"
    refused = CliRunner().invoke(main, ["leaderboard", "submit", str(run), "--csv", str(new)])
    assert refused.exit_code != 0 and "--create" in refused.stderr and not new.parent.exists()
    made = cli("submit", str(run), "--csv", str(new), "--create")
    assert made.exit_code == 0 and f"new table {new}" in made.output
    assert len(read_table(new)) == 3 * len(METRICS)
    again = write_run(tmp_path / "run2", run_results(run_id="second"))
    assert cli("submit", str(again), "--csv", str(new), "--create").exit_code == 0  # --create on a table: adds
    assert len(read_table(new)) == 6 * len(METRICS)


def test_a_read_only_table_is_left_alone_even_for_root(tmp_path, table):
    run = write_run(tmp_path / "run", run_results())
    table.chmod(0o444)
    before = table.read_bytes()
    with pytest.raises(LeaderboardError, match=r"results.csv is read-only \(mode -r--r--r--\)"):
        submit_run(run, table)
    assert table.read_bytes() == before and oct(table.stat().st_mode & 0o777) == "0o444"


@pytest.fixture
def plain_install(tmp_path, monkeypatch) -> Path:
    """threecad as if installed into site-packages: no project file beside the package."""
    from threecad.leaderboard import store

    site = tmp_path / "site-packages"
    (site / "leaderboard").mkdir(parents=True)  # even a stray folder of that name is not a checkout
    monkeypatch.setattr(store, "repository_root", lambda: site)
    monkeypatch.chdir(tmp_path)
    return site


def test_show_from_a_plain_install_uses_the_packaged_numbers(plain_install):
    result = CliRunner().invoke(main, ["leaderboard", "show", "--protocol", "3cad-paper", "--metric", "au_pro"])
    assert result.exit_code == 0, result.output
    assert "paper's published numbers packaged with threecad" in result.stderr
    first = [line for line in result.stdout.splitlines() if line.startswith("| CFRG")][0]
    assert first.split("|")[-2].strip() == "**82.0**"
    html = CliRunner().invoke(main, ["leaderboard", "show", "--format", "html"])
    assert html.exit_code == 0 and "306 rows from the paper&#x27;s published numbers" in html.stdout


def test_submit_without_csv_starts_the_users_table_and_leaves_the_checkout_unchanged(tmp_path):
    """The first submit without --csv starts <data home>/leaderboard/results.csv with the paper's rows
    (said in one line); the repository's tracked table is untouched; `show` then shows the user's table."""
    import os

    checkout = checkout_csv_path()
    before = checkout.read_bytes()
    write_run(tmp_path / "RUN", run_results())
    result = CliRunner().invoke(main, ["leaderboard", "submit", str(tmp_path / "RUN")])
    assert result.exit_code == 0, result.output
    mine = default_csv_path()
    assert mine == Path(os.environ["THREECAD_DATA_HOME"]) / "leaderboard" / "results.csv"
    assert "started your table" in result.output and str(mine) in result.output
    assert checkout.read_bytes() == before
    table = read_table(mine)
    assert set(table["source"]) == {"paper", "run"} and (table["source"] == "paper").sum() == 306
    shown = CliRunner().invoke(main, ["leaderboard", "show", "--protocol", "standard", "--format", "plain"])
    assert shown.exit_code == 0 and "CFRG" in shown.output and "packaged" not in shown.stderr
    again = CliRunner().invoke(main, ["leaderboard", "submit", str(tmp_path / "RUN")])
    assert again.exit_code != 0 and "already in" in again.stderr  # the second submit finds the table


@pytest.mark.parametrize("args", [["validate"], ["render-readme"]])
def test_commands_on_the_users_table_before_it_exists(tmp_path, plain_install, args):
    result = CliRunner().invoke(main, ["leaderboard", *args])
    assert result.exit_code != 0 and "no leaderboard table yet" in result.stderr and "Traceback" not in result.output


def test_show_after_a_real_plain_install(tmp_path):
    """`pip install --no-deps --target` of a copy of the sources (offline, no build isolation)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("threecad", "baselines", "cfrg"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--quiet", "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        pytest.skip(f"pip cannot build the package offline here: {pip.stderr.strip().splitlines()[-1:]}")
    code = ("import sys, threecad; from threecad.cli import main; print(threecad.__file__, file=sys.stderr); "
            "main(['leaderboard', 'show', '--protocol', '3cad-paper', '--metric', 'p_ap', '--format', 'plain'])")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(site)})
    assert shown.returncode == 0, shown.stderr
    assert str(site / "threecad") in shown.stderr  # the installed copy ran, not the checkout
    cfrg = [line for line in shown.stdout.splitlines() if line.startswith("CFRG")][0]
    assert cfrg.split()[-1] == "17.6*"


def test_a_real_benchmark_run_is_accepted_and_a_killed_one_refused(tiny_root, tmp_path, table):
    """`threecad bench` (a test-double method) writes a run that `submit` accepts as it is."""
    from fake_methods import pythonpath_with, write_distribution

    env = dict(os.environ, PYTHONPATH=pythonpath_with(write_distribution(tmp_path / "site")),
               THREECAD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    bench = subprocess.run([sys.executable, "-m", "threecad", "bench", "--method", "meandist", "--root",
                            str(tiny_root), "--out", str(run), "--device", "cpu", "--eval-size", "64"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr
    records = {a: json.loads((run / "categories" / f"{a}.json").read_text()) for a in ("ACC", "CS")}
    result = cli("submit", str(run), "--csv", str(table))
    assert result.exit_code == 0, result.output
    run_id = json.loads((run / "run.json").read_text())["run_id"]
    values = run_rows(table, run_id).set_index(["category", "metric"])["value"].astype(float)
    assert values["ACC", "i_auroc"] == pytest.approx(100 * records["ACC"]["metrics"]["i_auroc"], abs=1e-4)
    assert values["CS", "au_pro"] == pytest.approx(100 * records["CS"]["metrics"]["au_pro"], abs=1e-4)
    assert set(run_rows(table, run_id)["method"]) == {"meandist"}
    # the same run as a kill during its last category leaves it: no `finished` yet
    edit_results(run, lambda d: d.pop("finished"))
    with pytest.raises(LeaderboardError, match="has no 'finished' time"):
        submit_run(run, table, replace=True)


def test_a_run_with_overrides_is_listed_under_a_variant_that_names_them(tiny_root, tmp_path, table):
    from fake_methods import pythonpath_with, write_distribution

    env = dict(os.environ, PYTHONPATH=pythonpath_with(write_distribution(tmp_path / "site")),
               THREECAD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    bench = subprocess.run([sys.executable, "-m", "threecad", "bench", "--method", "meandist", "--root",
                            str(tiny_root), "--out", str(run), "--device", "cpu", "--eval-size", "64",
                            "--preset", "cpu", "--set", "image_size=48", "--set", "seed=7"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr
    assert json.loads((run / "results.json").read_text())["overrides"] == {"image_size": 48, "seed": 7}
    result = cli("submit", str(run), "--csv", str(table))
    assert result.exit_code == 0, result.output
    run_id = json.loads((run / "run.json").read_text())["run_id"]
    assert set(run_rows(table, run_id)["variant"]) == {"cpu+image_size=48+seed=7"}  # never shown as "cpu"


def test_variant_marks_unified_runs_and_procedural_textures():
    from pathlib import Path

    import pytest

    from threecad.leaderboard.runs import variant_of
    from threecad.leaderboard.schema import LeaderboardError

    dtd = {"ACC": {"method_info": {"texture_source": "dtd"}}}
    procedural = {"ACC": {"method_info": {"texture_source": "dtd"}}, "AI": {"method_info": {"texture_source": "procedural"}}}
    f = Path("results.json")
    assert variant_of(f, {}, "paper", dtd) == "paper"
    assert variant_of(f, {"setting": "unified"}, "cpu", {"ACC": {"method_info": {}}}) == "cpu-unified"
    assert variant_of(f, {"setting": "per-category"}, "paper", procedural) == "paper-procedural"
    with pytest.raises(LeaderboardError, match="setting"):
        variant_of(f, {"setting": "sideways"}, "paper", dtd)
    overridden = {"setting": "unified", "overrides": {"precision": "amp", "decoder_blocks": [1, 1, 1],
                                                      "weights": "/home/me/w.pt"}}
    assert variant_of(f, overridden, "paper", dtd) == \
        "paper-unified+decoder_blocks=1,1,1+precision=amp+weights=_home_me_w.pt"
    with pytest.raises(LeaderboardError, match="overrides"):
        variant_of(f, {"overrides": ["epochs"]}, "paper", dtd)


def test_readme_names_the_method_that_runs_each_paper_row():
    """Every method with published rows is matched to the registered method that runs it."""
    from threecad.leaderboard.readme import runnable_markdown
    from threecad.leaderboard.store import read_table
    from threecad.registry import method_entry_points

    text = runnable_markdown(read_table(REPO / "leaderboard" / "results.csv"))
    paper_methods = set(read_table(REPO / "leaderboard" / "results.csv").query("source == 'paper'")["method"])
    assert len(paper_methods) == 11
    for name in method_entry_points():
        if name not in ("patchcore",):  # PatchCore has no row in the paper's tables
            assert f"`threecad bench --method {name} --preset paper --protocol 3cad-paper`" in text, name
    assert "not in threecad yet" not in text  # all eleven compared methods now run here
    row = runnable_markdown(pd.DataFrame([{**read_table(REPO / "leaderboard" / "results.csv").iloc[0].to_dict(), "method": "EfficientAD"}]))
    assert "| EfficientAD | not in threecad yet |" in row
