"""The Slurm templates and the sweep's submitit launcher on a real one-node Slurm cluster (CPU).

    apt-get install -y slurmctld slurmd slurm-client munge      # as root (.ci/run does it)
    python -m pytest tests/test_slurm_cluster.py -q             # a 2-rank job, a pre-emption (2-5 min on 2 cores)
    python -m pytest tests/test_slurm_cluster.py -q -m slow     # 10 pre-emptions in a row, a 2-cell submitit sweep

The cluster comes from tests/slurm_cluster.py (skipped without Slurm or root). Every job is the
1-node template as a user submits it on a GPU-less partition:

    sbatch --ntasks-per-node=2 --cpus-per-task=1 slurm/fit_1node.sbatch debug=smoke \\
        trainer.accelerator=cpu trainer.precision=32-true ...

A pre-emption is `scancel --signal=USR1 JOBID`: without --batch/--full Slurm signals the tasks of
the job's steps (the two `aotrain fit` ranks), not the batch shell, as `#SBATCH --signal=SIGUSR1@120`
does. aotrain then checkpoints at the next step boundary, rank 0 runs `scontrol requeue`, and the
requeued job (same id, same run folder) continues with resume=auto.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from slurm_cluster import FINAL_STATES, slurm_cluster  # noqa: F401 - the session fixture

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "slurm" / "fit_1node.sbatch"
STEPS = 12
BASE = ["debug=smoke", "trainer.accelerator=cpu", "trainer.precision=32-true", "eval.every_n_steps=0"]
FIT = [*BASE, f"trainer.max_steps={STEPS}"]
# Two ranks of one CPU each: this node has 2 CPUs; --time lets Slurm end a job the test lost.
SBATCH = ["--ntasks-per-node=2", "--cpus-per-task=1", "--time=20"]
JOB_TIMEOUT = 600
# Variables of the caller that would steer the jobs elsewhere (TorchElastic wins over Slurm in
# Lightning; a tracking server, a run id or an output root of the caller's).
FOREIGN = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
           "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID", "AOTRAIN_OUTPUT")


@dataclass
class Site:
    """Where this module's jobs write (one output root, so the toy world is made once) and the
    environment they are submitted with (sbatch hands it to the job)."""
    folder: Path
    env: dict

    @property
    def root(self) -> Path:
        return self.folder / "out"

    def run_dir(self, job_id: str) -> Path:
        return self.root / "runs" / f"toy_low_nmi-slurm{job_id}"


@pytest.fixture(scope="module")
def site(slurm_cluster, tmp_path_factory) -> Site:
    folder = tmp_path_factory.mktemp("slurm_jobs")
    (folder / "logs").mkdir()  # the template's --output=logs/%x-%j.out, relative to the submit folder
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    bindir = Path(sys.executable).parent
    if not (bindir / "aotrain").exists():
        pytest.skip(f"no aotrain script next to {sys.executable} (pip install -e .)")
    if (Path(sys.prefix) / "bin" / "activate").exists():
        env["AOTRAIN_VENV"] = sys.prefix  # the template's documented way to pick the environment
    else:
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.update(AOTRAIN_OUTPUT=str(folder / "out"), PYTHONUNBUFFERED="1")
    return Site(folder, env)


def submit(cluster, site: Site, *fit_args: str) -> str:
    return cluster.sbatch(*SBATCH, str(TEMPLATE), *fit_args, env=site.env, cwd=site.folder)


def job_log(info: dict) -> str:
    path = Path(info.get("StdOut", ""))
    return path.read_text(errors="replace") if path.is_file() else f"(no log at {path})"


def finish(cluster, job_id: str, timeout: float = JOB_TIMEOUT) -> dict:
    """Wait for the job's end; on a time-out cancel it and fail with its log."""
    try:
        return cluster.wait_job(job_id, timeout=timeout)
    except TimeoutError as e:
        log = job_log(cluster.job(job_id))
        cluster.run("scancel", job_id, check=False)
        pytest.fail(f"{e}\n--- job log\n{log[-4000:]}")


