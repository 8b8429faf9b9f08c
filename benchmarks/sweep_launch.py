"""Seconds per sweep fit on this machine: how the local launcher starts a fit, and whether it has a data worker.

    .venv/bin/python benchmarks/sweep_launch.py                 # 30-step toy fits, 3 repeats
    .venv/bin/python benchmarks/sweep_launch.py --steps 60 --repeats 5 --root /tmp/aotrain-bench

Every fit is toy_replication's (`toy_vit_fast`, 25,600 samples, batch 128) cut to --steps steps, in
the default toy world under --root (generated once, ~20 s), run through the sweep's own launcher
(aotrain/sweeps/local.py) with one thread per fit:
  1. one fit at a time, started as a command (`python -m aotrain.cli fit ...`: the baseline) against
     forked from the launcher's preloaded forkserver (what a sweep does now): the difference is the
     per-fit start-up a sweep of N fits pays N times;
  2. two fits at a time (toy_replication on 2 cores), each with one data-loading worker (the
     baseline) against none (data.num_workers=0, what the toy sweep recipes set).
Repeats alternate the order of the two sides; min and median are printed with the ratio. A warm-up
fit of each kind runs first and is not counted (it pays the forkserver's imports and fills caches).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from aotrain.sweeps.local import Job, fit_argv, run_local, start_forkserver  # noqa: E402

BASE = ["recipe=toy_low_nmi", "model=toy_vit_fast", "subset.nmi=0.1", "subset.size=25600",
        "eval.every_n_steps=0", "trainer.enable_progress_bar=false", "name=bench"]


def fits(root: Path, steps: int, names: list[str], forkable: bool, workers: int) -> float:
    """Wall seconds to run one fit per name, all at once (len(names) in parallel)."""
    jobs = [Job(name, fit_argv([*BASE, f"paths.root={root}", f"trainer.max_steps={steps}",
                                f"data.num_workers={workers}", f"run_id={name}"]),
                root / "logs" / f"{name}.log", forkable=forkable) for name in names]
    start = time.perf_counter()
    codes = run_local(jobs, parallel=len(jobs), threads=1)
    seconds = time.perf_counter() - start
    if any(codes.values()):
        sys.exit(f"a fit failed: {codes}; logs in {root / 'logs'}")
    return seconds


def compare(title: str, sides: dict, repeats: int) -> None:
    times = {name: [] for name in sides}
    for r in range(repeats):
        order = list(sides.items())
        for name, run in order if r % 2 == 0 else order[::-1]:
            times[name].append(run())
    print(f"\n{title}")
    for name, seconds in times.items():
        print(f"  {name:44s} min {min(seconds):6.1f} s   median {statistics.median(seconds):6.1f} s")
    base, new = times
    print(f"  ratio (median, second / baseline): {statistics.median(times[new]) / statistics.median(times[base]):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/aotrain-bench"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.pop("AOTRAIN_RUN_ID", None)
    start_forkserver()
    print(f"{os.cpu_count()} cores; {args.steps}-step toy_replication fits under {args.root}")
    fits(args.root, args.steps, ["warmup-command"], forkable=False, workers=1)  # also makes the world
    fits(args.root, args.steps, ["warmup-forked"], forkable=True, workers=1)
    runs = iter(range(10**6))
    compare("one fit at a time: seconds per fit", {
        "started as a command (baseline)": lambda: fits(args.root, args.steps, [f"c{next(runs)}"], False, 1),
        "forked from the preloaded forkserver": lambda: fits(args.root, args.steps, [f"f{next(runs)}"], True, 1),
    }, args.repeats)
    compare("two fits at a time (forked): seconds for both", {
        "one data worker each (baseline)": lambda: fits(args.root, args.steps, [f"w{next(runs)}", f"w{next(runs)}"],
                                                        True, 1),
        "data.num_workers=0": lambda: fits(args.root, args.steps, [f"z{next(runs)}", f"z{next(runs)}"], True, 0),
    }, args.repeats)


if __name__ == "__main__":
    main()
