"""What the CLIP module, its supervised twin and the self-supervised arm share: the optimizer and
schedule, the data counters, and the hooks evaluation and parity checks call."""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from aotrain import towers
from aotrain.export import VECTORISED_KEY
from aotrain.modules.optim import build_optimizer
from aotrain.strategies import configure_network, gathers_in_forward
from evaluation.models import adapter_for


class BaseModule(L.LightningModule):
    """Subclasses set `self.net` (the trained network) and `kind`, and implement `vision_tower()`."""

    kind = ""
    classifies = True  # scores the benchmark's classes (prompts or heads); False: read by the linear probe only

    def count_skipped(self, skipped: torch.Tensor) -> None:
        """Add a batch's `skipped` counts ([B, len(SKIP_COLUMNS)], aotrain/data/shard_stream.py) and its
        samples to this rank's running totals; aotrain/callbacks/step_guard.py sums them over ranks,
        logs them (`data/skipped_<kind>` ...) and bounds the share of bad samples."""
        batch = skipped.sum(0)  # [len(SKIP_COLUMNS)]
        totals = getattr(self, "data_totals", None)
        self.data_totals = batch if totals is None else totals.to(batch.device) + batch
        self.data_samples = getattr(self, "data_samples", 0) + skipped.shape[0]

    def vision_tower(self) -> torch.nn.Module:
        raise NotImplementedError

    def vision_parameter_count(self) -> int:
        return sum(p.numel() for p in self.vision_tower().parameters())

    def evaluation_model(self, device):
        """The evaluation.models adapter of the current weights (the same one `aotrain eval` builds)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return adapter_for(self.net, self.kind, towers.tokenizer(self.hparams.model_name), device,
                           through_forward=gathers_in_forward(strategy))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def configure_model(self) -> None:
        # Called by Lightning under every strategy before the optimizer exists (FSDP2 shards after it).
        strategy = self._trainer.strategy if self._trainer is not None else None
        vectorised = configure_network(self.net, grad_checkpointing=bool(self.hparams.get("grad_checkpointing")),
                                       compile=bool(self.hparams.get("compile")), strategy=strategy)
        self.vectorised_scalars = [f"net.{name}" for name in vectorised]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["aotrain_module"] = self.kind  # aotrain eval (aotrain/checkpoints.py) reads which kind it holds
        checkpoint["aotrain_rng"] = rng_states()  # this rank's
        if getattr(self, "vectorised_scalars", None):  # DeepSpeed: `aotrain export` gives them back shape ()
            checkpoint[VECTORISED_KEY] = self.vectorised_scalars

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "aotrain_rng" in checkpoint:  # resume: the random streams continue where they stopped
            set_rng_states(checkpoint["aotrain_rng"])

    def configure_optimizers(self):
        return build_optimizer(self.net, total_steps=self.hparams.total_steps, **self.hparams.optim)


def rng_states() -> dict:
    """torch (CPU, CUDA), numpy and python RNG states as tensors and plain lists, so a checkpoint
    stays loadable with torch.load(weights_only=True)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": [kind, key.tolist(), pos, has_gauss, gauss],
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
