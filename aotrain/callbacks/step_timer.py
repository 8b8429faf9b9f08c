"""Where a training step's time goes, on rank 0: waiting for the batch (the gap between one step's end
and the next one's start: the data loader, plus the loop's own bookkeeping) against the step itself
(forward, backward, optimizer; on a GPU timed to a device synchronise, so queued kernels count
where they ran). The first steps (compilation, worker start-up, cache warm-up) are left out. On a
GPU one step in GPU_EVERY is timed: a synchronise around every step would take away the overlap of
the next step's launch with the device's work, in every run.

`aotrain fit` adds it to every run; the summary (summary.json, the printed `steps` line) carries the
medians, and benchmarks/train_throughput.py prints them beside the throughput:

    steps         295 timed after 5: 0.794 s/step median = data wait 0.004 s + compute 0.790 s
"""
from __future__ import annotations

import statistics
import time

import lightning as L
import torch

WARMUP_STEPS = 5
GPU_EVERY = 10


def host_sync_every(trainer) -> int:
    """Steps between two moments the host may wait for the device: 1 on a CPU, GPU_EVERY on a GPU
    (every wait takes away the overlap of the next step's launch with the device's work)."""
    return GPU_EVERY if trainer.strategy.root_device.type == "cuda" else 1


class StepTimer(L.Callback):
    def __init__(self, warmup: int = WARMUP_STEPS, every: int | None = None):
        self.warmup = warmup
        self.every = every  # time one step in `every`; None: each step on a CPU, GPU_EVERY on a GPU
        self.waits: list[float] = []
        self.computes: list[float] = []
        self._ended = None  # perf_counter at the end of the step before a timed one
        self._started = None
        self._seen = 0  # steps ended

    def setup(self, trainer, pl_module, stage) -> None:
        if self.every is None:
            self.every = host_sync_every(trainer)

    def _timed(self, step: int) -> bool:
        return step > self.warmup and step % self.every == 0

    def _now(self, trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.is_global_zero and self._timed(self._seen + 1):
            self._started = self._now(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        self._seen += 1
        timed, next_timed = self._timed(self._seen), self._timed(self._seen + 1)
        if not (timed or next_timed):
            return
        now = self._now(trainer)
        if timed and self._ended is not None:
            self.waits.append(self._started - self._ended)
            self.computes.append(now - self._started)
        self._ended = now if next_timed else None

    def summary(self) -> dict | None:
        """Medians over the timed steps (None before any): what summary.json records."""
        if not self.computes:
            return None
        wait, compute = statistics.median(self.waits), statistics.median(self.computes)
        step = statistics.median(w + c for w, c in zip(self.waits, self.computes))
        return {"timed_steps": len(self.computes), "after": self.warmup, "every": self.every, "median_s": step,
                "data_wait_median_s": wait, "compute_median_s": compute}


def describe(timing: dict) -> str:
    """The summary's `steps` line."""
    every = timing.get("every", 1)
    sampled = f" (1 in {every})" if every > 1 else ""
    return (f"{timing['timed_steps']}{sampled} timed after {timing['after']}: {timing['median_s']:.3f} s/step median = "
            f"data wait {timing['data_wait_median_s']:.3f} s + compute {timing['compute_median_s']:.3f} s")
