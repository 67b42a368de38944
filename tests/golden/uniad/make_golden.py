"""Writes golden.npz: UniAD's map and image score as the reference computes them, with our weights.

Run once (never by the test suite), on CPU, from the project root:
  OMP_NUM_THREADS=1 .venv/bin/python tests/golden/uniad/make_golden.py --reference SRC --packages PKGS
SRC: zhiyuanyou/UniAD at a5b9d9d2 (`git archive` of the commit).
PKGS: `pip install --no-deps --target PKGS easydict tabulate` (imported by the reference);
never the project's environment.

What runs is the reference's own code, as tools/train_val.py's `validate` runs it on the test
split: `experiments/MVTec-AD/config.yaml` through `update_config`, the test loader of
`datasets.data_builder` (OpenCV reading, BGR -> RGB, torchvision `Resize([224, 224])` on the
PIL image, `ToTensor`, ImageNet `Normalize`), `ModelHelper` in eval mode (its copy of lukemelas'
EfficientNet-B4, MFCN, the transformer), `dump` and `merge_together` through a folder, then
`EvalImageMax.encode_pred` with the config's 16 x 16 pool for the image score. The model gets
every tensor of `build_ours()` (tests/test_golden_uniad.py): the B4's stem and blocks 0..21 by
order (lukemelas and torchvision register the same tensors in the same order; every shape and
tensor kind checked), the transformer by a name map. The rest of the reference's B4 (blocks
22..31, head, classifier) keeps its own random init: it runs, and no tap depends on it.
Run-time patches: `pretrained` and `save_recon` off in the config (no download, no files);
`.cuda()` on tensors is the identity (the model and EvalImageMax call it).
"""
from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from golden.common import (RAW, cuda_as_identity, golden_path, meta_file, raw_hw, raw_in_folder,  # noqa: E402
                           raw_sha256, reference_setup)

GOLDEN = golden_path("uniad")


def ours_key(k: str) -> str:
    """The reference reconstruction's state-dict name -> ours."""
    k = k.replace("pos_embed.row_embed.", "pos_embed.row.").replace("pos_embed.col_embed.", "pos_embed.col.")
    k = k.replace("transformer.decoder.norm.", "decoder_norm.")
    k = k.replace("transformer.encoder.layers.", "encoder.").replace("transformer.decoder.layers.", "decoder.")
    k = k.replace(".learned_embed.", ".queries.").replace(".multihead_attn.", ".attn2.")
    k = k.replace(".linear1.", ".ffn.0.").replace(".linear2.", ".ffn.3.")
    return k.replace(".self_attn.", ".attn." if k.startswith("encoder.") else ".attn1.")


def copy_backbone(reference, ours, last_block: int) -> None:
    """Ours (stem + blocks 0..last_block, torchvision names) into lukemelas' B4, in registration order."""
    state = reference.state_dict()
    keys = [k for k in state if k.startswith(("_conv_stem.", "_bn0."))
            or (k.startswith("_blocks.") and int(k.split(".")[1]) <= last_block)]
    own = ours.state_dict()
    assert len(keys) == len(own), (len(keys), len(own))
    for k, (k_ours, v) in zip(keys, own.items()):
        assert state[k].shape == v.shape and k.rsplit(".", 1)[1] == k_ours.rsplit(".", 1)[1], (k, k_ours)
        state[k] = v.clone()
    reference.load_state_dict(state, strict=True)


def reference_model(config, ours, key) -> torch.nn.Module:
    """The reference's `ModelHelper` from its config (its own init after seed 0, then every tensor of
    `ours`: the B4 by `copy_backbone`, the reconstruction by the name map `key`), in eval mode on the
    CPU. CRAD's script uses this and `validate` too (CRAD is a fork of UniAD): the modules imported
    are those of the reference on the path."""
    from models.model_helper import ModelHelper

    torch.manual_seed(0)
    model = ModelHelper(config.net)
    model.device = torch.device("cpu")
    copy_backbone(model.backbone, ours.net.backbone, max(ours.config.blocks))
    state, own = model.reconstruction.state_dict(), ours.net.reconstruction.state_dict()
    assert {key(k) for k in state} == set(own)
    model.reconstruction.load_state_dict({k: own[key(k)].clone() for k in state}, strict=True)
    return model.eval()


def validate(model, config, clsname: str):
    """tools/train_val.py's `validate` on the raw image, filed under class `clsname`: the test loader on
    a one-line meta file, `dump` and `merge_together` through a folder, `EvalDataMeta`, and
    `EvalImageMax.encode_pred` with the config's pool -> (model maps, EvalDataMeta, scores, pool)."""
    from datasets.data_builder import build
    from utils.eval_helper import EvalDataMeta, EvalImageMax, dump, merge_together

    with raw_in_folder("images", clsname, "test", "good") as work:
        eval_dir = work / "eval"
        eval_dir.mkdir()
        config.dataset.image_reader.kwargs.image_dir = str(work / "images")
        config.dataset.test.meta_file = str(meta_file(work / "test.json", f"{clsname}/test/good/{RAW.name}", clsname))
        loader = build(config.dataset, training=False, distributed=False)
        with torch.no_grad():
            for batch in loader:
                dump(str(eval_dir), model(batch))
        _fileinfos, preds, masks = merge_together(str(eval_dir))
    data_meta = EvalDataMeta(preds, masks)
    (avgpool,) = [m.kwargs.avgpool_size for m in config.evaluator.metrics.auc if m.name == "max"]
    return preds, data_meta, EvalImageMax.encode_pred(data_meta.preds, avgpool_size=avgpool), avgpool


def main() -> None:
    args = reference_setup(__doc__, "the reference repository's files at a5b9d9d2",
                           "pip --target folder with easydict and tabulate")
    cuda_as_identity()
    import yaml
    from easydict import EasyDict

    from utils.misc_helper import update_config
    from test_golden_uniad import build_ours

    config = EasyDict(yaml.load(open(Path(args.reference) / "experiments" / "MVTec-AD" / "config.yaml"),
                                Loader=yaml.FullLoader))
    config.net[0].kwargs.pretrained = False
    config.net[2].kwargs.save_recon = False
    config = update_config(config)
    _preds, data_meta, score, avgpool = validate(reference_model(config, build_ours(), ours_key), config, "part")
    anomaly_map = data_meta.preds[0]
    np.savez(GOLDEN, raw_sha256=raw_sha256(), map=anomaly_map.astype(np.float32), score=score.astype(np.float64),
             size=config.dataset.input_size[0], avgpool=np.asarray(avgpool), raw_hw=raw_hw())
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; map {anomaly_map.shape} {anomaly_map.dtype}; "
          f"score {score[0]:.9g}; pool {avgpool}")


if __name__ == "__main__":
    main()
