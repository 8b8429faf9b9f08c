"""ImageNet-AO evaluation during training (CLIP zero-shot, or a supervised twin's heads): every
`every_n_steps` optimizer steps and at the end.

Metrics go to the Trainer's logger as `eval/<group>/<metric>` (names: evaluation/evaluate.py) and to
`callback_metrics`, so ModelCheckpoint can monitor them. The tables of the latest evaluation are
written to `<out_dir>/eval/` and logged as artifacts by aotrain.tracking at the end of fit.
Global rank 0 evaluates and the other ranks wait for its metrics in a broadcast. Under FSDP and ZeRO-3
every rank evaluates inside a parameter gather (a collective); under FSDP2 every rank evaluates the
sharded network, whose forward gathers each block's weights in turn. Either way no rank waits on
another, and the numbers are those of the whole model.
`aotrain eval checkpoint=...` runs the same code (aotrain.ao_benchmark) on a saved checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from aotrain.ao_benchmark import Benchmark
from aotrain.strategies import full_parameters
from evaluation.evaluate import EvalResult


class BenchmarkEvaluation(L.Callback):
    def __init__(self, benchmark: Benchmark, out_dir: str, every_n_steps: int = 0):
        self.benchmark = benchmark  # loaded before training, so a bad folder fails before step 0
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.last: EvalResult | None = None
        self._last_step = -1

    def evaluate(self, pl_module) -> EvalResult:
        was_training = pl_module.training
        pl_module.eval()
        # A fresh adapter per call: the weights changed since the last one, so must the text classifiers.
        with torch.no_grad():
            result = self.benchmark.run(pl_module.evaluation_model(pl_module.device))
        pl_module.train(was_training)
        return result

    def _run(self, trainer, pl_module):
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        metrics = None
        sharded = full_parameters(trainer.strategy)
        if sharded is not None:
            # Parameters live in shards: gathering them is collective, so every rank evaluates
            # (the same numbers) inside the gather, and rank 0 alone writes and logs.
            with sharded:
                result = self.evaluate(pl_module)
        elif trainer.is_global_zero:
            result = self.evaluate(pl_module)
        if trainer.is_global_zero:
            self.last = result
            self.last.write(self.out_dir / "eval")
            metrics = {f"eval/{k}": v for k, v in self.last.metrics.items()}
            if trainer.logger is not None:
                trainer.logger.log_metrics(metrics, step=step)
        # Every rank reaches this at the same step; afterwards all ranks can monitor the metrics.
        metrics = trainer.strategy.broadcast(metrics, src=0)
        for k, v in metrics.items():
            trainer.callback_metrics[k] = torch.tensor(v)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        at_end = trainer.max_steps > 0 and step >= trainer.max_steps
        if at_end or (self.every_n_steps and step % self.every_n_steps == 0):
            self._run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._run(trainer, pl_module)  # no-op when the last step was already evaluated

