"""Training throughput of `aotrain fit` against open_clip's own trainer, same model and batch, side by side.

Each side runs as a subprocess twice, for a short and a long number of steps; the difference of the
two wall times divided by the difference of steps is the steady-state time per step (start-up,
data generation and the final evaluation cancel out). aotrain reads the toy world's real webdataset
shards; open_clip_train uses its synthetic dataset (no decoding), so it is the faster-data baseline.

    python benchmarks/train_throughput.py                      # toy-vit-tiny, batch 128, 10 vs 40 steps
    python benchmarks/train_throughput.py --steps 20 80 --batch-size 64
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

OPEN_CLIP_RUNNER = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return elapsed


def aotrain_cmd(steps: int, args, out: Path) -> list[str]:
    return [sys.executable, "-m", "aotrain.cli", "fit", f"trainer.max_steps={steps}",
            f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
            f"model.name={args.model}", "eval.every_n_steps=0", "trainer.enable_progress_bar=false",
            f"paths.root={out}", f"optim.warmup_steps={min(10, steps)}"]


def open_clip_cmd(steps: int, args, out: Path) -> list[str]:
    return [sys.executable, "-c", OPEN_CLIP_RUNNER, str(REPO / "aotrain" / "model_configs"),
            "--dataset-type", "synthetic", "--train-num-samples", str(steps * args.batch_size),
            "--batch-size", str(args.batch_size), "--epochs", "1", "--model", args.model,
            "--workers", str(args.workers), "--lr", "1e-3", "--wd", "0.1", "--warmup", str(min(10, steps)),
            "--precision", "fp32", "--logs", str(out), "--name", f"bench-{steps}-{time.time_ns()}",
            "--save-frequency", "0", "--zeroshot-frequency", "0", "--log-every-n-steps", "1000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs=2, default=(10, 40), metavar=("SHORT", "LONG"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", default="toy-vit-tiny")
    args = parser.parse_args()
    short, long = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        subprocess.run([sys.executable, "-m", "aotrain.cli", "world", f"paths.root={out}"],
                       check=True, capture_output=True)  # generate the world outside the timing
        rows = []
        for name, make in (("open_clip_train (synthetic data)", open_clip_cmd),
                           ("aotrain fit (webdataset shards)", aotrain_cmd)):
            t_short = timed(make(short, args, out), REPO)
            t_long = timed(make(long, args, out), REPO)
            per_step = (t_long - t_short) / (long - short)
            rows.append((name, per_step, args.batch_size / per_step, t_short))
    base = rows[0][1]
    print(f"model {args.model}, batch {args.batch_size}, workers {args.workers}, steps {short} vs {long}")
    print(f"{'trainer':<36}{'s/step':>8}{'samples/s':>11}{'vs baseline':>13}{'start-up+':>11}")
    for name, per_step, rate, t_short in rows:
        print(f"{name:<36}{per_step:>8.3f}{rate:>11.1f}{base / per_step:>12.2f}x{t_short:>10.1f}s")


if __name__ == "__main__":
    main()
