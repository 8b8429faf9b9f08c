"""Tracking that cannot lose a run: the store check before any work, the journal during the run, `aotrain sync`.

The drill: `aotrain fit` logs to a real `mlflow server` on 127.0.0.1; the server is killed (SIGKILL, its
whole process group) once the journal shows step 3, stays down while training goes on, and comes back
on the same port and database; the run must finish and the server hold every metric step exactly once.

    python -m pytest tests/test_tracking_outage.py               # ~2 min on 2 cores
    python -m pytest tests/test_tracking_outage.py -m slow       # the 5-minute outage
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli, run_cli_here

JOURNAL = "mlflow_journal.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An `mlflow server` that can be killed and started again on the same port and database."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> float:
        """Start and wait until /health answers; returns the seconds that took."""
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        # No job runner: its worker processes outlive a killed server and take CPU on a small machine.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        started = time.time()
        self.proc = subprocess.Popen(
            [str(mlflow_bin if mlflow_bin.exists() else shutil.which("mlflow")), "server",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
             "--artifacts-destination", str(self.folder / "server-artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder, env=env,
            start_new_session=True)  # its own process group: a kill takes uvicorn with it
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return time.time() - started
            except OSError:
                if time.time() - started > timeout or self.proc.poll() is not None:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.3)

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.kill(signal.SIGTERM)


def read_journal(path: Path) -> dict:
    """What a journal holds: header, records, the highest sent mark per run."""
    header, records, sent = None, [], {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "run" in entry:
                header = entry["run"]
            elif "sent" in entry:
                sent[entry["run_id"]] = max(sent.get(entry["run_id"], 0), entry["sent"])
            else:
                records.append(entry)
    steps = [r["step"] for r in records if "metrics" in r and "train/loss" in r["metrics"]]
    done = sent.get(header["run_id"], 0) if header else 0
    return {"header": header, "records": records, "sent": sent, "step": max(steps, default=-1),
            "pending": sum(len(r.get("metrics", r.get("params", {0: 0}))) for r in records if r["seq"] > done)}


def journal_rows(records: list[dict]) -> dict[str, list[tuple]]:
    """{metric key: [(step, value, timestamp), ...]} as the run logged them."""
    rows: dict[str, list[tuple]] = {}
    for r in records:
        for key, value in r.get("metrics", {}).items():
            rows.setdefault(key, []).append((r["step"], value, r["ts"]))
    return rows


def store_rows(client: MlflowClient, run_id: str, keys) -> dict[str, list[tuple]]:
    return {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, k)] for k in keys}


def _env(root: Path, uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID")}
    return {**env, "AOTRAIN_OUTPUT": str(root), "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}


def outage_drill(server: Server, root: Path, steps: int, outage_s: float | None, kill_at: int = 3,
                 extra: tuple = (), final_wait_s: int = 180) -> dict:
    """Fit with the server killed at step `kill_at` and started again after `outage_s` seconds (None:
    as soon as the journal shows training went on without it). Returns the figures."""
    root.mkdir(parents=True, exist_ok=True)
    # Output to files, not pipes: nobody reads a pipe during the drill, and a full one would stall the fit.
    stdout, stderr = open(root / "fit.stdout", "w+"), open(root / "fit.stderr", "w+")
    fit = subprocess.Popen([sys.executable, "-m", "aotrain.cli", "fit", "debug=smoke", f"trainer.max_steps={steps}",
                            "logger.retry_s=1", f"logger.final_wait_s={final_wait_s}", *extra],
                           stdout=stdout, stderr=stderr, text=True, cwd=REPO, env=_env(root, server.uri))
    try:
        journal, deadline = None, time.time() + 600
        while journal is None or read_journal(journal)["step"] < kill_at:
            assert fit.poll() is None, "the fit ended before the outage"
            assert time.time() < deadline
            journal = next((root / "runs").glob(f"*/{JOURNAL}"), None) if (root / "runs").is_dir() else None
            time.sleep(0.2)
        server.kill()
        down_at, at_kill = time.time(), read_journal(journal)
        # Down: the fit goes on and rows pile up in the journal (no request gets through).
        while True:
            now = read_journal(journal)
            went_on = now["pending"] > 0 and now["step"] >= at_kill["step"] + 2
            if (outage_s is None and went_on) or (outage_s is not None and time.time() - down_at >= outage_s):
                break
            assert fit.poll() is None or outage_s is not None, "the fit ended during the outage"
            time.sleep(0.2)
        during = read_journal(journal)
        restart_s = server.start()
        outage, back = time.time() - down_at, read_journal(journal)
        fit.wait(timeout=900)
    finally:
        if fit.poll() is None:
            fit.kill()
        stdout.close()
        stderr.close()
    out, err = (root / "fit.stdout").read_text(), (root / "fit.stderr").read_text()
    return {"rc": fit.returncode, "stdout": out, "stderr": err, "journal": journal, "run_dir": journal.parent,
            "outage_s": outage, "restart_s": restart_s, "kill_step": at_kill["step"], "step_when_back": back["step"],
            "rows_held_when_back": back["pending"],
            "steps_during_outage": during["step"] - at_kill["step"], "pending_during_outage": during["pending"]}


def check_every_step_once(drill: dict, uri: str) -> dict:
    """The run FINISHED and the store holds each journaled metric row exactly once; returns counts."""
    journal = read_journal(drill["journal"])
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(journal["header"]["run_id"])
    assert run.info.status == "FINISHED"
    logged = journal_rows(journal["records"])
    held = store_rows(client, run.info.run_id, logged)
    for key, rows in logged.items():
        steps = [s for s, _, _ in rows]
        assert len(set(steps)) == len(steps), f"{key}: the run logged a step twice"
        assert sorted(held[key]) == sorted(rows), f"{key}: store {sorted(held[key])[:5]} != journal {sorted(rows)[:5]}"
    assert list(held["train/loss"]) and sorted(s for s, _, _ in held["train/loss"]) == list(range(drill["steps"]))
    assert {"config.yaml", "eval", "summary.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    return {"keys": len(held), "rows": sum(len(v) for v in held.values()),
            "train_loss_steps": len(held["train/loss"]),
            "eval_steps": sorted({s for s, _, _ in held.get("eval/unseen/pair_top1", [])})}


# --- before any work: the store check ---------------------------------------------------------------

@pytest.mark.parametrize("uri, says", [
    ("http://127.0.0.1:9", "does not answer (Connection refused"),
    ("foo://x", "no store for scheme 'foo'"),
    ("sqlite:////etc/hostname/mlflow.db", "is a file, not a folder"),   # parent is a regular file
    ("sqlite:////proc/mlflow.db", "cannot write in /proc"),              # a folder nothing can be written to
])
def test_a_store_that_cannot_take_the_run_stops_fit_before_any_work(tmp_path, uri, says):
    started = time.time()
    # In this process (the CLI's main(), no interpreter start): the check comes before any work.
    proc = run_cli_here("fit", "debug=smoke", root=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    seconds = time.time() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("aotrain fit: error: logger.tracking_uri=")
    assert list(tmp_path.iterdir()) == [], "nothing written: no world, no run folder, no store"
    assert seconds < 60, f"{seconds:.0f} s"  # 268 s of retries before the check; seconds now (imports included)


def test_sweep_checks_the_store_first(tmp_path):
    proc = run_cli_here("sweep", "recipe=tiny", root=tmp_path, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert proc.returncode == 2 and "aotrain sweep: error:" in proc.stderr and "Connection refused" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# --- the journal, without a store ---------------------------------------------------------------------

class FlakyClient:
    """Stands in for MlflowClient: takes rows while `up`, raises ConnectionError otherwise."""

    def __init__(self):
        self.up, self.metrics, self.params, self.status = True, [], {}, None

    def _check(self):
        if not self.up:
            raise ConnectionError("[Errno 111] Connection refused")

    def log_batch(self, run_id, metrics=(), params=()):
        self._check()
        self.metrics += [(m.key, m.step, m.value, m.timestamp) for m in metrics]
        self.params.update({p.key: p.value for p in params})

    def set_terminated(self, run_id, status, end_time):
        self._check()
        self.status = status


def test_journal_replays_what_an_outage_held_back_once(tmp_path):
    from aotrain.tracking_journal import Journal, send_pending

    path = tmp_path / JOURNAL
    journal = Journal(path)
    journal.start({"run_id": "r1", "tracking_uri": "x", "experiment_id": "0", "experiment_name": "e",
                   "run_name": "n"})
    client = FlakyClient()
    journal.append({"params": {"seed": "0"}})
    for step in range(3):
        journal.append({"metrics": {"train/loss": 1.0 / (step + 1), "lr": 0.1}, "step": step, "ts": 1000 + step})
    assert send_pending(journal, client, "r1") == 7
    client.up = False
    for step in range(3, 8):
        journal.append({"metrics": {"train/loss": 1.0 / (step + 1), "lr": 0.1}, "step": step, "ts": 1000 + step})
        with pytest.raises(ConnectionError):
            send_pending(journal, client, "r1")
    journal.append({"terminated": "FINISHED", "ts": 2000})
    journal.close()
    with open(path, "a") as f:  # a record cut short by kill -9 is dropped, not glued to the next one
        f.write('{"seq": 99, "metr')
    reloaded = Journal(path)
    assert [r["seq"] for r in reloaded.pending("r1")] == list(range(5, 11))
    client.up = True
    assert send_pending(reloaded, client, "r1") == 11
    assert send_pending(reloaded, client, "r1") == 0  # nothing twice
    reloaded.append({"metrics": {"late": 1.0}, "step": 8, "ts": 3000})
    reloaded.close()
    assert Journal(path).last_seq == 11

    def parses(line):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return None

    assert [line for line in path.read_text().splitlines() if parses(line) is None] == ['{"seq": 99, "metr']
    steps = [s for k, s, _, _ in client.metrics if k == "train/loss"]
    assert steps == list(range(8)) and client.status == "FINISHED" and client.params == {"seed": "0"}


def test_a_refusal_is_not_an_outage():
    """A store that answers 'no' (4xx) is not retried forever; no answer, 5xx, 408 and 429 are."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

    from aotrain.tracking_journal import is_transient

    assert not is_transient(MlflowException("param changed", INVALID_PARAMETER_VALUE))
    assert not is_transient(MlflowException("run deleted", RESOURCE_DOES_NOT_EXIST))
    assert is_transient(MlflowException("API request failed: Connection refused"))  # INTERNAL_ERROR, 500
    assert is_transient(ConnectionError("[Errno 111] Connection refused"))


