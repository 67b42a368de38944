"""`threecad download`: fetch 3CAD (or DTD, the texture source) into its root, verified."""
from __future__ import annotations

from pathlib import Path

import click

from threecad.cli.common import resolve_root


@click.command("download")
@click.option("--dataset", type=click.Choice(["3cad", "dtd", "mvtec"], case_sensitive=False), default="3cad",
              show_default=True, help="3cad: the 3CAD dataset; dtd: the Describable Textures Dataset "
                                      "(textures for synthetic anomalies); mvtec: not implemented yet.")
@click.option("--source", type=click.Choice(["auto", "gdrive", "hf", "url", "path"]), default="auto",
              show_default=True, help="auto: the dataset's official archive (3CAD: Google Drive; DTD: the VGG "
                                      "server); gdrive: 3CAD's Google Drive archives; hf: a Hugging Face "
                                      "dataset repository; url: any http(s) archive; path: a local archive "
                                      "or folder.")
@click.option("--variant", type=click.Choice(["english", "pinyin"]), default="english", show_default=True,
              help="Official 3CAD archive: English (current) or Pinyin defect-type names.")
@click.option("--repo-id", default=None, help="Hugging Face dataset repository ORG/NAME (--source hf).")
@click.option("--revision", default=None, help="Branch, tag or commit of the repository (--source hf).")
@click.option("--url", default=None, help="http(s) URL of a zip/tar/tar.gz archive (--source url; for DTD "
                                          "the official archive when omitted).")
@click.option("--path", "path", type=click.Path(path_type=Path), default=None,
              help="Local archive or folder (--source path), for machines without internet.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the dataset goes. Default: 3CAD: $THREECAD_ROOT, else <data home>/3CAD; DTD: "
                   "<data home>/dtd (data home: $THREECAD_DATA_HOME, else ~/threecad-data).")
@click.option("--sha256", default=None, help="Expected sha256 of the archive; a mismatch installs nothing.")
@click.option("--force", is_flag=True, help="Download and replace a dataset already at the root.")
@click.option("--allow-extra", is_flag=True,
              help="Install files that are not part of the dataset (readmes, stray folders) instead of "
                   "leaving them out.")
@click.option("--keep-archive", is_flag=True,
              help="Keep the downloaded archive in .<root>.download/ beside the root.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads for verify and hashing.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Automatic resumes of a dropped transfer.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
def command(dataset: str, source: str, variant: str, repo_id: str | None, revision: str | None,
            url: str | None, path: Path | None, root: Path | None, sha256: str | None, force: bool,
            allow_extra: bool, keep_archive: bool, workers: int | None, retries: int,
            progress: bool | None) -> None:
    """Get the dataset into the root: complete and verified, or nothing.

    The archive is fetched into .<root>.download/ beside the root (an interrupted transfer
    resumes there), its sha256 is recorded, and it is extracted into a temporary folder
    beside the root, verified, given a file manifest and moved into place in one rename.
    Files that are not part of the dataset are left out and listed (--allow-extra keeps
    them). DTD is installed in torchvision's layout (<root>/dtd/dtd/images, labels), which
    the anomaly synthesizer reads. HF_ENDPOINT, HF_TOKEN and the Hub cache apply to --source hf.
    """
    from threecad.datahome import default_dtd_root
    from threecad.download import DownloadRequest, download

    dataset = dataset.lower()
    if root is None:
        root = default_dtd_root() if dataset == "dtd" else resolve_root(None)
    result = download(DownloadRequest(
        root=Path(root).expanduser(), dataset=dataset, source=source, variant=variant, repo_id=repo_id,
        revision=revision, url=url, path=path, sha256=sha256, force=force, allow_extra=allow_extra,
        keep_archive=keep_archive, workers=workers, retries=retries, progress=progress))
    if result.report is not None and result.report.warnings:
        click.echo(f"verify: {len(result.report.warnings)} warning(s); list them with "
                   f"`threecad verify --root {result.root}`")
    click.echo(result.message)
