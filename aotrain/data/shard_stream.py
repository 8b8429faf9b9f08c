"""A deterministic stream of (image, target, skipped) samples from webdataset tar shards.

Order is a pure function of (seed, epoch, rank, worker): shards are shuffled with (seed, epoch),
split across ranks then DataLoader workers (webdataset's split_by_node and split_by_worker stages),
and samples are shuffled in a buffer seeded with (seed, epoch, rank, worker). Same config and seed,
same data order. Each pass over the shards is one webdataset pipeline (`ShardStream.pipeline`):
shards -> split -> read -> shuffle -> the sample and label rules; the quota, the resume skip, the
refill of a short stream and the per-sample seeds are the stages after it.

The target is the tokenized caption (CLIP), the caption's (attribute, object) label indices
(a supervised twin; MISSING for the side a single-side caption does not name, "a photo of a star")
or a second augmented view of the image (the self-supervised arm, whose first view takes the
image's place; aotrain/data/views.py); all come from the same sample order. With a `labeller`
(data_filters' CaptionParser.label), a sample whose caption names neither exactly one pair nor one
side alone is dropped, in every mode alike, and counted. Samples that break data_filters' sample rule (no or undecodable image,
no or non-UTF-8 caption) and truncated shards are skipped and counted too: `skipped` holds, per
SKIP_COLUMNS, how many were passed over just before this sample, and each is logged with its shard.

    >>> stream = ShardStream(["pool/shard-000000.tar"], image_transform, tokenize, seed=0, batch_size=128)
    >>> loader = EpochDataLoader(stream, batch_size=128, num_workers=2, drop_last=True)
"""
from __future__ import annotations

import functools
import json
import random
import zlib
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from data_filters.pools import pool_shards
from data_filters.samples import KINDS, decode_image, image_key, read_caption, read_shard, sample_problem

# What a sample's `skipped` vector counts (samples passed over just before it), in this order:
# captions naming no single pair (label rule), the sample rule's kinds, truncated shards, and
# samples read a second time to fill a short stream's quota.
MISSING = -1  # label index of the side a single-side caption does not name ("a photo of a star": no attribute)
SKIP_COLUMNS = ("unlabelled", *KINDS, "truncated_shard", "refilled")
TARGETS = ("captions", "labels", "views")  # CLIP, the supervised twin, the self-supervised arm