def trained_step(site: Site, job_id: str) -> int:
    """The last optimizer step the job's run has logged train/loss for (MLflow's SQLite store;
    Lightning logs the loss of optimizer step s+1 at step s); -1 before the first."""
    db = site.root / "mlflow.db"
    if not db.exists():
        return -1
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            row = con.execute("SELECT max(m.step) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                              "WHERE r.name = ? AND m.key = 'train/loss'",
                              (f"toy_low_nmi-slurm{job_id}",)).fetchone()
    except sqlite3.Error:  # the store is being created or migrated: no step yet
        return -1
    return -1 if row is None or row[0] is None else int(row[0])


def preempt_after(cluster, site: Site, job_id: str, step: int, timeout: float = JOB_TIMEOUT) -> int:
    """Once the running job has logged train/loss at step `step` or later, send USR1 to its tasks
    (`scancel --signal=USR1 JOBID`: the steps' tasks, not the batch shell); the step seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = trained_step(site, job_id)
        state = cluster.job(job_id).get("JobState")
        if seen >= step and state == "RUNNING":
            cluster.run("scancel", "--signal=USR1", job_id)
            return seen
        if state in FINAL_STATES or time.monotonic() > deadline:
            info = cluster.job(job_id)
            pytest.fail(f"job {job_id} {state}, at step {seen}, before step {step} could be pre-empted\n"
                        f"{job_log(info)[-4000:]}")
        time.sleep(0.2)


def state_dict(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(ckpt: Path, reference: Path) -> None:
    got, want = state_dict(ckpt), state_dict(reference)
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def assert_one_ddp_group(log: str, world: int = 2) -> None:
    for rank in range(world):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{world}" in log, log[-4000:]
    assert f"All distributed processes registered. Starting with {world} processes" in log, log[-4000:]


def resumed_step(cluster, site: Site, job_id: str, restart: int, timeout: float = 300) -> int:
    """The global step the job's restart number `restart` resumed from: the checkpoint its log names
    (`resume: continuing RUN_DIR from NAME`), read as soon as the line appears."""
    marker = f"job {job_id} (restart {restart}) on"
    deadline = time.monotonic() + timeout
    while True:
        info = cluster.job(job_id)
        found = re.search(r"resume: continuing \S+ from (\S+)", job_log(info).partition(marker)[2])
        if found:
            break
        if info.get("JobState") in FINAL_STATES or time.monotonic() > deadline:
            pytest.fail(f"restart {restart} of job {job_id} did not resume ({info.get('JobState')})\n"
                        f"{job_log(info)[-4000:]}")
        time.sleep(0.5)
    ckpt = next(site.run_dir(job_id).rglob(found.group(1)))
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, site) -> tuple[str, dict, float]:
    """One job of the template, not interrupted: (job id, its scontrol record, seconds)."""
    started = time.monotonic()
    job_id = submit(slurm_cluster, site, *FIT)
    info = finish(slurm_cluster, job_id)
    return job_id, info, time.monotonic() - started


def test_template_trains_two_ranks_on_cpu_into_one_run_folder(uninterrupted, site):
    job_id, info, seconds = uninterrupted
    log = job_log(info)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log[-4000:]}"
    assert info["Restarts"] == "0"
    assert f"job {job_id} (restart 0) on" in log and "1 node(s) x 2 task(s), no GPU(s) per node" in log
    assert_one_ddp_group(log)
    runs = sorted(p.name for p in (site.root / "runs").iterdir())
    assert f"toy_low_nmi-slurm{job_id}" in runs
    run_dir = site.run_dir(job_id)
    assert (run_dir / "summary.json").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    print(f"uninterrupted job {job_id}: {seconds:.0f} s")


def test_preempted_job_is_requeued_and_ends_with_the_uninterrupted_weights(slurm_cluster, site, uninterrupted):
    started = time.monotonic()
    job_id = submit(slurm_cluster, site, *FIT)
    seen = preempt_after(slurm_cluster, site, job_id, step=3)
    resumed = resumed_step(slurm_cluster, site, job_id, restart=1)
    assert seen < resumed < STEPS, (seen, resumed)
    info = finish(slurm_cluster, job_id)
    log = job_log(info)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log[-4000:]}"
    assert info["Restarts"] == "1", f"not requeued once: {info}\n{log[-4000:]}"
    assert f"job {job_id} (restart 1) on" in log, log[-4000:]
    assert "resume: continuing" in log, log[-4000:]
    assert_one_ddp_group(log.split(f"job {job_id} (restart 1) on")[1])
    run_dir = site.run_dir(job_id)
    assert (run_dir / "summary.json").is_file()
    reference = site.run_dir(uninterrupted[0]) / "checkpoints" / "last.ckpt"
    assert_same_weights(run_dir / "checkpoints" / "last.ckpt", reference)
    print(f"pre-empted after logged step {seen}, resumed at step {resumed}; job {job_id}: "
          f"{time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_ten_preemptions_in_a_row_no_hang_same_weights(slurm_cluster, site):
    """10 USR1 pre-emptions of one 2-rank job, each once two more steps are done after the previous
    restart's checkpoint (so each at a later step), then the same final weights as without them."""
    fit = [*BASE, "trainer.max_steps=60"]  # 10 x ~3 steps of pre-emptions, and room for slower signals
    reference_job = submit(slurm_cluster, site, *fit)
    reference_info = finish(slurm_cluster, reference_job)
    assert reference_info["JobState"] == "COMPLETED", job_log(reference_info)[-4000:]

    started = time.monotonic()
    job_id = submit(slurm_cluster, site, *fit)
    signalled, resumed = [], [0]
    for restart in range(1, 11):
        # Lightning logs optimizer step g's loss at MLflow step g-1: logged step c+1 = two new steps.
        # A restart that hangs shows as no such step within the time-out (a failed test, not a stuck one).
        signalled.append(preempt_after(slurm_cluster, site, job_id, step=resumed[-1] + 1, timeout=300))
        resumed.append(resumed_step(slurm_cluster, site, job_id, restart))
        assert resumed[-1] > resumed[-2], f"restart {restart} resumed at {resumed[-1]}, not after {resumed[-2]}"
    info = finish(slurm_cluster, job_id)
    log = job_log(info)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log[-4000:]}"
    assert info["Restarts"] == "10", info
    assert_one_ddp_group(log.split(f"job {job_id} (restart 10) on")[1])
    assert_same_weights(site.run_dir(job_id) / "checkpoints" / "last.ckpt",
                        site.run_dir(reference_job) / "checkpoints" / "last.ckpt")
    print(f"10 pre-emptions: signalled after logged steps {signalled}, resumed at {resumed[1:]}; "
          f"{time.monotonic() - started:.0f} s")


