"""aotrain export: single-file, FSDP-sharded (DCP) and DeepSpeed checkpoints -> one file aotrain eval reads.

CPU (default suite): a real Lightning CPU checkpoint passes through; a DCP folder written by 2 gloo processes
with Lightning's own `_distributed_checkpoint_save` in the layout FSDPStrategy(state_dict_type="sharded")
writes is consolidated (Lightning and torch refuse FSDP itself on CPU); the DeepSpeed path around
DeepSpeed's own fp32 merge; user errors. GPU (-m gpu): real DeepSpeed stage 3 and FSDP fits.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from aotrain.checkpoints import load_checkpoint
from aotrain.export import VECTORISED_KEY, default_destination, detect_format, export_checkpoint, export_main
from aotrain.data.shard_stream import SKIP_COLUMNS
from aotrain.modules.clip import CLIPModule

OPTIM = {"lr": 1e-3, "weight_decay": 0.1}


class _Batches(Dataset):
    """(images [3,32,32], tokens [32] long, skipped counts long) as CLIPModule.training_step unpacks them."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 32, 32, generator=g), torch.randint(1, 100, (32,), generator=g), torch.zeros(len(SKIP_COLUMNS), dtype=torch.long)


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def _inputs(device="cpu"):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, 32, 32, generator=g).to(device), torch.randint(1, 100, (2, 32), generator=g).to(device))


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory):
    """(path of a real Lightning CPU checkpoint of CLIPModule('toy-vit-micro') after one step, its module)."""
    torch.manual_seed(0)
    module = CLIPModule("toy-vit-micro", OPTIM, total_steps=1)
    trainer = _trainer(accelerator="cpu", devices=1, max_steps=1)
    trainer.fit(module, DataLoader(_Batches(), batch_size=4))
    path = tmp_path_factory.mktemp("lightning") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def _assert_same_weights(net, module):
    own = {f"net.{k}": v for k, v in net.state_dict().items()}
    ref = module.state_dict()
    assert own.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.equal(own[k].cpu(), v.detach().cpu().to(own[k].dtype)), k


def test_single_file_passes_through(lightning_ckpt, capsys):
    src, module = lightning_ckpt
    assert detect_format(src) == "file"
    assert export_main([str(src)]) == 0
    dst = src.with_name("last-consolidated.ckpt")
    assert str(dst) in capsys.readouterr().out
    assert dst.read_bytes() == src.read_bytes()
    net, info = load_checkpoint(dst)
    assert info["kind"] == "clip" and info["model_name"] == "toy-vit-micro" and info["step"] == 1
    _assert_same_weights(net, module)


