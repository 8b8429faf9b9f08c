"""How long a real-data recipe's first stages take on a CC12M-sized pool: stats (label) and select.

    .venv/bin/python benchmarks/stages_throughput.py --n 12000000 --size 1000000
    .venv/bin/python benchmarks/stages_throughput.py --n 50000000 --size 1000000   # ~20M labelled, ~30 GB of disk

Writes `--n` synthetic web-style captions (benchmarks/parse_throughput.py's generator, built-in
vocabulary) as img2dataset metadata (one parquet of key/caption/status per 1M rows, 3% failed
downloads) into a scratch folder, then times aotrain's own stage functions (aotrain/pool_stages.py):
  stats   labelling every caption + pool NMI   vs  reading the captions alone (the I/O floor)
  select  a subset at each NMI target          vs  a uniform random sample of the same size
Each select runs in a fresh process, which reports its peak RSS above its own baseline (the
interpreter and imports): bytes and seconds per labelled caption, and what they come to at
LAION-400M's size (400M captions labelled at this pool's rate, ~40%: ~160M labelled captions).
Memory does not grow with --n outside the stages: each writer process holds one 1M-row file.
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
from data_filters.dedupe import load_selection_pool  # noqa: E402
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
    # One file per task and a fresh worker per file: a worker's memory is one file's, whatever --n.
    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        pool.map(_write_file, jobs, chunksize=1)


def _rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _select_in_child(labels: str, spec: dict, cache: str) -> dict:
    import pandas  # noqa: F401  (pyarrow imports it on first to_numpy: part of the imports, not of the pool)

    baseline = _rss_bytes()  # the interpreter and the imports, before the labels are read
    # Reading the pool alone first (labels, codes, dedupe): the part of select that grows with the pool.
    pool, load_s = timed(load_selection_pool, Path(labels), spec.get("dedupe"))
    load_peak = _rss_bytes("VmHWM")
    del pool
    _, seconds = timed(select_stage, Path(labels), spec, Path(cache))
    return {"seconds": seconds, "baseline": baseline, "peak": _rss_bytes("VmHWM"), "load_s": load_s,
            "load_peak": load_peak}


def measure_select(labels: Path, spec: dict, cache: Path) -> dict:
    """select_stage in a fresh process: {seconds, baseline, peak, load_s, load_peak} (bytes of RSS), where
    load_* are of reading the pool alone (load_selection_pool, which the stage then does again)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_select_in_child, (str(labels), spec, str(cache)))


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
    ap.add_argument("--project-captions", type=float, default=400e6,
                    help="captions to project select to, labelled at this pool's rate (default 400M: LAION-400M)")
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
        _, random_s = timed(lambda: uids.take(np.sort(rng.choice(len(uids), size=args.size, replace=False))))
        labelled, runs = len(uids), []
        del uids
        for target in targets:
            spec = {"size": args.size, "nmi": target, "seed": 0, "tol": 0.005}
            run = measure_select(labels, spec, cache)
            runs.append(run)
            print(f"select  {run['seconds']:7.1f} s  {args.size:,} samples at NMI {target:g}; a uniform random sample "
                  f"of that size takes {random_s:.2f} s ({run['seconds'] / random_s:,.0f}x); "
                  + _per_caption(run, labelled), flush=True)
        _project(runs, labelled, args.project_captions, stats["labelled"] / stats["captions"])
    return 0


def _per_caption(run: dict, labelled: int) -> str:
    """Whole stage, and reading the pool alone; per labelled caption, RSS above the process's baseline."""
    return (f"peak RSS {run['peak'] / 2**30:.2f} GiB ({(run['peak'] - run['baseline']) / labelled:.0f} bytes per "
            f"labelled caption over a {run['baseline'] / 2**20:.0f} MiB baseline), "
            f"{run['seconds'] / labelled * 1e6:.2f} us per labelled caption\n"
            f"  reading the pool (labels, dedupe) {run['load_s']:.1f} s, {run['load_s'] / labelled * 1e6:.2f} us and "
            f"{(run['load_peak'] - run['baseline']) / labelled:.0f} bytes per labelled caption; the rest of select "
            f"(the plan's LPs: fixed by vocabulary and size; picking rows; writing) {run['seconds'] - run['load_s']:.1f} s")


def _project(runs: list[dict], labelled: int, captions: float, fraction: float) -> None:
    """What select would take on `captions` captions labelled at `fraction`, linear from the worst measured run
    (an upper bound: the plan's fixed time and memory are scaled with the pool too)."""
    target = captions * fraction
    per_byte = max((r["peak"] - r["baseline"]) / labelled for r in runs)
    per_s = max(r["seconds"] / labelled for r in runs)
    load_s = max(r["load_s"] / labelled for r in runs)
    baseline = max(r["baseline"] for r in runs)
    print(f"projection: {captions / 1e6:,.0f}M captions, {fraction:.1%} labelled as in this pool = "
          f"{target / 1e6:,.0f}M labelled: select {per_s * target / 60:,.1f} min per subset (reading the pool "
          f"{load_s * target / 60:,.1f} min of it), peak RSS "
          f"{(baseline + per_byte * target) / 2**30:,.1f} GiB ({per_byte:.0f} bytes and {per_s * 1e6:.1f} us per "
          f"labelled caption, the worst of the runs above at {labelled:,})")


def _targets(labels: Path, size: int) -> list[float]:
    from data_filters.select import feasible_nmi_range, pair_counts

    _, a, o, attributes, objects = load_labels(labels)
    low, high = feasible_nmi_range(pair_counts(a, o, len(attributes), len(objects)), size)
    print(f"feasible NMI at {size:,}: {low:.3f} to {high:.3f}")
    return [round(low + (high - low) * f, 3) for f in (0.1, 0.5, 0.9)]


if __name__ == "__main__":
    sys.exit(main())
