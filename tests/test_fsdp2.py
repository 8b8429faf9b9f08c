"""Sharded training on CPU: FSDP2 (recipes/trainer/fsdp2.yaml) through the CLI on two gloo processes,
its sharded checkpoint exported and evaluated, a kill -9 resumed, and the same global batches giving
the same losses and weights on one process, under DDP and under FSDP2."""
import itertools
import json
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from aotrain.export import consolidate
from conftest import REPO, run_cli

# eval.batch_size=64: the smoke benchmark (40 unseen, 100 seen images) is 3 batches, so rank 0 encodes one
# and joins rank 1's second forward with a dummy one (every FSDP2 forward gathers weights: a collective).
ARGS = ("fit", "debug=smoke", "trainer=fsdp2", "trainer.devices=2", "trainer.max_steps=6", "eval.every_n_steps=2",
        "eval.batch_size=64")
# Same global batches, one process vs two: measured differences are <= 2.4e-6 in any weight and
# <= 1.5e-6 in a step's loss (float32 summation order: a gathered loss, all-reduce vs reduce-scatter).
# 1e-5 is 1% of one AdamW step at the smoke lr (1e-3): a wrong gradient, a missed reduction or a
# rank training on the wrong rows moves weights by a whole step.
WEIGHT_TOL = 1e-5
LOSS_TOL = 1e-5


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 6-step fsdp2 fit: (root, run folder, CompletedProcess, run folders, MLflow runs)."""
    root = tmp_path_factory.mktemp("fsdp2")
    proc = run_cli(*ARGS, root=root, env={"AOTRAIN_RUN_ID": "full"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    mlflow_runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return root, root / "runs" / "toy_low_nmi-full", proc, sorted(p.name for p in (root / "runs").iterdir()), mlflow_runs


def test_fsdp2_fit_through_the_cli_writes_one_run_and_a_sharded_checkpoint(full_run):
    root, run_dir, proc, run_folders, mlflow_runs = full_run
    assert run_folders == ["toy_low_nmi-full"]  # both ranks wrote into one run folder
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6
    assert [r.info.run_id for r in mlflow_runs] == [summary["run_id"]]  # one MLflow run
    run = mlflow_runs[0]
    assert run.info.status == "FINISHED" and "eval/unseen/pair_top1" in run.data.metrics
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_dir()  # torch.distributed.checkpoint: one shard per rank, an index, Lightning's state
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert not list(last.parent.glob(".*"))  # no staging folder left behind by the atomic save


def test_exported_checkpoint_evaluates_to_the_callbacks_metrics(full_run):
    root, run_dir, *_ = full_run
    proc = run_cli("export", str(run_dir / "checkpoints" / "last.ckpt"), root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = run_dir / "checkpoints" / "last-consolidated.ckpt"
    ckpt = torch.load(exported, weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["state_dict"]["net.logit_scale"].shape == ()  # as one process saves it
    proc = run_cli("eval", f"checkpoint={exported}", f"out={root / 'exported_eval'}", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    in_training = json.loads((run_dir / "eval" / "metrics.json").read_text())
    exported_metrics = json.loads((root / "exported_eval" / "metrics.json").read_text())
    # the linear probe ran at the end of the sharded fit too (fit only: it is fitted on the training shards)
    probe = json.loads((run_dir / "eval" / "probe.json").read_text())
    assert probe.keys() == {"probe/seen/object_top1", "probe/unseen/object_top1", "probe/n_train",
                            "chance/probe_object_top1", "probe/alt/seen/object_top1", "probe/alt/unseen/object_top1"}
    # The callback evaluated the sharded network on both ranks (each block's weights gathered in
    # its forward), each rank a slice of the images; eval, the consolidated file in one process.
    # Same weights, same batches: equal numbers (a single changed prediction would move one by 1/N)...
    assert exported_metrics.keys() == in_training.keys() and len(in_training) > 20
    assert exported_metrics == in_training
    # ... each rank having encoded its slice only (in lockstep), at every evaluation.
    stderr = full_run[2].stderr
    for step in (2, 4, 6):
        # 140 images by the first renderer, 120 by the second
        assert f"eval: step {step}, rank 0 of 2 encoded 140 of 260 images" in stderr, stderr[-3000:]
        assert f"eval: step {step}, rank 1 of 2 encoded 120 of 260 images" in stderr


# Two more 2-process fits (~45 s on 2 cores). The kill -9 drill of the default suite is tests/test_resume.py
# (one process, exact weights), and a 2-rank pre-emption resumes exactly under Slurm
# (tests/test_slurm_cluster.py); this one adds FSDP2's sharded checkpoint: `pytest -m slow`.
@pytest.mark.slow
def test_kill9_and_resume_give_the_uninterrupted_runs_exact_weights(full_run):
    root, run_dir, *_ = full_run
    cut = run_cli(*ARGS, root=root, env={"AOTRAIN_RUN_ID": "cut", "AOTRAIN_FAULT_AT_STEP": "3"}, timeout=900)
    assert cut.returncode == -9  # SIGKILL on both ranks after step 3; the last checkpoint is step 2's
    assert (root / "runs" / "toy_low_nmi-cut" / "checkpoints" / "last.ckpt" / ".metadata").is_file()
    resumed = run_cli(*ARGS, "resume=auto", root=root, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing" in resumed.stderr and "toy_low_nmi-cut from last.ckpt" in resumed.stderr

    full = consolidate(run_dir / "checkpoints" / "last.ckpt")
    again = consolidate(root / "runs" / "toy_low_nmi-cut" / "checkpoints" / "last.ckpt")
    assert full["global_step"] == again["global_step"] == 6
    # Bitwise: on CPU every operation is deterministic, the gloo reductions included, and resume
    # restores the shards, the optimizer state, the data position and the RNG streams.
    a, b = full["state_dict"], again["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    pointer = json.loads((root / "runs" / "toy_low_nmi-cut" / "mlflow.json").read_text())
    assert len(client.search_runs([pointer["experiment_id"]])) == 2  # full and cut: no third run
    assert client.get_run(pointer["run_id"]).info.status == "FINISHED"


@pytest.fixture(scope="module")
def same_batches(full_run, tmp_path_factory):
    """The smoke modules fitted on the same 4 global batches of 16 under trainer=cpu (one process),
    ddp and fsdp2 (two processes each): {trainer: folder of losses and weights}."""
    from aotrain.data.datamodule import ShardDataModule

    root = full_run[0]
    world = next((root / "toyworld").iterdir())
    work = tmp_path_factory.mktemp("same_batches")

    def first(targets):  # the real stream's decoded samples, as training reads them
        dm = ShardDataModule(str(world / "pool"), "toy-vit-micro", num_workers=0, shuffle_buffer=64,
                             vocabulary=f"world:{world}", require_label=True, targets=targets)
        return list(itertools.islice(iter(dm.stream()), 64))

    captions, labels = first("captions"), first("labels")
    torch.save({"images": torch.stack([s[0] for s in captions]), "tokens": torch.stack([s[1] for s in captions]),
                "labels": torch.stack([s[1] for s in labels]), "skipped": torch.stack([s[2] for s in captions])},
               work / "batches.pt")
    folders = {}
    for trainer, devices in (("cpu", 1), ("ddp", 2), ("fsdp2", 2)):
        folders[trainer] = work / trainer
        folders[trainer].mkdir()
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "same_batches.py"), trainer, str(devices),
                               str(work / "batches.pt"), str(world), str(folders[trainer])],
                              capture_output=True, text=True, cwd=work, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return folders


def _losses(folder, module: str, ranks: int) -> list[float]:
    per_rank = [json.loads((folder / f"{module}-rank{r}.json").read_text()) for r in range(ranks)]
    return [sum(step) / ranks for step in zip(*per_rank)]  # each rank's local loss; their mean is the global one


@pytest.mark.parametrize("module", ["clip", "siglip", "supervised"])
def test_fsdp2_ddp_and_one_process_agree_on_the_same_global_batches(same_batches, module):
    folders = same_batches
    losses = {"cpu": _losses(folders["cpu"], module, 1), "ddp": _losses(folders["ddp"], module, 2),
              "fsdp2": _losses(folders["fsdp2"], module, 2)}
    weights = {name: torch.load(folder / f"{module}.pt", weights_only=True) for name, folder in folders.items()}
    for one, other in (("fsdp2", "cpu"), ("fsdp2", "ddp"), ("ddp", "cpu")):
        assert len(losses[one]) == len(losses[other]) == 4
        assert max(abs(a - b) for a, b in zip(losses[one], losses[other])) < LOSS_TOL, (one, other, losses)
        assert weights[one].keys() == weights[other].keys()
        diff = max((weights[one][k] - weights[other][k]).abs().max().item() for k in weights[other])
        assert diff < WEIGHT_TOL, f"{one} vs {other}: max weight difference {diff:.2e}"
    # The comparison means something: training moved the weights far more than the tolerance.
    start = torch.load(folders["cpu"] / f"{module}-init.pt", weights_only=True)
    moved = max((weights["cpu"][k] - start[k]).abs().max().item() for k in start)
    assert moved > 50 * WEIGHT_TOL
