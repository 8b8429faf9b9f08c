"""Fit the smoke modules on fixed global batches under one trainer recipe; tests/test_fsdp2.py compares
the results across strategies and world sizes.

    python tests/same_batches.py TRAINER DEVICES BATCHES.pt WORLD_DIR OUT_DIR
    python tests/same_batches.py fsdp2 2 batches.pt outputs/toyworld/toyworld-… /tmp/fsdp2

BATCHES.pt holds smoke-world samples decoded by the real data stream ({"images", "tokens", "labels",
"skipped"}).
Every rank trains on its slice of each global batch (rank r of W: rows r*B/W to (r+1)*B/W), so one
process and several see the same global batches. Three modules are fitted in turn (CLIP with the
softmax loss, with the sigmoid loss, and the supervised twin), each from the seed's initial weights.
Writes OUT_DIR/<module>-rank<r>.json (each step's loss on that rank) and, from rank 0,
OUT_DIR/<module>-init.pt and OUT_DIR/<module>.pt (the full weights before the first step and after the last).
"""
import json
import sys
from pathlib import Path

import lightning as L
import torch

from aotrain.config import compose, instantiate, to_dict
from aotrain.modules.clip import CLIPModule
from aotrain.modules.supervised import SupervisedModule

STEPS = 4


class Slices(L.LightningDataModule):
    """Each rank's rows of every global batch, in order."""

    def __init__(self, tensors: list[torch.Tensor], global_batch: int):
        super().__init__()
        self.tensors, self.global_batch = tensors, global_batch

    def train_dataloader(self):
        rank, world = self.trainer.global_rank, self.trainer.world_size
        local = self.global_batch // world
        rows = [step * self.global_batch + rank * local + i for step in range(STEPS) for i in range(local)]
        dataset = torch.utils.data.TensorDataset(*(t[rows] for t in self.tensors))
        return torch.utils.data.DataLoader(dataset, batch_size=local, shuffle=False)


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def full_weights(trainer, module) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # a collective under FSDP2
    return {k: v.detach().clone() for k, v in get_model_state_dict(module.net, options=options).items()}


def main(trainer_name: str, devices: int, batches: str, world_dir: str, out: str) -> None:
    cfg = compose(["debug=smoke", f"trainer={trainer_name}"])
    data = torch.load(batches, weights_only=True)
    global_batch = 16
    optim = to_dict(cfg.optim)
    modules = {
        "clip": lambda: CLIPModule(cfg.model.name, optim, total_steps=STEPS),
        "siglip": lambda: CLIPModule(cfg.model.name, optim, total_steps=STEPS, loss="siglip"),
        "supervised": lambda: SupervisedModule(cfg.model.name, optim, total_steps=STEPS,
                                               vocabulary=f"world:{world_dir}"),
    }
    for name, build in modules.items():
        torch.manual_seed(0)
        module = build()
        losses = Losses()
        trainer = instantiate(cfg.trainer, accelerator="cpu", devices=devices, precision="32-true", max_steps=STEPS,
                              gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, use_distributed_sampler=False, callbacks=[losses])
        if trainer.global_rank == 0:  # before fit: the same initial weights on every rank
            torch.save({k: v.detach().clone() for k, v in module.net.state_dict().items()}, Path(out, f"{name}-init.pt"))
        targets = data["labels"] if name == "supervised" else data["tokens"]
        trainer.fit(module, datamodule=Slices([data["images"], targets, data["skipped"]], global_batch))
        weights = full_weights(trainer, module)
        Path(out, f"{name}-rank{trainer.global_rank}.json").write_text(json.dumps(losses.losses))
        if trainer.global_rank == 0:
            torch.save(weights, Path(out, f"{name}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:6])
