"""Training throughput of `aotrain fit` against open_clip's own trainer, same model and batch, side by side.

Three trainers, each run as a subprocess twice, for a short and a long number of steps; the difference
of the two wall times divided by the difference of steps is the steady-state time per step (start-up,
the pool stages and the final evaluation cancel out):
- aotrain fit on the toy world's webdataset shards,
- open_clip_train on the same shards (the like-for-like baseline),
- open_clip_train on its synthetic dataset (no decoding: the data-light ceiling).

    python benchmarks/train_throughput.py                      # CPU: toy-vit-tiny, batch 128, 10 vs 40 steps
    python benchmarks/train_throughput.py --steps 20 80 --batch-size 64
    python benchmarks/train_throughput.py --gpu --model ViT-B-32 --batch-size 256 --workers 8 \\
        --steps 10 110 --json throughput.json                  # one CUDA GPU, bf16 (gpu_acceptance.sh)

aotrain's long run also reports where its step goes (data wait against compute, medians of its own
step timer). On a GPU it also prints model FLOPs utilisation: the model's training FLOPs per sample (counted with
torch.utils.flop_counter on one forward and backward) x samples/s over the chip's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without install

from aotrain.callbacks.step_timer import describe  # noqa: E402

OPEN_CLIP_RUNNER = """
import functools, sys, open_clip
import open_clip_train.data, webdataset.tariterators
open_clip.add_model_config(sys.argv[1])
# open_clip_train 3.3 predates webdataset 1.0's end-of-shard marker (an empty sample, which its
# grouping stage cannot read): ask the tar expander for none.
open_clip_train.data.tar_file_expander = functools.partial(webdataset.tariterators.tar_file_expander, eof_value=None)
from open_clip_train.main import main
main(sys.argv[2:])
"""

# Dense bf16 tensor-core peaks from the vendors' datasheets (SXM parts), TFLOP/s.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def timed(cmd: list[str], cwd: Path, log: Path) -> float | None:
    """Wall seconds of `cmd`, or None (its error printed) when it fails: the other trainers still run."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        print(f"failed ({log}): {' '.join(cmd)[:300]}\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return elapsed


def aotrain_cmd(steps: int, args, out: Path, shards: list[Path]) -> list[str]:
    cmd = [sys.executable, "-m", "aotrain.cli", "fit", f"trainer.max_steps={steps}",
           f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
           f"model.name={args.model}", "eval.every_n_steps=0", "trainer.enable_progress_bar=false",
           f"paths.root={out}", f"optim.warmup_steps={min(10, steps)}"]
    if args.gpu:
        cmd += ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"]
    return cmd


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs=2, default=(10, 40), metavar=("SHORT", "LONG"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", default="toy-vit-tiny")
    parser.add_argument("--gpu", action="store_true", help="one CUDA GPU, bf16 mixed precision (default: CPU, fp32)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--logs", type=Path, help="keep each run's stdout/stderr here (default: a temporary folder)")
    args = parser.parse_args()
    short, long = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        logs = args.logs or out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # The world and the recipe's subset (selected and resharded) are made outside the timing.
        subprocess.run([sys.executable, "-m", "aotrain.cli", "world", f"paths.root={out}"],
                       check=True, capture_output=True)
        shards = training_shards(out)
        # aotrain first: where a time limit cuts the run short (gpu_acceptance.sh), its figure is the one kept.
        sides = (("aotrain fit, toy shards", "aotrain_shards", aotrain_cmd, shards),
                 ("open_clip_train, toy shards", "open_clip_shards", open_clip_cmd, shards),
                 ("open_clip_train, synthetic data", "open_clip_synthetic", open_clip_cmd, None))
        rows = []
        for label, key, make, data in sides:
            t_short = timed(make(short, args, out, data), REPO, logs / f"{key}-{short}.log")
            t_long = timed(make(long, args, out, data), REPO, logs / f"{key}-{long}.log") if t_short else None
            if t_long is None:
                rows.append({"trainer": label, "key": key, "failed": True})
                continue
            per_step = (t_long - t_short) / (long - short)
            rows.append({"trainer": label, "key": key, "s_per_step": per_step,
                         "samples_per_s": args.batch_size / per_step, "wall_short_s": t_short, "wall_long_s": t_long})
            if key == "aotrain_shards":  # the long run's own step timer (aotrain/callbacks/step_timer.py)
                rows[-1]["step_time"] = newest_step_time(out)
            if args.json:  # so far: what a time limit leaves behind (replaced by the full figures below)
                args.json.write_text(json.dumps({"model": args.model, "partial": True, "rows": rows}, indent=2) + "\n")
    failed = [row for row in rows if row.get("failed")]
    rows = [row for row in rows if not row.get("failed")]
    figures = {"model": args.model, "batch_size": args.batch_size, "workers": args.workers,
               "steps": [short, long], "device": "cpu", "precision": "fp32", "rows": rows}
    if args.gpu:
        name, peak = gpu_peak_tflops()
        flops = training_flops_per_sample(args.model)
        figures.update(device=name, precision="bf16-mixed", train_gflops_per_sample=flops / 1e9, peak_bf16_tflops=peak)
        for row in rows:
            row["mfu"] = row["samples_per_s"] * flops / (peak * 1e12) if peak else None
    by_key = {row["key"]: row for row in rows}
    for row in rows:
        for base in ("open_clip_synthetic", "open_clip_shards"):
            row[f"vs_{base}"] = by_key[base]["s_per_step"] / row["s_per_step"] if base in by_key else float("nan")
    print(f"model {args.model}, batch {args.batch_size}, workers {args.workers}, steps {short} vs {long}, "
          f"{figures['device']} {figures['precision']}")
    print(f"{'trainer':<34}{'s/step':>8}{'samples/s':>11}{'vs synth':>10}{'vs shards':>11}{'MFU':>7}{'start-up+':>11}")
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
        print(f"{row['trainer']:<34}{row['s_per_step']:>8.3f}{row['samples_per_s']:>11.1f}"
              f"{row['vs_open_clip_synthetic']:>9.2f}x{row['vs_open_clip_shards']:>10.2f}x{mfu:>7}"
              f"{row['wall_short_s']:>10.1f}s")
    if args.gpu:
        print(f"training FLOPs per sample {figures['train_gflops_per_sample']:.2f} GFLOP; "
              f"peak {figures['peak_bf16_tflops']} TFLOP/s bf16 dense (datasheet)")
    for row in failed:
        print(f"{row['trainer']:<34}failed (see its log)")
    timing = next((row.get("step_time") for row in rows if row.get("step_time")), None)
    if timing:  # where aotrain's step goes: is the GPU (or CPU) waiting for data?
        print(f"aotrain's step in its long run: {describe(timing)}")
    figures["failed"] = [row["trainer"] for row in failed]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
