"""The Slurm templates (slurm/*.sbatch) without Slurm: their launch line, run as srun would run it.

srun starts one task per GPU and gives each the variables of its place in the allocation; Lightning
then picks SLURMEnvironment and starts no processes itself. Here two subprocesses stand in for the
two tasks of a 1-node, 2-task allocation (CPU, gloo), started at the same time.
"""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = [REPO / "slurm" / "fit_1node.sbatch", REPO / "slurm" / "fit_multinode.sbatch"]
SMOKE = ["debug=smoke", "trainer.accelerator=cpu", "trainer.precision=32-true"]

# Variables that would make the stand-in tasks see another cluster environment (TorchElastic has
# priority over Slurm in Lightning), a fixed rendezvous, a parent's run id or a tracking server.
FOREIGN = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
           "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID", "AOTRAIN_OUTPUT")


def lines_starting(template: Path, prefix: str) -> list[str]:
    return [line.strip() for line in template.read_text().splitlines() if line.strip().startswith(prefix)]


def srun_line(template: Path) -> str:
    lines = lines_starting(template, "srun ")
    assert len(lines) == 1, f"{template.name}: expected one `srun ...` launch line, found {lines}"
    return lines[0]


def expand(line: str, env: dict, args: list[str]) -> list[str]:
    """The argv bash would give `line`: $VAR / ${VAR} from env, "$@" as args (one token each)."""
    out = []
    for token in shlex.split(line):
        if token == "$@":
            out += args
            continue
        out.append(re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], token))
    return out


def free_port_job_id() -> tuple[str, int]:
    """A Slurm job id whose Lightning port (15000 + its last 4 digits) is free now."""
    for _ in range(100):
        port = random.randint(15000, 24999)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"7{port - 15000:04d}", port
    raise RuntimeError("no free port in 15000-24999")


