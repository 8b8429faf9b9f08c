"""`aotrain sweep recipe=NAME`: a grid of fits under one MLflow parent run, then its report.

    aotrain sweep recipe=toy_replication                      # 36 fits, 2 at a time, then the report
    aotrain sweep recipe=toy_replication launcher.parallel=1  # one at a time
    aotrain sweep recipe=tiny 'extra=["trainer.max_steps=2"]' # more fit overrides for every cell (quoted: they hold '=')

What happens, in order:
  1. the grid becomes cells (aotrain/sweeps/grid.py); each cell's fit config is composed now, so a bad
     override fails before anything runs;
  2. the toy world and every cell's subset are made here, through data_filters (one pool, each subset
     cached by its inputs), so the fits only read them;
  3. one MLflow parent run for the sweep, one child run per cell (`mlflow.parentRunId`) holding the
     cell's knobs as `sweep.<axis>` params; the fit logs into that child (its params, metrics, config,
     parity record and subset manifest);
  4. the fits run as child processes (aotrain/sweeps/local.py) or as Slurm jobs (submitit);
  5. the report (aotrain report) is written to <sweep_dir>/report and logged to the parent run.

Re-running the same sweep skips finished cells (their run folder has summary.json), resumes those
with a checkpoint (resume=<run folder>, same child run) and restarts the rest; a restarted cell's
partial child run is deleted first, so every cell has exactly one child run.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from aotrain.config import UserError, compose, to_dict
from aotrain.sweeps.grid import Cell, expand
from aotrain.sweeps.local import Job, fit_argv, run_local, start_forkserver
from data_filters.files import atomic_path

STATE = "sweep.json"
# Fits start in this order of supervision, after the CLIP cells that others wait for: the slowest arm first
# (two views of each image), so the fits left for the end are short and no worker idles long beside the last.
START_ORDER = {"self": 0, "language": 1, "labels": 2}


def _say(message: str) -> None:
    print(f"sweep: {message}", file=sys.stderr, flush=True)


def load_sweep_config(overrides: list[str]):
    """The composed sweep config; `recipe=NAME` picks recipes/sweeps/NAME.yaml."""
    overrides = [f"sweeps={o.split('=', 1)[1]}" if o.startswith("recipe=") else o for o in overrides]
    cfg = compose(overrides, config_name="sweep")
    if not cfg.name:
        raise UserError("the sweep has no name: give recipe=NAME (recipes/sweeps/) or name=NAME with a grid")
    return cfg


def cell_overrides(cfg, cell: Cell) -> list[str]:
    """The fit overrides of one cell: the sweep's base, the command line's extra, the cell's knobs,
    then where it runs (name, run id, output root) and, with budget.epochs, its steps."""
    overrides = [*cfg.base, *cfg.extra, *cell.overrides,
                 f"name={cfg.name}", f"run_id={cell.id}", f"paths.root={cfg.paths.root}"]
    if cfg.budget.epochs is not None:
        overrides.append(f"trainer.max_steps={epoch_steps(compose(overrides), cfg.budget.epochs)}")
    return overrides


def epoch_steps(fit_cfg, epochs: float) -> int:
    """Optimizer steps for `epochs` passes over the cell's subset at its global batch (batch x devices x nodes)."""
    size = fit_cfg.subset.size
    if size is None:
        raise UserError("budget.epochs needs a subset size per cell: sweep size or set subset.size in base")
    devices = fit_cfg.trainer.get("devices", 1)
    ranks = (devices if isinstance(devices, int) else 1) * int(fit_cfg.trainer.get("num_nodes", 1) or 1)
    return max(1, round(float(epochs) * int(size) / (int(fit_cfg.data.batch_size) * ranks)))


def one_process(fit_cfg) -> bool:
    """The fit trains in this one process (one device, one node): it starts no processes of its own."""
    return str(fit_cfg.trainer.get("devices", 1)) == "1" and int(fit_cfg.trainer.get("num_nodes", 1) or 1) == 1


def budget_design(cfg) -> str:
    """The scale design in words, for the report and the parent run."""
    if cfg.budget.epochs is None:
        return "fixed steps: every cell trains the same number of steps, so a larger subset is seen fewer times"
    return (f"fixed epochs: every cell trains {cfg.budget.epochs:g} passes over its subset, so steps grow with "
            "its size")


