"""Wall time and memory peaks of a block of work, and releasing memory between pipeline steps."""

from __future__ import annotations

import gc
import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; falls back to the lifetime peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Usage:
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | None]:
        return {"wall_s": round(self.wall_s, 3), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "peak_gpu_mb": None if self.peak_gpu_mb is None else round(self.peak_gpu_mb, 1)}


@contextmanager
def measure(sample_every_s: float = 0.2) -> Iterator[Usage]:
    """Measure the block: wall time, peak RSS sampled by a thread (the block's own peak, not the
    process lifetime's), and peak CUDA allocation when a GPU is in use."""
    import torch

    usage = Usage()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak = current_rss_bytes()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(sample_every_s):
            peak = max(peak, current_rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    try:
        yield usage
    finally:
        stop.set()
        sampler.join()
        usage.wall_s = time.perf_counter() - start
        usage.peak_rss_mb = max(peak, current_rss_bytes()) / 2**20
        if cuda:
            usage.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20


def free_memory() -> None:
    """Return freed tensors to the system: garbage-collect, and empty the CUDA cache when there is one."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
