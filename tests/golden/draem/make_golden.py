"""Writes golden.npz for tests/test_golden_draem.py from the reference code (run by hand, never by the tests).

Our DRAEM (paper preset, the test's seeded weights) is built first; its weights are copied,
by registration order within paired modules and with equal shapes asserted, into the
reference's ReconstructiveSubNetwork and DiscriminativeSubNetwork (default widths 128 and 64,
the paper preset's). The raw PNG is read by the reference's MVTecDRAEMTestDataset (cv2.imread,
cv2.resize to 256 x 256, / 255) through its DataLoader, and the lines of its test_DRAEM.py that
turn an image into a map and a score are run on it, in float32 on the CPU.

Set-up, from a folder outside the project:
  git clone https://github.com/VitjanZ/DRAEM && git -C DRAEM checkout 2dbf67397ab5c10a1494e5ae70ab59a25d7c35ef
  .venv/bin/pip install --no-deps --target refpkgs imgaug==0.4.0 shapely six   # data_loader.py imports imgaug
Run, from the project root:
  OMP_NUM_THREADS=1 .venv/bin/python tests/golden/draem/make_golden.py --reference DRAEM --packages refpkgs
"""
from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from golden.common import (copy_in_order, golden_path, input_digest, numpy_aliases, predict,  # noqa: E402
                           raw_hw, raw_in_folder, read_raw, reference_setup, relative)

GOLDEN = golden_path("draem")
COMMIT = "2dbf67397ab5c10a1494e5ae70ab59a25d7c35ef"


def main() -> None:
    reference_setup(__doc__, "VitjanZ/DRAEM checkout at " + COMMIT, "pip --target folder with imgaug, shapely, six")
    numpy_aliases()
    from torch.utils.data import DataLoader

    from data_loader import MVTecDRAEMTestDataset
    from model_unet import DiscriminativeSubNetwork, ReconstructiveSubNetwork
    from test_golden_draem import SEED, build_ours

    ours = build_ours()
    cfg = ours.config
    # test_DRAEM.py builds both networks with their default widths and reads images at 256 px
    assert (cfg.recon_width, cfg.disc_width, cfg.image_size, cfg.pool) == (128, 64, 256, 21)
    model = ReconstructiveSubNetwork(in_channels=3, out_channels=3)
    model_seg = DiscriminativeSubNetwork(in_channels=6, out_channels=2)
    net = ours.net
    n = copy_in_order(net.reconstructive, model, "reconstructive")
    n += copy_in_order(net.discriminative["encoder"], model_seg.encoder_segment, "discriminative encoder")
    d, t = model_seg.decoder_segment, net.discriminative["decoder"]  # the reference registers up/db pairs in turn
    for i, (a, b) in enumerate([(t.ups[0], d.up_b), (t.fuse[0], d.db_b), (t.ups[1], d.up1), (t.fuse[1], d.db1),
                                (t.ups[2], d.up2), (t.fuse[2], d.db2), (t.ups[3], d.up3), (t.fuse[3], d.db3),
                                (t.ups[4], d.up4), (t.fuse[4], d.db4), (t.out, d.fin_out)]):
        n += copy_in_order(a, b, f"discriminative decoder {i}")
    assert n == len(net.state_dict()), "every tensor of ours has its place in the reference"
    model.eval()
    model_seg.eval()

    with raw_in_folder("good", name="000.png") as tmp:  # the loader globs <root>/*/*.png; "good" has no mask
        dataset = MVTecDRAEMTestDataset(f"{tmp}/", resize_shape=[256, 256])
        sample_batched = next(iter(DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)))
    with torch.no_grad():
        # test_DRAEM.py lines 80-91 and 103-107 (without .cuda())
        gray_batch = sample_batched["image"]
        gray_rec = model(gray_batch)
        joined_in = torch.cat((gray_rec.detach(), gray_batch), dim=1)
        out_mask = model_seg(joined_in)
        out_mask_sm = torch.softmax(out_mask, dim=1)
        out_mask_cv = out_mask_sm[0, 1, :, :].detach().cpu().numpy()
        out_mask_averaged = torch.nn.functional.avg_pool2d(out_mask_sm[:, 1:, :, :], 21, stride=1,
                                                           padding=21 // 2).cpu().detach().numpy()
        image_score = np.max(out_mask_averaged)
        # the float32 noise floor: the same reference in float64
        out64 = torch.softmax(model_seg.double()(torch.cat((model.double()(gray_batch.double()),
                                                            gray_batch.double()), 1)), 1)[0, 1].numpy()

    np.savez_compressed(GOLDEN, map=out_mask_cv.astype(np.float32), score=np.float32(image_score),
                        input_sha256=input_digest(gray_batch), input_size=np.array(gray_batch.shape[-2:]),
                        raw_size=raw_hw(), seed=SEED, reference=f"VitjanZ/DRAEM@{COMMIT}")
    x = read_raw(ours)
    _, scores, maps = predict(ours, x)
    print(f"{GOLDEN} ({GOLDEN.stat().st_size} bytes), {n} tensors copied; map range "
          f"[{out_mask_cv.min():.4f}, {out_mask_cv.max():.4f}], score {image_score:.6f}")
    print(f"input equal: {input_digest(x) == input_digest(gray_batch)}; map rel {relative(maps[0], out_mask_cv):.3e}; "
          f"score rel {relative(float(scores[0]), image_score):.3e}; reference float32 vs float64 "
          f"map rel {relative(out_mask_cv, out64):.3e}")


if __name__ == "__main__":
    main()
