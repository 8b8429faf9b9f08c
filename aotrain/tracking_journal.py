"""A run's MLflow journal: nothing a run logs is lost when the tracking store is down.

Every param, metric, artifact and the final status is appended to <run_dir>/mlflow_journal.jsonl
first, then sent to the store by a background thread; what the store does not take stays pending
and is sent when it answers again, at the end of the run, or later by

    aotrain sync outputs/runs/toy_low_nmi-20261129-120000                          # the run's own store
    aotrain sync outputs/runs/toy_low_nmi-20261129-120000 --to sqlite:///$PWD/copy.db  # another store

The journal is JSON lines, appended and flushed as they happen:

    {"run": {"tracking_uri": ..., "experiment_id": ..., "experiment_name": ..., "run_id": ..., "run_name": ...}}
    {"seq": 1, "params": {"recipe": "toy_low_nmi", ...}}
    {"seq": 2, "metrics": {"train/loss": 4.1}, "step": 0, "ts": 1795958400123}
    {"seq": 9, "artifact": "/abs/run_dir/config.yaml"}
    {"seq": 10, "terminated": "FINISHED", "ts": 1795958460000}
    {"sent": 9, "run_id": "3f0c..."}             every record up to seq 9 is in that run

Records are sent in seq order and a `sent` mark is appended after each batch the store accepted, so a
replay starts after the mark and sends each row once. If the store took a batch but its answer was
lost, the batch is sent again with the same (key, value, timestamp, step) rows; MLflow's SQL stores
keep one row per identical metric, so even that repeat adds nothing. A copy to another store (--to)
gets its own run and its own marks (the first one names that store's URI).
"""
from __future__ import annotations

import argparse
import atexit
import bisect
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

JOURNAL = "mlflow_journal.jsonl"

# MLflow's log_batch limits: 1000 metrics, 100 params per request.
MAX_METRICS, MAX_PARAMS = 1000, 100
STATUSES = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


