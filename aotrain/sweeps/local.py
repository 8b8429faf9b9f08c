"""Run a sweep's fits on this machine: each `aotrain fit` in its own child process, N at a time.

The sweep process itself never builds a Trainer: a fit that crashes, or a DDP fit that re-launches
its own command line, cannot take the sweep down with it.

A fit of one process (`Job.forkable`) is forked from a forkserver that imported what every fit
imports (torch, Lightning, open_clip, MLflow: ~7 CPU-s) once for the whole sweep, instead of
being started as a new interpreter; a fit that starts processes of its own (DDP re-launches its
command line) is started as a command. Either way it is a child process with its own log and exit
code, and the numbers are the same.
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data_filters.workers import die_with_parent, exit_with_parent

# What `aotrain fit` imports, the forkserver imports once (a missing name is skipped, not an error).
PRELOAD = ["aotrain.cli", "aotrain.config", "aotrain.train", "aotrain.tracking_logger",
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.artifacts", "matplotlib.backends.backend_agg"]


@dataclass
class Job:
    cell: str
    argv: list[str]          # the whole command line (python -m aotrain.cli fit ...)
    log: Path                # stdout and stderr of the fit
    after: str | None = None  # a cell that must have succeeded first (a supervised cell's CLIP twin)
    run_dir: Path | None = None  # the fit's run folder (summary.json there: it finished)
    forkable: bool = False   # a one-process `aotrain fit` (fit_argv): forked from the preloaded forkserver


CLI = [sys.executable, "-m", "aotrain.cli"]


def fit_argv(overrides: list[str]) -> list[str]:
    return [*CLI, "fit", *overrides]


def start_forkserver() -> None:
    """Start the forkserver now (its imports then overlap the sweep's own preparation)."""
    multiprocessing.forkserver.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()


def _forked_fit(args: list[str], log: str, env: dict, threads: int) -> None:
    """Runs in a forkserver child: `aotrain <args>` with this environment, its output into `log`."""
    # The forkserver leaves once no process holds its "alive" pipe, and hands every child a copy: with it
    # this fit would keep the forkserver, and the forkserver this fit, alive after the sweep died.
    server = multiprocessing.forkserver._forkserver
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    die_with_parent(os.getppid(), signal.SIGTERM)  # SIGTERM (save and stop) when the forkserver leaves
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Line-buffered, as PYTHONUNBUFFERED makes a command's output: a log shows where a fit is.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.argv = [sys.argv[0], *args]
    import torch

    torch.set_num_threads(threads)  # the forkserver's torch was loaded before this child's OMP_NUM_THREADS
    from aotrain.cli import main

    try:
        code = main(args)
    finally:
        atexit._run_exitfuncs()  # a multiprocessing child skips them; MLflow and Lightning register some
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


class ForkedFit:
    """A forkserver child running one fit, with the part of subprocess.Popen's interface run_local uses."""

    def __init__(self, job: Job, env: dict, threads: int):
        if job.argv[:len(CLI)] != CLI:
            raise ValueError(f"not an aotrain command: {job.argv[:3]}")
        context = multiprocessing.get_context("forkserver")
        self._process = context.Process(target=_forked_fit, name=job.cell,
                                        args=(job.argv[len(CLI):], str(job.log), env, threads))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"fit {self._process.name}", timeout)
        return self._process.exitcode

    def kill(self) -> None:
        self._process.kill()


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
    if any(job.forkable for job in jobs):
        start_forkserver()
    threads = threads or default_threads(parallel)
    env = child_env(threads)
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
                running[job.cell] = (job, start(job, env, threads), time.time())
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


def start(job: Job, env: dict, threads: int):
    """The job's child process: forked from the preloaded forkserver, or started as its command."""
    if job.forkable:
        return ForkedFit(job, env, threads)
    with open(job.log, "w") as log:
        # exit_with_parent: a fit outliving a killed sweep would race the re-run of its cell.
        return subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=exit_with_parent())


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
