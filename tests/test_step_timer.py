"""The step timer tells data wait from compute: a loader that sleeps shows up as wait, a step that
sleeps as compute (sleeps only bound the times from below, so the test holds on any machine)."""
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from aotrain.callbacks.step_timer import StepTimer, describe

LOADER_SLEEP, STEP_SLEEP, STEPS = 0.06, 0.02, 12


class _SlowBatches(IterableDataset):
    def __iter__(self):
        while True:
            time.sleep(LOADER_SLEEP)
            yield torch.ones(2)


class _SleepyModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_SLEEP)
        return (self.w * batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_loader_time_is_wait_and_step_time_is_compute():
    timer = StepTimer(warmup=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(_SleepyModule(), DataLoader(_SlowBatches(), batch_size=None))
    timing = timer.summary()
    assert timing["timed_steps"] == STEPS - 2
    assert timing["data_wait_median_s"] >= LOADER_SLEEP * 0.9  # Lightning fetches one batch ahead: at least one sleep
    assert timing["compute_median_s"] >= STEP_SLEEP
    assert timing["data_wait_median_s"] > timing["compute_median_s"]
    assert "data wait" in describe(timing)


def test_sampled_steps_are_every_nth_after_the_warmup():
    timer = StepTimer(warmup=2, every=3)
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(_SleepyModule(), DataLoader(_SlowBatches(), batch_size=None))
    timing = timer.summary()
    assert timing["timed_steps"] == len([s for s in range(3, STEPS + 1) if s % 3 == 0])  # steps 3, 6, 9, 12
    assert timing["data_wait_median_s"] >= LOADER_SLEEP * 0.9 and timing["compute_median_s"] >= STEP_SLEEP
    assert "(1 in 3)" in describe(timing)


def test_no_timed_steps_gives_no_summary():
    assert StepTimer().summary() is None
