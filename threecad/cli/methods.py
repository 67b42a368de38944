"""`threecad methods [NAME]`: the registered methods, or one method's model card."""
from __future__ import annotations

import json

import click


def _fmt(n: int) -> str:
    return f"{n:,}"


@click.command("methods")
@click.argument("name", required=False)
@click.option("--preset", default=None, help="Preset whose model card to show (default: paper).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override, as in bench.")
@click.option("--json", "as_json", is_flag=True, help="Print the model card as JSON.")
@click.option("--markdown", is_flag=True,
              help="Print one Markdown table of every method's paper preset: input pipeline, precision, "
                   "setting, selection and pretrained files (the README's table).")
def command(name: str | None, preset: str | None, overrides: tuple[str, ...], as_json: bool, markdown: bool):
    """List the registered methods, or show NAME's model card: presets, config, parameter
    counts per part (trainable and frozen), input size, feature taps, post-processing.

    The card is built without downloading weights. A method family (anomalib's image models,
    with the `anomalib` extra) is listed after the methods, its members as FAMILY:NAME.

    \b
    Examples:
      threecad methods
      threecad methods cfrg --preset cpu
      threecad methods padim --set n_features=200 --json
      threecad methods anomalib:Patchcore --preset cpu
    """
    from threecad.errors import ThreecadError
    from threecad.method import parse_set_options
    from threecad.registry import available_methods, load_method, method_families

    if markdown:
        if name or preset or overrides or as_json:
            raise ThreecadError("--markdown tables every method's paper preset: drop NAME, --preset, --set and --json")
        from threecad.model_card import paper_presets_markdown

        click.echo(paper_presets_markdown(), nl=False)
        return
    if name is None:
        if preset or overrides or as_json:
            raise ThreecadError("--preset, --set and --json need a method NAME (`threecad methods cfrg --json`)")
        found = available_methods()
        families = method_families()
        if not found and not families:
            click.echo("no methods registered (is threecad installed? `pip install -e .`)")
            return
        width = max(len(n) for n in [*found, *(m for f in families.values() if isinstance(f, dict) for m in f)])
        for key, cls in found.items():
            if isinstance(cls, Exception):
                click.echo(f"{key:<{width}}  (failed to load: {type(cls).__name__}: {cls})")
            else:
                click.echo(f"{key:<{width}}  {cls.description}  [presets: {', '.join(cls.presets)}]")
        for family, members in families.items():
            if isinstance(members, Exception):
                click.echo(f"\n{family}:NAME  (unavailable: {members})")
                continue
            click.echo(f"\n{family}'s models, {len(members)} ({family}:NAME; presets: paper, cpu):")
            for key, description in members.items():
                click.echo(f"{key:<{width}}  {description}")
        return

    from threecad.model_card import model_card

    card = model_card(load_method(name), preset, parse_set_options(overrides))
    if as_json:
        click.echo(json.dumps(card, indent=2))
        return
    click.echo(f"{card['name']}: {card['description']}")
    click.echo(f"presets: {', '.join(card['presets'])}; shown: {card['preset']}, input {card['input_size']} px")
    width = max(len(p) for p in [*card["parts"], *card["reference_parts"]])
    click.echo(f"{'part':<{width}}  {'trainable':>13}  {'frozen':>13}")
    for part, counts in card["parts"].items():
        click.echo(f"{part:<{width}}  {_fmt(counts['trainable']):>13}  {_fmt(counts['frozen']):>13}")
    click.echo(f"{'total':<{width}}  {_fmt(card['total']['trainable']):>13}  {_fmt(card['total']['frozen']):>13}")
    for part, counts in card["reference_parts"].items():
        click.echo(f"{part:<{width}}  {_fmt(counts['trainable']):>13}  {_fmt(counts['frozen']):>13}  "
                   "(reference only, not in the total)")
    skip = {"name", "description", "presets", "preset", "parts", "total", "input_size", "reference_parts"}
    for key, value in card.items():
        if key in skip:
            continue
        if isinstance(value, dict) and value:  # one line per field: the config, the pipelines
            click.echo(f"{key}:")
            for field, item in value.items():
                click.echo(f"  {field}: {json.dumps(item)}")
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            click.echo(f"{key}:")
            for item in value:
                click.echo(f"  - {item}")
        else:
            click.echo(f"{key}: {json.dumps(value)}")
