"""A deterministic stream of (image, tokens) samples from webdataset tar shards.

Order is a pure function of (seed, epoch, rank, worker): shards are shuffled with (seed, epoch),
split across ranks then DataLoader workers, and samples are shuffled in a buffer seeded with
(seed, epoch, rank, worker). Same config and seed, same data order.

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
    """Yields (image [3,H,W] float, tokens [L] long) from shards; `epoch` is bumped by EpochDataLoader."""

    def __init__(self, urls, image_transform, tokenize, seed: int = 0, shuffle_buffer: int = 1000,
                 shuffle_shards: bool = True):
        self.urls = list(urls)
        self.image_transform = image_transform
        self.tokenize = tokenize
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

    def __iter__(self):
        for sample in self.samples():
            tokens = self.tokenize([sample["caption"]])[0]  # [L]
            yield self.image_transform(sample["image"]), tokens


class EpochDataLoader(DataLoader):
    """A DataLoader that advances its ShardStream's epoch each time it is iterated (before workers fork),
    so every epoch gets a new, reproducible order."""

    def __iter__(self):
        self.dataset.epoch += 1
        # Workers seed their augmentation RNG from this generator: pin it to (seed, epoch).
        self.generator = torch.Generator().manual_seed(self.dataset.seed * 100_003 + self.dataset.epoch)
        return super().__iter__()
