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
import bisect
import json
import os
import sys
import threading
import time
from pathlib import Path

from aotrain.tracking_store import check_store, experiment_id, short_reason, use_short_http

from data_filters.command import run_command

JOURNAL = "mlflow_journal.jsonl"

# MLflow's log_batch limits: 1000 metrics, 100 params per request.
MAX_METRICS, MAX_PARAMS = 1000, 100


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
            torn = False
            if self.path.is_file() and self.path.stat().st_size:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
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
    Raises what the store raised, with `journal_seq` (where the failed batch ends) set on it; the
    records from the failed batch on stay pending."""
    sent = 0
    for kind, batch in _batches(journal.pending(run_id)):
        try:
            _send_batch(client, run_id, kind, batch)
        except Exception as e:
            e.journal_seq = batch[-1]["seq"]  # a batch the store refuses for good can be skipped whole
            raise
        journal.mark(run_id, batch[-1]["seq"], tracking_uri)
        sent += sum(rows(r) for r in batch)
    return sent


def _send_batch(client, run_id: str, kind: str, batch: list[dict]) -> None:
    from mlflow.entities import Metric, Param

    if kind == "metrics":  # the journaled timestamps: a repeat is the same row, which SQL stores keep once
        client.log_batch(run_id, metrics=[Metric(k, float(v), r["ts"], r["step"])
                                          for r in batch for k, v in r["metrics"].items()])
    elif kind == "params":
        params = {k: v for r in batch for k, v in r["params"].items()}
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    elif "artifact" in batch[0]:
        path = Path(batch[0]["artifact"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif path.is_file():
            client.log_artifact(run_id, str(path))
        else:  # removed since: waiting would not bring it back
            _say(f"artifact {path} no longer exists; not sent")
    elif "terminated" in batch[0]:
        client.set_terminated(run_id, status=batch[0]["terminated"], end_time=batch[0]["ts"])


# ---------------------------------------------------------------------------------------------------
# aotrain sync


def sync(run_dir: Path, to: str | None = None) -> dict:
    """Send a run folder's unsent journal records to its store (or a copy of the run to store `to`)."""
    from mlflow.tracking import MlflowClient

    from aotrain.config import UserError

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
        # A local store keeps artifacts beside its database, as a fit's default does (not in the cwd).
        local = Path(uri.split("sqlite:///", 1)[1]).parent / "mlartifacts" if uri.startswith("sqlite:///") else None
        experiment = experiment_id(client, source["experiment_name"], uri, str(local) if local else None)
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
    parser = argparse.ArgumentParser(
        prog="aotrain sync",
        description="Send what a run's MLflow journal (<run_dir>/mlflow_journal.jsonl) holds and its store does "
                    "not: after a tracking outage outlasted the run. Running it again sends nothing twice.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (or its mlflow_journal.jsonl)")
    parser.add_argument("--to", metavar="URI", help="copy the run into another store (a new run there, once)")
    return run_command(parser, _sync, argv)


def _sync(args) -> int:
    from aotrain.config import UserError

    use_short_http(30)  # a store that stops answering fails this command in seconds; run it again later
    try:
        result = sync(Path(args.run_dir), args.to)
    except UserError as e:  # the one-line contract of data_filters/command.py
        raise ValueError(str(e)) from None
    where = f"{result['tracking_uri']} run {result['run_id']}" + (" (created)" if result["created"] else "")
    if result["records"]:
        print(f"aotrain sync: sent {result['rows']} rows ({result['records']} journal records) to {where}")
    else:
        print(f"aotrain sync: nothing to send; all {result['total']} journal records are in {where}")
    return 0