def prepare_cells(cfg, cells: list[Cell]) -> dict[str, dict]:
    """Compose each cell's fit config and make its world and subset; {cell: facts the sweep needs}."""
    facts, composed = {}, {}
    for cell in cells:  # every cell's values checked before the first world or subset is made
        try:
            composed[cell.id] = compose(cell_overrides(cfg, cell))
        except UserError as e:
            raise UserError(f"cell {cell.id}: {e}") from None
    from aotrain.train import prepare  # Lightning is imported, never run, in this process

    for cell in cells:
        fit_cfg = composed[cell.id]
        try:
            prepare(fit_cfg)
        except UserError as e:
            raise UserError(f"cell {cell.id}: {e}") from None
        facts[cell.id] = {
            "run_dir": fit_cfg.paths.run_dir,
            "logger": to_dict(fit_cfg.logger),
            "one_process": one_process(fit_cfg),
        }
    return facts


class SweepState:
    """<sweep_dir>/sweep.json: the MLflow parent run and each cell's child run."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / STATE
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"children": {}}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(json.dumps(self.data, indent=1) + "\n")


def cell_status(run_dir: Path) -> str:
    """done (summary.json) | resume (a checkpoint to continue from) | new."""
    from aotrain.resume import newest_checkpoint

    if (run_dir / "summary.json").is_file():
        return "done"
    if run_dir.is_dir() and newest_checkpoint(run_dir) is not None:
        return "resume"
    return "new"


def _client(logger: dict):
    from mlflow.tracking import MlflowClient

    if logger["tracking_uri"].startswith("sqlite:"):
        Path(logger["tracking_uri"].split("sqlite:///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=logger["tracking_uri"])


def ensure_parent(cfg, state: SweepState, client, logger: dict, cells: list[Cell]) -> str:
    """The sweep's parent run: the one in sweep.json (set RUNNING again), else a new one."""
    from aotrain.tracking import create_run
    from aotrain.tracking_store import experiment_id

    parent = state.data.get("parent_run_id")
    if parent is not None:
        client.update_run(parent, status="RUNNING")
        return parent
    experiment = experiment_id(client, logger["experiment_name"], logger["tracking_uri"],
                               logger["artifact_location"])
    grid = {a: v for a, v in to_dict(cfg.grid).items() if v is not None}
    params = {"sweep.name": cfg.name, "sweep.cells": len(cells), "sweep.base": " ".join(cfg.base),
              "sweep.axes": json.dumps(list(grid)), "sweep.primary": cfg.report.primary,
              "sweep.budget": budget_design(cfg),
              **{f"sweep.grid.{a}": json.dumps(v) for a, v in grid.items()}}
    parent = create_run(client, experiment, run_name=cfg.name, params=params,
                        tags={"aotrain.kind": "sweep", "aotrain.sweep": cfg.name})
    state.data.update(parent_run_id=parent, experiment_id=experiment, tracking_uri=logger["tracking_uri"],
                      name=cfg.name, axes=list(grid))
    state.save()
    return parent


def new_child(cfg, state: SweepState, client, cell: Cell, fact: dict) -> str:
    """A fresh child run for `cell`; a partial one from an earlier attempt is deleted with its folder."""
    from aotrain.tracking import create_run

    old = state.data["children"].get(cell.id)
    if old is not None:
        client.delete_run(old)
    shutil.rmtree(fact["run_dir"], ignore_errors=True)
    params = {f"sweep.{a}": v for a, v in cell.knobs.items()}
    child = create_run(client, state.data["experiment_id"], run_name=cell.id, params=params,
                       parent_run_id=state.data["parent_run_id"],
                       tags={"aotrain.kind": "fit", "aotrain.sweep": cfg.name, "aotrain.cell": cell.id})
    state.data["children"][cell.id] = child
    state.save()
    return child


def plan_jobs(cfg, cells: list[Cell], facts: dict, state: SweepState, client) -> tuple[list[Job], list[str]]:
    """(jobs to run, cells already done). Each job's command line says how it starts: fresh into its
    new child run, or resumed from its checkpoint into the child run it already has."""
    jobs, done = [], []
    runnable = set()
    for cell in cells:
        fact = facts[cell.id]
        run_dir = Path(fact["run_dir"])
        status = cell_status(run_dir)
        if status == "done":
            done.append(cell.id)
            continue
        overrides = cell_overrides(cfg, cell)
        if status == "resume" and cell.id in state.data["children"]:
            overrides.append(f"resume={run_dir}")
        else:
            overrides.append(f"logger.run_id={new_child(cfg, state, client, cell, fact)}")
        if cell.twin is not None:
            overrides.append(f"parity.twin={facts[cell.twin]['run_dir']}")
        after = cell.twin if cell.twin in runnable else None
        jobs.append(Job(cell.id, fit_argv(overrides), Path(cfg.paths.sweep_dir) / "logs" / f"{cell.id}.log",
                        after, run_dir, forkable=fact["one_process"]))
        runnable.add(cell.id)
    arm = {cell.id: cell.knobs.get("supervision") for cell in cells}
    jobs.sort(key=lambda job: (job.after is not None, START_ORDER.get(arm[job.cell], 1)))  # stable: grid order within
    return jobs, done


