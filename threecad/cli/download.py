"""`threecad download`: fetch 3CAD (or a mirror of it) into the dataset root, verified."""
from __future__ import annotations

from pathlib import Path

import click

from threecad.cli.common import resolve_root, root_option


@click.command("download")
@click.option("--source", type=click.Choice(["gdrive", "hf", "url", "path"]), default="gdrive",
              show_default=True, help="gdrive: the official archives; hf: a Hugging Face dataset "
                                      "repository; url: any http(s) archive; path: a local archive or folder.")
@click.option("--variant", type=click.Choice(["english", "pinyin"]), default="english", show_default=True,
              help="Official archive: English (current) or Pinyin defect-type names (--source gdrive).")
@click.option("--repo-id", default=None, help="Hugging Face dataset repository ORG/NAME (--source hf).")
@click.option("--revision", default=None, help="Branch, tag or commit of the repository (--source hf).")
@click.option("--url", default=None, help="http(s) URL of a zip/tar/tar.gz archive (--source url).")
@click.option("--path", "path", type=click.Path(path_type=Path), default=None,
              help="Local archive or folder (--source path), for machines without internet.")
@root_option()
@click.option("--sha256", default=None, help="Expected sha256 of the archive; a mismatch installs nothing.")
@click.option("--force", is_flag=True, help="Download and replace a dataset already at the root.")
@click.option("--keep-archive", is_flag=True,
              help="Keep the downloaded archive in .<root>.download/ beside the root.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads for verify and hashing.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Automatic resumes of a dropped transfer.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
def command(source: str, variant: str, repo_id: str | None, revision: str | None, url: str | None,
            path: Path | None, root: Path | None, sha256: str | None, force: bool, keep_archive: bool,
            workers: int | None, retries: int, progress: bool | None) -> None:
    """Get the dataset into the root: complete and verified, or nothing.

    The archive is fetched into .<root>.download/ beside the root (an interrupted transfer
    resumes there), its sha256 is recorded, and it is extracted into a temporary folder
    beside the root, verified, given a file manifest and moved into place in one rename.
    HF_ENDPOINT, HF_TOKEN and the Hub cache apply to --source hf.
    """
    from threecad.download import DownloadRequest, download

    result = download(DownloadRequest(
        root=resolve_root(root), source=source, variant=variant, repo_id=repo_id, revision=revision,
        url=url, path=path, sha256=sha256, force=force, keep_archive=keep_archive, workers=workers,
        retries=retries, progress=progress))
    if result.report is not None and result.report.warnings:
        click.echo(f"verify: {len(result.report.warnings)} warning(s); list them with "
                   f"`threecad verify --root {result.root}`")
    click.echo(result.message)
