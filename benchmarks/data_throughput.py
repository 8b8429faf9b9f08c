"""Samples/s per data-loading worker: aotrain's training stream against the plain webdataset pipeline.

    .venv/bin/python benchmarks/data_throughput.py                     # 2,000 samples of 256 px JPEG -> 224 px, 3 repeats
    .venv/bin/python benchmarks/data_throughput.py --samples 5000 --repeats 5 --gpu-rate 5000

Shards: the toy world rendered at 256 px, written in img2dataset's layout (`<key>.jpg|txt|json`, JPEG
quality 90; tests/img2dataset_pool.py) and cached under --root. Both sides read them in this one
process, which is the work one DataLoader worker does, and yield what a training step consumes
(image [3,224,224] float after the model's train transform, tokens [77]), behind a 1,000-sample
shuffle buffer:
  * plain (the baseline a user would write): `wds.WebDataset(urls).shuffle(1000).decode("pil")
    .to_tuple("jpg", "txt")` mapped through the same open_clip train transform and tokenizer;
  * aotrain: ShardStream as ShardDataModule builds it (aotrain/data/shard_stream.py), with its seeded
    order, the sample rule, bad-sample counters and per-sample augmentation seeds.
Repeats alternate the sides, so a machine that speeds up or slows down affects both alike; min and
median are printed, with the ratio (goal: aotrain >= 0.95x plain) and how many workers per GPU
each side needs to feed --gpu-rate samples/s (ViT-B/32 on one GPU: about 5,000), assuming workers
scale linearly (one per free core).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # run from a checkout without install; the pool writer

import torch  # noqa: E402
import webdataset as wds  # noqa: E402
import yaml  # noqa: E402
from img2dataset_pool import write_pool  # noqa: E402

from aotrain import towers  # noqa: E402
from aotrain.config import RECIPES_DIR  # noqa: E402
from aotrain.data.datamodule import ShardDataModule  # noqa: E402
from aotrain.toyworld import generate_world  # noqa: E402

SHUFFLE_BUFFER = 1000


def make_pool(root: Path, samples: int, image_size: int = 256, per_shard: int = 500) -> Path:
    """An img2dataset-layout pool of `samples` JPEGs of `image_size` px (made once, then reused)."""
    cfg = yaml.safe_load((RECIPES_DIR / "world" / "default.yaml").read_text())
    cfg["image_size"] = image_size
    cfg["pool"].update(n_samples=samples, samples_per_shard=per_shard)
    cfg["eval"] = {"images_per_unseen_pair": 1, "images_per_seen_pair": 1}  # not read here
    world = generate_world(cfg, root / "worlds", progress=False)
    pool = root / f"img2dataset-{world.name}"
    if not (pool / "00000_stats.json").exists():
        write_pool(world, pool, samples_per_shard=per_shard, failed_every=0)
    return pool


def plain(urls: list[str], model: str):
    """The pipeline a user writes with webdataset and open_clip's transform and tokenizer."""
    train_tf, _ = towers.image_transforms(model)
    tokenize = towers.tokenizer(model)
    return (wds.WebDataset(urls, shardshuffle=False).shuffle(SHUFFLE_BUFFER).decode("pil")
            .to_tuple("jpg", "txt").map_tuple(train_tf, lambda caption: tokenize([caption])[0]))


def aotrain(pool: Path, model: str):
    """The training stream exactly as `aotrain fit` builds it (one process, epoch 1)."""
    stream = ShardDataModule(str(pool), model, batch_size=1, num_workers=0, shuffle_buffer=SHUFFLE_BUFFER,
                             seed=0).stream()
    stream.epoch = 1  # what EpochDataLoader sets before the first epoch
    return stream


def timed_pass(dataset) -> tuple[int, float]:
    """(samples, seconds) of one full pass."""
    start = time.perf_counter()
    n = sum(1 for _ in dataset)
    return n, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000, help="pool size (default 2,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="ViT-B-32", help="decides output size (224 px), normalisation, tokenizer")
    ap.add_argument("--gpu-rate", type=float, default=5000.0, help="samples/s one GPU trains at (default: ViT-B/32's 5,000)")
    ap.add_argument("--root", type=Path, default=REPO / "outputs" / "bench-data", help="where the shards are cached")
    ap.add_argument("--image-size", type=int, default=256, help="stored JPEG size in px (default 256)")
    ap.add_argument("--per-shard", type=int, default=500, help="samples per shard")
    args = ap.parse_args(argv)
    # What a DataLoader worker runs with (torch's worker loop sets it): with torch's default of one
    # thread per core, each sample's small tensor ops wait for a second core, up to 10x slower on a busy machine.
    torch.set_num_threads(1)
    pool = make_pool(args.root, args.samples, args.image_size, args.per_shard)
    urls = sorted(str(p) for p in pool.glob("*.tar"))
    sides = {"plain": lambda: plain(urls, args.model), "aotrain": lambda: aotrain(pool, args.model)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    counts = {}
    for _ in range(args.repeats):
        for name, build in sides.items():
            counts[name], seconds = timed_pass(build())
            times[name].append(seconds)
    if len(set(counts.values())) != 1:
        print(f"sample counts differ: {counts}", file=sys.stderr)
        return 1
    n = counts["plain"]
    print(f"{n:,} samples x {args.repeats} repeats, {args.image_size} px JPEG -> {args.model} train transform, "
          f"1 process, 1 torch thread (= 1 worker)")
    print(f"{'side':<10}{'min s':>8}{'median s':>10}{'samples/s/worker':>18}{'workers/GPU':>13}")
    for name, ts in times.items():
        rate = n / statistics.median(ts)
        print(f"{name:<10}{min(ts):>8.2f}{statistics.median(ts):>10.2f}{rate:>18.0f}"
              f"{math.ceil(args.gpu_rate / rate):>13}")
    ratio = statistics.median(times["plain"]) / statistics.median(times["aotrain"])
    best = min(times["plain"]) / min(times["aotrain"])
    print(f"aotrain / plain throughput: {ratio:.3f}x median, {best:.3f}x min (goal >= 0.95x)")
    print(f"workers/GPU: to feed {args.gpu_rate:,.0f} samples/s per GPU at the median rate per worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
