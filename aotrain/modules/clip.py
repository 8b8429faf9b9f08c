"""CLIP trained from scratch with open_clip's towers and contrastive loss.

    module:
      _target_: aotrain.modules.clip.CLIPModule
      model_name: toy-vit-tiny     # any name aotrain.towers knows (ViT-B-32 for real data)
      loss: clip                   # clip (softmax, CLIP) | siglip (sigmoid, SigLIP)

Across ranks each rank scores its own images against every rank's texts (open_clip's local loss
with gather-with-grad), rank and world size taken from the Trainer at setup. The learned
temperature is clamped inside the loss (scale <= 100), not by editing the parameter in place: a
sharded parameter (ZeRO-3, FSDP) has no whole value on any one rank to edit.
"""
from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss, SigLipLoss

from aotrain import towers
from aotrain.modules.base import BaseModule

MAX_LOGIT_SCALE = 100.0  # CLIP caps the learned temperature at 100
SIGLIP_INIT = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}  # the SigLIP paper's start


class CLIPModule(BaseModule):
    kind = "clip"

    def __init__(self, model_name: str, optim: dict, total_steps: int, loss: str = "clip",
                 grad_checkpointing: bool = False, compile: bool = False):
        super().__init__()
        if loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be clip or siglip, got {loss!r}")
        self.save_hyperparameters()
        self.net = towers.build_clip(model_name, **(SIGLIP_INIT if loss == "siglip" else {}))
        self.loss_fn = self._loss(rank=0, world_size=1)

    def _loss(self, rank: int, world_size: int):
        if self.hparams.loss == "siglip":
            return SigLipLoss(rank=rank, world_size=world_size)
        return ClipLoss(local_loss=world_size > 1, gather_with_grad=world_size > 1, rank=rank, world_size=world_size)

    def setup(self, stage: str) -> None:
        # Rank and world size come from the Trainer; each rank gathers features from the others.
        world_size = self.trainer.world_size if self.trainer else 1
        self.loss_fn = self._loss(rank=self.global_rank, world_size=world_size)

    def encode_image(self, images):  # [B,3,H,W] -> [B,D]
        return self.net.encode_image(images)

    def encode_text(self, tokens):  # [B,L] -> [B,D]
        return self.net.encode_text(tokens)

    def vision_tower(self) -> torch.nn.Module:
        return self.net.visual


    def training_step(self, batch, batch_idx):
        images, tokens, skipped = batch  # [B,3,H,W], [B,L], [B,len(SKIP_COLUMNS)]
        out = self.net(images, tokens)
        scale = out["logit_scale"].clamp(max=MAX_LOGIT_SCALE)  # exp of the parameter; no gradient above the cap
        extra = (out["logit_bias"],) if self.hparams.loss == "siglip" else ()
        loss = self.loss_fn(out["image_features"], out["text_features"], scale, *extra)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale.detach())
        self.count_skipped(skipped)
        return loss
