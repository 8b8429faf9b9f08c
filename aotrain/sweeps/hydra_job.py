"""One sweep cell as a Hydra job: what Hydra's submitit launcher runs on a Slurm node.

`aotrain sweep launcher.kind=submitit` writes the cells' fit command lines to <sweep_dir>/jobs.json
and starts a Hydra multirun of this module over their indices, e.g.

    python -m aotrain.sweeps.hydra_job -m hydra/launcher=submitit_slurm \\
        hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=8 hydra.launcher.tasks_per_node=8 \\
        jobs_file=outputs/sweeps/NAME/jobs.json index=0,1,2

Each job (each Slurm task of it) runs the cell's `aotrain fit` as a child process, with the Slurm
environment it was given, so Lightning's SLURMEnvironment sees the job's ranks; the fit writes its own
run folder and MLflow child run, from which the sweep reads the outcome.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore


@dataclass
class JobConf:
    jobs_file: str = "???"
    index: int = "???"  # type: ignore[assignment]


ConfigStore.instance().store(name="aotrain_sweep_job", node=JobConf)


def run_cell(jobs_file: str, index: int) -> int:
    """Run job `index` of jobs.json; its output goes to the job's log (one per Slurm task)."""
    job = json.loads(Path(jobs_file).read_text())[index]
    rank = os.environ.get("SLURM_PROCID", "0")
    log = Path(job["log"] if rank == "0" else f"{job['log']}.rank{rank}")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "AOTRAIN_RUN_ID"}
    argv = cell_argv(job["argv"], env)
    with open(log, "a") as out:
        return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env).returncode


def cell_argv(argv: list[str], env: dict) -> list[str]:
    """The cell's fit command; in a requeued job (pre-empted, or timed out: the fit saved a checkpoint
    and asked Slurm to requeue, aotrain/callbacks/step_guard.py) it continues the cell's own run
    folder (`resume=auto` confined to it through AOTRAIN_RUN_ID) instead of starting again."""
    if int(env.get("SLURM_RESTART_COUNT", "0") or 0) == 0 or any(a.startswith("resume=") for a in argv):
        return list(argv)  # a first start, or the sweep already named the checkpoint folder
    run_id = next((a.split("=", 1)[1] for a in argv if a.startswith("run_id=")), None)
    if run_id is None:
        return list(argv)
    env["AOTRAIN_RUN_ID"] = run_id
    return [*argv, "resume=auto"]


@hydra.main(version_base="1.3", config_path=None, config_name="aotrain_sweep_job")
def main(cfg) -> int:
    return run_cell(cfg.jobs_file, int(cfg.index))


if __name__ == "__main__":
    main()
