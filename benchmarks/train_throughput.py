"""Training throughput of `aotrain fit` against open_clip's own trainer and a bare PyTorch loop, side by side.

Four trainers, each run as a subprocess twice, for a short and a long number of steps; the difference
of the two wall times divided by the difference of steps is the steady-state time per step (start-up,
the pool stages and the final evaluation cancel out):
- aotrain fit on the toy world's webdataset shards,
- a bare PyTorch loop (benchmarks/bare_loop.py): aotrain's config, data loader, model, loss, optimizer
  and schedule with no Lightning, so aotrain / bare is what Lightning and aotrain's callbacks cost,
- open_clip_train on the same shards (the like-for-like baseline),
- open_clip_train on its synthetic dataset (no decoding: the data-light ceiling).
Start-up is the time from launching the command to its first backward pass (imports, the toy world
and subset checks, the model, the data loader's workers and first batch, the first forward), taken
from the long run.

    python benchmarks/train_throughput.py                      # CPU: toy-vit-tiny, batch 128, 10 vs 40 steps
    python benchmarks/train_throughput.py --steps 20 80 --batch-size 64 --repeats 3
    python benchmarks/train_throughput.py --trainers aotrain_shards bare_shards --root outputs/bench-train
    python benchmarks/train_throughput.py --gpu --model ViT-B-32 --batch-size 256 --workers 8 \\
        --steps 10 110 --json throughput.json                  # one CUDA GPU, bf16 (gpu_acceptance.sh)

With --repeats N every trainer's pair of runs is repeated N times, the trainers taking turns, and the
median is printed. aotrain's long run also reports where its step goes (data wait against compute,
medians of its own step timer). On a GPU it also prints model FLOPs utilisation: the model's training
FLOPs per sample (counted with torch.utils.flop_counter on one forward and backward) x samples/s over
the chip's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without install

from aotrain.callbacks.step_timer import describe  # noqa: E402

# Prepended to every trainer's command: prints when the first backward pass starts, counted from the
# launch (BENCH_LAUNCHED, set by `timed`), whoever calls it (Lightning, open_clip_train, the bare loop).
FIRST_STEP = """
import os, sys, time, torch
_backward = torch.Tensor.backward
def _first_backward(self, *args, **kwargs):
    torch.Tensor.backward = _backward
    print(f"first step at {time.time() - float(os.environ['BENCH_LAUNCHED']):.2f} s", file=sys.stderr, flush=True)
    return _backward(self, *args, **kwargs)
torch.Tensor.backward = _first_backward
"""
FIRST_STEP_LINE = re.compile(r"^first step at ([0-9.]+) s$", re.M)

AOTRAIN_RUNNER = FIRST_STEP + """
from aotrain.cli import main
sys.exit(main(sys.argv[1:]))
"""

BARE_RUNNER = FIRST_STEP + """
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

OPEN_CLIP_RUNNER = FIRST_STEP + """
import functools, sys, open_clip
import open_clip_train.data, webdataset.tariterators
open_clip.add_model_config(sys.argv[1])
# open_clip_train 3.3 predates webdataset 1.0's end-of-shard marker (an empty sample, which its
# grouping stage cannot read): ask the tar expander for none.
open_clip_train.data.tar_file_expander = functools.partial(webdataset.tariterators.tar_file_expander, eof_value=None)
from open_clip_train.main import main
main(sys.argv[2:])
"""

TRAINERS = {"aotrain_shards": "aotrain fit, toy shards", "open_clip_shards": "open_clip_train, toy shards",
            "bare_shards": "bare PyTorch loop, toy shards", "open_clip_synthetic": "open_clip_train, synthetic data"}

