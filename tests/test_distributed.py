"""Scale-out on CPU: the contrastive loss across ranks, how ranks split the data, a 2-process DDP fit
through the CLI, and the config of every strategy (the GPU engines run in gpu-marked tests)."""
import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, StrategyRegistry
from mlflow.tracking import MlflowClient
from open_clip.loss import ClipLoss, SigLipLoss

from aotrain.config import compose, instantiate
from aotrain.data.datamodule import ShardDataModule
from aotrain.modules.clip import CLIPModule
from aotrain.strategies import FSDP2Strategy
from conftest import run_cli

N, D = 8, 16  # global batch, feature width


def _features():
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=-1)
    return image, text


def _rank_losses(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    image, text = _features()
    local = slice(rank * N // world, (rank + 1) * N // world)
    clip = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
    siglip = SigLipLoss(rank=rank, world_size=world)
    losses = {"clip": clip(image[local], text[local], torch.tensor(20.0)).item(),
              "siglip": siglip(image[local], text[local], torch.tensor(10.0), torch.tensor(-5.0)).item()}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(losses, f)
    dist.destroy_process_group()


def test_gathered_losses_average_to_the_single_process_global_loss(tmp_path):
    out = str(tmp_path / "loss")
    mp.spawn(_rank_losses, args=(2, 29511, out), nprocs=2, join=True)
    ranks = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    image, text = _features()
    global_clip = ClipLoss()(image, text, torch.tensor(20.0)).item()
    global_siglip = SigLipLoss()(image, text, torch.tensor(10.0), torch.tensor(-5.0)).item()
    # DDP averages the ranks' gradients, so the mean of the ranks' losses is the loss it optimises.
    assert sum(r["clip"] for r in ranks) / 2 == pytest.approx(global_clip, abs=1e-5)
    assert sum(r["siglip"] for r in ranks) / 2 == pytest.approx(global_siglip, abs=1e-5)


def test_temperature_is_capped_inside_the_loss():
    module = CLIPModule("toy-vit-micro", {"lr": 1e-3, "weight_decay": 0.1}, total_steps=1)
    with torch.no_grad():
        module.net.logit_scale.fill_(math.log(1000.0))  # exp: 1000, above CLIP's cap of 100
    images, tokens = torch.rand(4, 3, 32, 32), torch.randint(1, 100, (4, 32))
    loss = module.training_step((images, tokens, torch.zeros(4, dtype=torch.long)), 0)
    out = module.net(images, tokens)
    assert loss.item() == pytest.approx(ClipLoss()(out["image_features"], out["text_features"], 100.0).item())
    loss.backward()
    assert module.net.logit_scale.grad.item() == 0.0  # nothing pushes it further


def test_siglip_module_trains_a_step():
    module = CLIPModule("toy-vit-micro", {"lr": 1e-3, "weight_decay": 0.1}, total_steps=1, loss="siglip")
    assert module.net.logit_bias is not None
    loss = module.training_step((torch.rand(4, 3, 32, 32), torch.randint(1, 100, (4, 32)), torch.zeros(4)), 0)
    assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def pool(small_world):
    return small_world(n_samples=500, samples_per_shard=60) / "pool"  # 9 shards of unequal totals across ranks


def _rank_keys(pool, monkeypatch, rank, world, **kw):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    dm = ShardDataModule(str(pool), "toy-vit-micro", batch_size=10, num_workers=0, shuffle_buffer=30, seed=1, **kw)
    return [s["__key__"] for s in dm.stream().labelled_samples()]


def test_ranks_never_share_a_sample_and_get_equal_shares(pool, monkeypatch):
    keys = [_rank_keys(pool, monkeypatch, r, 2) for r in range(2)]
    assert not set(keys[0]) & set(keys[1])
    assert len(keys[0]) == len(keys[1]) > 0  # the same number of batches: no rank waits at the epoch's end
    assert len(set(keys[0]) | set(keys[1])) <= 500


def test_resampled_streams_have_equal_quotas(pool, monkeypatch):
    keys = [_rank_keys(pool, monkeypatch, r, 2, resampled=True, samples_per_epoch=300) for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == 150
    assert keys[0] == _rank_keys(pool, monkeypatch, 0, 2, resampled=True, samples_per_epoch=300)  # seeded


def test_two_process_ddp_fit_through_the_cli(tmp_path):
    # eval.batch_size=32: the smoke benchmark's 40 unseen and 100 seen images are 6 batches, 3 per rank.
    proc = run_cli("fit", "debug=smoke", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.precision=32-true", "data.batch_size=16", "eval.batch_size=32", root=tmp_path,
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # both ranks wrote into one run folder
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["steps"] == 4
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(summary["run_id"])
    assert run.data.params["batch_size"] == "16" and json.loads((runs[0] / "parity.json").read_text())[
        "global_batch"] == 32
    assert "eval/unseen/pair_top1" in run.data.metrics

    # Each rank encoded its slice of the 260 images (140 by the first renderer, 120 by the second), whole
    # batches in rank order (at each evaluation: steps 2 and 4).
    for step in (2, 4):
        assert f"eval: step {step}, rank 0 of 2 encoded 136 of 260 images" in proc.stderr, proc.stderr[-3000:]
        assert f"eval: step {step}, rank 1 of 2 encoded 124 of 260 images" in proc.stderr
    # The gathered metrics are one process's: `aotrain eval` of the same weights, the same batches (the
    # run's eval.batch_size). Equal to the last bit, the CZSL curve's bias midpoints included.
    last = runs[0] / "checkpoints" / "last.ckpt"
    alone = run_cli("eval", f"checkpoint={last}", f"out={tmp_path / 'alone'}", root=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    in_training = json.loads((runs[0] / "eval" / "metrics.json").read_text())
    assert json.loads((tmp_path / "alone" / "metrics.json").read_text()) == in_training and len(in_training) > 20
    assert (tmp_path / "alone" / "eval_table.csv").read_text() == (runs[0] / "eval" / "eval_table.csv").read_text()
    assert (tmp_path / "alone" / "czsl_curve.csv").read_text() == (runs[0] / "eval" / "czsl_curve.csv").read_text()
    assert run.data.metrics["eval/czsl/auc"] == in_training["czsl/auc"]


STRATEGIES = ["ddp", "fsdp", "fsdp_offload", "fsdp2", "fsdp2_offload", "deepspeed_stage_2", "deepspeed_stage_3",
              "deepspeed_stage_2_offload", "deepspeed_stage_3_offload"]


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_config_builds(name):
    cfg = compose([f"trainer={name}"])
    # FSDP2 casts through its own mixed-precision policy (bf16 on GPUs), so Lightning's stays fp32.
    assert cfg.trainer.precision == ("32-true" if name.startswith("fsdp2") else "bf16-mixed")
    assert cfg.trainer.gradient_clip_val == 1.0
    strategy = cfg.trainer.strategy
    if name == "ddp":
        trainer = instantiate(cfg.trainer, accelerator="cpu", devices=1, precision="32-true", logger=False)
        assert type(trainer.strategy).__name__ == "DDPStrategy"
    elif name.startswith("fsdp2"):
        built = instantiate(strategy)
        assert isinstance(built, FSDP2Strategy)
        assert built.cpu_offload == name.endswith("offload") and built.mixed_precision == "auto"
    elif name.startswith("fsdp"):
        built = instantiate(strategy)
        assert isinstance(built, FSDPStrategy)
        assert built.sharding_strategy.name == "FULL_SHARD"
        assert built.cpu_offload.offload_params == name.endswith("offload")
    else:
        built = StrategyRegistry.get(strategy)  # what the Trainer builds from the name
        assert isinstance(built, DeepSpeedStrategy)
        zero = built.config["zero_optimization"]
        assert zero["stage"] == int(name.split("_")[2])
        assert ("offload_optimizer" in zero) == name.endswith("offload")
