"""What every rank agrees on at each optimizer-step boundary, in one all-reduce: whether a stop signal
arrived, and how much of the data was skipped as bad.

Signals (SIGTERM; SIGUSR1, Slurm's pre-emption warning; SIGUSR2, submitit's timeout): the handler
only sets a flag. Saving a checkpoint inside the handler, as Lightning's Slurm handler does, can
deadlock DDP (one rank in the checkpoint's barrier, another in the loss all-gather). At the next
step boundary every rank learns that one of them was signalled, a step-exact checkpoint is saved in
the run folder (`resume=auto` finds it), and before the next batch (the step's metrics logged):
  * under Slurm, on SIGUSR1/SIGUSR2: rank 0 runs `scontrol requeue $SLURM_JOB_ID`; the requeued job
    re-runs its batch script, whose `resume=auto` continues from that checkpoint;
  * otherwise `Interrupted` is raised: `aotrain fit` marks the MLflow run KILLED, prints how to
    resume and exits with 128 + the signal number (143 for SIGTERM).
Before the Trainer is built (toy world, subset stages) nothing is trained and nothing needs saving:
a signal stops the command at once, with the same exit status (and the same requeue under Slurm).

Bad data: the streams count skipped samples per kind (aotrain/data/shard_stream.py); summed over
ranks they are logged as `data/skipped_<kind>`, `data/truncated_shards`, `data/refilled` and
`data/unlabelled_dropped`, and once more than `max_bad_fraction` of the samples read were bad the
run stops with one line naming the worst shards. The share is judged against at least
JUDGED_AFTER samples, so a few bad samples in the first batches do not end a run.

    AOTRAIN_... nothing to set: `aotrain fit` adds this callback to every run.
    kill -TERM <pid of aotrain fit>      # -> checkpoint at the next step, exit 143
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

from aotrain.callbacks.step_timer import host_sync_every
from aotrain.config import UserError
from aotrain.data.shard_stream import SKIP_COLUMNS, read_error_log
from data_filters.samples import KINDS

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
JUDGED_AFTER = 10_000
INTERRUPTED_CHECKPOINT = "interrupted-step{step}.ckpt"

_received: list[int] = []
_at_once = [False]  # before the Trainer exists there is nothing to save: stop at once


def _flag(signum, _frame) -> None:
    _received.append(signum)  # nothing else in a handler once training may run: see the module docstring
    if _at_once[0]:
        _at_once[0] = False
        rank_zero = os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")) == "0"
        raise Interrupted(signum, 0, None, requeued=requeue_slurm_job(signum, rank_zero))


def install_signal_flags(at_once: bool = False) -> None:
    """Route the stop signals to the flag (from the main thread; Lightning restores its own at teardown).

    at_once=True (set-up: world, subset stages): a signal raises Interrupted right away, nothing
    trained and nothing to save; `stop_at_step_boundary()` ends that before the Trainer is built."""
    _at_once[0] = at_once
    for signum in STOP_SIGNALS:
        signal.signal(signum, _flag)


def stop_at_step_boundary() -> None:
    _at_once[0] = False


def requeue_slurm_job(signum: int, rank_zero: bool) -> bool:
    """Under Slurm, on SIGUSR1/SIGUSR2: `scontrol requeue` this job (from rank 0); whether it is requeued."""
    if signum not in REQUEUE_SIGNALS or not os.environ.get("SLURM_JOB_ID"):
        return False
    if not rank_zero:
        return True  # rank 0 asks for all
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"aotrain: scontrol requeue {job} failed: {done.stderr.strip()}", file=sys.stderr, flush=True)
    return done.returncode == 0


def received_signal() -> int | None:
    return _received[0] if _received else None


class Interrupted(Exception):
    """A run stopped by a signal at a step boundary, its checkpoint saved (None: before training)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None, requeued: bool = False):
        self.signum, self.step, self.checkpoint, self.requeued = signum, step, checkpoint, requeued
        super().__init__(self.describe())

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        name = signal.Signals(self.signum).name
        where = f"at step {self.step}" if self.checkpoint else "before training started"
        saved = f"; checkpoint {self.checkpoint}" if self.checkpoint else ""
        if self.requeued:
            return f"{name} {where}{saved}; Slurm job requeued, it resumes from there"
        args = [a for a in sys.argv[1:] if not a.startswith("resume=")]
        command = shlex.join(["aotrain", *args, "resume=auto"]) if args else "aotrain fit resume=auto"
        return f"interrupted by {name} {where}{saved}; continue with: {command}"


