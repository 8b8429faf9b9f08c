"""Where a training step's time goes, on rank 0: waiting for the batch (the gap between one step's end
and the next one's start: the data loader, plus the loop's own bookkeeping) against the step itself
(forward, backward, optimizer; on a GPU timed to a device synchronise, so queued kernels count
where they ran). The first steps (compilation, worker start-up, cache warm-up) are left out.

`aotrain fit` adds it to every run; the summary (summary.json, the printed `steps` line) carries the
medians, and benchmarks/train_throughput.py prints them beside the throughput:

    steps         300 timed after 5: 0.482 s/step median = data wait 0.006 s + compute 0.476 s
"""
from __future__ import annotations

import statistics
import time

import lightning as L
import torch

WARMUP_STEPS = 5


class StepTimer(L.Callback):
    def __init__(self, warmup: int = WARMUP_STEPS):
        self.warmup = warmup
        self.waits: list[float] = []
        self.computes: list[float] = []
        self._ended = None  # perf_counter at the previous step's end
        self._started = None
        self._seen = 0

    def _now(self, trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            self._started = self._now(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        ended = self._now(trainer)
        self._seen += 1
        if self._seen > self.warmup and self._ended is not None:
            self.waits.append(self._started - self._ended)
            self.computes.append(ended - self._started)
        self._ended = ended

    def summary(self) -> dict | None:
        """Medians over the timed steps (None before any): what summary.json records."""
        if not self.computes:
            return None
        wait, compute = statistics.median(self.waits), statistics.median(self.computes)
        step = statistics.median(w + c for w, c in zip(self.waits, self.computes))
        return {"timed_steps": len(self.computes), "after": self.warmup, "median_s": step,
                "data_wait_median_s": wait, "compute_median_s": compute}


def describe(timing: dict) -> str:
    """The summary's `steps` line."""
    return (f"{timing['timed_steps']} timed after {timing['after']}: {timing['median_s']:.3f} s/step median = "
            f"data wait {timing['data_wait_median_s']:.3f} s + compute {timing['compute_median_s']:.3f} s")
