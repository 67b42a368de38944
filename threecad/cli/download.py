"""`threecad download`: fetch 3CAD, MVTec AD or DTD (the texture source) into its root, verified."""
from __future__ import annotations

from pathlib import Path

import click

from threecad.cli.common import resolve_root


@click.command("download")
@click.option("--dataset", type=click.Choice(["3cad", "dtd", "mvtec"], case_sensitive=False), default="3cad",
              show_default=True, help="3cad: the 3CAD dataset; mvtec: MVTec AD (licence CC BY-NC-SA 4.0, "
                                      "non-commercial; shown before the download); dtd: the Describable Textures "
                                      "Dataset (textures for synthetic anomalies).")
@click.option("--source", type=click.Choice(["auto", "gdrive", "hf", "url", "path"]), default="auto",
              show_default=True, help="auto: the official archive (3CAD: Google Drive, then the Hugging Face "
                                      "copy AI4Manufacturing/207 if HF_TOKEN is set; MVTec AD: MVTec's server; "
                                      "DTD: the VGG server); gdrive: 3CAD's Google Drive archives; hf: a Hugging "
                                      "Face dataset repository (files, archives or parquet rows); url: any http(s) "
                                      "archive; path: a local archive, folder or parquet file.")
@click.option("--variant", type=click.Choice(["english", "pinyin"]), default="english", show_default=True,
              help="Official 3CAD archive: English (current) or Pinyin defect-type names.")
@click.option("--repo-id", default=None, help="Hugging Face dataset repository ORG/NAME (--source hf; for "
                                              "--source auto the 3CAD fallback, default AI4Manufacturing/207).")
@click.option("--revision", default=None, help="Branch, tag or commit of the repository (--source hf).")
@click.option("--url", default=None, help="http(s) URL of a zip/tar/tar.gz/tar.xz archive (--source url; for DTD "
                                          "and MVTec AD the official archive when omitted).")
@click.option("--path", "path", type=click.Path(path_type=Path), default=None,
              help="Local archive, folder or parquet file (--source path), for machines without internet.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the dataset goes. Default: 3CAD: $THREECAD_ROOT, else <data home>/3CAD; MVTec AD: "
                   "<data home>/mvtec; DTD: <data home>/dtd (data home: $THREECAD_DATA_HOME, else "
                   "~/threecad-data).")
@click.option("--sha256", default=None, help="Expected sha256 of the archive; a mismatch installs nothing.")
@click.option("--columns", default=None, metavar="KEY=COLUMN,...",
              help="Parquet sources: which columns hold what. Keys: image, mask (image structs or bytes), path "
                   "(<Category>/<split>/<defect>/<name>), split, label, defect, category, sha256; COLUMN.FIELD "
                   "reads a field of a struct or JSON column; KEY= drops a key. Default (the Hub copy's schema): "
                   "image=image,mask=mask,path=metadata.image_path,split=metadata.split,label=annot.label,"
                   "defect=annot.defect_type,sha256=metadata.image_sha256.")
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
            url: str | None, path: Path | None, root: Path | None, sha256: str | None, columns: str | None,
            force: bool, allow_extra: bool, keep_archive: bool, workers: int | None, retries: int,
            progress: bool | None) -> None:
    """Get the dataset into the root: complete and verified, or nothing.

    The archive is fetched into .<root>.download/ beside the root (an interrupted transfer
    resumes there), its sha256 is recorded, and it is extracted into a temporary folder
    beside the root, verified, given a file manifest and moved into place in one rename.
    Files that are not part of the dataset are left out and listed (--allow-extra keeps
    them). DTD is installed in torchvision's layout (<root>/dtd/dtd/images, labels), which
    the anomaly synthesizer reads. HF_ENDPOINT, HF_TOKEN and the Hub cache apply to --source hf.

    \b
    Parquet copies (the Hub's AI4Manufacturing/207 holds 3CAD as parquet rows) are written
    out in the MVTec layout: image and mask bytes as stored (PNG; anything else is written
    as PNG), each image's sha256 checked against the copy's, then verified like an archive.
    For 3CAD, --source auto tries Google Drive first and, when Drive refuses and HF_TOKEN is
    set, the Hub copy (accept its terms on its dataset page first); the manifest records
    which source served the data.

    \b
    Examples:
      threecad download                                   # 3CAD into <data home>/3CAD
      threecad download --source path --path ~/Downloads/3CAD.zip
      threecad download --dataset dtd                     # textures for anomaly synthesis
    """
    from threecad.datahome import default_dtd_root, default_mvtec_root
    from threecad.download import DownloadRequest, download

    dataset = dataset.lower()
    if root is None:
        root = {"dtd": default_dtd_root, "mvtec": default_mvtec_root}.get(
            dataset, lambda: resolve_root(None))()
    result = download(DownloadRequest(
        root=Path(root).expanduser(), dataset=dataset, source=source, variant=variant, repo_id=repo_id,
        revision=revision, url=url, path=path, sha256=sha256, columns=columns, force=force,
        allow_extra=allow_extra, keep_archive=keep_archive, workers=workers, retries=retries, progress=progress,
        notify=lambda text: click.echo(f"note: {text}", err=True)))
    if result.report is not None and result.report.warnings:
        click.echo(f"verify: {len(result.report.warnings)} warning(s); list them with "
                   f"`threecad verify --root {result.root}`")
    click.echo(result.message)
