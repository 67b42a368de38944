"""Writes golden.npz: FastFlow's map as the reference computes it, with our weights.

Run once (never by the test suite), on CPU, from the project root:
  OMP_NUM_THREADS=1 .venv/bin/python tests/golden/fastflow/make_golden.py --reference SRC --packages PKGS
SRC: gathierry/FastFlow at 2cf1f2f4 (`git archive` of the commit).
PKGS: `pip install --no-deps --target PKGS timm==0.5.4 FrEIA==0.2` (its pins; FrEIA 0.2 is its
pinned commit 1779d1f); never the project's environment.

What runs is the reference's own code: main.py's `build_model` from `configs/resnet18.yaml`
(input_size set to 128) and `build_test_data_loader` (its `MVTecDataset`: PIL, torchvision
`Resize`, `ToTensor`, ImageNet `Normalize`), then `FastFlow.forward` in eval mode; the map is
`ret["anomaly_map"]`, the score its max (gathierry computes none; the max is anomalib's rule,
which ours declares). The model gets every tensor of `build_ours()`
(tests/test_golden_fastflow.py) by a name map, each key and shape checked, FrEIA's permutation
matrices included.
Run-time patches: timm's `pretrained=True` is forced off (no download; every weight is
overwritten); `ignite.contrib.metrics` (imported by main.py, used only by its AUROC) is a stub.
The loader gets `input_size` as (128, 128): given the int, `Resize` keeps the aspect and
the 300 x 260 image becomes 147 x 128, which the model's LayerNorm([C, 32, 32]) rejects.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from golden.common import (golden_path, raw_hw, raw_in_folder, raw_sha256, reference_setup,  # noqa: E402
                           timm_without_downloads)

GOLDEN = golden_path("fastflow")


def ours_key(k: str) -> str:
    """The reference's state-dict name -> ours."""
    if k.startswith("feature_extractor."):
        k = k[len("feature_extractor."):]
        if k.startswith("conv1."):
            return "encoder.stages.0.0." + k[len("conv1."):]
        if k.startswith("bn1."):
            return "encoder.stages.0.1." + k[len("bn1."):]
        for i in (1, 2, 3):
            if k.startswith(f"layer{i}."):
                return f"encoder.stages.{i}." + k[len(f"layer{i}."):]
    if k.startswith("norms."):
        return "trainable." + k
    if k.startswith("nf_flows."):
        return "trainable.flows." + k[len("nf_flows."):].replace(".module_list.", ".blocks.")
    raise KeyError(k)


def main() -> None:
    args = reference_setup(__doc__, "the reference repository's files at 2cf1f2f4",
                           "pip --target folder with timm 0.5.4 and FrEIA 0.2")
    ignite = types.ModuleType("ignite")
    ignite.contrib = types.SimpleNamespace(metrics=None)
    sys.modules.update({"ignite": ignite, "ignite.contrib": ignite.contrib})
    import yaml

    timm = timm_without_downloads()
    import main as reference  # gathierry's main.py
    from test_golden_fastflow import IMAGE_SIZE, build_ours

    ours = build_ours()
    config = yaml.safe_load(open(Path(args.reference) / "configs" / "resnet18.yaml"))
    config["input_size"] = IMAGE_SIZE
    torch.manual_seed(0)
    model = reference.build_model(config)
    state, own = model.state_dict(), ours.net.state_dict()
    assert {ours_key(k) for k in state} == set(own)
    for k in state:
        assert state[k].shape == own[ours_key(k)].shape, k
        state[k] = own[ours_key(k)].clone()
    model.load_state_dict(state, strict=True)

    with raw_in_folder("part", "test", "good") as root:
        loader = reference.build_test_data_loader(types.SimpleNamespace(data=str(root), category="part"),
                                                  {**config, "input_size": (IMAGE_SIZE, IMAGE_SIZE)})
        (data, _targets), = list(loader)
    model.eval()  # eval_once's lines
    with torch.no_grad():
        ret = model(data)
    anomaly_map = ret["anomaly_map"].cpu().detach()[0, 0].numpy()
    score = anomaly_map.max()
    np.savez(GOLDEN, raw_sha256=raw_sha256(), map=anomaly_map.astype(np.float32), score=np.float64(score)[None],
             size=IMAGE_SIZE, raw_hw=raw_hw(), timm=timm.__version__)
    print(f"{GOLDEN}: {GOLDEN.stat().st_size} bytes; map {anomaly_map.shape}; score {score:.9g}; "
          f"input {tuple(data.shape)}")


if __name__ == "__main__":
    main()
