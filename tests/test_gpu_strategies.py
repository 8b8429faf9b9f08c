"""GPU engines end to end through the CLI: a few steps of the smoke run under each sharded strategy,
then `aotrain export` of its checkpoint and `aotrain eval` of the exported file.

Deselected by default (`-m 'not gpu'`); on a GPU machine: `python -m pytest -m gpu`."""
import json

import pytest
import torch

from conftest import run_cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2", "deepspeed_stage_3", "fsdp", "fsdp2", "fsdp2_offload"])
def test_strategy_fits_exports_and_evaluates(strategy, tmp_path):
    proc = run_cli("fit", "debug=smoke", f"trainer={strategy}", "trainer.devices=1", root=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4
    last = run_dir / "checkpoints" / "last.ckpt"  # a folder under deepspeed and sharded fsdp
    exported = tmp_path / f"{strategy}.ckpt"
    proc = run_cli("export", str(last), str(exported), root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = run_cli("eval", f"checkpoint={exported}", f"benchmark={next((tmp_path / 'toyworld').iterdir()) / 'imagenet_ao'}",
                   "templates=simple", f"out={tmp_path / 'eval'}", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["unseen/pair_top1"] <= 1.0
