"""The supervised twin of a CLIP run: the same image tower, trained on object (and attribute) labels
parsed from the same captions, with the same optimizer, schedule, images and order.

    aotrain fit recipe=toy_low_nmi_supervised            # = toy_low_nmi supervision=labels

    module:
      _target_: aotrain.modules.supervised.SupervisedModule
      model_name: toy-vit-tiny        # the CLIP config whose image tower is trained
      vocabulary: world:...           # label classes: its canonical objects (and attributes), sorted
      heads: [object]                 # or [object, attribute]: two heads, losses summed
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aotrain.data.labels import label_classes
from aotrain.data.shard_stream import MISSING
from aotrain.modules.base import BaseModule
from aotrain.towers import SupervisedNet

LABEL_COLUMN = {"attribute": 0, "object": 1}  # column of each head's target in a label batch [B, 2]


class SupervisedModule(BaseModule):
    kind = "supervised"

    def __init__(self, model_name: str, optim: dict, total_steps: int, vocabulary: str,
                 heads: list[str] = ("object",), grad_checkpointing: bool = False, compile: bool = False):
        super().__init__()
        heads = list(heads)
        if not heads or set(heads) - set(LABEL_COLUMN):
            raise ValueError(f"heads must be a non-empty subset of {sorted(LABEL_COLUMN)}, got {heads}")
        self.save_hyperparameters()
        classes = label_classes(vocabulary)
        self.net = SupervisedNet(model_name, {task: classes[task] for task in heads})

    def classify_image(self, images) -> dict[str, torch.Tensor]:
        return self.net(images)

    def vision_tower(self) -> nn.Module:
        return self.net.visual


    def training_step(self, batch, batch_idx):
        images, labels, skipped = batch  # [B,3,H,W], [B,2] (attribute, object indices), [B,len(SKIP_COLUMNS)]
        logits = self.net(images)
        loss = 0.0
        for task, out in logits.items():
            target = labels[:, LABEL_COLUMN[task]]
            named = target != MISSING  # a single-side caption trains only the head of the side it names
            if named.any():
                task_loss = F.cross_entropy(out, target, ignore_index=MISSING)
                self.log(f"train/{task}_acc", (out.argmax(-1) == target)[named].float().mean())
            else:  # no target for this head in the batch: a zero that keeps every rank's graph alike
                task_loss = out.sum() * 0.0
            loss = loss + task_loss
            self.log(f"train/{task}_loss", task_loss)
        self.log("train/loss", loss, prog_bar=True)
        self.count_skipped(skipped)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["aotrain_classes"] = self.net.classes  # eval needs no vocabulary file to read the heads
