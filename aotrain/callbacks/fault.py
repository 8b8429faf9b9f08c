"""A pre-emption drill: `AOTRAIN_FAULT_AT_STEP=N aotrain fit ...` kills the process (SIGKILL, no
clean-up, like a node lost) once optimizer step N has finished and its checkpoint, if one was due,
is written. Then `aotrain fit ... resume=auto` shows what a real interruption would cost."""
from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def fault_callbacks() -> list:
    step = os.environ.get("AOTRAIN_FAULT_AT_STEP")
    return [KillAtStep(int(step))] if step else []
