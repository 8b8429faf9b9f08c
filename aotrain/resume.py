"""`resume=auto|RUN_DIR|CKPT`: which run folder and checkpoint a fit continues from.

    aotrain fit recipe=toy_low_nmi resume=auto     # the newest unfinished run of this recipe, if any
    aotrain fit ... resume=outputs/runs/toy_low_nmi-20261128-101500

What comes back (Lightning restores the first three from the checkpoint; aotrain the rest):
  * weights, optimizer and LR-scheduler state, global step;
  * the data position: the stream's epoch and the batches already trained in it (the datamodule's
    state), so training continues at the next batch; augmentation is seeded per sample, so the
    continued epoch is sample-exact, crops included (aotrain/data/shard_stream.py);
  * each rank's RNG states (torch, numpy, python);
  * the MLflow run: metrics continue in the same run (a step logged between the last checkpoint
    and the interruption is logged again).
On CPU this reproduces an uninterrupted run's final weights exactly (tests/test_resume.py). On GPUs,
non-deterministic kernels make it equal up to floating-point noise.

Candidates: a Slurm requeue or a DDP child knows its run id (AOTRAIN_RUN_ID) and looks only there;
otherwise the newest `<paths.root>/runs/<name>-*` folder without a summary.json (unfinished).
In a folder, the newest of checkpoints/interrupted-step*.ckpt (saved at the step boundary after a
SIGTERM/SIGUSR1/SIGUSR2: aotrain/callbacks/step_guard.py), checkpoints/last.ckpt and Lightning's
hpc_ckpt_*.ckpt (older runs) wins.
"""
from __future__ import annotations

import os
from pathlib import Path

from aotrain.config import UserError


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = [*run_dir.glob("hpc_ckpt_*.ckpt"), *(run_dir / "checkpoints").glob("interrupted-step*.ckpt"),
             run_dir / "checkpoints" / "last.ckpt"]
    found = [p for p in found if p.exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_resume(spec: str, runs_root: Path, name: str) -> tuple[Path, Path] | None:
    """(run folder, checkpoint) to continue, or None when `resume=auto` finds nothing to continue."""
    if spec != "auto":
        path = Path(spec)
        run_dir = path.parent.parent if path.is_file() else path
        ckpt = path if path.is_file() else newest_checkpoint(path) if path.is_dir() else None
        if ckpt is None:
            raise UserError(f"resume={spec}: no checkpoint there (a run folder or a .ckpt file)")
        return run_dir, ckpt
    run_id = os.environ.get("AOTRAIN_RUN_ID")
    if run_id:
        candidates = [runs_root / f"{name}-{run_id}"]
    else:
        candidates = sorted(runs_root.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for run_dir in candidates:
        if run_dir.is_dir() and not (run_dir / "summary.json").exists():
            ckpt = newest_checkpoint(run_dir)
            if ckpt is not None:
                return run_dir, ckpt
    return None
