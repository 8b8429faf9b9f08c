"""`aotrain fit` against a real `mlflow server` on 127.0.0.1 (MLFLOW_TRACKING_URI)."""
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_bin if mlflow_bin.exists() else shutil.which("mlflow")), "server",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield uri, tmp_path
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_fit_logs_to_a_tracking_server(mlflow_server):
    uri, tmp = mlflow_server
    root = tmp / "out"
    root.mkdir()
    proc = run_cli("fit", "debug=smoke", "trainer.max_steps=2", root=root,
                   env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert uri in proc.stdout
    assert not (root / "mlflow.db").exists(), "nothing goes to the local store"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("aotrain").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["recipe"] == "toy_low_nmi"
    assert "eval/unseen/pair_top1" in run.data.metrics
    # artifacts went through the server into its own artifact store
    assert {"config.yaml", "eval"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((tmp / "server-artifacts").rglob("config.yaml"))
