"""`threecad methods`: the registered methods, one line each, with their presets."""
from __future__ import annotations

import click


@click.command("methods")
def command():
    """List the methods registered under the `threecad.methods` entry-point group."""
    from threecad.registry import available_methods

    found = available_methods()
    if not found:
        click.echo("no methods registered (is threecad installed? `pip install -e .`)")
        return
    width = max(len(n) for n in found)
    for name, cls in found.items():
        if isinstance(cls, Exception):
            click.echo(f"{name:<{width}}  (failed to load: {type(cls).__name__}: {cls})")
        else:
            presets = ", ".join(cls.presets)
            click.echo(f"{name:<{width}}  {cls.description}  [presets: {presets}]")