def list_shards(pool: str | Path) -> tuple[list[str], dict[str, int]]:
    """Shard paths of an img2dataset/DataComp-style pool folder and their sample counts (sizes.json; {} if absent)."""
    shards = pool_shards(pool)  # the one check of a pool folder (data_filters/pools.py)
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
    """Yields (image [3,H,W] float, target, skipped [len(SKIP_COLUMNS)] long) from shards; `epoch` is bumped by EpochDataLoader.

    target: tokens [L] long (targets="captions"), [attribute index, object index] long (targets="labels")
    or the image's second view [3,H,W] float (targets="views": `views` makes both views, the first
    replacing `image_transform`'s image; aotrain/data/views.py).

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
                 samples_per_epoch: int | None = None, batch_size: int = 1, error_log: str | None = None,
                 views=None):
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got {targets!r}")
        if targets == "labels" and (labeller is None or classes is None):
            raise ValueError("label targets need a labeller and classes (set data.vocabulary)")
        if targets == "views" and views is None:
            raise ValueError("view targets need views (data.views: the view augmentation)")
        if resampled and not samples_per_epoch:
            raise ValueError("resampled shards need samples_per_epoch (data.samples_per_epoch)")
        self.urls = list(urls)
        self.image_transform = image_transform
        self.tokenize = tokenize
        self.labeller = labeller  # a picklable factory: () -> CaptionParser.label
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
        self.error_log = error_log  # a folder for per-stream logs of skipped samples (None: not written)
        self.views = views  # image -> (view a, view b), for targets="views"
        self.epoch = 0
        self.skip_batches = 0

    def _epoch_urls(self) -> list[str]:
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(urls)  # same on every rank
        return urls

    def _shard_stages(self, rank: int, worker: int) -> list:
        """The first stages of a pass: this (rank, worker)'s shards. Exact epochs: the epoch's shard
        order, split by webdataset's stages (rank::ranks, then worker::workers, as `quota` counts);
        resampled: an endless seeded draw of its own, which the quota ends."""
        if self.resampled:
            rng = random.Random(f"resample-{self.seed}-{self.epoch}-{rank}-{worker}")
            return [lambda: (rng.choice(self.urls) for _ in iter(int, 1))]
        urls = self._epoch_urls()
        return [lambda: iter(urls), wds.split_by_node, wds.split_by_worker]  # (DataPipeline flattens lists)

    def quota(self, ranks: int, workers: int) -> int | None:
        """Samples each (rank, worker) stream yields this epoch; None: all of its shards."""
        if self.resampled:
            return self.samples_per_epoch // (ranks * workers)
        if not self.shard_sizes:
            return None
        urls = self._epoch_urls()
        shares = [sum(self.shard_sizes.get(Path(u).name, 0) for u in urls[r::ranks][w::workers])
                  for r in range(ranks) for w in range(workers)]
        return min(shares)

    def pipeline(self, rank: int, worker: int, rng_name: str, report, *rules) -> wds.DataPipeline:
        """One pass over this (rank, worker)'s shards: (shard, key, members) in buffer-shuffled order,
        then `rules` (stages that drop what breaks them). `report(kind, shard, key, why)` hears of
        truncated shards."""
        def read(urls):
            for url in urls:
                on_truncated = lambda shard, why: report("truncated_shard", shard, None, why)  # noqa: E731
                for key, members in read_shard(url, on_truncated=on_truncated):
                    yield url, key, members
        # Our buffer shuffle, not webdataset's: its draws (and so the project's data order) are the reference.
        shuffle = [] if self.shuffle_buffer <= 1 else [
            lambda raw: _buffer_shuffle(raw, self.shuffle_buffer, random.Random(rng_name))]
        return wds.DataPipeline(*self._shard_stages(rank, worker), read, *shuffle, *rules)

    def samples(self):
        """This (rank, worker)'s usable samples in stream order, before the label rule, quota and resume
        skip (for tests and tools that inspect the order): dicts '__key__', 'caption'."""
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        name = f"samples-{self.seed}-{self.epoch}-{rank}-{worker}"
        for _, key, members in self.pipeline(rank, worker, name, lambda *_: None):
            if sample_problem(members, check_image=False) is None:
                yield {"__key__": key, "caption": read_caption(members)}

    def labelled_samples(self):
        """This (rank, worker)'s usable samples in order, with the sample rule (data_filters/samples.py),
        the label rule, the quota and the resume skip applied: dicts '__key__', 'image' (PIL RGB),
        'caption', 'label' ((attribute, object) or None) and 'skipped' (SKIP_COLUMNS counts of what
        was passed over since the previous sample).

        A bad sample (no or undecodable image, no or non-UTF-8 caption) is skipped and counted, and
        written to the error log; a truncated shard yields the samples before the damage. Images are
        decoded during a resume skip too, so a resumed epoch skips exactly the samples the
        interrupted one trained on. A stream whose shards run dry before its quota (bad samples,
        truncated shards) under several ranks reads its shards again for as many samples as the
        damage cost, up to the quota, so every rank trains the same number of steps (counted as
        'refilled'; without it one rank would wait for the others in a collective).
        """
        rank, ranks, worker, workers = wds.utils.pytorch_worker_info()
        quota = self.quota(ranks, workers)
        # Batch j of this rank comes from worker j % workers: skip this worker's share of the first ones.
        skip = len(range(worker, self.skip_batches, workers)) * self.batch_size
        labeller = self.labeller() if self.labeller is not None else None  # built in the worker
        log = _ErrorLog(self.error_log, rank, worker, self.epoch)
        counts = dict.fromkeys(SKIP_COLUMNS, 0)
        taken = 0
        lost = {"samples": 0, "truncated": False}  # what bad data cost this pass

        def report(kind, shard, key, why):
            counts[kind] += 1
            lost["samples"] += kind in KINDS
            lost["truncated"] |= kind == "truncated_shard"
            if taken >= skip:  # the interrupted run logged what it passed over before the resume point
                log.write(kind, shard, key, why)

        def usable(raw):
            """Stage: the sample rule, the label rule and decoding; what breaks them is counted and passed over."""
            for shard, key, members in raw:
                problem = sample_problem(members, check_image=False)
                if problem is not None:
                    report(problem, shard, key, problem.replace("_", " "))
                    continue
                caption = read_caption(members)
                label = labeller(caption) if labeller is not None else None
                if labeller is not None and label is None:
                    counts["unlabelled"] += 1
                    continue
                try:
                    image = decode_image(members[image_key(members)])
                except ValueError as e:
                    report("bad_image", shard, key, str(e))
                    continue
                yield {"__key__": key, "image": image, "caption": caption, "label": label}

        attempt, limit = 0, quota
        while True:
            found = 0
            name = f"samples-{self.seed}-{self.epoch}-{rank}-{worker}" + (f"-refill{attempt}" if attempt else "")
            samples = iter(self.pipeline(rank, worker, name, report, usable))
            while limit is None or taken < limit:  # checked before each read: nothing past the quota is read
                sample = next(samples, None)
                if sample is None:
                    break
                found += 1
                taken += 1
                if attempt:
                    counts["refilled"] += 1
                if taken <= skip:
                    counts = dict.fromkeys(SKIP_COLUMNS, 0)
                    continue
                yield {**sample, "skipped": [counts[c] for c in SKIP_COLUMNS]}
                counts = dict.fromkeys(SKIP_COLUMNS, 0)
            else:
                return  # the quota is met
            # The shards ran dry first. Only what bad data cost is made up (a label rule's drops are the
            # data, not damage): up to the bad samples met, or the whole quota when a truncated shard hid
            # an unknown number. Workers of one process need not be equal (the loader drains them all); ranks must.
            shortfall = 0 if quota is None or self.resampled or not found or ranks == 1 else quota - taken
            shortfall = shortfall if lost["truncated"] else min(shortfall, lost["samples"])
            if shortfall <= 0:
                return
            limit, lost["samples"], lost["truncated"] = taken + shortfall, 0, False
            attempt += 1  # read the shards again

    def __iter__(self):
        # Captions repeat (a toy world has a few hundred); BPE costs ~0.1 ms each. Ample for those, and
        # small where every caption is new (web data).
        tokenize = functools.lru_cache(maxsize=4096)(lambda caption: self.tokenize([caption])[0])
        for sample in self.labelled_samples():
            if self.targets == "labels":
                attribute, obj = sample["label"]  # one may be None: a single-side caption (no pair)
                target = torch.tensor([self.attribute_index.get(attribute, MISSING),
                                       self.object_index.get(obj, MISSING)])  # [2]
            elif self.targets == "captions":
                target = tokenize(sample["caption"])  # [L]
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only (what fork_rng restores): torch.manual_seed would also reseed
                # every accelerator's generator, costing ~60x more per sample and leaking past the fork.
                torch.default_generator.manual_seed(_sample_seed(self.seed, self.epoch, sample["__key__"]))
                if self.targets == "views":
                    pixels, target = self.views(sample["image"])  # [3,H,W] each
                else:
                    pixels = self.image_transform(sample["image"])  # [3,H,W]
            yield pixels, target, torch.tensor(sample["skipped"])  # skipped: [len(SKIP_COLUMNS)]


class _ErrorLog:
    """One JSON line per skipped sample or truncated shard, in <error_log>/rank<r>-worker<w>.jsonl
    (one file per stream, so writers never interleave); `aotrain` names the worst shards from it."""

    def __init__(self, folder: str | None, rank: int, worker: int, epoch: int):
        self.path = Path(folder) / f"rank{rank}-worker{worker}.jsonl" if folder else None
        self.epoch = epoch

    def write(self, kind: str, shard: str, key: str | None, why: str) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": self.epoch, "kind": kind, "shard": Path(shard).name, "key": key,
                                "error": why[:300]}) + "\n")


def read_error_log(folder) -> list[dict]:
    """Every record the streams of a run wrote to their error logs (see _ErrorLog)."""
    records = {}
    for path in sorted(Path(folder).glob("rank*-worker*.jsonl")) if folder else []:
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write
            # A resumed run may meet again what the interrupted one's prefetching workers had logged.
            records[(record["epoch"], record["kind"], record["shard"], record["key"])] = record
    return list(records.values())


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
