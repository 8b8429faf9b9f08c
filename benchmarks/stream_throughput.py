"""Samples per second of the training stream against a bare loop over the same shards.

    .venv/bin/python benchmarks/stream_throughput.py                 # toy pool of 20,000 samples, 3 rounds
    .venv/bin/python benchmarks/stream_throughput.py --samples 50000 --rounds 5

Both read the same webdataset shards of a generated toy world in one process (no DataLoader workers)
and produce the same tensors a training step consumes:
  * bare (the baseline): tarfile iteration, PIL decode to RGB, the model's train transform,
    tokenisation; no shuffle, no checks, no counters;
  * aotrain: ShardStream (aotrain/data/shard_stream.py) with its buffer shuffle, the sample rule
    (data_filters/samples.py), bad-sample counters, per-sample augmentation seeds and quotas.
The ratio aotrain / bare is what the stream's guarantees cost. Rounds alternate the two modes, so a
machine that speeds up or slows down during the run affects both alike; min and median are printed.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from PIL import Image  # noqa: E402

from aotrain import towers  # noqa: E402
from aotrain.data.datamodule import ShardDataModule  # noqa: E402
from aotrain.toyworld import generate_world  # noqa: E402
from aotrain.config import RECIPES_DIR  # noqa: E402

import yaml  # noqa: E402


def bare(shards: list[str], model: str) -> int:
    train_tf, _ = towers.image_transforms(model)
    tokenize = towers.tokenizer(model)
    n = 0
    for shard in shards:
        with tarfile.open(shard, "r|*") as tar:
            image = caption = None
            for info in tar:
                data = tar.extractfile(info).read()
                if info.name.endswith(".png"):
                    image = Image.open(io.BytesIO(data)).convert("RGB")
                elif info.name.endswith(".txt"):
                    caption = data.decode("utf-8")
                if image is not None and caption is not None:
                    train_tf(image), tokenize([caption])[0]
                    image = caption = None
                    n += 1
    return n


def streamed(pool: Path, model: str) -> int:
    dm = ShardDataModule(str(pool), model, batch_size=1, num_workers=0, shuffle_buffer=1000, seed=0)
    stream = dm.stream()
    stream.epoch = 1
    return sum(1 for _ in stream)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=20000, help="toy pool size (default 20,000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="toy-vit-tiny")
    ap.add_argument("--root", default="outputs/bench-stream", help="where the toy world is generated (cached)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load((RECIPES_DIR / "world" / "default.yaml").read_text())
    cfg["pool"].update(n_samples=args.samples, samples_per_shard=5000)
    pool = generate_world(cfg, Path(args.root)) / "pool"
    shards = sorted(str(p) for p in pool.glob("*.tar"))
    times = {"bare": [], "aotrain": []}
    counts = {}
    for _ in range(args.rounds):
        for name, run in (("bare", lambda: bare(shards, args.model)), ("aotrain", lambda: streamed(pool, args.model))):
            start = time.perf_counter()
            counts[name] = run()
            times[name].append(time.perf_counter() - start)
    if counts["bare"] != counts["aotrain"]:
        print(f"sample counts differ: {counts}", file=sys.stderr)
        return 1
    print(f"{counts['bare']:,} samples x {args.rounds} rounds, model {args.model}, 1 process")
    print(f"{'mode':<10}{'min s':>9}{'median s':>10}{'samples/s (min)':>17}")
    for name, ts in times.items():
        print(f"{name:<10}{min(ts):>9.2f}{statistics.median(ts):>10.2f}{counts[name] / min(ts):>17,.0f}")
    print(f"aotrain / bare throughput (min times): {min(times['bare']) / min(times['aotrain']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
