"""Writes golden.npz: CRAD's maps and image score as the reference computes them, with our weights.

Run once (never by the test suite), on CPU, from the project root:
  OMP_NUM_THREADS=1 .venv/bin/python tests/golden/crad/make_golden.py --reference SRC --packages PKGS
SRC: tae-mo/CRAD at b5a1c472 (`git archive` of the commit).
PKGS: `pip install --no-deps --target PKGS easydict tabulate` (imported by the reference);
never the project's environment.

What runs is the reference's own code, as tools/train_val.py's `validate` runs it on the test
split (CRAD is a fork of UniAD: tests/golden/uniad/make_golden.py's `reference_model` and
`validate` build and run it): `experiments/config.yaml` through `update_config`, the test
loader of `datasets.data_builder` (OpenCV reading, BGR -> RGB, torchvision `Resize([224, 224])`
on the PIL image, `ToTensor`, ImageNet `Normalize`), `ModelHelper` in eval mode (its copy of
lukemelas' EfficientNet-B4, MFCN, the CRAD memory and bottlenecks), `dump` and `merge_together`
through a folder, `EvalDataMeta` (which averages each map over 21 x 21 windows) and
`EvalImageMax.encode_pred` with the config's 32 x 32 pool for the image score. Stored: the
model's map (`raw_map`, the reference's `pred`), the map the evaluation scores
(`evaluated_map`, every second pixel) and the score. The model gets every tensor of `build_ours()`
(tests/test_golden_crad.py): the B4's stem and blocks 0..21 by order, the reconstruction by a
name map. The rest of the reference's B4 keeps its own random init: it runs, and no tap depends
on it.
Run-time patches: `pretrained` off in the config (no download); `feat_path` points into a
temporary folder (nothing is written there in evaluation); `.cuda()` on tensors is the
identity (EvalImageMax calls it). The image is filed under an MVTec class name, which its
loader wants.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402

from golden.common import cuda_as_identity, golden_path, raw_hw, raw_sha256, reference_setup  # noqa: E402
from golden.uniad.make_golden import reference_model, validate  # noqa: E402

GOLDEN = golden_path("crad")
STRIDE = 2  # the evaluated map is stored every STRIDE-th pixel (exact values), to keep the file small


def ours_key(k: str) -> str:
    """The reference reconstruction's state-dict name -> ours."""
    if k in ("query.0", "query.1"):
        return {"query.0": "local_grid", "query.1": "global_grid"}[k]
    for theirs, mine in (("coord_.", "global_coord."), ("coord.", "local_coord."), ("layer.", "layers.")):
        if k.startswith(theirs):
            return mine + k[len(theirs):]
    return k


def main() -> None:
    args = reference_setup(__doc__, "the reference repository's files at b5a1c472",
                           "pip --target folder with easydict and tabulate")
    cuda_as_identity()
    import yaml
    from easydict import EasyDict

    from utils.misc_helper import update_config
    from test_golden_crad import build_ours

    ours = build_ours()
    with tempfile.TemporaryDirectory() as features:
        config = EasyDict(yaml.load(open(Path(args.reference) / "experiments" / "config.yaml"),
                                    Loader=yaml.FullLoader))
        config.net[0].kwargs.pretrained = False
        config.feat_path = features
        config = update_config(config)
        preds, data_meta, score, avgpool = validate(reference_model(config, ours, ours_key), config, "bottle")
        assert not any(Path(features).glob("**/*"))
    np.savez(GOLDEN, raw_sha256=raw_sha256(),
             raw_map=preds[0].astype(np.float32),
             evaluated_map=data_meta.preds[0, ::STRIDE, ::STRIDE].astype(np.float32), stride=STRIDE,
             score=score.astype(np.float64), size=config.dataset.input_size[0], avgpool=np.asarray(avgpool),
             raw_hw=raw_hw())
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; map {preds[0].shape}; score {score[0]:.9g}; pool {avgpool}")


if __name__ == "__main__":
    main()
