"""LightningDataModule over a pool of webdataset shards (img2dataset layout: {key}.png|jpg, {key}.txt).

    data:
      _target_: aotrain.data.datamodule.ShardDataModule
      pool: /data/cc12m/shards      # folder of .tar shards (+ sizes.json)
      model_name: ViT-B-32          # decides image size, normalisation and tokenizer
      vocabulary: builtin           # labels captions with data_filters' parser (null: no labels)
      require_label: true           # drop samples whose caption names no single pair (both twins alike)
      targets: captions             # captions (CLIP) | labels (the supervised twin) | views (self-supervised)
      views: null                   # with targets=views: the view augmentation (aotrain/data/views.py)
      resampled: false              # true: shards drawn with replacement, samples_per_epoch per epoch
      max_bad_fraction: 0.001       # bad samples (skipped, counted, logged) tolerated before the run stops

Its state (epoch, batches trained in it) goes into every checkpoint, so a resumed run continues
at the next sample of its epoch (aotrain/data/shard_stream.py says how).
"""
from __future__ import annotations

import itertools

import lightning as L
import torch

from aotrain import towers
from aotrain.data.labels import CaptionLabeller, label_classes
from aotrain.data.shard_stream import MISSING, EpochDataLoader, ShardStream, list_shards
from aotrain.data.views import view_pair


class ShardDataModule(L.LightningDataModule):
    def __init__(self, pool: str, model_name: str, batch_size: int = 128, num_workers: int = 2,
                 shuffle_buffer: int = 1000, seed: int = 0, vocabulary: str | None = None,
                 require_label: bool = False, targets: str = "captions", resampled: bool = False,
                 samples_per_epoch: int | None = None, max_bad_fraction: float = 0.001,
                 error_log: str | None = None, views: dict | None = None):
        super().__init__()
        if (require_label or targets == "labels") and not vocabulary:
            raise ValueError("labels need a vocabulary: set data.vocabulary (builtin, world:PATH, a file)")
        if targets == "labels" and not require_label:
            raise ValueError("targets=labels trains on labelled samples only: set data.require_label=true")
        if targets == "views" and not views:
            raise ValueError("targets=views needs data.views (the view augmentation; recipes/supervision/self.yaml)")
        self.views = dict(views or {})
        if targets == "views":
            view_pair(model_name, **self.views)  # a bad setting fails here, before training
        self.vocabulary = vocabulary
        self.require_label = require_label
        self.targets = targets
        self.pool = pool
        self.model_name = model_name
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.urls, self.sizes = list_shards(pool)
        self.n_samples = sum(self.sizes.values())
        self.resampled = resampled
        self.samples_per_epoch = samples_per_epoch or self.n_samples
        self.max_bad_fraction = max_bad_fraction  # read by aotrain/callbacks/step_guard.py
        self.error_log = error_log
        self._stream: ShardStream | None = None
        self._resume: dict | None = None
        self._epoch_start_step = 0

    def stream(self, train: bool = True, targets: str | None = None) -> ShardStream:
        """The sample stream the train loader batches (also used by tests and tools to inspect order);
        `targets` other than the datamodule's (e.g. "labels" for a CLIP run's linear probe)."""
        train_tf, eval_tf = towers.image_transforms(self.model_name)
        targets = targets or self.targets
        return ShardStream(self.urls, train_tf if train else eval_tf, towers.tokenizer(self.model_name),
                           seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                           labeller=CaptionLabeller(self.vocabulary) if self.require_label or targets == "labels"
                           else None,
                           targets=targets,
                           classes=label_classes(self.vocabulary) if targets == "labels" else None,
                           shard_sizes=self.sizes, resampled=self.resampled,
                           samples_per_epoch=self.samples_per_epoch, batch_size=self.batch_size,
                           error_log=self.error_log if train else None,
                           views=view_pair(self.model_name, **self.views) if targets == "views" else None)

    def probe_batches(self, samples: int, batch_size: int):
        """(images [B,3,H,W] with eval transforms, object index [B]) of up to `samples` labelled training
        samples, this rank's shards in the stream's seeded order: what a linear probe is fitted on
        (object indices into label_classes(vocabulary)["object"])."""
        if not self.vocabulary:
            raise ValueError("a linear probe needs object labels: set data.vocabulary (builtin, world:PATH, a file)")
        images, objects = [], []
        named = (sample for sample in self.stream(train=False, targets="labels") if sample[1][1] != MISSING)
        for pixels, target, _ in itertools.islice(named, samples):  # attribute-only captions name no object
            images.append(pixels)
            objects.append(int(target[1]))  # target: [attribute index, object index]
            if len(images) == batch_size:
                yield torch.stack(images), torch.tensor(objects)
                images, objects = [], []
        if images:
            yield torch.stack(images), torch.tensor(objects)

    def train_dataloader(self):
        self._stream = self.stream(train=True)
        if self._resume is not None:  # continue the checkpoint's epoch where it stopped
            self._stream.epoch = self._resume["epoch"] - 1  # the loader adds one when iterated
            self._stream.skip_batches = self._resume["batches_done"]
        # drop_last: every step sees a full batch (the contrastive loss depends on batch size).
        return EpochDataLoader(self._stream, batch_size=self.batch_size, num_workers=self.num_workers,
                               drop_last=True, persistent_workers=False, on_epoch=self._on_epoch)

    def _accumulate(self) -> int:
        return int(self.trainer.accumulate_grad_batches) if self.trainer is not None else 1

    def _on_epoch(self, loader) -> None:
        step = self.trainer.global_step if self.trainer is not None else 0
        self._epoch_start_step = step - loader.dataset.skip_batches // self._accumulate()

    def state_dict(self) -> dict:
        """Saved in checkpoints: the stream's epoch and the batches this rank trained on in it."""
        if self._stream is None or self.trainer is None:
            return {}
        done = (self.trainer.global_step - self._epoch_start_step) * self._accumulate()
        return {"epoch": self._stream.epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None
