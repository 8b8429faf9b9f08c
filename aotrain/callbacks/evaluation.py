"""ImageNet-AO evaluation during training (CLIP zero-shot, or a supervised twin's heads): every
`every_n_steps` optimizer steps and at the end. At the end, with `probe_samples`, also a linear probe
(evaluation/probe_eval.py) on the image tower's frozen features: fitted on that many labelled training
samples (the datamodule's shards, eval transforms), read on the benchmark: `eval/probe/<group>/object_top1`
(and `<out_dir>/eval/probe.json`), the one object accuracy every arm is measured by alike. A module
that does not classify (`classifies` False: the self-supervised arm, with no prompts and no head) is
evaluated by that probe only, at the end; the periodic evaluations pass it by.

Metrics go to the Trainer's logger as `eval/<group>/<metric>` (names: evaluation/evaluate.py) and to
`callback_metrics` on every rank, so ModelCheckpoint can monitor them. The tables of the latest
evaluation are written to `<out_dir>/eval/` by global rank 0 and logged as artifacts by
aotrain.tracking at the end of fit.

On several processes every rank encodes a slice of the benchmark's images (whole batches of the
one-process schedule, contiguous, in rank order) and of the text classifiers' prompts, then all ranks
gather every prompt's features and every image's predictions and pair scores and compute the metrics
from them: the numbers are exactly those of `aotrain eval` in one process at the same
eval.batch_size (evaluation/distributed.py says why). Under DDP and ZeRO-1/2 each rank holds the
whole model. Under FSDP (inside a parameter gather), FSDP2 (whose sharded forward gathers each
block's weights in turn) and ZeRO-3 (through the CLIP's forward) every forward is a collective, so
the ranks run in lockstep: one with fewer batches encodes a dummy image until the busiest is done.

    aotrain fit debug=smoke trainer=ddp trainer.accelerator=cpu trainer.devices=2   # prints per rank:
    eval: step 2, rank 1 of 2 encoded 100 of 140 images in 0.31 s

`aotrain eval checkpoint=...` runs the same code (aotrain.ao_benchmark) on a saved checkpoint.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import lightning as L
import torch

from aotrain.ao_benchmark import Benchmark
from aotrain.data.labels import label_classes
from aotrain.strategies import full_parameters
from evaluation.distributed import RankSlice
from evaluation.evaluate import EvalResult
from evaluation.probe_eval import probe_benchmark


class BenchmarkEvaluation(L.Callback):
    def __init__(self, benchmark: Benchmark, out_dir: str, every_n_steps: int = 0, probe_samples: int = 0):
        self.benchmark = benchmark  # loaded before training, so a bad folder fails before step 0
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.probe_samples = probe_samples
        self.last: EvalResult | None = None  # the latest result; every rank has the same
        self._last_step = -1

    def evaluate(self, trainer, pl_module, probe: bool = False) -> EvalResult:
        """The whole benchmark's result, this rank having encoded its slice of the images (and with
        `probe`, the linear probe's metrics)."""
        gathered = full_parameters(trainer.strategy)  # None when each rank holds the whole model
        part = RankSlice(trainer.global_rank, trainer.world_size, lockstep=gathered is not None)
        was_training = pl_module.training
        pl_module.eval()
        # A fresh adapter per call: the weights changed since the last one, so must the text classifiers.
        with gathered or contextlib.nullcontext(), torch.no_grad():
            result = (self.benchmark.run(pl_module.evaluation_model(pl_module.device), rank_slice=part)
                      if pl_module.classifies else EvalResult({}, []))
            if probe:
                result.probe = self._probe(trainer, pl_module, part)
        pl_module.train(was_training)
        return result

    def _probe(self, trainer, pl_module, part: RankSlice) -> dict[str, float]:
        """The linear probe's metrics; each rank fits on its share of the training samples (its shards)."""
        dm, bench = trainer.datamodule, self.benchmark
        batches = dm.probe_batches(self.probe_samples // trainer.world_size, bench.batch_size)
        return probe_benchmark(pl_module.vision_tower(), batches, bench.splits, label_classes(dm.vocabulary)["object"],
                               seen_pairs=bench.seen_pairs, vocab=bench.vocab, batch_size=bench.batch_size,
                               num_workers=bench.num_workers, device=pl_module.device, rank_slice=part)

    def _run(self, trainer, pl_module, final: bool = False):
        step = trainer.global_step
        probe = final and self.probe_samples > 0
        if step == self._last_step or not (pl_module.classifies or probe):
            return
        self._last_step = step
        started = time.perf_counter()
        self.last = self.evaluate(trainer, pl_module, probe)  # a collective: every rank reaches it at this step
        if trainer.world_size > 1 and self.last.images_scored is not None:
            total = sum(len(ds) for ds in self.benchmark.splits.values())
            print(f"eval: step {step}, rank {trainer.global_rank} of {trainer.world_size} encoded "
                  f"{self.last.images_scored} of {total} images in {time.perf_counter() - started:.2f} s",
                  file=sys.stderr, flush=True)
        metrics = {f"eval/{k}": v for k, v in self.last.all_metrics().items()}
        if trainer.is_global_zero:
            self.last.write(self.out_dir / "eval")
            if trainer.logger is not None:
                trainer.logger.log_metrics(metrics, step=step)
        for k, v in metrics.items():  # every rank computed the same metrics from the same gathered rows
            trainer.callback_metrics[k] = torch.tensor(v)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        at_end = trainer.max_steps > 0 and step >= trainer.max_steps
        if at_end or (self.every_n_steps and step % self.every_n_steps == 0):
            self._run(trainer, pl_module, final=at_end)

    def on_train_end(self, trainer, pl_module):
        self._run(trainer, pl_module, final=True)  # no-op when the last step was already evaluated