@pytest.mark.slow  # 35-95 s more; the launcher path itself is in the default suite (test_sweep.py, submitit_local)
def test_two_cell_sweep_runs_as_slurm_jobs_through_submitit(slurm_cluster, site):
    """`aotrain sweep recipe=tiny launcher.kind=submitit` on this cluster: both cells are Slurm jobs
    (one array job named aotrain-tiny) and both fits finish."""
    started = time.monotonic()
    env = slurm_cluster.env(site.env)
    argv = [sys.executable, "-m", "aotrain.cli", "sweep", "recipe=tiny", "launcher.kind=submitit",
            "launcher.submitit.params={tasks_per_node: 1, cpus_per_task: 1, timeout_min: 10}",
            'extra=["trainer.max_steps=3"]', "report.after_sweep=false"]
    try:
        proc = subprocess.run(argv, env=env, cwd=site.folder, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        slurm_cluster.cancel_all()
        raise
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "2 cells finished" in out, out[-4000:]
    for cell in ("nmi0.1-size300-seed0-language", "nmi0.5-size300-seed0-language"):
        summary = site.root / "runs" / f"tiny-{cell}" / "summary.json"
        assert summary.is_file(), out[-4000:]
        assert json.loads(summary.read_text())["steps"] == 3  # the extra=[...] override reached the fit
    records = slurm_cluster.run("scontrol", "show", "job", "-o").stdout.splitlines()
    cells = [r for r in records if "JobName=aotrain-tiny " in r]
    assert len(cells) == 2 and all("JobState=COMPLETED" in r for r in cells), cells
    print(f"2-cell sweep: {time.monotonic() - started:.0f} s")
