"""LightningDataModule over a pool of webdataset shards (img2dataset layout: {key}.png|jpg, {key}.txt).

    data:
      _target_: aotrain.data.datamodule.ShardDataModule
      pool: /data/cc12m/shards      # folder of .tar shards (+ sizes.json)
      model_name: ViT-B-32          # decides image size, normalisation and tokenizer
"""
from __future__ import annotations

import lightning as L

from aotrain import towers
from aotrain.data.shard_stream import EpochDataLoader, ShardStream, list_shards


class ShardDataModule(L.LightningDataModule):
    def __init__(self, pool: str, model_name: str, batch_size: int = 128, num_workers: int = 2,
                 shuffle_buffer: int = 1000, seed: int = 0):
        super().__init__()
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
                           seed=self.seed, shuffle_buffer=self.shuffle_buffer)

    def train_dataloader(self):
        # drop_last: every step sees a full batch (the contrastive loss depends on batch size).
        return EpochDataLoader(self.stream(train=True), batch_size=self.batch_size,
                               num_workers=self.num_workers, drop_last=True,
                               persistent_workers=False)
