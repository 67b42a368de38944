"""`download`: get a dataset (3CAD, MVTec AD, or DTD for the synthetic anomalies) into a root,
complete and untampered.

Sources (`sources.py`): the official archives (3CAD on Google Drive through gdown, MVTec AD on
MVTec's server, DTD on the VGG server), a Hugging Face dataset repository (huggingface_hub,
which honours HF_ENDPOINT, HF_TOKEN / login and its cache), any http(s) URL (requests,
progress bar, HTTP Range resume) or a local archive, folder or parquet file.

`auto` is the dataset's official source; for 3CAD it is a fallback order, because Google
Drive often refuses large public files for a day: the Drive archive first, then the Hub copy
(`HF_REPO_3CAD`, gated: it needs HF_TOKEN, so it is tried only when HF_TOKEN is set). Each
failure is logged in one line, and the manifest records which source served the data
(`source.served_by`, `source.attempts`).

A source may hold parquet rows instead of files (the Hub copy of 3CAD, a snapshot of it
fetched by other means): `parquet.py` writes them out in the MVTec layout first, and the
result goes through the same verify, manifest and install as any archive.

What lands at the root is all or nothing. Downloads accumulate in a staging folder beside
the root (`.<root>.download/`, where an interrupted transfer resumes); the archive's sha256
is computed (and checked against `--sha256`, or for DTD's official archive against the MD5
torchvision publishes); it is extracted (bounded by `threecad.archive`'s bomb limits) into a
temporary folder beside the root (`.<root>.tmp-*`, same disk, so the final move is one
rename), the dataset folder is found and checked (`verify` for 3CAD, `dtd.check_dtd` for
DTD), the file manifest is written with the archive's checksums as provenance, and only then
is the dataset renamed into place.

The categories must be the requested dataset's own (`contents.check_categories`: 3CAD is
not installed as MVTec AD, nor the reverse). Files that are not part of the dataset (a
readme, a licence, notes in a category, `.DS_Store` at any depth, a stray folder; the rule is
`contents.extra_entries`) are not installed: they are left out and listed in the message,
the log and the manifest's `source.skipped_extra`. `allow_extra=True` (`--allow-extra`)
installs them as they are.

Modules, one step each: `request` (the request, its checks, the result), `sources` (the
fetchers), `fetch` (which source serves, auto's fallback), `checksums`, `unpack` (archives,
folders, parquet into a temporary folder), `contents` (what an installed root may hold),
`install` (`download`: lock, verify, manifest, rename); `dtd` and `mvtec` hold those
datasets' own facts.
"""
from threecad.download.install import download
from threecad.download.request import HF_REPO_3CAD, DownloadRequest, DownloadResult
from threecad.download.sources import GDRIVE_ENDPOINT_ENV, GDRIVE_FILE_IDS, DownloadError, gdrive_url

__all__ = ["download", "DownloadRequest", "DownloadResult", "DownloadError", "HF_REPO_3CAD", "GDRIVE_ENDPOINT_ENV",
           "GDRIVE_FILE_IDS", "gdrive_url"]
