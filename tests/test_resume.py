"""Pre-emption: a run killed mid-way and resumed ends with the uninterrupted run's exact weights,
in one MLflow run."""
import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli, run_cli_here

ARGS = ("fit", "debug=smoke", "trainer.max_steps=6", "eval.every_n_steps=2")  # a checkpoint every 2 steps


def _weights(root, run_id):
    ckpt = torch.load(root / "runs" / f"toy_low_nmi-{run_id}" / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


def test_killed_run_resumes_to_the_same_weights_in_one_mlflow_run(tmp_path):
    # resume=auto with nothing to continue starts a new run and says so.
    full = run_cli(*ARGS, "resume=auto", root=tmp_path, env={"AOTRAIN_RUN_ID": "full"})
    assert full.returncode == 0, full.stderr[-3000:]
    assert "resume: no unfinished toy_low_nmi run" in full.stderr

    cut = run_cli(*ARGS, root=tmp_path, env={"AOTRAIN_RUN_ID": "cut", "AOTRAIN_FAULT_AT_STEP": "3"})
    assert cut.returncode == -9  # SIGKILL after step 3; the last checkpoint is step 2's
    assert not (tmp_path / "runs" / "toy_low_nmi-cut" / "summary.json").exists()
    resumed = run_cli(*ARGS, "resume=auto", root=tmp_path)  # finds the unfinished run by itself
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing" in resumed.stderr and "toy_low_nmi-cut" in resumed.stderr

    step_a, a = _weights(tmp_path, "full")
    step_b, b = _weights(tmp_path, "cut")
    assert step_a == step_b == 6
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    pointer = json.loads((tmp_path / "runs" / "toy_low_nmi-cut" / "mlflow.json").read_text())
    assert len(client.search_runs([pointer["experiment_id"]])) == 2  # full and cut: no third run
    run = client.get_run(pointer["run_id"])
    assert run.info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "train/loss")})
    assert steps == list(range(6))
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/unseen/pair_top1")) == [2, 4, 6]


def test_resume_from_a_path_without_checkpoint_is_a_clear_error(tmp_path):
    proc = run_cli_here("fit", "debug=smoke", f"resume={tmp_path / 'nowhere'}", root=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "resume=" in proc.stderr and "no checkpoint there" in proc.stderr


@pytest.mark.slow
def test_kill_at_three_different_steps_each_resumes_to_the_same_weights(tmp_path):
    """kill -9 after steps 1, 4 and 5 (before the first checkpoint, just after one, one step past it)."""
    full = run_cli(*ARGS, root=tmp_path, env={"AOTRAIN_RUN_ID": "full"})
    assert full.returncode == 0, full.stderr[-3000:]
    _, reference = _weights(tmp_path, "full")
    for step in (1, 4, 5):
        cut = run_cli(*ARGS, root=tmp_path, env={"AOTRAIN_RUN_ID": f"cut{step}", "AOTRAIN_FAULT_AT_STEP": str(step)})
        assert cut.returncode == -9
        resumed = run_cli(*ARGS, "resume=auto", root=tmp_path, env={"AOTRAIN_RUN_ID": f"cut{step}"})
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        final_step, weights = _weights(tmp_path, f"cut{step}")
        assert final_step == 6, step
        assert all(torch.equal(reference[k], weights[k]) for k in reference), f"killed after step {step}"
