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

Across ranks each rank scores its own views against every rank's (open_clip's gather with
gradient, as the CLIP loss does), so the mean of the ranks' losses is the single-process loss on
the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import gather_features

from aotrain.modules.base import BaseModule
from aotrain.towers import ProjectedTower


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """SimCLR's NT-Xent loss of this rank's two views' projections `a`, `b` [B, D] (row i of each is
    one image) over the global batch of N = B x world_size images: every view's cross-entropy of
    picking its image's other view among the 2N - 1 other views (cosine similarity / temperature),
    averaged over this rank's 2B views. Under several ranks the other ranks' views are gathered with
    their gradient; the mean over ranks is the loss of one process holding the global batch."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    all_a, all_b = (a, b) if world_size == 1 else gather_features(a, b, local_loss=True, gather_with_grad=True,
                                                                  rank=rank, world_size=world_size)  # [N, D] each
    n, local = all_a.shape[0], a.shape[0]
    logits = torch.cat([a, b]) @ torch.cat([all_a, all_b]).T / temperature  # [2B, 2N]
    own = torch.arange(local, device=a.device) + rank * local  # this rank's images among the N
    itself = torch.cat([own, own + n])  # where each of the 2B views sits among the 2N
    other_view = torch.cat([own + n, own])
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * local, device=a.device), itself] = True
    return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), other_view)


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