# --- FSDP sharded: what lightning.pytorch.strategies.FSDPStrategy.save_checkpoint writes -----------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_writer(rank: int, world: int, port: int, src: str, out: str) -> None:
    """One rank: shard every tensor (DTensor, Shard(0)) over a 2-rank CPU mesh and save as FSDPStrategy does."""
    import torch.distributed as dist
    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        checkpoint = torch.load(src, map_location="cpu", weights_only=True)

        def shard(t):
            placement = Shard(0) if t.dim() > 0 and t.shape[0] >= world else Replicate()
            return distribute_tensor(t, mesh, [placement])

        model = {k: shard(v) for k, v in checkpoint.pop("state_dict").items()}
        names = list(model)
        optim = checkpoint.pop("optimizer_states")[0]  # keyed by FQN, as FSDP's sharded optimizer state dict
        optim_sharded = {"state": {names[i]: {"exp_avg": shard(s["exp_avg"]), "step": s["step"]}
                                   for i, s in optim["state"].items()},
                         "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim["param_groups"]]}
        _distributed_checkpoint_save({"model": model, "optimizer_0": optim_sharded}, Path(out))
        if rank == 0:
            torch.save(checkpoint, Path(out) / "meta.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp_sharded_folder_is_consolidated(lightning_ckpt, tmp_path, capsys):
    src, module = lightning_ckpt
    folder = tmp_path / "checkpoints" / "last.ckpt"
    torch.multiprocessing.spawn(_fsdp_writer, args=(2, _free_port(), str(src), str(folder)), nprocs=2)
    assert len(list(folder.glob("*.distcp"))) == 2 and (folder / "meta.pt").is_file()
    assert detect_format(folder) == "fsdp"

    assert export_main([str(folder)]) == 0
    dst = tmp_path / "checkpoints" / "last-consolidated.ckpt"
    assert "FSDP" in capsys.readouterr().out
    ckpt = torch.load(dst, weights_only=True)
    assert "optimizer_states" not in ckpt
    original = torch.load(src, weights_only=True)
    for key in ("hyper_parameters", "aotrain_module", "global_step", "epoch"):
        assert ckpt[key] == original[key], key
    assert ckpt["state_dict"].keys() == original["state_dict"].keys()
    for k, v in original["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][k], v), k

    net, info = load_checkpoint(dst)
    assert info["step"] == 1 and info["model_name"] == "toy-vit-micro"
    _assert_same_weights(net, module)
    with torch.no_grad():
        ours, ref = net(*_inputs()), module.net.eval()(*_inputs())
    assert torch.equal(ours["image_features"], ref["image_features"])

    # a second export needs --overwrite
    assert export_main([str(folder)]) == 2
    assert export_main([str(folder), "--overwrite"]) == 0


# --- DeepSpeed: the code around DeepSpeed's own fp32 merge (DeepSpeed itself needs CUDA) ------------------

@pytest.mark.parametrize("vectorised", [False, True])
def test_deepspeed_folder_metadata_and_prefix(lightning_ckpt, tmp_path, monkeypatch, vectorised):
    """Lightning's client state is kept, DeepSpeed's own keys are dropped, `_forward_module.` is stripped,
    and a logit_scale the run gave shape [1] (strategies.vectorise_scalars) gets back shape ().
    The fp32 merge is DeepSpeed's get_fp32_state_dict_from_zero_checkpoint, stubbed here; the GPU test runs it."""
    import deepspeed.utils.zero_to_fp32 as z2f

    src, module = lightning_ckpt
    original = torch.load(src, weights_only=True)
    folder = tmp_path / "epoch=0-step=1.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    client = {k: v for k, v in original.items() if k not in ("state_dict", "optimizer_states")}
    weights = dict(original["state_dict"])
    if vectorised:  # what a DeepSpeed run saves (aotrain/modules/base.py)
        client[VECTORISED_KEY] = ["net.logit_scale"]
        weights["net.logit_scale"] = weights["net.logit_scale"].reshape(1)
    torch.save({**client, "module": {k: v.bfloat16() for k, v in weights.items()},
                "ds_config": {"zero_optimization": {"stage": 2}}, "ds_version": "0.19.8", "global_steps": 1,
                "buffer_names": [], "param_shapes": None, "dp_world_size": 1, "mp_world_size": 1},
               folder / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"zero_stage": 2}},
               folder / "checkpoint" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    calls = []

    def merged(checkpoint_dir, tag=None, **kw):
        calls.append((checkpoint_dir, tag))
        return {f"_forward_module.{k}": v for k, v in weights.items()}

    monkeypatch.setattr(z2f, "get_fp32_state_dict_from_zero_checkpoint", merged)
    assert detect_format(folder) == "deepspeed"
    assert default_destination(folder) == tmp_path / "epoch=0-step=1-consolidated.ckpt"
    dst = export_checkpoint(folder)
    assert calls == [(str(folder), "checkpoint")]
    ckpt = torch.load(dst, weights_only=True)
    assert set(ckpt) == set(client) - {VECTORISED_KEY} | {"state_dict"}
    assert ckpt["state_dict"]["net.logit_scale"].shape == ()
    net, info = load_checkpoint(dst)
    assert info["kind"] == "clip" and info["step"] == 1
    _assert_same_weights(net, module)


# --- user errors ------------------------------------------------------------------------------------------

def _error(capsys, argv) -> str:
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aotrain export: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_user_errors(lightning_ckpt, tmp_path, capsys):
    src, _ = lightning_ckpt
    assert "not found" in _error(capsys, [str(tmp_path / "nope.ckpt")])
    (tmp_path / "empty").mkdir()
    assert "neither a DeepSpeed" in _error(capsys, [str(tmp_path / "empty")])
    taken = tmp_path / "taken.ckpt"
    taken.write_text("x")
    assert "already exists" in _error(capsys, [str(src), str(taken)])
    assert taken.read_text() == "x"
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    assert "cannot read" in _error(capsys, [str(junk)])
    assert not (tmp_path / "junk-consolidated.ckpt").exists()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "latest").write_text("checkpoint")
    assert "checkpoint" in _error(capsys, [str(tmp_path / "half")])
    # argparse's own errors: usage, then the error line; no traceback, status 2
    assert export_main([]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("aotrain export: error: ")
    assert export_main(["--help"]) == 0
    assert "aotrain export" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.ckpt"))  # no temporary file left behind


# --- GPU: real sharded fits -------------------------------------------------------------------------------

def _gpu_fit(tmp_path, strategy):
    torch.manual_seed(0)
    module = CLIPModule("toy-vit-micro", OPTIM, total_steps=2)
    trainer = _trainer(accelerator="gpu", devices=1, strategy=strategy, precision="32-true", max_steps=2)
    trainer.fit(module, DataLoader(_Batches(), batch_size=4))
    path = tmp_path / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    assert path.is_dir()
    return trainer, module, path


def _compare_forward(reference: dict, dst: Path):
    net, info = load_checkpoint(dst)
    assert info["kind"] == "clip" and info["step"] == 2 and info["model_name"] == "toy-vit-micro"
    with torch.no_grad():
        out = net.cuda()(*_inputs("cuda"))
    for key in ("image_features", "text_features"):
        torch.testing.assert_close(out[key], reference[key], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_deepspeed_stage_3_gpu(tmp_path):
    trainer, module, path = _gpu_fit(tmp_path, "deepspeed_stage_3")
    assert detect_format(path) == "deepspeed"
    with torch.no_grad():  # ZeRO-3's hooks gather each module's parameters in its forward (strategies.gathers_in_forward)
        reference = {k: v.float() for k, v in module.net.eval()(*_inputs("cuda")).items() if torch.is_tensor(v)}
    assert export_main([str(path)]) == 0
    _compare_forward(reference, default_destination(path))


@pytest.mark.gpu
def test_fsdp_sharded_gpu(tmp_path):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from aotrain.strategies import fsdp

    trainer, module, path = _gpu_fit(tmp_path, fsdp(state_dict_type="sharded"))
    assert detect_format(path) == "fsdp"
    with torch.no_grad(), FSDP.summon_full_params(trainer.strategy.model):
        reference = {k: v.float() for k, v in module.net.eval()(*_inputs("cuda")).items() if torch.is_tensor(v)}
    assert export_main([str(path)]) == 0
    _compare_forward(reference, default_destination(path))
