"""The training loop of `aotrain fit` written in plain PyTorch: Lightning's overhead is the difference.

    .venv/bin/python benchmarks/bare_loop.py trainer.max_steps=40 data.num_workers=1   # any `aotrain fit` overrides

What is the same as `aotrain fit` with those overrides: the composed config, the toy world and the
selected subset (aotrain.train.prepare), the data loader over the same ShardStream
(ShardDataModule.train_dataloader), the model (aotrain.towers.build_clip), open_clip's ClipLoss with
the logit-scale cap, AdamW and the warmup-cosine schedule (aotrain.modules.optim.build_optimizer),
the seed. What is left out: Lightning (Trainer, callbacks, logging, checkpoints), the evaluation and
MLflow. It prints the loss at the steps Lightning logs `train/loss` at: the same numbers (checked
on a debug=smoke world with toy-vit-tiny, batch 128: 4.852477 at step 10 in both). One CPU process
(or one CUDA GPU with trainer.accelerator=gpu, bf16 autocast with trainer.precision=bf16-mixed);
benchmarks/train_throughput.py times it beside the others.
"""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

import lightning as L  # noqa: E402  (seed_everything only: the same seeds as aotrain fit)
import torch  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402

from aotrain import towers  # noqa: E402
from aotrain.config import compose, instantiate, to_dict  # noqa: E402
from aotrain.modules.clip import MAX_LOGIT_SCALE  # noqa: E402
from aotrain.modules.optim import build_optimizer  # noqa: E402
from aotrain.train import prepare  # noqa: E402


def train(overrides: list[str]) -> None:
    cfg = compose(overrides)
    prepare(cfg)  # world, subset and resolved paths, as aotrain fit
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in str(cfg.trainer.precision) else nullcontext()
    loader = instantiate(cfg.data).train_dataloader()
    net = towers.build_clip(cfg.model.name).to(device)
    loss_fn = ClipLoss()
    steps = cfg.trainer.max_steps
    opt = build_optimizer(net, total_steps=steps, **to_dict(cfg.optim))
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    step, start = 0, time.perf_counter()
    while step < steps:
        for images, tokens, _skipped in loader:  # [B,3,H,W], [B,L], [B,len(SKIP_COLUMNS)]
            images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
            with autocast:
                out = net(images, tokens)
                scale = out["logit_scale"].clamp(max=MAX_LOGIT_SCALE)
                loss = loss_fn(out["image_features"], out["text_features"], scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.trainer.gradient_clip_val:  # as Lightning's Trainer(gradient_clip_val=...) does
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.trainer.gradient_clip_val)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % cfg.trainer.log_every_n_steps == 0:  # the steps Lightning logs train/loss at
                print(f"step {step} loss {loss.item():.6f}", flush=True)
            if step >= steps:
                break
    print(f"bare loop: {steps} steps in {time.perf_counter() - start:.1f} s, last loss {loss.item():.4f}")


if __name__ == "__main__":
    train(sys.argv[1:])
