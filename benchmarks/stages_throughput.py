"""How long a real-data recipe's first stages take on a CC12M-sized pool: stats (label) and select.

    .venv/bin/python benchmarks/stages_throughput.py --n 12000000 --size 1000000

Writes `--n` synthetic web-style captions (benchmarks/parse_throughput.py's generator, built-in
vocabulary) as img2dataset metadata (one parquet of key/caption/status per 1M rows, 3% failed
downloads) into a scratch folder, then times aotrain's own stage functions (aotrain/pool_stages.py):
  stats   labelling every caption + pool NMI   vs  reading the captions alone (the I/O floor)
  select  a subset at each NMI target          vs  a uniform random sample of the same size
The reshard stage reads image bytes, so its time depends on the disk; it is not timed here.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aotrain.pool_stages import label_stage, select_stage  # noqa: E402
from data_filters.label import load_labels  # noqa: E402
from data_filters.sources import iter_captions  # noqa: E402
from data_filters.vocab import Vocabulary  # noqa: E402
from parse_throughput import generate, make_words  # noqa: E402

ROWS_PER_FILE = 1_000_000


def _write_file(job) -> None:
    index, n, folder = job
    attrs, objs = make_words(Vocabulary.builtin())
    captions = generate(index, n, attrs, objs)
    keys = [f"{index:05d}{i:07d}" for i in range(n)]
    status = ["failed_to_download" if i % 33 == 32 else "success" for i in range(n)]
    table = pa.table({"key": keys, "caption": captions, "status": status})
    pq.write_table(table, Path(folder) / f"{index:05d}.parquet")


def write_pool(folder: Path, n: int, workers: int) -> None:
    jobs = [(i, min(ROWS_PER_FILE, n - start), str(folder)) for i, start in enumerate(range(0, n, ROWS_PER_FILE))]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_write_file, jobs)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12_000_000, help="captions in the pool (default 12M, CC12M's size)")
    ap.add_argument("--size", type=int, default=1_000_000, help="subset size (default 1M, the cc12m recipes')")
    ap.add_argument("--nmi", type=float, nargs="+", default=None, help="targets (default: 3 inside the feasible range)")
    ap.add_argument("--workers", type=int, default=2, help="processes writing the synthetic pool")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="aotrain-stages-") as scratch:
        pool, cache = Path(scratch) / "pool", Path(scratch) / "cache"
        pool.mkdir()
        _, write_s = timed(write_pool, pool, args.n, args.workers)
        print(f"pool: {args.n:,} captions in {len(list(pool.glob('*.parquet')))} parquet files "
              f"(written in {write_s:.0f} s, not part of the stages)")

        read, read_s = timed(lambda: sum(1 for _ in iter_captions(sorted(pool.glob("*.parquet")), uid_column="key")))
        (labels, stats), label_s = timed(label_stage, pool, "builtin", cache)
        print(f"stats   {label_s:7.1f} s  {args.n / label_s:>10,.0f} captions/s   labelled {stats['labelled']:,} "
              f"of {stats['captions']:,} downloaded, pool NMI {stats['nmi']:.3f}")
        print(f"  floor {read_s:7.1f} s  {args.n / read_s:>10,.0f} captions/s   reading the {read:,} captions "
              f"alone; stats costs {label_s / read_s:.1f}x the floor")
        _, cached_s = timed(label_stage, pool, "builtin", cache)
        print(f"  cached second run: {cached_s:.2f} s")

        uids, *_ = load_labels(labels)
        targets = args.nmi or _targets(labels, args.size)
        rng = np.random.default_rng(0)
        _, random_s = timed(lambda: np.sort(rng.choice(uids, size=args.size, replace=False)))
        for target in targets:
            spec = {"size": args.size, "nmi": target, "seed": 0, "tol": 0.005}
            _, select_s = timed(select_stage, labels, spec, cache)
            print(f"select  {select_s:7.1f} s  {args.size:,} samples at NMI {target:g}; a uniform random sample "
                  f"of that size takes {random_s:.2f} s ({select_s / random_s:,.0f}x)")
    return 0


def _targets(labels: Path, size: int) -> list[float]:
    from data_filters.select import feasible_nmi_range, pair_counts

    _, a, o, attributes, objects = load_labels(labels)
    low, high = feasible_nmi_range(pair_counts(a, o, len(attributes), len(objects)), size)
    print(f"feasible NMI at {size:,}: {low:.3f} to {high:.3f}")
    return [round(low + (high - low) * f, 3) for f in (0.1, 0.5, 0.9)]


if __name__ == "__main__":
    sys.exit(main())
