"""A deterministic stream of (image, target, dropped) samples from webdataset tar shards.

Order is a pure function of (seed, epoch, rank, worker): shards are shuffled with (seed, epoch),
split across ranks then DataLoader workers, and samples are shuffled in a buffer seeded with
(seed, epoch, rank, worker). Same config and seed, same data order.

The target is the tokenized caption (CLIP) or the caption's (attribute, object) label indices
(a supervised twin); both come from the same sample order. With a `labeller` (data_filters'
CaptionParser.label), a sample whose caption does not name exactly one pair is dropped, in both
modes alike, and counted: `dropped` is how many were dropped just before this sample.

    >>> stream = ShardStream(["pool/shard-000000.tar"], image_transform, tokenize, seed=0)
    >>> loader = EpochDataLoader(stream, batch_size=128, num_workers=2, drop_last=True)
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def list_shards(pool: str | Path) -> tuple[list[str], int]:
    """Shard paths of an img2dataset/DataComp-style pool folder and its sample count (from sizes.json)."""
    pool = Path(pool)
    if not pool.is_dir():
        raise FileNotFoundError(f"pool folder not found: {pool}")
    sizes_file = pool / "sizes.json"
    shards = sorted(pool.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {pool}")
    sizes = json.loads(sizes_file.read_text()) if sizes_file.exists() else {}
    n = sum(int(sizes.get(s.name, 0)) for s in shards)
    return [str(s) for s in shards], n


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


class ShardStream(IterableDataset):
    """Yields (image [3,H,W] float, target, dropped int) from shards; `epoch` is bumped by EpochDataLoader.

    target: tokens [L] long (targets="captions") or [attribute index, object index] long (targets="labels").
    """

    def __init__(self, urls, image_transform, tokenize, seed: int = 0, shuffle_buffer: int = 1000,
                 shuffle_shards: bool = True, labeller=None, targets: str = "captions",
                 classes: dict | None = None):
        if targets not in ("captions", "labels"):
            raise ValueError(f"targets must be captions or labels, got {targets!r}")
        if targets == "labels" and (labeller is None or classes is None):
            raise ValueError("label targets need a labeller and classes (set data.vocabulary)")
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
        self.epoch = 0

    def _my_urls(self, rank, world, worker, workers) -> list[str]:
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(urls)  # same on every rank
        return urls[rank::world][worker::workers]

    def samples(self):
        """Raw decoded samples: dicts with '__key__', 'image' (PIL RGB), 'caption', 'meta'."""
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        urls = self._my_urls(rank, world, worker, workers)
        raw = wds.tarfile_to_samples()(iter([{"url": u} for u in urls]))
        if self.shuffle_buffer > 1:
            rng = random.Random(f"samples-{self.seed}-{self.epoch}-{rank}-{worker}")
            raw = _buffer_shuffle(raw, self.shuffle_buffer, rng)
        for sample in raw:
            image_key = next((k for k in IMAGE_KEYS if k in sample), None)
            if image_key is None or "txt" not in sample:
                continue  # img2dataset leaves failed downloads without an image
            image = Image.open(io.BytesIO(sample[image_key])).convert("RGB")
            meta = json.loads(sample["json"]) if "json" in sample else {}
            yield {"__key__": sample["__key__"], "image": image,
                   "caption": sample["txt"].decode("utf-8"), "meta": meta}

    def labelled_samples(self):
        """samples() with the label rule applied: dicts gain 'label' ((attribute, object) or None)
        and 'dropped' (unlabelled samples skipped since the previous one)."""
        labeller = self.labeller() if self.labeller is not None else None  # built in the worker
        dropped = 0
        for sample in self.samples():
            label = labeller(sample["caption"]) if labeller is not None else None
            if labeller is not None and label is None:
                dropped += 1
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
            yield self.image_transform(sample["image"]), target, sample["dropped"]


class EpochDataLoader(DataLoader):
    """A DataLoader that advances its ShardStream's epoch each time it is iterated (before workers fork),
    so every epoch gets a new, reproducible order."""

    def __iter__(self):
        self.dataset.epoch += 1
        # Workers seed their augmentation RNG from this generator: pin it to (seed, epoch).
        self.generator = torch.Generator().manual_seed(self.dataset.seed * 100_003 + self.dataset.epoch)
        return super().__iter__()