def test_a_store_down_at_the_end_leaves_a_journal_that_sync_sends_once(tmp_path, capsys, monkeypatch):
    """The end-of-run path: one line naming the unsent rows and the command; `aotrain sync` sends them."""
    from omegaconf import OmegaConf

    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(key, os.environ.get(key, "2"))  # make_logger sets them for its process: undo after

    from aotrain.tracking import make_logger
    from aotrain.tracking_journal import sync_main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = OmegaConf.create({"logger": {"tracking_uri": uri, "experiment_name": "aotrain", "retry_s": 0.2,
                                       "artifact_location": str(tmp_path / "art")},
                            "paths": {"run_dir": str(tmp_path / "run")}})
    logger = make_logger(cfg, run_name="run")
    logger.log_hyperparams({"seed": 0})
    logger.log_metrics({"train/loss": 2.0}, step=0)
    deadline = time.time() + 30
    while logger.unsent_rows() and time.time() < deadline:  # the sender has delivered step 0
        time.sleep(0.1)
    real, logger._mlflow_client = logger._mlflow_client, FlakyClient()
    logger._mlflow_client.up = False  # the store stops answering
    for step in range(1, 6):
        logger.log_metrics({"train/loss": 2.0 - step / 10}, step=step)
    logger.finalize("success")
    assert logger.close(wait_s=0.5) == 6  # 5 metric rows and the status
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "6 unsent rows" in last and f"aotrain sync {tmp_path / 'run'}" in last
    client = MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(logger.run_id, "train/loss")] == [0]
    assert sync_main([str(tmp_path / "run")]) == 0
    assert "sent 6 rows" in capsys.readouterr().out
    assert sync_main([str(tmp_path / "run")]) == 0
    assert "nothing to send" in capsys.readouterr().out
    history = client.get_metric_history(logger.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(6))
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    del real


