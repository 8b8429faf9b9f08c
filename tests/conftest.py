"""Shared fixtures: one tiny smoke fit per test session, run through the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, root: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `aotrain ARGS` in a subprocess (as a user would) and return the CompletedProcess."""
    # The caller's environment must not leak a tracking server or a parent's run id into the test.
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID")}
    full_env.update(env or {})
    if root is not None:
        full_env["AOTRAIN_OUTPUT"] = str(root)
    return subprocess.run([sys.executable, "-m", "aotrain.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=root or REPO, timeout=timeout)


def run_cli_here(*args: str, root: Path) -> subprocess.CompletedProcess:
    """`aotrain ARGS` in this process, for commands that stop before any work (bad input): the same
    main() and exit code as run_cli without a new interpreter's 5-10 s of imports. The environment,
    working folder and signal handlers the command changes are put back afterwards."""
    import contextlib
    import io
    import signal

    from aotrain.cli import main

    env, cwd = dict(os.environ), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    out, err = io.StringIO(), io.StringIO()
    for key in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID"):
        os.environ.pop(key, None)
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
        os.environ.update(env)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(["aotrain", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def smoke_fit(tmp_path_factory):
    """`aotrain fit debug=smoke` into a fresh output root: (root, CompletedProcess)."""
    root = tmp_path_factory.mktemp("smoke")
    proc = run_cli("fit", "debug=smoke", root=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


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
    from img2dataset_tool import run_img2dataset

    return run_img2dataset(tmp_path_factory.mktemp("img2dataset") / "pool")


@pytest.fixture(scope="session")
def datacomp_pool(tmp_path_factory):
    """img2dataset_pool's pool as DataComp makes them: the input has a `uid` column, passed through
    --save_additional_columns '["uid"]', so every parquet row and sample json carries it (rows[i]["uid"])."""
    from img2dataset_tool import run_img2dataset

    return run_img2dataset(tmp_path_factory.mktemp("datacomp") / "pool", uid=True)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """small_world(n_samples=300, samples_per_shard=100) -> the folder of a toy world with the default
    world config (recipes/world/default.yaml), one evaluation image per pair. Worlds are cached by
    their config (aotrain.toyworld), so every test asking for the same sizes shares one."""
    import yaml

    from aotrain.config import RECIPES_DIR
    from aotrain.toyworld import generate_world

    root = tmp_path_factory.mktemp("small_worlds")

    def make(n_samples: int = 300, samples_per_shard: int = 100) -> Path:
        cfg = yaml.safe_load((RECIPES_DIR / "world" / "default.yaml").read_text())
        cfg["pool"].update(n_samples=n_samples, samples_per_shard=samples_per_shard)
        cfg["eval"].update(images_per_unseen_pair=1, images_per_seen_pair=1)
        return generate_world(cfg, root, progress=False)

    return make
