"""Bad inputs to `threecad leaderboard`: each is refused in one line, and nothing is written.

Run directories are laid out by the harness's own writer (`test_leaderboard.write_run`) and
then damaged the way a user, a crash or a hand edit would. Every case goes through the
CLI and `refusal.assert_refused`: non-zero exit, one `error:` line naming the culprit, no
traceback, and the table's folder and the run directory byte-identical afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from refusal import assert_refused
from test_leaderboard import FAILED_CS, edit_results, run_results, write_run
from threecad.leaderboard import init_table

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Env:
    tmp: Path
    table: Path  # a valid table (the paper's rows) in its own folder
    run: Path  # a finished, intact run of CFRG on ACC and IS

    def submit(self, *extra: str) -> list[str]:
        return ["leaderboard", "submit", str(self.run), "--csv", str(self.table), *extra]

    def show(self, *extra: str) -> list[str]:
        return ["leaderboard", "show", "--csv", str(self.table), *extra]


@dataclass
class Case:
    id: str
    prepare: Callable[[Env], tuple[list[str], list[str]]]  # -> (CLI args, words the error line must hold)
    needs_non_root: bool = False


def _rewrite_run(env: Env, **overrides) -> None:
    shutil.rmtree(env.run)
    write_run(env.run, run_results(**overrides))


def tampered_value(env):
    edit_results(env.run, lambda d: d["categories"]["ACC"]["metrics"].update(p_auroc=0.999))
    return env.submit(), ["results.json", "categories.ACC.metrics.p_auroc", "ACC.json"]


def tampered_mean(env):
    edit_results(env.run, lambda d: d["mean"].update(au_pro=0.95))
    return env.submit(), ["results.json", "mean.au_pro"]


def unfinished(env):
    shutil.rmtree(env.run)
    write_run(env.run, run_results(), finished=False)
    return env.submit(), ["results.json", "finished", "--resume"]


def lone_results_json(env):
    for name in os.listdir(env.run):
        if name != "results.json":
            path = env.run / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return env.submit(), ["run.json"]


def no_category_records(env):
    shutil.rmtree(env.run / "categories")
    return env.submit(), ["categories", "no category records"]


def record_missing(env):
    (env.run / "categories" / "IS.json").unlink()
    return env.submit(), ["results.json", "IS.json"]


def category_dropped(env):
    edit_results(env.run, lambda d: d["categories"].pop("IS"))
    return env.submit(), ["IS.json", "results.json"]


def failed_category(env):
    shutil.rmtree(env.run)
    data = run_results()
    data["categories"]["CS"] = FAILED_CS
    write_run(env.run, data)
    return env.submit(), ["CS.json", "failed", "--resume"]


def other_run_json(env):
    spec = json.loads((env.run / "run.json").read_text())
    (env.run / "run.json").write_text(json.dumps({**spec, "run_id": "someone-else"}))
    return env.submit(), ["run.json", "run_id"]


def formula_method(env):
    _rewrite_run(env, method='=HYPERLINK("http://example.invalid","click")')
    return env.submit(), ["results.json", "method", "formula"]


def unsafe_preset(env):
    _rewrite_run(env, preset="cpu;rm -rf")
    return env.submit(), ["results.json", "preset", "';'"]


def formula_hardware(env):
    _rewrite_run(env, hardware="@SUM(1+1)")
    return env.submit(), ["results.json", "hardware", "formula"]


def read_only_table(env):
    env.table.chmod(0o444)  # honoured as root too: no write bit at all means read-only
    return env.submit(), [str(env.table), "read-only"]


def read_only_table_folder(env):
    env.table.parent.chmod(0o555)
    return env.submit(), [str(env.table.parent), "permission denied"]


def misspelt_csv(env):
    wrong = env.table.parent / "resluts.csv"
    return ["leaderboard", "submit", str(env.run), "--csv", str(wrong)], [str(wrong), "--create"]


def csv_is_a_folder(env):
    folder = str(env.table.parent)
    return ["leaderboard", "submit", str(env.run), "--csv", folder], [folder, "--csv", "directory"]


def damaged_results_json(env):
    text = (env.run / "results.json").read_text()
    (env.run / "results.json").write_text(text[: len(text) // 2])  # cut off mid-write
    return env.submit(), ["results.json", "not valid JSON"]


def damaged_record(env):
    (env.run / "categories" / "ACC.json").write_text('{"status": "ok", "metrics": {')
    return env.submit(), ["ACC.json", "not valid JSON"]


def unreadable_results_json(env):
    (env.run / "results.json").chmod(0o000)
    return env.submit(), ["results.json", "permission denied"]


def run_dir_missing(env):
    gone = env.tmp / "no-such-run"
    return ["leaderboard", "submit", str(gone), "--csv", str(env.table)], [str(gone), "does not exist"]


def run_dir_is_a_file(env):
    other = env.run / "results.csv"
    return ["leaderboard", "submit", str(other), "--csv", str(env.table)], [str(other), "not a run directory"]


def unknown_metric(env):
    return env.show("--metric", "accuracy"), ["--metric", "accuracy"]


def unknown_protocol(env):
    return env.show("--protocol", "mvtec-ish"), ["--protocol", "mvtec-ish"]


def unknown_format(env):
    return env.show("--format", "pdf"), ["--format", "pdf"]


def read_only_show_out(env):
    out = env.table.parent / "page.html"
    out.write_text("old page")
    out.chmod(0o444)
    return env.show("--format", "html", "--out", str(out)), [str(out), "read-only"]


def run_already_in_the_table(env):
    from click.testing import CliRunner

    from threecad.cli import main

    assert CliRunner().invoke(main, env.submit()).exit_code == 0  # the first submit goes in
    return env.submit(), ["already in", "--replace"]  # the second is refused, and leaves no lock file


def init_over_a_table(env):
    return ["leaderboard", "init", "--csv", str(env.table)], [str(env.table), "--force"]


CASES = [
    Case("tampered value", tampered_value),
    Case("tampered mean", tampered_mean),
    Case("unfinished run", unfinished),
    Case("lone results.json", lone_results_json),
    Case("no category records", no_category_records),
    Case("category record missing", record_missing),
    Case("category dropped from results.json", category_dropped),
    Case("failed category", failed_category),
    Case("run.json of another run", other_run_json),
    Case("method is a formula", formula_method),
    Case("preset with unsafe characters", unsafe_preset),
    Case("hardware is a formula", formula_hardware),
    Case("read-only table", read_only_table),
    Case("read-only table folder", read_only_table_folder, needs_non_root=True),
    Case("misspelt --csv without --create", misspelt_csv),
    Case("--csv is a folder", csv_is_a_folder),
    Case("damaged results.json", damaged_results_json),
    Case("damaged category record", damaged_record),
    Case("unreadable results.json", unreadable_results_json, needs_non_root=True),
    Case("RUN_DIR does not exist", run_dir_missing),
    Case("RUN_DIR is a file", run_dir_is_a_file),
    Case("unknown --metric", unknown_metric),
    Case("unknown --protocol", unknown_protocol),
    Case("unknown --format", unknown_format),
    Case("read-only show --out", read_only_show_out),
    Case("init over an existing table", init_over_a_table),
    Case("refused submit leaves no lock file", run_already_in_the_table),
]


@pytest.fixture
def env(tmp_path: Path):
    table = tmp_path / "board" / "results.csv"
    init_table(table)
    env = Env(tmp_path, table, write_run(tmp_path / "run", run_results()))
    yield env
    for path in (table.parent, table, env.run / "results.json"):  # let pytest clean up
        if path.exists():
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(env, case):
    if case.needs_non_root and AS_ROOT:
        pytest.skip("permissions do not bind root; this case runs as a normal user")
    args, names = case.prepare(env)
    assert_refused(args, names=names, watch=[env.table.parent, env.run])


def test_the_intact_run_is_accepted(env):
    """The control: the run every case starts from does go in."""
    from click.testing import CliRunner

    from threecad.cli import main

    result = CliRunner().invoke(main, env.submit())
    assert result.exit_code == 0, result.output
    assert "added 21 rows" in result.output


def test_no_lock_file_is_left_behind(env):
    """Neither init nor a submit leaves the table's lock file beside it."""
    from click.testing import CliRunner

    from threecad.cli import main

    assert CliRunner().invoke(main, env.submit()).exit_code == 0
    assert sorted(p.name for p in env.table.parent.iterdir()) == ["results.csv"]


