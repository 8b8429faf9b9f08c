"""`aotrain sweep` / `aotrain report`: a tiny grid through the real CLI, MLflow store and fits.

The tiny recipe (recipes/sweeps/tiny.yaml) is two CLIP cells (NMI 0.1 and 0.5) of four steps on the
smoke world; each fit is a child process, as for users.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from aotrain.sweeps.grid import expand
from conftest import REPO, run_cli, run_cli_here

AXES = {"nmi": "subset.nmi", "size": "subset.size", "seed": "seed", "supervision": "supervision"}
CELLS = ["nmi0.1-size300-seed0-language", "nmi0.5-size300-seed0-language"]


def state(root: Path, name: str = "tiny") -> dict:
    return json.loads((root / "sweeps" / name / "sweep.json").read_text())


def children(root: Path, name: str = "tiny") -> list:
    """The sweep's live (not deleted) child runs."""
    data = state(root, name)
    client = MlflowClient(tracking_uri=data["tracking_uri"])
    return client.search_runs([data["experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{data['parent_run_id']}'")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli("sweep", "recipe=tiny", root=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


def test_grid_expands_every_combination_with_twins_after_their_clip_cell():
    cells = expand({"nmi": [0.1, 0.5], "seed": [0, 1], "supervision": ["labels", "language"]}, AXES)
    assert len(cells) == 8 and len({c.id for c in cells}) == 8
    ids = [c.id for c in cells]
    for cell in cells:
        if cell.knobs["supervision"] == "labels":
            assert cell.twin == cell.id.replace("labels", "language")
            assert ids.index(cell.twin) < ids.index(cell.id)
        else:
            assert cell.twin is None
    assert cells[0].overrides == ["subset.nmi=0.1", "seed=0", "supervision=language"]


def test_sweep_makes_a_parent_with_one_child_per_cell_and_a_report(tiny_sweep):
    root, proc = tiny_sweep
    runs = children(root)
    assert sorted(r.info.run_name for r in runs) == CELLS
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["sweep.size"] == "300" and run.data.params["sweep.seed"] == "0"
        assert run.data.params["sweep.nmi"] in ("0.1", "0.5")
        assert "eval/unseen/pair_top1" in run.data.metrics
        artifacts = {a.path for a in MlflowClient(state(root)["tracking_uri"]).list_artifacts(run.info.run_id)}
        assert "manifest.json" in artifacts  # the cell's subset: NMI, size, uid checksum
    client = MlflowClient(state(root)["tracking_uri"])
    parent = client.get_run(state(root)["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["aotrain.kind"] == "sweep"

    report = root / "sweeps" / "tiny" / "report"
    text = (report / "report.md").read_text()
    assert "![" in text and "acc_vs_nmi.png" in text
    assert "| unseen-pair top-1 |" in text or "unseen-pair top-1" in text
    assert (report / "acc_vs_nmi.png").stat().st_size > 5000
    table = (report / "tables" / "eval_unseen_pair_top1.csv").read_text().splitlines()
    assert len(table) == 3  # header + one row per cell
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md",
                                                                                     "report/acc_vs_nmi.png"}
    assert f"report        {report / 'report.md'}" in proc.stdout


def test_rerunning_a_finished_sweep_skips_every_cell(tiny_sweep):
    root, _ = tiny_sweep
    before = {r.info.run_id for r in children(root)}
    proc = run_cli("sweep", "recipe=tiny", "report.after_sweep=false", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 of 2 cells already finished" in proc.stderr
    assert {r.info.run_id for r in children(root)} == before


def test_report_command_finds_the_sweep_by_parent_run_id(tiny_sweep, tmp_path):
    root, _ = tiny_sweep
    data = state(root)
    proc = run_cli("report", f"sweep={data['parent_run_id']}", f"tracking_uri={data['tracking_uri']}",
                   f"out={tmp_path / 'r'}", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "effects.csv").is_file()
    runs = pd.read_csv(tmp_path / "r" / "runs.csv")  # each cell's subset as its fit logged it
    assert (runs["subset/nmi_target"] == runs["nmi"]).all() and ((runs["subset/nmi"] - runs["nmi"]).abs() <= 0.005).all()


def test_a_sweep_killed_part_way_completes_only_the_missing_cell(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID")}
    env["AOTRAIN_OUTPUT"] = str(tmp_path)
    # A new session, so the kill takes the sweep and the fit it is running, as a pre-emption would.
    sweep = subprocess.Popen([sys.executable, "-m", "aotrain.cli", "sweep", "recipe=tiny", "report.after_sweep=false"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    first = tmp_path / "runs" / f"tiny-{CELLS[0]}" / "summary.json"
    deadline = time.time() + 300
    while not first.exists() and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert first.exists()
    assert not (tmp_path / "runs" / f"tiny-{CELLS[1]}" / "summary.json").exists()
    first_child = state(tmp_path)["children"][CELLS[0]]

    proc = run_cli("sweep", "recipe=tiny", "report.after_sweep=false", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 of 2 cells already finished" in proc.stderr
    assert f"done   {CELLS[1]}" in proc.stderr and f"done   {CELLS[0]}" not in proc.stderr
    runs = children(tmp_path)
    assert sorted(r.info.run_name for r in runs) == CELLS  # no duplicate child for the restarted cell
    assert all(r.info.status == "FINISHED" for r in runs)
    assert state(tmp_path)["children"][CELLS[0]] == first_child


def test_submitit_launcher_runs_a_supervised_twin_after_its_clip_cell(tmp_path):
    proc = run_cli("sweep", "recipe=tiny", "name=twins", "grid.nmi=[0.1]", "grid.supervision=[language,labels]",
                   "launcher.kind=submitit", "launcher.submitit.launcher=submitit_local",
                   "launcher.submitit.params={timeout_min: 10}", "report.after_sweep=false", root=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r.info.run_name: r for r in children(tmp_path, "twins")}
    assert set(runs) == {"nmi0.1-size300-seed0-language", "nmi0.1-size300-seed0-labels"}
    assert runs["nmi0.1-size300-seed0-labels"].data.params["supervision"] == "supervised"  # module.kind
    log = (tmp_path / "sweeps" / "twins" / "logs" / "nmi0.1-size300-seed0-labels.log").read_text()
    assert "parity: a twin of" in log  # checked against the CLIP cell's run before training
    assert (tmp_path / "sweeps" / "twins" / "submitit" / "wave1").is_dir()  # a second wave, after the CLIP one


@pytest.mark.parametrize("args, message", [
    (["grid.nmi=[]"], "grid.nmi is empty"),
    (["grid.nmi=[0.1,0.1]"], "repeats a value"),
    (["grid.nmi=[0.999]"], "cell nmi0.999-size300-seed0-language: subset:"),
    (["grid.diversity=[30]"], "cell nmi0.1-size300-diversity30-seed0-language: subset: 300 samples hold "),
    (["grid.diversity=[30]"], " with 30 pairs, NMI 0.1 is outside"),
    (["grid.diversity=[30]"], "; the band at every pair count: aotrain filter band "),
    (["launcher.kind=submitit", "launcher.submitit.params={partitionn: gpu}"], "partitionn not a key"),
    (["launcher.kind=cloud"], "choose local or submitit"),
    (["budget.epochs=0"], "budget.epochs=0: must be a number > 0 or null"),
])
def test_bad_sweeps_fail_before_any_fit_with_one_line(tmp_path, args, message):
    proc = run_cli_here("sweep", "recipe=tiny", *args, root=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_requeued_submitit_cell_continues_its_own_run_folder():
    """After a pre-emption the Slurm job runs the same cell again: it resumes its run, confined to it."""
    from aotrain.sweeps.hydra_job import cell_argv

    argv = ["python", "-m", "aotrain.cli", "fit", "name=tiny", "run_id=nmi0.1-seed0", "logger.run_id=abc"]
    env = {"SLURM_RESTART_COUNT": "0"}
    assert cell_argv(argv, env) == argv and "AOTRAIN_RUN_ID" not in env
    env = {"SLURM_RESTART_COUNT": "2"}
    assert cell_argv(argv, env) == [*argv, "resume=auto"] and env["AOTRAIN_RUN_ID"] == "nmi0.1-seed0"
    named = [*argv, "resume=/runs/tiny-nmi0.1-seed0"]  # the sweep already resumed it: left as it is
    assert cell_argv(named, {"SLURM_RESTART_COUNT": "1"}) == named


def test_fixed_epochs_budget_trains_each_cell_its_passes_over_its_subset(tmp_path):
    from aotrain.config import compose, to_dict
    from aotrain.sweeps.sweep import budget_design, cell_overrides, load_sweep_config

    cfg = load_sweep_config(["recipe=tiny", "budget.epochs=2", "grid.size=[150,300]", f"paths.root={tmp_path}"])
    cells = expand(to_dict(cfg.grid), to_dict(cfg.axes))
    fits = {c.id: compose(cell_overrides(cfg, c)) for c in cells}
    batch = next(iter(fits.values())).data.batch_size
    for cell in cells:  # 2 epochs of the cell's own subset, whatever base's max_steps says
        assert fits[cell.id].trainer.max_steps == round(2 * cell.knobs["size"] / batch)
    assert fits[cells[0].id].trainer.max_steps < fits[cells[-1].id].trainer.max_steps
    assert budget_design(cfg).startswith("fixed epochs: every cell trains 2 passes")
    fixed = load_sweep_config(["recipe=tiny", "grid.size=[150,300]", f"paths.root={tmp_path}"])
    assert {compose(cell_overrides(fixed, c)).trainer.max_steps for c in cells} == {4}  # base's steps, any size
    assert budget_design(fixed).startswith("fixed steps")


def test_a_fit_that_fails_in_its_forked_process_fails_its_cell_with_its_log(tmp_path):
    # Passes composition and the subset stages; Lightning's Trainer refuses the key in the fit itself.
    proc = run_cli("sweep", "recipe=tiny", "name=broken", "grid.nmi=[0.1]", "report.after_sweep=false",
                   'extra=["+trainer.no_such_option=1"]', root=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    cell = CELLS[0]
    assert f"FAILED {cell} (exit 2); log: " in proc.stderr and "failed        " + cell in proc.stdout
    log = (tmp_path / "sweeps" / "broken" / "logs" / f"{cell}.log").read_text()
    assert "aotrain fit: error: trainer: " in log and "no_such_option" in log  # the fit's own words, in its log
    assert "Traceback" not in log + proc.stderr


@pytest.mark.slow  # ~25 s; the default suite forks every tiny-sweep fit, and toy_replication showed the numbers equal
def test_a_forked_fit_leaves_no_imports_in_the_sweep_and_gives_a_commands_numbers(tmp_path):
    """The same cell started as a command and forked from the forkserver: the same summary."""
    script = (
        "import json, sys\nfrom pathlib import Path\n"
        "from aotrain.sweeps.local import Job, fit_argv, run_local\n"
        "root = Path(sys.argv[1])\n"
        "base = ['recipe=toy_low_nmi', 'debug=smoke', 'eval.every_n_steps=0', f'paths.root={root}']\n"
        "jobs = [Job(kind, fit_argv([*base, f'run_id={kind}']), root / f'{kind}.log', forkable=kind == 'forked')\n"
        "        for kind in ('command', 'forked')]\n"
        "codes = run_local(jobs, parallel=1, threads=1)\n"
        "print(json.dumps({'codes': codes, 'lightning_here': 'lightning' in sys.modules}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID")}
    env["AOTRAIN_OUTPUT"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"codes": {"command": 0, "forked": 0}, "lightning_here": False}
    metrics = [json.loads(next((tmp_path / "runs").glob(f"*-{kind}/summary.json")).read_text())["metrics"]
               for kind in ("command", "forked")]
    assert metrics[0] == metrics[1] and "unseen/pair_top1" in metrics[0]
    assert "unseen/pair_top1" in (tmp_path / "forked.log").read_text()  # its printed summary, in its log
