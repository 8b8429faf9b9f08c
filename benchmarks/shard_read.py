"""Samples/s reading tar shards with read_shard: the plain-header path against tarfile, side by side.

    .venv/bin/python benchmarks/shard_read.py                    # 5,000-sample webdataset shard, 5 repeats
    .venv/bin/python benchmarks/shard_read.py --shard pool/shard-000000.tar --repeats 9

Without --shard, a shard of 5,000 samples (a 1.5 KB "png", a caption and a json each, like the toy
world's) is written by webdataset's TarWriter under --root. Both sides group the same members into
the same samples (data_filters/samples.py); the baseline is the tarfile reader read_shard falls back
to for shards that are not plain. Each repeat runs both, alternating which goes first; min and median
are printed with the ratio, for images read (training) and images left unread (caption scans).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

import webdataset as wds  # noqa: E402

from data_filters import samples  # noqa: E402


def write_shard(path: Path, n: int) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with wds.TarWriter(str(path)) as sink:
            for i in range(n):
                sink.write({"__key__": f"{i:09d}", "png": bytes([i % 256]) * 1500,
                            "txt": f"a furry frog number {i}", "json": {"uid": f"u{i}"}})
    return path


def plain(path, images):
    return samples.read_shard(path, images=images)


def with_tarfile(path, images):
    """read_shard as it reads a shard that is not plain."""
    real = samples._plain_files
    samples._plain_files = lambda *_: None
    try:
        yield from samples.read_shard(path, images=images)
    finally:
        samples._plain_files = real


def rate(reader, path, images) -> float:
    start = time.perf_counter()
    n = sum(1 for _ in reader(path, images))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", type=Path, help="a tar shard to read (default: one written under --root)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/aotrain-bench"))
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shard = args.shard or write_shard(args.root / f"wds-{args.samples}.tar", args.samples)
    print(f"shard {shard} ({shard.stat().st_size / 2**20:.1f} MiB), {args.repeats} repeats, samples/s")
    for images in (True, False):
        runs = {"tarfile (baseline)": [], "plain headers": []}
        for r in range(args.repeats):
            order = [("tarfile (baseline)", with_tarfile), ("plain headers", plain)]
            for name, reader in order if r % 2 == 0 else order[::-1]:
                runs[name].append(rate(reader, shard, images))
        print(f"\nimages {'read' if images else 'left unread'}:")
        for name, rates in runs.items():
            print(f"  {name:20s} min {min(rates):10,.0f}   median {statistics.median(rates):10,.0f}")
        ratio = statistics.median(runs["plain headers"]) / statistics.median(runs["tarfile (baseline)"])
        print(f"  ratio (median, plain / tarfile): {ratio:.1f}x")


if __name__ == "__main__":
    main()
