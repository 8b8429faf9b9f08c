"""Run a sweep's fits on this machine: each `aotrain fit` in its own child process, N at a time.

The sweep process itself never builds a Trainer: a fit that crashes, or a DDP fit that re-launches
its own command line, cannot take the sweep down with it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data_filters.workers import exit_with_parent


@dataclass
class Job:
    cell: str
    argv: list[str]          # the whole command line (python -m aotrain.cli fit ...)
    log: Path                # stdout and stderr of the fit
    after: str | None = None  # a cell that must have succeeded first (a supervised cell's CLIP twin)
    run_dir: Path | None = None  # the fit's run folder (summary.json there: it finished)


def fit_argv(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "aotrain.cli", "fit", *overrides]


def child_env(threads: int | None) -> dict:
    """This environment for a fit: without AOTRAIN_RUN_ID (each fit names its own run), with `threads`
    CPU threads when given (N fits on one machine must not each take every core)."""
    env = {k: v for k, v in os.environ.items() if k != "AOTRAIN_RUN_ID"}
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def default_threads(parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // parallel)


def run_local(jobs: list[Job], parallel: int = 1, threads: int | None = None, on_finish=None) -> dict[str, int]:
    """Run `jobs` (N at a time, a job after the one it waits for); {cell: exit code}.

    A job whose `after` job failed is not started (exit code -1). `on_finish(job, code, seconds)` is
    called as each job ends. Ctrl-C (or SIGTERM) stops the running fits and re-raises.
    """
    parallel = max(1, int(parallel))
    env = child_env(threads or default_threads(parallel))
    waiting, running, codes = list(jobs), {}, {}
    bar = tqdm(total=len(jobs), desc="sweep", unit="fit", dynamic_ncols=True)
    try:
        while waiting or running:
            for job in list(waiting):
                if len(running) >= parallel:
                    break
                if job.after is not None and job.after in {j.cell for j in waiting} | set(running):
                    continue  # its twin has not finished yet
                waiting.remove(job)
                if job.after is not None and codes.get(job.after, 0) != 0:
                    codes[job.cell] = -1
                    bar.update(1)
                    if on_finish:
                        on_finish(job, -1, 0.0)
                    continue
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "w") as log:
                    # exit_with_parent: a fit outliving a killed sweep would race the re-run of its cell.
                    process = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               preexec_fn=exit_with_parent())
                running[job.cell] = (job, process, time.time())
            if ", ".join(running) != bar.postfix:
                bar.set_postfix_str(", ".join(running))
            time.sleep(0.2)
            for cell, (job, process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[cell]
                codes[cell] = process.returncode
                bar.update(1)
                if on_finish:
                    on_finish(job, process.returncode, time.time() - started)
    except KeyboardInterrupt:
        _stop([process for _, process, _ in running.values()])
        raise
    finally:
        bar.close()
    return codes


def _stop(processes, grace_s: float = 20.0) -> None:
    """SIGINT first (a fit stops at a step boundary), then kill what is still running."""
    for process in processes:
        process.send_signal(2)
    deadline = time.time() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
