"""Runs anomalib's PatchcoreModel on images handed over by `benchmarks/methods.py`.

This file executes in a separate virtual environment that has anomalib 2.x (never a
threecad dependency); it imports nothing from threecad. Input: an .npz with `train` and
`test` float32 arrays (N, 3, H, W), already ImageNet-normalised. Output: a JSON with fit
seconds (embedding + coreset), steady-state inference images/s (first batch is warm-up)
and the image scores, so that the caller can check that both implementations ran.

    ANOMALIB_PY benchmarks/anomalib_worker.py --data X.npz --out R.json [--backbone wide_resnet50_2]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--backbone", default="wide_resnet50_2")
    p.add_argument("--layers", default="layer2,layer3")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import anomalib
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    data = np.load(args.data)
    train, test = torch.from_numpy(data["train"]), torch.from_numpy(data["test"])
    torch.manual_seed(0)
    model = PatchcoreModel(layers=args.layers.split(","), backbone=args.backbone, pre_trained=False)
    bs = args.batch_size
    t0 = time.perf_counter()
    model.train()
    with torch.no_grad():
        for i in range(0, len(train), bs):
            model(train[i:i + bs])
    model.subsample_embedding(args.ratio)
    fit_s = time.perf_counter() - t0
    model.eval()
    scores, timed, n_timed = [], 0.0, 0
    with torch.no_grad():
        for k, i in enumerate(range(0, len(test), bs)):
            t = time.perf_counter()
            out = model(test[i:i + bs])
            if k > 0:  # the first batch warms up
                timed += time.perf_counter() - t
                n_timed += len(test[i:i + bs])
            scores.extend(out.pred_score.flatten().tolist())
    json.dump({"anomalib": anomalib.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "fit_s": fit_s, "infer_images_per_s": n_timed / timed if timed else None,
               "bank": list(model.memory_bank.shape), "scores": scores}, open(args.out, "w"))


if __name__ == "__main__":
    main()