# Dense bf16 tensor-core peaks from the vendors' datasheets (SXM parts), TFLOP/s.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def timed(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float | None] | None:
    """(wall seconds, seconds to the first backward pass) of `cmd`, or None (its error printed) when it
    fails: the other trainers still run."""
    env = {**os.environ, "BENCH_LAUNCHED": repr(time.time())}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        print(f"failed ({log}): {' '.join(cmd)[:300]}\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    first = FIRST_STEP_LINE.search(proc.stderr)
    return elapsed, float(first.group(1)) if first else None


def fit_overrides(steps: int, args, out: Path) -> list[str]:
    """`aotrain fit` overrides shared by aotrain and the bare loop (same model, batch, workers, schedule)."""
    overrides = [f"trainer.max_steps={steps}", f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
                 f"model.name={args.model}", f"paths.root={out}", f"optim.warmup_steps={min(10, steps)}"]
    if args.gpu:
        overrides += ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"]
    return overrides


def aotrain_cmd(steps: int, args, out: Path, shards: list[Path]) -> list[str]:
    return [sys.executable, "-c", AOTRAIN_RUNNER, "fit", *fit_overrides(steps, args, out), "eval.every_n_steps=0",
            "trainer.enable_progress_bar=false"]


def bare_cmd(steps: int, args, out: Path, shards: list[Path]) -> list[str]:
    return [sys.executable, "-c", BARE_RUNNER, str(REPO / "benchmarks" / "bare_loop.py"), *fit_overrides(steps, args, out)]


def open_clip_cmd(steps: int, args, out: Path, shards: list[Path] | None) -> list[str]:
    if shards is None:
        data = ["--dataset-type", "synthetic"]
    else:  # the same shards aotrain reads, drawn with replacement so no epoch ends inside the run
        data = ["--dataset-type", "webdataset", "--train-data", "::".join(map(str, shards)), "--dataset-resampled"]
    return [sys.executable, "-c", OPEN_CLIP_RUNNER, str(REPO / "aotrain" / "model_configs"), *data,
            "--train-num-samples", str(steps * args.batch_size),
            "--batch-size", str(args.batch_size), "--epochs", "1", "--model", args.model,
            "--workers", str(args.workers), "--lr", "1e-3", "--wd", "0.1", "--warmup", str(min(10, steps)),
            "--precision", "amp_bf16" if args.gpu else "fp32", "--logs", str(out),
            "--name", f"bench-{steps}-{time.time_ns()}",
            "--save-frequency", "0", "--zeroshot-frequency", "0", "--log-every-n-steps", "1000"]


def training_flops_per_sample(model_name: str) -> float:
    """FLOPs of one training step (forward + backward) per sample, counted on the CPU at batch 2."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    open_clip.add_model_config(str(REPO / "aotrain" / "model_configs"))
    model = open_clip.create_model(model_name)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    images = torch.randn(2, 3, *size)
    texts = torch.randint(0, 1000, (2, model.context_length))
    with FlopCounterMode(display=False) as counter:
        image_features, text_features, _ = model(images, texts)[:3]
        (image_features.sum() + text_features.sum()).backward()
    return counter.get_total_flops() / 2


def gpu_peak_tflops() -> tuple[str, float | None]:
    import torch

    name = torch.cuda.get_device_name()
    return name, next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def newest_step_time(out: Path) -> dict | None:
    """The step-time medians of the newest aotrain run under `out` (its summary.json)."""
    summaries = sorted(out.glob("runs/*/summary.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(summaries[-1].read_text()).get("step_time") if summaries else None


def training_shards(out: Path) -> list[Path]:
    shards = sorted(out.glob("toyworld/*/subsets/*/shards/shard-*.tar"))
    if not shards:
        sys.exit(f"no subset shards under {out}/toyworld: did `aotrain world` select the recipe's subset?")
    return shards


def measure(make, data, args, out: Path, logs: Path, key: str, repeat: int) -> dict | None:
    """One repeat of one trainer: its short and long runs -> s/step and start-up; None when one failed."""
    short, long = args.steps
    runs = []
    for steps in (short, long):
        run = timed(make(steps, args, out, data), REPO, logs / f"{key}-{steps}-r{repeat}.log")
        if run is None:
            return None
        runs.append(run)
    (t_short, _), (t_long, first_step) = runs
    return {"s_per_step": (t_long - t_short) / (long - short), "startup_s": first_step,
            "wall_short_s": t_short, "wall_long_s": t_long}


def median_row(label: str, key: str, repeats: list[dict], batch_size: int) -> dict:
    """A trainer's figures: medians over its repeats (each repeat's own figures kept under "repeats")."""
    row = {"trainer": label, "key": key, "repeats": repeats}
    for field in ("s_per_step", "startup_s", "wall_short_s", "wall_long_s"):
        values = [r[field] for r in repeats if r[field] is not None]
        row[field] = statistics.median(values) if values else None
    row["samples_per_s"] = batch_size / row["s_per_step"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs=2, default=(10, 40), metavar=("SHORT", "LONG"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", default="toy-vit-tiny")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs per trainer, taking turns (median printed)")
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS), help="which to run (default: all)")
    parser.add_argument("--root", type=Path, help="paths.root of the runs, kept, its toy world reused (default: a temporary folder)")
    parser.add_argument("--gpu", action="store_true", help="one CUDA GPU, bf16 mixed precision (default: CPU, fp32)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--logs", type=Path, help="keep each run's stdout/stderr here (default: a temporary folder)")
    args = parser.parse_args()
    short, long = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        out = args.root or Path(tmp)
        logs = args.logs or out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # The world and the recipe's subset (selected and resharded) are made outside the timing.
        subprocess.run([sys.executable, "-m", "aotrain.cli", "world", f"paths.root={out}"],
                       check=True, capture_output=True)
        shards = training_shards(out)
        # aotrain first: where a time limit cuts the run short (gpu_acceptance.sh), its figure is the one kept.
        sides = [(TRAINERS[key], key, make, data) for key, make, data in (
            ("aotrain_shards", aotrain_cmd, shards), ("open_clip_shards", open_clip_cmd, shards),
            ("bare_shards", bare_cmd, shards), ("open_clip_synthetic", open_clip_cmd, None)) if key in args.trainers]
        repeats = {key: [] for _, key, _, _ in sides}
        failed = set()
        step_times = []
        for repeat in range(args.repeats):
            for label, key, make, data in sides:
                if key in failed:
                    continue
                figures = measure(make, data, args, out, logs, key, repeat)
                if figures is None:
                    failed.add(key)
                    continue
                repeats[key].append(figures)
                if key == "aotrain_shards":  # the long run's own step timer (aotrain/callbacks/step_timer.py)
                    step_times.append(newest_step_time(out))
                if args.json:  # so far: what a time limit leaves behind (replaced by the full figures below)
                    args.json.write_text(json.dumps({"model": args.model, "partial": True, "repeats": repeats}, indent=2) + "\n")
    rows = [median_row(label, key, repeats[key], args.batch_size) for label, key, _, _ in sides
            if key not in failed and repeats[key]]
    failed = [label for label, key, _, _ in sides if key in failed]
    figures = {"model": args.model, "batch_size": args.batch_size, "workers": args.workers, "repeats": args.repeats,
               "steps": [short, long], "device": "cpu", "precision": "fp32", "rows": rows}
    if args.gpu:
        name, peak = gpu_peak_tflops()
        flops = training_flops_per_sample(args.model)
        figures.update(device=name, precision="bf16-mixed", train_gflops_per_sample=flops / 1e9, peak_bf16_tflops=peak)
        for row in rows:
            row["mfu"] = row["samples_per_s"] * flops / (peak * 1e12) if peak else None
    by_key = {row["key"]: row for row in rows}
    for row in rows:
        for base in ("open_clip_synthetic", "open_clip_shards", "bare_shards"):
            row[f"vs_{base}"] = by_key[base]["s_per_step"] / row["s_per_step"] if base in by_key else float("nan")
    print(f"model {args.model}, batch {args.batch_size}, workers {args.workers}, steps {short} vs {long}, "
          f"{figures['device']} {figures['precision']}, median of {args.repeats} repeat(s)")
    print(f"{'trainer':<34}{'s/step':>8}{'samples/s':>11}{'vs synth':>10}{'vs shards':>11}{'vs bare':>9}"
          f"{'MFU':>7}{'1st step':>10}")
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
        startup = f"{row['startup_s']:.1f}s" if row["startup_s"] is not None else "-"
        print(f"{row['trainer']:<34}{row['s_per_step']:>8.3f}{row['samples_per_s']:>11.1f}"
              f"{row['vs_open_clip_synthetic']:>9.2f}x{row['vs_open_clip_shards']:>10.2f}x{row['vs_bare_shards']:>8.2f}x"
              f"{mfu:>7}{startup:>10}")
    print("1st step: seconds from launch to the first backward pass (median); vs X: X's s/step / this one's")
    if args.gpu:
        print(f"training FLOPs per sample {figures['train_gflops_per_sample']:.2f} GFLOP; "
              f"peak {figures['peak_bf16_tflops']} TFLOP/s bf16 dense (datasheet)")
    for label in failed:
        print(f"{label:<34}failed (see its log)")
    for timing in filter(None, step_times):  # where aotrain's step goes: is the GPU (or CPU) waiting for data?
        print(f"aotrain's step in its long run: {describe(timing)}")
    figures["failed"] = failed
    if step_times and "aotrain_shards" in by_key:
        by_key["aotrain_shards"]["step_time"] = step_times[-1]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
