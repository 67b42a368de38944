"""`threecad verify`: check a dataset root; exit 0 when healthy, 1 when problems are found."""
from __future__ import annotations

from pathlib import Path

import click

from threecad.cli.common import category_option, resolve_root, root_option


@click.command("verify")
@root_option()
@category_option()
@click.option("--strict", is_flag=True,
              help="Differences from the paper's Table 1 (and missing 3CAD categories) are errors; "
                   "a synthetic root is compared with Table 1 at any scale.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding threads. Default: number of CPUs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full report as JSON to FILE (`-` for stdout).")
@click.option("--write-manifest", is_flag=True,
              help="Record sha256 and size of every file in <root>/MANIFEST.sha256.json, which later "
                   "runs compare against (changed, missing, extra files).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def command(root: Path | None, categories: tuple[str, ...], strict: bool, workers: int | None,
            json_path: Path | None, write_manifest: bool, progress: bool | None) -> None:
    """Check a dataset root without changing it.

    Every image and mask is decoded; masks must be binary 0/255, of the image's size, with at
    least one defect pixel; no mask for a good image, no orphan mask. On 3CAD the counts per
    category are compared with Table 1 (a subset is a warning; --strict makes it an error).
    When <root>/MANIFEST.sha256.json exists, files changed, missing or added since are listed.
    Exit status: 0 healthy, 1 problems found, 2 bad input.

    \b
    Examples:
      threecad verify --root ~/threecad-data/3CAD --strict
      threecad verify --root my-parts --category widget --json report.json
    """
    from threecad.fsutil import atomic_write_text, check_writable
    from threecad.manifest import MANIFEST_NAME
    from threecad.verify import format_report, plural, verify, write_manifest_for

    root = resolve_root(root)
    # refuse an output that cannot be written before decoding anything
    if json_path is not None and str(json_path) != "-":
        check_writable(json_path)
    if write_manifest and root.is_dir():
        check_writable(root / MANIFEST_NAME)
    report = verify(root, strict=strict, workers=workers, categories=categories,
                    progress=progress, hash_all=write_manifest)
    if json_path is not None and str(json_path) == "-":
        click.echo(report.to_json(), nl=False)
    else:
        click.echo(format_report(report))
        if json_path is not None:
            atomic_write_text(json_path, report.to_json())
    if write_manifest:
        path = write_manifest_for(report, workers=workers)
        click.echo(f"manifest written: {path} ({plural(len(report.file_hashes), 'file')})", err=json_path is not None
                   and str(json_path) == "-")
        if report.manifest_status == "differs" and not [p for p in report.errors if p.kind not in
                                                        {"changed_file", "missing_file", "extra_file"}]:
            return  # the differences were just accepted into the new manifest
    raise SystemExit(0 if report.ok else 1)