def wait_all(tasks: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Exit codes of all tasks; once one fails (or time is up) the rest are killed, as srun does,
    instead of waiting for a rendezvous that cannot complete."""
    deadline = time.monotonic() + timeout
    try:
        while any(t.poll() is None for t in tasks):
            if time.monotonic() > deadline or any(t.poll() not in (None, 0) for t in tasks):
                break
            time.sleep(0.2)
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
                task.wait()
    return [t.returncode for t in tasks]


@pytest.fixture(scope="module")
def cli_accepts_resume() -> bool:
    """Whether `aotrain fit` knows resume=... yet (the templates pass resume=auto)."""
    proc = subprocess.run([sys.executable, "-m", "aotrain.cli", "fit", "--print-config", "resume=auto"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    return proc.returncode == 0


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_asks_slurm_for_tasks_requeue_and_warning_signal_but_no_gpus(template):
    text = template.read_text()
    sbatch = dict(re.findall(r"^#SBATCH\s+--([\w-]+)(?:=(\S+))?", text, re.M))
    for option in ("nodes", "ntasks-per-node", "cpus-per-task", "time", "output"):
        assert sbatch.get(option), f"{template.name}: no #SBATCH --{option}=..."
    # The GPU request is the submitter's (sbatch --gpus-per-node=N --ntasks-per-node=N): a GPU line
    # in the header makes sbatch refuse the job on a partition without GPUs.
    gpu_options = {o for o in sbatch if o.startswith(("gpus", "gres", "gpu-"))}
    assert not gpu_options, f"{template.name}: #SBATCH {gpu_options} bakes a GPU request in"
    assert re.search(r"sbatch .*--gpus-per-node=(\d+) --ntasks-per-node=\1 ", text), "usage with GPUs"
    assert sbatch.get("signal", "").startswith("SIGUSR1@"), "aotrain checkpoints + requeues on SIGUSR1"
    assert "requeue" in sbatch
    assert re.search(r"^export AOTRAIN_RUN_ID=.*SLURM_JOB_ID", text, re.M), "one run folder for all tasks"

    argv = shlex.split(srun_line(template))
    assert argv[:3] == ["srun", "aotrain", "fit"]
    assert argv[-1] == "$@", "the script's arguments go last, so they override the template's"
    for expected in ("trainer=ddp", "trainer.num_nodes=$SLURM_NNODES",
                     "trainer.devices=$SLURM_NTASKS_PER_NODE", "resume=auto"):
        assert expected in argv
    subprocess.run(["bash", "-n", str(template)], check=True)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_stops_when_gpus_and_tasks_per_node_differ(template, tmp_path):
    """`sbatch --gpus-per-node=8 slurm/...` without --ntasks-per-node=8: one process would get all 8
    GPUs and use one. The script says so and exits 2 before anything runs."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN and not k.startswith("SLURM_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", SLURM_JOB_ID="99",
               SLURM_GPUS_ON_NODE="8", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="1", SLURM_JOB_NODELIST="n1")
    env.pop("AOTRAIN_VENV", None)
    proc = subprocess.run(["bash", str(template), "debug=smoke"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "8 GPUs but 1 tasks per node" in proc.stderr and "--gpus-per-node=8 --ntasks-per-node=8" in proc.stderr
    assert not list(tmp_path.iterdir()), "nothing written"


DOCS = [REPO / "README.md", REPO / "slurm" / "README.md", *sorted((REPO / "aotrain" / "sweeps").glob("*.py")),
        REPO / "recipes" / "sweep.yaml", *sorted((REPO / "recipes" / "sweeps").glob("*.yaml"))]


def test_extra_examples_in_the_docs_parse_as_lists_of_overrides():
    """Every `'extra=[...]'` a user can copy from the docs is a list of fit overrides to Hydra
    (unquoted `=` inside a list is a syntax error: "no viable alternative at input")."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    examples = [(doc.name, m) for doc in DOCS for m in re.findall(r"'(extra=\[[^']*\])'", doc.read_text())]
    assert len(examples) >= 6, examples
    for doc, example in examples:
        if "..." in example:  # a pattern, e.g. 'extra=["trainer.max_steps=600",...]'
            example = re.sub(r",\s*\.\.\.", "", example)
        value = parser.parse_override(example).value()
        assert isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value), (doc, example, value)


@pytest.mark.parametrize("nodes", ["localhost", "127.0.0.1", "gpu[017-020]", "gpu017,gpu018"])
def test_lightning_reads_the_allocation_from_slurm_variables(monkeypatch, nodes):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for name in FOREIGN:  # set-then-delete: main_address / main_port write MASTER_* into os.environ,
        monkeypatch.setenv(name, "")  # and only a recorded variable is restored (here: removed) afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", "/nonexistent")  # no srun here, and no warning about it either
    env = {"SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
           "SLURM_PROCID": "11", "SLURM_LOCALID": "3", "SLURM_NODELIST": nodes, "SLURM_JOB_ID": "4312345",
           "SLURM_JOB_NAME": "aotrain-fit"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    assert SLURMEnvironment.detect()
    slurm = SLURMEnvironment()
    assert slurm.creates_processes_externally  # so Lightning's launcher starts no processes
    assert (slurm.world_size(), slurm.global_rank(), slurm.local_rank(), slurm.node_rank()) == (16, 11, 3, 1)
    assert slurm.main_address == {"gpu[017-020]": "gpu017", "gpu017,gpu018": "gpu017"}.get(nodes, nodes)
    assert slurm.main_port == 15000 + 2345  # the last 4 digits of the job id
    slurm.validate_settings(num_devices=8, num_nodes=2)  # what the template's launch line passes
    with pytest.raises(ValueError, match="ntasks-per-node"):
        slurm.validate_settings(num_devices=4, num_nodes=2)

    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # `srun --pty bash`-style sessions are not Slurm tasks
    assert not SLURMEnvironment.detect()


# fresh-store: tasks started together must not race to create the SQLite store (only rank 0 opens it).
# store-exists is slow-marked: tests/test_slurm_cluster.py runs the template under a real Slurm by default.
@pytest.mark.parametrize("precreate_mlflow_store", [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=["store-exists", "fresh-store"])
def test_launch_line_trains_as_two_slurm_tasks_into_one_run_folder(tmp_path, cli_accepts_resume,
                                                                     precreate_mlflow_store):
    template = REPO / "slurm" / "fit_1node.sbatch"
    job_id, _ = free_port_job_id()
    allocation = {"SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NTASKS": "2", "SLURM_NODEID": "0",
                  "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "aotrain-test"}
    argv = expand(srun_line(template), allocation, SMOKE)
    if not cli_accepts_resume:  # resume=auto is not in aotrain yet
        argv.remove("resume=auto")
    assert argv[:3] == ["srun", "aotrain", "fit"]
    fit = [sys.executable, "-m", "aotrain.cli", *argv[2:]]

    base = {k: v for k, v in os.environ.items() if k not in FOREIGN and not k.startswith("SLURM_")}
    base.update(allocation, AOTRAIN_RUN_ID="slurmtest", AOTRAIN_OUTPUT=str(tmp_path), OMP_NUM_THREADS="1")
    # What the template runs once before srun (it prepares the toy world and subset for all tasks).
    for line in lines_starting(template, "aotrain world"):
        prep = subprocess.run([sys.executable, "-m", "aotrain.cli", *expand(line, allocation, SMOKE)[1:]],
                              env=base, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert prep.returncode == 0, prep.stderr[-3000:]

    if precreate_mlflow_store:
        # Every rank builds its MLflowLogger, whose MlflowClient creates the default sqlite store's
        # tables: two tasks starting at once race on that (sqlite "duplicate column name"). Lightning's
        # own launcher never hits it (children start after the parent made the store); srun does.
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    logs = [(tmp_path / f"task{rank}.out", tmp_path / f"task{rank}.err") for rank in (0, 1)]
    tasks = []
    for rank, (out, err) in enumerate(logs):
        env = {**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        with open(out, "w") as o, open(err, "w") as e:  # files: a full pipe must not block a rank
            tasks.append(subprocess.Popen(fit, env=env, cwd=tmp_path, stdout=o, stderr=e, text=True))
    codes = wait_all(tasks, timeout=300)
    outs = [out.read_text() + err.read_text() for out, err in logs]
    for rank, (code, text) in enumerate(zip(codes, outs)):
        assert code == 0, f"task {rank} exited {code}:\n{text[-4000:]}"

    for rank, text in enumerate(outs):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text, text[-3000:]
        # aotrain's step guard handles pre-emption signals; Lightning's requeue handler stays off
        assert "SLURM auto-requeueing enabled" not in text
    runs = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    assert [d.name for d in runs] == ["toy_low_nmi-slurmtest"], runs
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["steps"] == 4
