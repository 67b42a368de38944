"""threecad's loader batches as anomalib's `ImageBatch`, which its models' training steps read.

threecad's dataset has already read and resized each image to the model's input size (PIL
bilinear, which antialiases as the tensor `Resize(antialias=True)` of anomalib's pre-processor
does), so the pre-processor's own Resize leaves it as it is and its Normalize (where it has one)
is what changes the pixels. Training batches are good images: their labels, no masks.
"""
from __future__ import annotations

from typing import Iterable, Iterator


class ImageBatches:
    """Iterate a threecad loader as anomalib ImageBatch objects (same order, same length)."""

    def __init__(self, loader: Iterable[dict]):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        from anomalib.data import ImageBatch

        for batch in self.loader:
            yield ImageBatch(image=batch["image"], gt_label=batch["label"].bool(), image_path=list(batch["path"]))
