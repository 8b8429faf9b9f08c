"""A deterministic stream of (image, target, dropped) samples from webdataset tar shards.

Order is a pure function of (seed, epoch, rank, worker): shards are shuffled with (seed, epoch),
split across ranks then DataLoader workers, and samples are shuffled in a buffer seeded with
(seed, epoch, rank, worker). Same config and seed, same data order.

The target is the tokenized caption (CLIP) or the caption's (attribute, object) label indices
(a supervised twin); both come from the same sample order. With a `labeller` (data_filters'
CaptionParser.label), a sample whose caption does not name exactly one pair is dropped, in both
modes alike, and counted: `dropped` is how many were dropped just before this sample.

    >>> stream = ShardStream(["pool/shard-000000.tar"], image_transform, tokenize, seed=0, batch_size=128)
    >>> loader = EpochDataLoader(stream, batch_size=128, num_workers=2, drop_last=True)
"""
from __future__ import annotations

import io
import json
import random
import zlib
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from aotrain.subset import pool_shards

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def list_shards(pool: str | Path) -> tuple[list[str], dict[str, int]]:
    """Shard paths of an img2dataset/DataComp-style pool folder and their sample counts (sizes.json; {} if absent)."""
    shards = pool_shards(pool)  # the one check of a pool folder (aotrain/subset.py)
    sizes_file = Path(pool) / "sizes.json"
    sizes = json.loads(sizes_file.read_text()) if sizes_file.exists() else {}
    return [str(s) for s in shards], {s.name: int(sizes[s.name]) for s in shards if s.name in sizes}


def _buffer_shuffle(samples, bufsize: int, rng: random.Random):
    buffer = []
    for sample in samples:
        if len(buffer) < bufsize:
            buffer.append(sample)
            continue
        i = rng.randrange(bufsize)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def _sample_seed(seed: int, epoch: int, key: str) -> int:
    return zlib.crc32(f"{seed}-{epoch}-{key}".encode())


