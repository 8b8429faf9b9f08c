"""CLIP trained from scratch with open_clip's towers and contrastive loss.

    module:
      _target_: aotrain.modules.clip.CLIPModule
      model_name: toy-vit-tiny     # any name aotrain.towers knows (ViT-B-32 for real data)
"""
from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss

from aotrain import towers
from aotrain.modules.base import TwinModule

MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps the learned temperature at 100


class CLIPModule(TwinModule):
    kind = "clip"

    def __init__(self, model_name: str, optim: dict, total_steps: int):
        super().__init__()
        self.save_hyperparameters()
        self.net = towers.build_clip(model_name)
        self.loss_fn = ClipLoss()

    def setup(self, stage: str) -> None:
        # Rank and world size come from the Trainer; each rank gathers features from the others.
        world = self.trainer.world_size if self.trainer else 1
        self.loss_fn = ClipLoss(local_loss=world > 1, gather_with_grad=world > 1,
                                rank=self.global_rank, world_size=world)

    def encode_image(self, images):  # [B,3,H,W] -> [B,D]
        return self.net.encode_image(images)

    def encode_text(self, tokens):  # [B,L] -> [B,D]
        return self.net.encode_text(tokens)

    def vision_tower(self) -> torch.nn.Module:
        return self.net.visual


    def training_step(self, batch, batch_idx):
        images, tokens, dropped = batch  # [B,3,H,W], [B,L], [B]
        out = self.net(images, tokens)
        loss = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", out["logit_scale"].detach())
        self.log_dropped(dropped)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():
            self.net.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
