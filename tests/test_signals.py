"""Signals a scheduler sends (SIGTERM, SIGUSR1, SIGUSR2) stop a run at the next step boundary with a
checkpoint, an exit status that says so (128 + signal) and a KILLED MLflow run; `resume=auto` then
ends at the uninterrupted run's exact weights. (The Slurm pre-emptions: tests/test_slurm_cluster.py.)"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli

ARGS = ("fit", "debug=smoke", "trainer.max_steps=6", "eval.every_n_steps=3")


def _final(root, run_id):
    ckpt = torch.load(root / "runs" / f"toy_low_nmi-{run_id}" / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


def test_sigterm_saves_a_step_checkpoint_marks_the_run_killed_and_resumes_exactly(tmp_path):
    full = run_cli(*ARGS, root=tmp_path, env={"AOTRAIN_RUN_ID": "full"})
    assert full.returncode == 0, full.stderr[-3000:]

    # SIGTERM arrives after step 1 (no checkpoint due before step 3): the run stops at step 2's boundary.
    cut = run_cli(*ARGS, root=tmp_path, env={"AOTRAIN_RUN_ID": "cut", "AOTRAIN_FAULT_AT_STEP": "1",
                                             "AOTRAIN_FAULT_SIGNAL": "TERM"})
    assert cut.returncode == 143, cut.stderr[-3000:]
    assert "Traceback" not in cut.stderr
    run_dir = tmp_path / "runs" / "toy_low_nmi-cut"
    line = [ln for ln in cut.stderr.splitlines() if ln.startswith("aotrain fit: interrupted")]
    assert line == [f"aotrain fit: interrupted by SIGTERM at step 2; checkpoint {run_dir}/checkpoints/"
                    "interrupted-step2.ckpt; continue with: aotrain fit debug=smoke trainer.max_steps=6 "
                    "eval.every_n_steps=3 resume=auto"]
    assert not (run_dir / "summary.json").exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    pointer_run = [r for r in client.search_runs(["1"]) if r.info.run_name == "toy_low_nmi-cut"]
    assert [r.info.status for r in pointer_run] == ["KILLED"]

    resumed = run_cli(*ARGS, "resume=auto", root=tmp_path, env={"AOTRAIN_RUN_ID": "cut"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from interrupted-step2.ckpt" in resumed.stderr
    (step_a, a), (step_b, b) = _final(tmp_path, "full"), _final(tmp_path, "cut")
    assert step_a == step_b == 6
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = client.get_run(pointer_run[0].info.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(range(6))


def test_a_signal_during_set_up_stops_before_training_with_its_status(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID")}
    env["AOTRAIN_OUTPUT"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "aotrain.cli", *ARGS], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("toyworld/*")) and time.time() < deadline:  # set-up has begun
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)  # not under Slurm: no requeue, an ordinary stop
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR1, err[-3000:]
    assert "aotrain fit: interrupted by SIGUSR1 before training started; continue with:" in err
    assert not list(tmp_path.glob("runs/*/checkpoints/*.ckpt"))


@pytest.mark.slow  # the agreement across ranks also runs by default under Slurm (tests/test_slurm_cluster.py)
def test_under_ddp_a_signal_to_one_rank_stops_both_at_the_same_step(tmp_path):
    """Only rank 0 is signalled; the step guard's all-reduce tells rank 1, and neither waits for the other."""
    proc = run_cli("fit", "debug=smoke", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.precision=32-true", "data.batch_size=16", "trainer.max_steps=6", root=tmp_path,
                   env={"AOTRAIN_RUN_ID": "ddp", "AOTRAIN_FAULT_AT_STEP": "1", "AOTRAIN_FAULT_SIGNAL": "TERM"},
                   timeout=600)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "interrupted by SIGTERM at step 2" in proc.stderr
    ckpt = torch.load(tmp_path / "runs" / "toy_low_nmi-ddp" / "checkpoints" / "interrupted-step2.ckpt",
                      weights_only=True)
    assert ckpt["global_step"] == 2
