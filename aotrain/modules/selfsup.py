"""The arm without labels or language: the CLIP run's image tower, from the same initial weights, on
the same images in the same order and budget, trained to match two augmented views of each image
(SimCLR's NT-Xent loss over the global batch). Evaluated by the linear probe only
(aotrain/callbacks/evaluation.py): it has no text tower and no head.

    aotrain fit recipe=toy_low_nmi supervision=self parity.twin=outputs/runs/toy_low_nmi-<id>

    module:
      _target_: aotrain.modules.selfsup.SelfSupervisedModule
      model_name: toy-vit-fast        # the CLIP config whose image tower is trained
      temperature: 0.5                # NT-Xent's fixed temperature
      projection: {hidden: null, dim: 128}   # the projection MLP the loss reads (null hidden: embed_dim)

Across ranks each rank scores its own views against every rank's (aotrain/modules/nt_xent.py), so
the mean of the ranks' losses is the single-process loss on the global batch.
"""
from __future__ import annotations

import torch

from aotrain.modules.base import BaseModule
from aotrain.modules.nt_xent import nt_xent
from aotrain.towers import ProjectedTower


class SelfSupervisedModule(BaseModule):
    kind = "self"
    classifies = False  # nothing scores benchmark classes: the linear probe reads the tower

    def __init__(self, model_name: str, optim: dict, total_steps: int, temperature: float = 0.5,
                 projection: dict | None = None, grad_checkpointing: bool = False, compile: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.save_hyperparameters()
        self.net = ProjectedTower(model_name, **(projection or {}))
        self.rank, self.world_size = 0, 1

    def setup(self, stage: str) -> None:
        # Rank and world size come from the Trainer; each rank gathers the others' views.
        self.rank, self.world_size = self.global_rank, self.trainer.world_size if self.trainer else 1

    def vision_tower(self) -> torch.nn.Module:
        return self.net.visual

    def evaluation_model(self, device):
        return None  # no zero-shot prompts, no head (see `classifies`)

    def training_step(self, batch, batch_idx):
        view_a, view_b, skipped = batch  # [B,3,H,W] twice, [B,len(SKIP_COLUMNS)]
        local = view_a.shape[0]
        z = self.net(torch.cat([view_a, view_b]))  # [2B, dim]: one forward for both views
        loss = nt_xent(z[:local], z[local:], self.hparams.temperature, self.rank, self.world_size)
        self.log("train/loss", loss, prog_bar=True)
        self.count_skipped(skipped)
        return loss
