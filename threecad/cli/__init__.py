"""The `threecad` command: one click group; each subcommand lives in its own module.

Subcommands load lazily so that `threecad verify` does not pay for importing torch.
A ThreecadError anywhere becomes a one-line message and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

from threecad import __version__
from threecad.cpus import quiet_openmp
from threecad.errors import ThreecadError

quiet_openmp()  # before any subcommand imports torch: OpenMP workers then wait without spinning

# command name -> module under threecad.cli that defines `command`
COMMANDS = {
    "download": "download",
    "verify": "verify",
    "synth": "synth",
    "split": "split",
    "stats": "stats",
    "bench": "bench",
    "methods": "methods",
    "leaderboard": "leaderboard",
    "predict": "predict",
    "export": "export",
    "report": "report",
    "cache": "cache",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, mod in COMMANDS.items()
                if importlib.util.find_spec(f"threecad.cli.{mod}") is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None or importlib.util.find_spec(f"threecad.cli.{module}") is None:
            return None
        return importlib.import_module(f"threecad.cli.{module}").command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ThreecadError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="threecad")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Toolkit and benchmark suite for 3CAD anomaly detection and CFRG."""
    level = logging.WARNING - 10 * min(verbose + 1, 2)  # INFO by default, DEBUG with -v
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
