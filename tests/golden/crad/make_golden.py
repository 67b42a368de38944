"""Writes golden.npz: CRAD's maps and image score as the reference computes them, with our weights.

Run once (never by the test suite), on CPU:
  .venv/bin/python tests/golden/crad/make_golden.py --reference SRC --packages PKGS
SRC: tae-mo/CRAD at b5a1c472 (`git archive` of the commit).
PKGS: `pip install --no-deps --target PKGS easydict tabulate` (imported by the reference);
never the project's environment.

What runs is the reference's own code, as tools/train_val.py's `validate` runs it on the test
split: `experiments/config.yaml` through `update_config`, the test loader of
`datasets.data_builder` (OpenCV reading, BGR -> RGB, torchvision `Resize([224, 224])` on the
PIL image, `ToTensor`, ImageNet `Normalize`), `ModelHelper` in eval mode (its copy of lukemelas'
EfficientNet-B4, MFCN, the CRAD memory and bottlenecks), `dump` and `merge_together` through a
folder, `EvalDataMeta` (which averages each map over 21 x 21 windows) and
`EvalImageMax.encode_pred` with the config's 32 x 32 pool for the image score. Stored: the
model's map (`raw_map`, the reference's `pred`), the map the evaluation scores
(`evaluated_map`, every second pixel) and the score. The model gets every tensor of `build_ours()`
(tests/test_golden_crad.py): the B4's stem and blocks 0..21 by order (as
tests/golden/uniad/make_golden.py), the reconstruction by a name map. The rest of the
reference's B4 keeps its own random init: it runs, and no tap depends on it.
Run-time patches: `pretrained` off in the config (no download); `feat_path` points into a
temporary folder (nothing is written there in evaluation); `.cuda()` on tensors is the
identity (EvalImageMax calls it).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TESTS = ROOT / "tests"
STRIDE = 2  # the evaluated map is stored every STRIDE-th pixel (exact values), to keep the file small


def copy_backbone(reference, ours, last_block: int) -> None:
    """UniAD's script's: the same B4 into the same lukemelas copy."""
    spec = importlib.util.spec_from_file_location("uniad_golden", Path(__file__).resolve().parents[1] / "uniad"
                                                  / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.copy_backbone(reference, ours, last_block)


def ours_key(k: str) -> str:
    """The reference reconstruction's state-dict name -> ours."""
    if k in ("query.0", "query.1"):
        return {"query.0": "local_grid", "query.1": "global_grid"}[k]
    for theirs, mine in (("coord_.", "global_coord."), ("coord.", "local_coord."), ("layer.", "layers.")):
        if k.startswith(theirs):
            return mine + k[len(theirs):]
    return k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="the reference repository's files at b5a1c472")
    parser.add_argument("--packages", required=True, help="pip --target folder with easydict and tabulate")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path[:0] = [str(ROOT), str(TESTS), args.packages, args.reference]

    import numpy as np
    import torch
    import yaml
    from easydict import EasyDict
    from PIL import Image

    torch.Tensor.cuda = lambda self, *a, **k: self
    from datasets.data_builder import build
    from models.model_helper import ModelHelper
    from utils.eval_helper import EvalDataMeta, EvalImageMax, dump, merge_together
    from utils.misc_helper import update_config
    from test_golden_crad import GOLDEN, RAW, build_ours

    torch.set_num_threads(1)
    ours = build_ours()
    with tempfile.TemporaryDirectory() as work:
        config = EasyDict(yaml.load(open(Path(args.reference) / "experiments" / "config.yaml"),
                                    Loader=yaml.FullLoader))
        config.net[0].kwargs.pretrained = False
        config.feat_path = str(Path(work) / "features")
        config = update_config(config)
        torch.manual_seed(0)
        model = ModelHelper(config.net)
        model.device = torch.device("cpu")
        copy_backbone(model.backbone, ours.net.backbone, max(ours.config.blocks))
        state, own = model.reconstruction.state_dict(), ours.net.reconstruction.state_dict()
        assert {ours_key(k) for k in state} == set(own)
        model.reconstruction.load_state_dict({k: own[ours_key(k)].clone() for k in state}, strict=True)

        image_dir, eval_dir = Path(work) / "images", Path(work) / "eval"
        (image_dir / "bottle" / "test" / "good").mkdir(parents=True)  # its loader wants an MVTec class name
        eval_dir.mkdir()
        shutil.copy(RAW, image_dir / "bottle" / "test" / "good" / RAW.name)
        meta = Path(work) / "test.json"
        meta.write_text(json.dumps({"filename": f"bottle/test/good/{RAW.name}", "label": 0,
                                    "clsname": "bottle"}) + "\n")
        config.dataset.image_reader.kwargs.image_dir = str(image_dir)
        config.dataset.test.meta_file = str(meta)
        loader = build(config.dataset, training=False, distributed=False)
        model.eval()
        with torch.no_grad():
            for batch in loader:
                dump(str(eval_dir), model(batch))
        _fileinfos, preds, masks = merge_together(str(eval_dir))
        assert not any(Path(config.feat_path).glob("**/*"))
    data_meta = EvalDataMeta(preds, masks)
    (avgpool,) = [m.kwargs.avgpool_size for m in config.evaluator.metrics.auc if m.name == "max"]
    score = EvalImageMax.encode_pred(data_meta.preds, avgpool_size=avgpool)
    np.savez(GOLDEN, raw_sha256=hashlib.sha256(RAW.read_bytes()).hexdigest(),
             raw_map=preds[0].astype(np.float32),
             evaluated_map=data_meta.preds[0, ::STRIDE, ::STRIDE].astype(np.float32), stride=STRIDE,
             score=score.astype(np.float64), size=config.dataset.input_size[0], avgpool=np.asarray(avgpool),
             raw_hw=np.asarray(Image.open(RAW).size[::-1]))
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; map {preds[0].shape}; score {score[0]:.9g}; pool {avgpool}")


if __name__ == "__main__":
    main()
