"""The logger every fit uses: Lightning's MLFlowLogger with the run's journal in front of the store.

    aotrain fit                        # logs through <run_dir>/mlflow_journal.jsonl
    aotrain sync outputs/runs/<run>    # what an outage held back, after the run

Kept apart from aotrain/tracking_journal.py so that `aotrain sync` and the store check load no Lightning.
"""
from __future__ import annotations

import atexit
import re
import threading
import time
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from aotrain.tracking_journal import JOURNAL, Journal, _now_ms, _say, is_transient, rows, send_pending
from aotrain.tracking_store import short_reason

# Lightning's finalize(status) words -> MLflow run statuses.
STATUSES = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


class JournaledMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with the journal in front: training never waits on the store.

    `start()` (at the start of the run, when the store was just checked) creates or reopens the run;
    afterwards metrics and params are journaled and sent by a background thread, which retries every
    `retry_s` while the store does not answer. `close(wait_s)` at the end sends what is left, waiting up
    to `wait_s` for the store, and prints how to send what still is not there.
    """

    def __init__(self, *args, run_dir: str | Path, retry_s: float = 5.0, final_wait_s: float = 60.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir)
        self.journal = Journal(self.run_dir / JOURNAL)
        self.retry_s, self.final_wait_s = retry_s, final_wait_s
        self._refused = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None
        self._closed = False

    @rank_zero_only
    def start(self) -> None:
        """Create (or reopen) the MLflow run and start sending; errors here are the store's, at start."""
        client = self.experiment
        header = {"tracking_uri": self._tracking_uri, "experiment_id": self._experiment_id,
                  "experiment_name": self._experiment_name, "run_id": self._run_id, "run_name": self._run_name}
        if self.journal.header is not None and self.journal.header["run_id"] != self._run_id:
            # This folder's journal belongs to another MLflow run (its pointer was lost): keep it aside.
            self.journal.path.rename(self.journal.path.with_name(f"mlflow_journal.{self.journal.header['run_id']}.jsonl"))
            self.journal = Journal(self.run_dir / JOURNAL)
        self.journal.start(header)
        assert client is not None
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-journal", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _send_once(self) -> bool:
        try:
            sent = send_pending(self.journal, self._mlflow_client, self._run_id)
        except Exception as e:  # noqa: BLE001 - whatever the store raised, training goes on
            if not is_transient(e):  # asking again would get the same answer: skip that batch, once
                batch = [r for r in self.journal.pending(self._run_id) if r["seq"] <= e.journal_seq]
                if not self._refused:
                    _say(f"the store refused journal records {batch[0]['seq']}-{batch[-1]['seq']} "
                         f"({short_reason(e)}); not sent, they stay in {self.journal.path}")
                self._refused += sum(rows(r) for r in batch)
                self.journal.mark(self._run_id, e.journal_seq)
                return False
            if self._down_since is None:
                self._down_since = time.time()
                _say(f"{self._tracking_uri} does not answer ({short_reason(e)}); training goes on, "
                     f"metrics are kept in {self.journal.path} and sent when it answers")
            return False
        if self._down_since is not None:
            _say(f"{self._tracking_uri} answers again after {time.time() - self._down_since:.0f} s; "
                 f"sent {sent} journaled rows")
            self._down_since = None
        return True

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if self._down_since is None:
                self._wake.wait()
            else:
                self._stop.wait(self.retry_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._send_once()

    def _record(self, record: dict) -> None:
        if self._thread is None:
            self.start()
        self.journal.append(record)
        self._wake.set()

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        params = _flatten_dict(_convert_params(params))
        # MLFlowLogger's own rule, kept so runs logged before and after the journal compare.
        self._record({"params": {k: str(v)[:250] for k, v in params.items()}})

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        from lightning.fabric.utilities.logger import _add_prefix

        values = {}
        for key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, str):
                continue
            values[re.sub("[^a-zA-Z0-9_/. -]+", "", key)] = float(value)
        if values:
            self._record({"metrics": values, "step": int(step or 0), "ts": _now_ms()})

    @rank_zero_only
    def log_artifact_paths(self, paths) -> None:
        """Journal files and folders to upload (a folder keeps its name under the run's artifacts)."""
        for path in paths:
            path = Path(path)
            if path.exists():
                self._record({"artifact": str(path.resolve())})

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Journal the run's end status (checkpoints are not logged as models: log_model=False)."""
        if self._thread is None:
            return
        status = STATUSES.get(status, status.upper())
        last = next((r for r in reversed(self.journal.records) if "terminated" in r), None)
        if last is None or last["terminated"] != status:  # Lightning may finalize twice
            self._record({"terminated": status, "ts": _now_ms()})

    def unsent_rows(self) -> int:
        return sum(rows(r) for r in self.journal.pending(self._run_id)) if self._run_id else 0

    def close(self, wait_s: float | None = None) -> int:
        """Stop the sender and send what is left, trying for up to `wait_s` seconds (final_wait_s); returns
        the rows still unsent (and says how to send them). Also run at exit, if the run never got here."""
        if self._closed or self._thread is None:
            return 0
        wait_s = self.final_wait_s if wait_s is None else wait_s
        self._closed = True
        atexit.unregister(self.close)
        self._stop.set()
        self._wake.set()
        self._thread.join()
        deadline = time.time() + wait_s
        while not self._send_once() and self.journal.pending(self._run_id) and time.time() < deadline:
            time.sleep(min(self.retry_s, max(0.0, deadline - time.time())))
        self.journal.close()
        left = self.unsent_rows()
        if self._refused:
            _say(f"the store refused {self._refused} rows in all; they are in {self.journal.path} only")
        if left:
            _say(f"{self._tracking_uri} did not answer; {left} unsent rows are kept in {self.journal.path}; "
                 f"send them with: aotrain sync {self.run_dir}")
        return left