def _headline(run_dir: Path, metric: str) -> str:
    """`unseen/pair_top1 0.245` from a finished fit (object top-1 for a supervised cell, the probe's for a
    self-supervised one)."""
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    for key in (metric.removeprefix("eval/"), "unseen/object_top1", "probe/unseen/object_top1"):
        if key in metrics:
            return f"{key} {metrics[key]:.3f}"
    return ""


def run_sweep(cfg) -> dict:
    """Run (or continue) the sweep `cfg`; returns {parent_run_id, done, failed, report}."""
    check_launcher(cfg)
    cells = expand(to_dict(cfg.grid), to_dict(cfg.axes), twins=cfg.twins)
    from aotrain.tracking_store import check_store  # every cell logs to the same store: check it before any work

    check_store(compose(cell_overrides(cfg, cells[0])).logger.tracking_uri)
    sweep_dir = Path(cfg.paths.sweep_dir)
    _say(f"{cfg.name}: {len(cells)} cells -> {sweep_dir}")
    if cfg.launcher.kind == "local":
        start_forkserver()  # its imports overlap the subsets' preparation
    facts = prepare_cells(cfg, cells)
    logger = facts[cells[0].id]["logger"]
    state = SweepState(sweep_dir)
    client = _client(logger)
    parent = ensure_parent(cfg, state, client, logger, cells)
    jobs, done = plan_jobs(cfg, cells, facts, state, client)
    if done:
        _say(f"{len(done)} of {len(cells)} cells already finished: skipping them")
    OmegaConf.save(cfg, sweep_dir / "sweep.yaml", resolve=True)

    def on_finish(job: Job, code: int, seconds: float) -> None:
        run_dir = Path(facts[job.cell]["run_dir"])
        if code == 0 and (run_dir / "summary.json").is_file():
            _say(f"done   {job.cell}  {_headline(run_dir, cfg.report.primary)}  ({seconds:.0f} s)")
        elif code == -1:
            _say(f"skip   {job.cell}: its twin {job.after} failed")
        else:
            _say(f"FAILED {job.cell} (exit {code}); log: {job.log}")

    status = "FAILED"
    try:
        codes = launch(cfg, jobs, on_finish)
        failed = sorted(c for c, code in codes.items() if code != 0)
        status = "FINISHED" if not failed else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(parent, status=status)
    result = {"parent_run_id": parent, "done": len(cells) - len(failed), "failed": failed,
              "sweep_dir": str(sweep_dir), "tracking_uri": logger["tracking_uri"]}
    if cfg.report.after_sweep and result["done"]:
        from aotrain.sweeps.collect import report_sweep

        try:
            result["report"] = str(report_sweep(logger["tracking_uri"], parent, sweep_dir / "report",
                                                primary=cfg.report.primary))
        except (UserError, ValueError) as e:  # the fits stand; the report can be made again later
            _say(f"no report: {e} (aotrain report sweep={cfg.name} makes it again)")
    return result


def check_launcher(cfg) -> None:
    """A launcher mistake fails before any subset, run or MLflow entry is made."""
    if cfg.launcher.kind not in ("local", "submitit"):
        raise UserError(f"launcher.kind={cfg.launcher.kind}: choose local or submitit")
    if cfg.launcher.kind == "submitit":
        from aotrain.sweeps.submitit_jobs import launcher_overrides

        launcher_overrides(cfg)


def launch(cfg, jobs: list[Job], on_finish) -> dict[str, int]:
    if not jobs:
        return {}
    if cfg.launcher.kind == "submitit":
        from aotrain.sweeps.submitit_jobs import run_submitit

        return run_submitit(cfg, jobs, on_finish)
    return run_local(jobs, cfg.launcher.parallel, cfg.launcher.threads, on_finish)


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def sweep_main(args: list[str]) -> int:
    """`aotrain sweep ...`: returns the exit code (1 when a cell failed)."""
    print_config = "--print-config" in args
    cfg = load_sweep_config([a for a in args if a != "--print-config"])
    if print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)  # scancel / kill: stop the fits cleanly too
    started = time.time()
    result = run_sweep(cfg)
    minutes = (time.time() - started) / 60
    print(f"\nsweep         {cfg.name}  ({result['done']} cells finished, {minutes:.1f} min)")
    print(f"MLflow parent {result['parent_run_id']}  ({result['tracking_uri']})")
    print(f"folder        {result['sweep_dir']}")
    if "report" in result:
        print(f"report        {result['report']}")
    if result["failed"]:
        print(f"failed        {', '.join(result['failed'])} (logs in {result['sweep_dir']}/logs)")
        return 1
    return 0