class ShardStream(IterableDataset):
    """Yields (image [3,H,W] float, target, dropped int) from shards; `epoch` is bumped by EpochDataLoader.

    target: tokens [L] long (targets="captions") or [attribute index, object index] long (targets="labels").

    Equal work on every rank (a rank that runs out first would leave the others waiting in a
    collective): each (rank, worker) yields the same number of samples per epoch, its quota:
      * exact epochs (default): shards are split across ranks and workers; with `shard_sizes`
        (sizes.json) every stream stops at the smallest share, so a few samples of larger shares
        wait for the next epoch's shard order. Two ranks never see the same sample in an epoch.
      * `resampled=True`: each stream draws shards with replacement from its own seeded RNG and
        stops after samples_per_epoch / (ranks x workers) samples (webdataset's with_epoch idea):
        the mode for pools far larger than a run's budget.
    Resume: `skip_batches` (set from a checkpoint) skips the batches this rank already trained on
    in the current epoch, before any image is decoded. Augmentation draws from a generator seeded
    by (seed, epoch, sample key), so a resumed epoch sees the same crops as an uninterrupted one.
    """

    def __init__(self, urls, image_transform, tokenize, seed: int = 0, shuffle_buffer: int = 1000,
                 shuffle_shards: bool = True, labeller=None, targets: str = "captions",
                 classes: dict | None = None, shard_sizes: dict | None = None, resampled: bool = False,
                 samples_per_epoch: int | None = None, batch_size: int = 1):
        if targets not in ("captions", "labels"):
            raise ValueError(f"targets must be captions or labels, got {targets!r}")
        if targets == "labels" and (labeller is None or classes is None):
            raise ValueError("label targets need a labeller and classes (set data.vocabulary)")
        if resampled and not samples_per_epoch:
            raise ValueError("resampled shards need samples_per_epoch (data.samples_per_epoch)")
        self.urls = list(urls)
        self.image_transform = image_transform
        self.tokenize = tokenize
        self.labeller = labeller  # a picklable factory: () -> (caption -> (attribute, object) | None)
        self.targets = targets
        self.attribute_index = {a: i for i, a in enumerate((classes or {}).get("attribute", []))}
        self.object_index = {o: i for i, o in enumerate((classes or {}).get("object", []))}
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_shards
        self.shard_sizes = {Path(k).name: int(v) for k, v in (shard_sizes or {}).items()}
        self.resampled = resampled
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        self.epoch = 0
        self.skip_batches = 0

    def _epoch_urls(self) -> list[str]:
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(urls)  # same on every rank
        return urls

    def _my_urls(self, rank, world, worker, workers):
        if self.resampled:
            rng = random.Random(f"resample-{self.seed}-{self.epoch}-{rank}-{worker}")
            return (rng.choice(self.urls) for _ in iter(int, 1))  # endless; the quota ends the epoch
        return self._epoch_urls()[rank::world][worker::workers]

    def quota(self, world: int, workers: int) -> int | None:
        """Samples each (rank, worker) stream yields this epoch; None: all of its shards."""
        if self.resampled:
            return self.samples_per_epoch // (world * workers)
        if not self.shard_sizes:
            return None
        urls = self._epoch_urls()
        shares = [sum(self.shard_sizes.get(Path(u).name, 0) for u in urls[r::world][w::workers])
                  for r in range(world) for w in range(workers)]
        return min(shares)

    def samples(self):
        """Raw samples of this (rank, worker), in order: dicts '__key__', 'image_bytes', 'caption', 'meta'."""
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        urls = self._my_urls(rank, world, worker, workers)
        raw = wds.tarfile_to_samples()(({"url": u} for u in urls))
        if self.shuffle_buffer > 1:
            rng = random.Random(f"samples-{self.seed}-{self.epoch}-{rank}-{worker}")
            raw = _buffer_shuffle(raw, self.shuffle_buffer, rng)
        for sample in raw:
            image_key = next((k for k in IMAGE_KEYS if k in sample), None)
            if image_key is None or "txt" not in sample:
                continue  # img2dataset leaves failed downloads without an image
            meta = json.loads(sample["json"]) if "json" in sample else {}
            yield {"__key__": sample["__key__"], "image_bytes": sample[image_key],
                   "caption": sample["txt"].decode("utf-8"), "meta": meta}

    def labelled_samples(self):
        """samples() with the label rule, the quota and the resume skip applied: dicts gain 'label'
        ((attribute, object) or None) and 'dropped' (unlabelled samples skipped since the previous one)."""
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        quota = self.quota(world, workers)
        # Batch j of this rank comes from worker j % workers: skip this worker's share of the first ones.
        skip = len(range(worker, self.skip_batches, workers)) * self.batch_size
        labeller = self.labeller() if self.labeller is not None else None  # built in the worker
        dropped = taken = 0
        for sample in self.samples():
            if quota is not None and taken >= quota:
                return
            label = labeller(sample["caption"]) if labeller is not None else None
            if labeller is not None and label is None:
                dropped += 1
                continue
            taken += 1
            if taken <= skip:
                dropped = 0
                continue
            yield {**sample, "label": label, "dropped": dropped}
            dropped = 0

    def __iter__(self):
        for sample in self.labelled_samples():
            if self.targets == "labels":
                attribute, obj = sample["label"]
                target = torch.tensor([self.attribute_index[attribute], self.object_index[obj]])  # [2]
            else:
                target = self.tokenize([sample["caption"]])[0]  # [L]
            image = Image.open(io.BytesIO(sample["image_bytes"])).convert("RGB")
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only (what fork_rng restores): torch.manual_seed would also reseed
                # every accelerator's generator, costing ~60x more per sample and leaking past the fork.
                torch.default_generator.manual_seed(_sample_seed(self.seed, self.epoch, sample["__key__"]))
                pixels = self.image_transform(image)  # [3,H,W]
            yield pixels, target, sample["dropped"]


class EpochDataLoader(DataLoader):
    """A DataLoader that advances its ShardStream's epoch each time it is iterated (before workers fork),
    so every epoch gets a new, reproducible order. `on_epoch(loader)` runs at each epoch start; a
    resume skip (`dataset.skip_batches`) applies to the first epoch iterated only."""

    def __init__(self, *args, on_epoch=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_epoch = on_epoch
        self._iterated = False

    def __iter__(self):
        if self._iterated:
            self.dataset.skip_batches = 0
        self._iterated = True
        self.dataset.epoch += 1
        if self.on_epoch is not None:
            self.on_epoch(self)
        return super().__iter__()