class StepGuard(L.Callback):
    """At every optimizer step (on a GPU every GPU_EVERY steps): agree on signals and bad-data counts."""

    def __init__(self, run_dir: str, max_bad_fraction: float = 0.001, error_log: str | None = None):
        self.run_dir = Path(run_dir)
        self.max_bad_fraction = max_bad_fraction
        self.error_log = error_log
        self.before = [0] * (len(SKIP_COLUMNS) + 1)  # totals of the interrupted run this one resumed
        self.totals = list(self.before)  # over all ranks: SKIP_COLUMNS counts, then samples trained
        self._last_step = None
        self._pending = None  # (signal, checkpoint) once every rank knows of a stop signal

    def state_dict(self) -> dict:
        return {"totals": list(self.totals)}

    def load_state_dict(self, state: dict) -> None:
        self.before = list(state.get("totals", self.before))
        self.totals = list(self.before)

    def on_train_start(self, trainer, pl_module) -> None:
        install_signal_flags()  # replaces Lightning's (its Slurm handler saves inside the handler)
        if received_signal() is not None:  # arrived while the run was being set up
            self._stop(trainer, received_signal(), None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # accumulating gradients: not a step boundary yet
        self._last_step = trainer.global_step
        # Reading the all-reduced flags makes the host wait for the device, so on a GPU the ranks agree
        # every GPU_EVERY steps (step_timer.host_sync_every); a stop signal then takes effect within
        # that many steps, still at a step boundary with its checkpoint. The same steps on every
        # rank, so every rank joins the same all-reduces.
        if trainer.global_step % host_sync_every(trainer):
            return
        signals, totals = self._agree(pl_module)
        self.totals = [b + t for b, t in zip(self.before, totals)]
        self._log(pl_module)
        self._check_bad_fraction(trainer)
        if any(signals) and self._pending is None:
            # Saved here, where ModelCheckpoint saves (the loop state resumes cleanly from this hook);
            # stopped at the next batch's start, once Lightning has logged this step's metrics.
            self._pending = (STOP_SIGNALS[signals.index(max(signals))], self._save(trainer))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            self._stop(trainer, *self._pending)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and (summary := self.describe_skipped()):
            print(f"data: {summary}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ one all-reduce per step
    def _agree(self, pl_module) -> tuple[list[int], list[int]]:
        """(per stop signal: ranks that received it, totals over ranks since this start)."""
        mine = received_signal()
        flags = [int(mine == s) for s in STOP_SIGNALS]
        counts = getattr(pl_module, "data_totals", None)
        device = counts.device if counts is not None else pl_module.device
        counts = counts if counts is not None else torch.zeros(len(SKIP_COLUMNS), dtype=torch.long, device=device)
        local = torch.cat([torch.tensor(flags, device=device), counts.long(),
                           torch.tensor([getattr(pl_module, "data_samples", 0)], device=device)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(local, op=dist.ReduceOp.SUM)
        values = local.tolist()
        return values[:len(STOP_SIGNALS)], values[len(STOP_SIGNALS):]

    def counts(self) -> dict[str, int]:
        return dict(zip(SKIP_COLUMNS, self.totals))

    def _log(self, pl_module) -> None:
        counts = self.counts()
        names = {"unlabelled": "data/unlabelled_dropped", "truncated_shard": "data/truncated_shards",
                 "refilled": "data/refilled", **{k: f"data/skipped_{k}" for k in KINDS}}
        for column, name in names.items():
            pl_module.log(name, float(counts[column]))

    # ------------------------------------------------------------------ bad data
    def bad_samples(self) -> int:
        counts = self.counts()
        return sum(counts[k] for k in KINDS)

    def _check_bad_fraction(self, trainer) -> None:
        bad, trained = self.bad_samples(), self.totals[-1]
        read = bad + trained
        if bad <= self.max_bad_fraction * max(read, JUDGED_AFTER):
            return
        raise UserError(f"data: {bad:,} of {read:,} samples read ({bad / read:.2%}) were bad, more than "
                        f"data.max_bad_fraction={self.max_bad_fraction:g}; {self.worst_shards()}")

    def worst_shards(self, n: int = 3) -> str:
        records = read_error_log(self.error_log)
        if not records:
            return "no error log"
        by_shard = Counter(r["shard"] for r in records)
        kinds = {s: Counter(r["kind"] for r in records if r["shard"] == s) for s, _ in by_shard.most_common(n)}
        worst = ", ".join(f"{s} ({by_shard[s]}: " + ", ".join(f"{c} {k}" for k, c in kinds[s].most_common()) + ")"
                          for s, _ in by_shard.most_common(n))
        return f"worst shards: {worst}; every skipped sample is listed in {self.error_log}"

    def describe_skipped(self) -> str:
        """One line on what was skipped ('' when nothing was)."""
        counts = self.counts()
        parts = [f"{counts[k]:,} {k}" for k in KINDS if counts[k]]
        if counts["truncated_shard"]:
            parts.append(f"{counts['truncated_shard']:,} truncated shard read(s)")
        if counts["refilled"]:
            parts.append(f"{counts['refilled']:,} samples read twice to keep ranks equal")
        if not parts:
            return ""
        where = f" (listed in {self.error_log})" if self.error_log and read_error_log(self.error_log) else ""
        return f"skipped {', '.join(parts)}; trained on {self.totals[-1]:,} samples{where}"

    # ------------------------------------------------------------------ signals
    def _save(self, trainer) -> str:
        path = self.run_dir / "checkpoints" / INTERRUPTED_CHECKPOINT.format(step=trainer.global_step)
        trainer.save_checkpoint(str(path))  # every rank calls it: sharded strategies write their part
        if trainer.is_global_zero:  # one interruption checkpoint is enough: older ones are full copies too
            for old in path.parent.glob("interrupted-step*.ckpt"):
                if old != path:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
        return str(path)

    def _stop(self, trainer, signum: int, checkpoint: str | None) -> None:
        requeued = requeue_slurm_job(signum, trainer.is_global_zero)
        raise Interrupted(signum, trainer.global_step, checkpoint, requeued=requeued)
