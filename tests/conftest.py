"""Shared fixtures: one tiny smoke fit per test session, run through the real CLI.

README's `python -m pytest` runs the suite on 2 pytest-xdist workers (pyproject's addopts: `-n 2
--dist loadfile`, one test file per worker at a time, so a module's fixtures are made once). The
expensive session fixtures (the smoke fit, the img2dataset pools) are made once per session, by the
first worker that asks, and shared with the other through `shared_once`: tests only read them (a test
that writes copies the folder first). `-n 0` runs everything in one process, as before.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Test files that take the longest (measured): pytest-xdist hands files out in collection order, so
# these start first and the short ones fill in around them, instead of a long one starting last.
# A file missing here only balances the workers less well.
LONG_FIRST = ["test_slurm_cluster.py", "test_fsdp2.py", "test_tracking_outage.py", "test_sweep.py",
              "test_signals.py", "test_real_recipes.py", "test_resume.py", "test_bad_data.py",
              "test_distributed.py", "test_supervised.py", "test_selfsup.py", "test_fit.py", "test_fit_summary.py"]


def pytest_collection_modifyitems(config, items):
    """Long test files first (see LONG_FIRST); the order within a file is kept."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files and tests keep their order


def pytest_collection_finish(session):
    """When tests that need the real img2dataset were collected, its first-use install (about a minute)
    starts now in the background (tests/img2dataset_tool.py), while other tests run."""
    if any({"img2dataset_pool", "datacomp_pool"} & set(getattr(item, "fixturenames", ()))
           for item in session.items):
        from img2dataset_tool import prestart  # tests/ is on sys.path, as for every test module

        prestart()


def shared_once(tmp_path_factory, name: str, build):
    """`build(folder)` once per test session, whichever pytest-xdist worker (or the one process) asks
    first: the others wait for it and get the same result. `build` gets an empty folder every worker
    can read and returns something json can hold; a build that fails leaves nothing, the next asker
    tries again."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # workers' bases share a parent
    done = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            result = build(folder)
            done.write_text(json.dumps(result))
        return json.loads(done.read_text())


def run_cli(*args: str, root: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `aotrain ARGS` in a subprocess (as a user would) and return the CompletedProcess."""
    # The caller's environment must not leak a tracking server or a parent's run id into the test.
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID")}
    full_env.update(env or {})
    if root is not None:
        full_env["AOTRAIN_OUTPUT"] = str(root)
    return subprocess.run([sys.executable, "-m", "aotrain.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=root or REPO, timeout=timeout)


def run_cli_here(*args: str, root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`aotrain ARGS` in this process, where a new interpreter proves nothing more (a command that stops
    before any work, a fit whose outputs are what is checked): the same main() and exit code as run_cli
    without its 5-10 s of imports. `env` is added to the environment as run_cli does. stdout and stderr
    hold what the command prints (not Lightning's log lines: its handlers keep the stream they started
    with). The environment, working folder and signal handlers the command changes are put back afterwards."""
    import contextlib
    import io
    import signal

    from aotrain.cli import main

    saved, cwd = dict(os.environ), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    out, err = io.StringIO(), io.StringIO()
    for key in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID"):
        os.environ.pop(key, None)
    os.environ.update(env or {})
    os.environ["AOTRAIN_OUTPUT"] = str(root)
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(["aotrain", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def smoke_fit(tmp_path_factory):
    """`aotrain fit debug=smoke` into a fresh output root: (root, CompletedProcess). One per session,
    shared by the workers: read it, or copy the root before writing to it."""
    def build(root: Path) -> dict:
        proc = run_cli("fit", "debug=smoke", root=root)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return {"root": str(root), "args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout,
                "stderr": proc.stderr}

    made = shared_once(tmp_path_factory, "smoke", build)
    return Path(made["root"]), subprocess.CompletedProcess(made["args"], made["returncode"], made["stdout"],
                                                           made["stderr"])


@pytest.fixture(scope="session")
def img2dataset_pool(tmp_path_factory):
    """A caption pool written by the real img2dataset 1.47.0 from toy-world images (tests/img2dataset_tool.py).

    336 input rows in 4 shards of 100 (00000.tar/.parquet/_stats.json ...): 300 images, 8 URLs listed
    twice under two captions, 8 byte-identical copies under another name, 20 missing files (failed
    downloads); 316 samples. Returns run_img2dataset's dict: out_dir, n_success, n_failed, n_shards,
    rows (key, url, caption, success, sha256 per input row), same_url / same_bytes (groups of keys).
    The first session installs img2dataset into .venv-img2dataset/ (about a minute); the pool takes
    about 10 s. Skips when img2dataset cannot be installed (fails under CI=true).
    """
    return _shared_pool(tmp_path_factory, "img2dataset")


@pytest.fixture(scope="session")
def datacomp_pool(tmp_path_factory):
    """img2dataset_pool's pool as DataComp makes them: the input has a `uid` column, passed through
    --save_additional_columns '["uid"]', so every parquet row and sample json carries it (rows[i]["uid"])."""
    return _shared_pool(tmp_path_factory, "datacomp", uid=True)


def _shared_pool(tmp_path_factory, name: str, **kw) -> dict:
    """run_img2dataset's dict for a pool made once per session (shared_once), its paths as Paths."""
    from img2dataset_tool import run_img2dataset

    paths = ("out_dir", "source_dir", "url_list")

    def build(folder: Path) -> dict:
        info = run_img2dataset(folder / "pool", **kw)
        return {k: str(v) if k in paths else v for k, v in info.items()}

    return {k: Path(v) if k in paths else v for k, v in shared_once(tmp_path_factory, name, build).items()}


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """small_world(n_samples=300, samples_per_shard=100) -> the folder of a toy world with the default
    world config (recipes/world/default.yaml), one evaluation image per pair (none by the second
    renderer). Worlds are cached by their config (aotrain.toyworld), so every test asking for the same
    sizes shares one."""
    import yaml

    from aotrain.config import RECIPES_DIR
    from aotrain.toyworld import generate_world

    root = tmp_path_factory.mktemp("small_worlds")

    def make(n_samples: int = 300, samples_per_shard: int = 100) -> Path:
        cfg = yaml.safe_load((RECIPES_DIR / "world" / "default.yaml").read_text())
        cfg["pool"].update(n_samples=n_samples, samples_per_shard=samples_per_shard)
        cfg["eval"].update(images_per_unseen_pair=1, images_per_seen_pair=1, alt_images_per_pair=0)
        return generate_world(cfg, root, progress=False)

    return make
