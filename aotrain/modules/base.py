"""What the CLIP module and its supervised twin share: the optimizer and schedule, the data counters,
and the hooks evaluation and parity checks call."""
from __future__ import annotations

import lightning as L
import torch

from aotrain.modules.optim import build_optimizer


class TwinModule(L.LightningModule):
    """Subclasses set `self.net` (the trained network) and `kind`, and implement `vision_tower()`."""

    kind = ""

    def log_dropped(self, dropped: torch.Tensor) -> None:
        """Running count of samples dropped for lacking a label (this rank's stream), as `data/unlabelled_dropped`."""
        self._dropped = getattr(self, "_dropped", 0) + int(dropped.sum())
        self.log("data/unlabelled_dropped", float(self._dropped))

    def vision_tower(self) -> torch.nn.Module:
        raise NotImplementedError

    def vision_parameter_count(self) -> int:
        return sum(p.numel() for p in self.vision_tower().parameters())

    def evaluation_model(self, device):
        """The evaluation.models adapter of the current weights (the same one `aotrain eval` builds)."""
        from aotrain.checkpoints import evaluation_model

        return evaluation_model(self.net, {"kind": self.kind, "model_name": self.hparams.model_name}, device)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["aotrain_module"] = self.kind  # aotrain eval (aotrain/checkpoints.py) reads which kind it holds

    def configure_optimizers(self):
        return build_optimizer(self.net, total_steps=self.hparams.total_steps, **self.hparams.optim)
