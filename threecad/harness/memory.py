"""Peak memory of a block of work: host RSS sampled in a thread, device peak from CUDA."""
from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    """Context manager; after exit, `host_mb` and `device_mb` (None on CPU) hold the peaks.

    RSS is sampled every `interval` seconds because the OS only keeps a lifetime peak,
    and a per-category figure is what a user compares.
    """

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.device = device
        self.interval = interval
        self.host_mb = 0.0
        self.device_mb: float | None = None
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.Error:
                pass
        self.host_mb = max(self.host_mb, rss / 2**20)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.device.type == "cuda":
            self.device_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