def test_submit_through_a_link_writes_the_linked_table(env):
    """`--csv LINK` (a shared table linked into a home folder) adds the rows to the table the link
    points to; the link stays a link (an atomic rename onto it would have replaced it by a copy)."""
    from click.testing import CliRunner

    from threecad.cli import main

    link = env.tmp / "mine.csv"
    link.symlink_to(env.table)
    result = CliRunner().invoke(main, ["leaderboard", "submit", str(env.run), "--csv", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == env.table.resolve()
    assert env.run.name in env.table.read_text() or "cfrg" in env.table.read_text().lower()
    assert "added 21 rows" in result.output
    assert not list(env.tmp.glob(".mine.csv*")) and not list(env.table.parent.glob(".*.lock"))


def test_a_pipe_in_a_category_name_is_escaped_in_markdown(tmp_path):
    """A custom dataset's category named `a|b` keeps the Markdown table's columns."""
    from click.testing import CliRunner

    from threecad.cli import main
    from threecad.leaderboard.schema import COLUMNS
    from threecad.leaderboard.store import table_text, write_table
    import pandas as pd

    row = dict.fromkeys(COLUMNS, "")
    row.update(method="PatchCore", variant="cpu", source="run", reference="r1", protocol="standard",
               dataset="custom", metric="i_auroc", value="90.0", evidence="claimed")
    rows = [dict(row, category=c) for c in ("a|b", "Mean")]
    table = tmp_path / "t.csv"
    write_table(table, pd.DataFrame(rows, columns=list(COLUMNS)))
    assert "a|b" in table_text(pd.read_csv(table, dtype=str, keep_default_na=False))
    result = CliRunner().invoke(main, ["leaderboard", "show", "--csv", str(table), "--format", "md"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("|")]
    assert "a\\|b" in lines[0]
    assert len({line.replace("\\|", "").count("|") for line in lines}) == 1  # every line has the same cells