def _say(message: str) -> None:
    print(f"tracking: {message}", file=sys.stderr, flush=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


def rows(record: dict) -> int:
    """How many store rows a record is (one per metric value or param; one artifact; one status)."""
    if "metrics" in record:
        return len(record["metrics"])
    if "params" in record:
        return len(record["params"])
    return 1


def is_transient(error: BaseException) -> bool:
    """An outage worth retrying (no answer, timeout, 5xx, 408/429), not a refusal (other 4xx) that
    would fail the same way forever."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return not (400 <= status < 500) or status in (408, 429)
    return True


def short_reason(error: BaseException) -> str:
    """The useful end of an MLflow/requests error: 'Connection refused', 'timed out', ..."""
    text = str(error)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "no answer (timed out)"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first if len(first) <= 200 else first[:197] + "..."


class Journal:
    """The journal file of one run folder: records, the run header and the sent marks."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.header: dict | None = None
        self.records: list[dict] = []
        self.sent: dict[str, int] = {}       # run id -> highest seq the store of that run holds
        self.targets: dict[str, str] = {}    # tracking URI -> run id, for copies made by `aotrain sync --to`
        self._lock = threading.Lock()
        self._file = None
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by kill -9: its record was never sent either
                continue
            if "run" in entry:
                self.header = entry["run"]
            elif "sent" in entry:
                run = entry["run_id"]
                self.sent[run] = max(self.sent.get(run, 0), entry["sent"])
                if "tracking_uri" in entry:
                    self.targets[entry["tracking_uri"]] = run
            elif "seq" in entry:
                self.records.append(entry)

    @property
    def last_seq(self) -> int:
        return self.records[-1]["seq"] if self.records else 0

    def _write(self, entry: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = self.path.is_file() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
            self._file = open(self.path, "a", encoding="utf-8")
            if torn:  # never glue a new record onto a half-written one
                self._file.write("\n")
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def start(self, header: dict) -> None:
        """Name the run this journal belongs to (kept when it already names it: a resumed run)."""
        with self._lock:
            if self.header is None:
                self.header = header
                self._write({"run": header})

    def append(self, record: dict) -> int:
        with self._lock:
            record = {"seq": self.last_seq + 1, **record}
            self.records.append(record)
            self._write(record)
            return record["seq"]

    def mark(self, run_id: str, seq: int, tracking_uri: str | None = None) -> None:
        with self._lock:
            self.sent[run_id] = max(self.sent.get(run_id, 0), seq)
            entry = {"sent": seq, "run_id": run_id}
            if tracking_uri is not None:
                entry["tracking_uri"] = tracking_uri
                self.targets[tracking_uri] = run_id
            self._write(entry)

    def pending(self, run_id: str) -> list[dict]:
        with self._lock:  # records are in seq order: a bisection, not a scan per send
            return self.records[bisect.bisect_right(self.records, self.sent.get(run_id, 0), key=lambda r: r["seq"]):]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _batches(records: list[dict]):
    """Consecutive records grouped into requests within MLflow's limits: (kind, [records])."""
    batch, kind, size = [], None, 0
    for record in records:
        this = "metrics" if "metrics" in record else "params" if "params" in record else "one"
        limit = MAX_METRICS if this == "metrics" else MAX_PARAMS
        if batch and (this != kind or kind == "one" or size + rows(record) > limit):
            yield kind, batch
            batch, size = [], 0
        batch.append(record)
        kind, size = this, size + rows(record)
    if batch:
        yield kind, batch


def send_pending(journal: Journal, client, run_id: str, tracking_uri: str | None = None) -> int:
    """Send `run_id`'s pending records in order, marking each accepted batch; returns rows sent.
    Raises what the store raised (the records from the failed batch on stay pending)."""
    from mlflow.entities import Metric, Param

    sent = 0
    for kind, batch in _batches(journal.pending(run_id)):
        if kind == "metrics":
            client.log_batch(run_id, metrics=[Metric(k, float(v), r["ts"], r["step"])
                                              for r in batch for k, v in r["metrics"].items()])
        elif kind == "params":
            params = {}
            for r in batch:
                params.update(r["params"])
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        else:
            (record,) = batch
            if "artifact" in record:
                path = Path(record["artifact"])
                if path.is_dir():
                    client.log_artifacts(run_id, str(path), artifact_path=record.get("artifact_path") or path.name)
                elif path.is_file():
                    client.log_artifact(run_id, str(path), artifact_path=record.get("artifact_path"))
                else:  # removed since: nothing left to send, and waiting would not bring it back
                    _say(f"artifact {path} no longer exists; not sent")
            elif "terminated" in record:
                client.set_terminated(run_id, status=record["terminated"], end_time=record["ts"])
        journal.mark(run_id, batch[-1]["seq"], tracking_uri)
        sent += sum(rows(r) for r in batch)
    return sent


class JournaledMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with the journal in front: training never waits on the store.

    `start()` (at the start of the run, when the store was just checked) creates or reopens the run;
    afterwards metrics and params are journaled and sent by a background thread, which retries every
    `retry_s` while the store does not answer. `close(wait_s)` at the end sends what is left, waiting up
    to `wait_s` for the store, and prints how to send what still is not there.
    """

    def __init__(self, *args, run_dir: str | Path, retry_s: float = 5.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir)
        self.journal = Journal(self.run_dir / JOURNAL)
        self.retry_s = retry_s
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
            if not is_transient(e):
                seq = self.journal.pending(self._run_id)[0]["seq"]
                _say(f"the store refused record {seq} ({short_reason(e)}); skipped, it stays in {self.journal.path}")
                self.journal.mark(self._run_id, seq)
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
        if not self._initialized:
            return
        status = STATUSES.get(status, status.upper())
        if status == "FINISHED" and self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        last = next((r for r in reversed(self.journal.records) if "terminated" in r), None)
        if last is None or last["terminated"] != status:  # Lightning may finalize twice
            self._record({"terminated": status, "ts": _now_ms()})

    def unsent_rows(self) -> int:
        return sum(rows(r) for r in self.journal.pending(self._run_id)) if self._run_id else 0

    def close(self, wait_s: float = 60.0) -> int:
        """Stop the sender and send what is left, trying for up to `wait_s` seconds; returns the rows
        still unsent (and says how to send them)."""
        if self._closed or self._thread is None:
            return 0
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
        if left:
            _say(f"{self._tracking_uri} did not answer; {left} unsent rows are kept in {self.journal.path}; "
                 f"send them with: aotrain sync {self.run_dir}")
        return left


# ---------------------------------------------------------------------------------------------------
# aotrain sync


def sync(run_dir: Path, to: str | None = None) -> dict:
    """Send a run folder's unsent journal records to its store (or a copy of the run to store `to`)."""
    from mlflow.tracking import MlflowClient

    from aotrain.config import UserError
    from aotrain.tracking import check_store, experiment_id

    path = Path(run_dir)
    path = path if path.name.endswith(".jsonl") else path / JOURNAL
    if not path.is_file():
        raise UserError(f"no MLflow journal {path} (a run folder of aotrain fit has one)")
    journal = Journal(path)
    if journal.header is None:
        raise UserError(f"{path} names no MLflow run (its first line should be the run header)")
    source = journal.header
    uri = to or source["tracking_uri"]
    check_store(uri, what="--to" if to else "the run's tracking URI")
    client = MlflowClient(tracking_uri=uri)
    copy = uri != source["tracking_uri"]
    run_id = journal.targets.get(uri) if copy else source["run_id"]
    created = False
    if run_id is None:  # the first copy to this store: a run of its own, remembered in the journal
        experiment = experiment_id(client, source["experiment_name"], uri, None)
        tags = {"mlflow.runName": source["run_name"] or source["run_id"], "aotrain.synced_from": source["run_id"]}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        journal.mark(run_id, 0, tracking_uri=uri)
        created = True
    pending = journal.pending(run_id)
    try:
        sent = send_pending(journal, client, run_id, tracking_uri=uri if copy else None)
    except Exception as e:  # noqa: BLE001 - the store's error, as one line
        left = sum(rows(r) for r in journal.pending(run_id))
        raise UserError(f"{uri} did not take the journal ({short_reason(e)}); {left} rows still unsent: "
                        "run aotrain sync again when it answers") from None
    finally:
        journal.close()
    return {"journal": str(path), "tracking_uri": uri, "run_id": run_id, "created": created,
            "rows": sent, "records": len(pending), "total": len(journal.records)}


def sync_main(argv: list[str]) -> int:
    """`aotrain sync RUN_DIR [--to URI]`: exit 0 when the store holds the whole journal."""
    from aotrain.config import UserError

    parser = argparse.ArgumentParser(
        prog="aotrain sync",
        description="Send what a run's MLflow journal (<run_dir>/mlflow_journal.jsonl) holds and its store does "
                    "not: after a tracking outage outlasted the run. Running it again sends nothing twice.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (or its mlflow_journal.jsonl)")
    parser.add_argument("--to", metavar="URI", help="copy the run into another store (a new run there, once)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed usage and the error (or the help)
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        result = sync(Path(args.run_dir), args.to)
    except UserError as e:
        print(f"aotrain sync: error: {e}", file=sys.stderr)
        return 2
    where = f"{result['tracking_uri']} run {result['run_id']}" + (" (created)" if result["created"] else "")
    if result["records"]:
        print(f"aotrain sync: sent {result['rows']} rows ({result['records']} journal records) to {where}")
    else:
        print(f"aotrain sync: nothing to send; all {result['total']} journal records are in {where}")
    return 0


def short_http_env(timeout_s: int) -> dict:
    """MLflow's HTTP client settings for a request that must answer fast or fail: no retries."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s)))}


def use_short_http(timeout_s: int) -> None:
    """For the rest of this process (a fit's rank 0): requests fail within `timeout_s` instead of
    retrying for minutes; the journal retries instead. Settings the user exported win."""
    for key, value in short_http_env(timeout_s).items():
        os.environ.setdefault(key, value)
