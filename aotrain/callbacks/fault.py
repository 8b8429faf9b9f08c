"""A pre-emption drill: `AOTRAIN_FAULT_AT_STEP=N aotrain fit ...` signals the process once optimizer
step N has finished and its checkpoint, if one was due, is written. The signal is SIGKILL (no
clean-up, like a node lost) unless `AOTRAIN_FAULT_SIGNAL` names another (TERM, USR1, USR2: what a
scheduler sends; aotrain/callbacks/step_guard.py stops at the next step with a checkpoint). Then
`aotrain fit ... resume=auto` shows what a real interruption would cost."""
from __future__ import annotations

import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    def __init__(self, step: int, signum: int = signal.SIGKILL):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # SIGKILL: every rank, as when a node is lost; a scheduler's signal: rank 0 only, so the
        # others learn of it through the step guard's agreement
        if trainer.global_step == self.step and (self.signum == signal.SIGKILL or trainer.is_global_zero):
            os.kill(os.getpid(), self.signum)
            self.step = None  # once: a resumed run passes this step again


def fault_callbacks() -> list:
    step = os.environ.get("AOTRAIN_FAULT_AT_STEP")
    name = os.environ.get("AOTRAIN_FAULT_SIGNAL", "KILL").upper().removeprefix("SIG")
    return [SignalAtStep(int(step), signal.Signals[f"SIG{name}"])] if step else []
