"""LightningDataModule over a pool of webdataset shards (img2dataset layout: {key}.png|jpg, {key}.txt).

    data:
      _target_: aotrain.data.datamodule.ShardDataModule
      pool: /data/cc12m/shards      # folder of .tar shards (+ sizes.json)
      model_name: ViT-B-32          # decides image size, normalisation and tokenizer
      vocabulary: builtin           # labels captions with data_filters' parser (null: no labels)
      require_label: true           # drop samples whose caption names no single pair (both twins alike)
      targets: captions             # captions (CLIP) | labels (the supervised twin)
"""
from __future__ import annotations

import lightning as L

from aotrain import towers
from aotrain.data.labels import CaptionLabeller, label_classes
from aotrain.data.shard_stream import EpochDataLoader, ShardStream, list_shards


class ShardDataModule(L.LightningDataModule):
    def __init__(self, pool: str, model_name: str, batch_size: int = 128, num_workers: int = 2,
                 shuffle_buffer: int = 1000, seed: int = 0, vocabulary: str | None = None,
                 require_label: bool = False, targets: str = "captions"):
        super().__init__()
        if (require_label or targets == "labels") and not vocabulary:
            raise ValueError("labels need a vocabulary: set data.vocabulary (builtin, world:PATH, a file)")
        if targets == "labels" and not require_label:
            raise ValueError("targets=labels trains on labelled samples only: set data.require_label=true")
        self.vocabulary = vocabulary
        self.require_label = require_label
        self.targets = targets
        self.pool = pool
        self.model_name = model_name
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.urls, self.n_samples = list_shards(pool)

    def stream(self, train: bool = True) -> ShardStream:
        """The sample stream the train loader batches (also used by tests and tools to inspect order)."""
        train_tf, eval_tf = towers.image_transforms(self.model_name)
        return ShardStream(self.urls, train_tf if train else eval_tf, towers.tokenizer(self.model_name),
                           seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                           labeller=CaptionLabeller(self.vocabulary) if self.require_label else None,
                           targets=self.targets,
                           classes=label_classes(self.vocabulary) if self.targets == "labels" else None)

    def train_dataloader(self):
        # drop_last: every step sees a full batch (the contrastive loss depends on batch size).
        return EpochDataLoader(self.stream(train=True), batch_size=self.batch_size,
                               num_workers=self.num_workers, drop_last=True,
                               persistent_workers=False)