def test_sync_refuses_a_folder_without_a_journal(tmp_path):
    proc = run_cli_here("sync", str(tmp_path), root=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("aotrain sync: error: no MLflow journal")


# --- the drill: a real server killed mid-run ------------------------------------------------------------

@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outage")
    srv = Server(folder)
    srv.start()
    try:
        result = outage_drill(srv, folder / "out", steps=20, outage_s=None,
                              extra=("eval.every_n_steps=5",))
        result["steps"] = 20
        yield srv, result
    finally:
        srv.kill(signal.SIGTERM)


def test_an_outage_mid_run_costs_no_step_and_no_metric(drill):
    srv, result = drill
    assert result["rc"] == 0, result["stderr"][-3000:]
    assert result["steps_during_outage"] >= 2 and result["pending_during_outage"] > 0  # trained without it
    said = [line for line in result["stderr"].splitlines() if line.startswith("tracking: ")]
    assert len(said) == 2 and "does not answer" in said[0] and "training goes on" in said[0], said
    assert "answers again" in said[1], said
    counts = check_every_step_once(result, srv.uri)
    assert counts["eval_steps"] == [5, 10, 15, 20]
    print("\n" + "\n".join(said))
    print(f"outage {result['outage_s']:.1f} s (server restart {result['restart_s']:.1f} s): killed at step "
          f"{result['kill_step']}, back at step {result['step_when_back']} with {result['rows_held_when_back']} rows "
          f"held in the journal; store: {counts}")


def test_sync_copies_a_finished_run_to_another_store_once(drill, tmp_path):
    srv, result = drill
    run_dir = result["run_dir"]
    proc = run_cli("sync", str(run_dir), root=tmp_path, timeout=120)  # its own store has everything already
    assert proc.returncode == 0 and "nothing to send" in proc.stdout, proc.stderr
    copy = f"sqlite:///{tmp_path}/copy.db"
    first = run_cli("sync", str(run_dir), "--to", copy, root=tmp_path, timeout=300)
    assert first.returncode == 0 and "(created)" in first.stdout, first.stderr[-2000:]
    again = run_cli("sync", str(run_dir), "--to", copy, root=tmp_path, timeout=120)
    assert again.returncode == 0 and "nothing to send" in again.stdout, again.stderr[-2000:]
    journal = read_journal(result["journal"])
    original, target = MlflowClient(tracking_uri=srv.uri), MlflowClient(tracking_uri=copy)
    (copied,) = target.search_runs([target.get_experiment_by_name("aotrain").experiment_id])
    keys = journal_rows(journal["records"])
    assert store_rows(target, copied.info.run_id, keys) == store_rows(original, journal["header"]["run_id"], keys)
    assert copied.info.status == "FINISHED" and copied.data.params == original.get_run(
        journal["header"]["run_id"]).data.params


def test_eval_checks_the_store_before_evaluating(drill, tmp_path):
    ckpt = drill[1]["run_dir"] / "checkpoints" / "last.ckpt"
    proc = run_cli_here("eval", f"checkpoint={ckpt}", "log_to=new", f"out={tmp_path}/eval", root=tmp_path,
                        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("aotrain eval: error: logger.tracking_uri=http://127.0.0.1:9")
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_a_five_minute_outage_costs_no_metric(server, tmp_path):
    """The issue's 'Must show': the server down for 5 minutes in the middle of a fit (longer than MLflow's
    own retry window of ~4.5 minutes). 400 steps took ~9 min on a busy 2-core machine (1.3 s/step); where
    steps are faster, raise AOTRAIN_OUTAGE_STEPS to keep the outage inside training (a fit that ends
    first waits for the store, and the test still checks every row)."""
    steps = int(os.environ.get("AOTRAIN_OUTAGE_STEPS", 400))
    result = outage_drill(server, tmp_path / "out", steps=steps, outage_s=300, final_wait_s=900,
                          extra=("eval.every_n_steps=100",))
    result["steps"] = steps
    assert result["rc"] == 0, result["stderr"][-3000:]
    assert "unsent rows" not in result["stderr"]
    counts = check_every_step_once(result, server.uri)
    print(f"\noutage {result['outage_s']:.0f} s ({steps} steps): killed at step {result['kill_step']}, back at step "
          f"{result['step_when_back']} with {result['rows_held_when_back']} rows held in the journal; store: {counts}")
