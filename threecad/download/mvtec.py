"""MVTec AD: where its official archive lives, what it should hash to, and its licence.

The paper also reports CFRG on MVTec AD, and every command reads MVTec roots (the same
layout as 3CAD, masks named `<stem>_mask.png`), so `threecad download --dataset mvtec`
installs it through the same machinery as 3CAD: fetch into staging, hash, extract with the
bomb limits, verify, manifest, one rename into `<data home>/mvtec`.

Checksum: MVTec's page publishes none. anomalib pins the archive's sha256 in its MVTec AD
datamodule (`DOWNLOAD_INFO.hashsum`, openvinotoolkit/anomalib), and older torchvision-style
downloaders pin its MD5; both are recorded here and the official download is refused when its
sha256 differs. The size is published only as "about 4.9 GB".

Licence: CC BY-NC-SA 4.0 (non-commercial). It is shown before the download starts and
recorded in the manifest's provenance.
"""
from __future__ import annotations

OFFICIAL_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
                "420938113-1629952094/mvtec_anomaly_detection.tar.xz")
OFFICIAL_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"  # as anomalib pins it
OFFICIAL_MD5 = "eefca59f2cede9c3fc5b6befbfec275e"  # as torchvision-style downloaders pin it
APPROX_SIZE = "about 4.9 GB"
LICENSE = "CC BY-NC-SA 4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
HOME_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
# The published totals (Bergmann et al., CVPR 2019 / IJCV 2021): 15 categories, 5,354 images.
N_TRAIN, N_TEST = 3629, 1725

NOTICE = (f"MVTec AD is licensed under {LICENSE} ({LICENSE_URL}): non-commercial use only, attribution, "
          f"share-alike; see {HOME_PAGE}. By downloading it you accept these terms.")
