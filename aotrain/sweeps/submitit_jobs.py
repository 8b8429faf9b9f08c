"""Run a sweep's fits through Hydra's submitit launcher (hydra-submitit-launcher 1.2.0): Slurm jobs.

    aotrain sweep recipe=NAME launcher.kind=submitit \\
        'launcher.submitit.params={partition: gpu, gpus_per_node: 8, tasks_per_node: 8, timeout_min: 240}' \\
        'extra=["trainer=ddp","trainer.devices=8"]'

The sweep process only submits and waits: a Hydra multirun of aotrain/sweeps/hydra_job.py over the
cells, in two waves (CLIP cells, then the supervised cells that are checked against them). Only keys
of the launcher plugin's own config are accepted (checked here, before anything is submitted).
`launcher.submitit.launcher=submitit_local` runs the same path on this machine (tests use it).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from aotrain.config import UserError, to_dict
from aotrain.sweeps.local import Job, child_env

LAUNCHERS = ("submitit_slurm", "submitit_local")


def launcher_keys(launcher: str) -> set[str]:
    """The config keys hydra-submitit-launcher defines for `launcher` (minus its _target_)."""
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

    conf = SlurmQueueConf if launcher == "submitit_slurm" else LocalQueueConf
    return {f.name for f in dataclasses.fields(conf)} - {"_target_"}


def _hydra_value(value) -> str:
    """A Python value as Hydra override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def launcher_overrides(cfg) -> list[str]:
    launcher = cfg.launcher.submitit.launcher
    if launcher not in LAUNCHERS:
        raise UserError(f"launcher.submitit.launcher={launcher}: choose {' or '.join(LAUNCHERS)}")
    params = to_dict(cfg.launcher.submitit.params) or {}
    unknown = sorted(set(params) - launcher_keys(launcher))
    if unknown:
        raise UserError(f"launcher.submitit.params: {', '.join(unknown)} not a key of hydra/launcher={launcher} "
                        f"(hydra-submitit-launcher 1.2.0); keys: {', '.join(sorted(launcher_keys(launcher)))}")
    return [f"hydra/launcher={launcher}", *(f"hydra.launcher.{k}={_hydra_value(v)}" for k, v in params.items())]


def run_submitit(cfg, jobs: list[Job], on_finish) -> dict[str, int]:
    """Submit `jobs` in waves (a job after the one it waits for) and wait; {cell: 0 if its fit finished}."""
    overrides = launcher_overrides(cfg)
    sweep_dir = Path(cfg.paths.sweep_dir)
    codes: dict[str, int] = {}
    waves = [[j for j in jobs if j.after is None], [j for j in jobs if j.after is not None]]
    for number, wave in enumerate(waves):
        ready = [j for j in wave if j.after is None or codes.get(j.after) == 0]
        for job in wave:
            if job not in ready:
                codes[job.cell] = -1
                on_finish(job, -1, 0.0)
        if not ready:
            continue
        jobs_file = sweep_dir / f"jobs-{number}.json"
        jobs_file.write_text(json.dumps([{"cell": j.cell, "argv": j.argv, "log": str(j.log)} for j in ready],
                                        indent=1))
        started = time.time()
        command = [sys.executable, "-m", "aotrain.sweeps.hydra_job", "-m", *overrides,
                   f"hydra.sweep.dir={sweep_dir / 'submitit' / f'wave{number}'}", f"hydra.job.name=aotrain-{cfg.name}",
                   f"jobs_file={jobs_file}", "index=" + ",".join(str(i) for i in range(len(ready)))]
        print(f"sweep: submitting {len(ready)} fits ({overrides[0]})", file=sys.stderr, flush=True)
        with open(sweep_dir / f"submitit-wave{number}.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                           env=child_env(cfg.launcher.threads))
        for job in ready:  # the fits' own folders say how they ended, whatever the multirun did
            codes[job.cell] = 0 if (Path(job.run_dir) / "summary.json").is_file() else 1
            on_finish(job, codes[job.cell], time.time() - started)
    return codes
