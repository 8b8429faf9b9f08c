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


@pytest.fixture(scope="session")
def smoke_fit(tmp_path_factory):
    """`aotrain fit debug=smoke` into a fresh output root: (root, CompletedProcess)."""
    root = tmp_path_factory.mktemp("smoke")
    proc = run_cli("fit", "debug=smoke", root=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc
