"""Every command's --help shows an example, and `bench --help` lists the registered methods."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from threecad.cli import COMMANDS, main

LEADERBOARD = ("show", "submit", "audit", "init", "validate", "render-readme")


def helps():
    yield from ([name] for name in COMMANDS if name not in ("leaderboard", "cache"))
    yield from (["leaderboard", sub] for sub in LEADERBOARD)
    yield ["cache"]


@pytest.mark.parametrize("command", list(helps()), ids=" ".join)
def test_help_has_an_example(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    if result.exit_code == 2 and "No such command" in result.output:
        pytest.skip(f"{command[0]} is not installed in this checkout yet")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`threecad {' '.join(command)} --help` shows no example"


def test_bench_help_lists_the_methods_and_presets():
    from threecad.registry import available_methods

    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    for name, cls in available_methods().items():
        assert name in result.output and ", ".join(cls.presets) in result.output
