"""Zero-shot ImageNet-AO evaluation during training: every `every_n_steps` optimizer steps and at the end.

Metrics go to the Trainer's logger as `eval/<split>/<metric>` (names: evaluation/evaluate.py) and to
`callback_metrics`, so ModelCheckpoint can monitor them. The per-pair table of the latest evaluation
is written to `<out_dir>/eval/` and logged as artifacts by aotrain.tracking at the end of fit.
Only global rank 0 evaluates; the other ranks wait for its metrics in a broadcast.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from aotrain import towers
from evaluation.evaluate import EvalResult, evaluate_zero_shot
from evaluation.imagenet_ao import AOFolder


class ZeroShotEvaluation(L.Callback):
    def __init__(self, benchmarks: dict, templates, model_name: str, out_dir: str,
                 every_n_steps: int = 0, batch_size: int = 256, num_workers: int = 0):
        self.benchmarks = {name: str(path) for name, path in benchmarks.items()}
        self.templates = list(templates)
        self.model_name = model_name
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, AOFolder] = {}
        self.last: EvalResult | None = None
        self._last_step = -1

    def setup(self, trainer, pl_module, stage):
        _, eval_tf = towers.image_transforms(self.model_name)
        self.splits = {name: AOFolder(path, transform=eval_tf) for name, path in self.benchmarks.items()}

    def evaluate(self, pl_module) -> EvalResult:
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            result = evaluate_zero_shot(
                pl_module.encode_image, pl_module.encode_text, towers.tokenizer(self.model_name),
                self.splits, self.templates, batch_size=self.batch_size,
                num_workers=self.num_workers, device=pl_module.device)
        pl_module.train(was_training)
        return result

    def _run(self, trainer, pl_module):
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        metrics = None
        if trainer.is_global_zero:
            self.last = self.evaluate(pl_module)
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
