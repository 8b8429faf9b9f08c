"""The MLflow store itself: whether it can take a run (checked in seconds, before any work), how
long a request may wait, and the experiment a run goes into. tracking.py (the run's logger and what it
records) and tracking_journal.py (the journal and `aotrain sync`) build on it; it imports neither.

    check_store("sqlite:////data/aotrain/mlflow.db")   # UserError unless the store can be written
    check_store("http://127.0.0.1:5000")               # ... or answers within CHECK_TIMEOUT_S
    use_short_http(10)                                 # later requests fail within ~10 s, no retries
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from aotrain.config import UserError

LOCAL_SCHEMES = ("sqlite:", "file:", "/")
SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
CHECK_TIMEOUT_S = 5
_CHECKED: set[str] = set()


@contextmanager
def _env(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def short_reason(error: BaseException) -> str:
    """The useful end of an MLflow/requests error: 'Connection refused', 'timed out', ..."""
    text = str(error)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "no answer (timed out)"
    cause = text.partition("Caused by ")[2]  # urllib3's "Max retries exceeded ... (Caused by X('...', Y('...')))"
    quoted = re.findall(r"'([^']{3,})'", cause)
    if quoted:
        return quoted[-1].strip().rstrip(".")
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def short_http_env(timeout_s: int) -> dict:
    """MLflow's HTTP client settings for a request that must answer fast or fail: no retries."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s)))}


def _check_local_file(path: Path, what: str, uri: str, kind: str) -> None:
    """The store file (or folder) can be written: its nearest existing folder takes a new file and an
    existing store file opens for writing. Nothing is created."""
    path = path.expanduser().absolute()
    ancestor = path.parent if kind == "file" else path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{what}={uri}: {ancestor} is a file, not a folder; the store cannot be created there")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".aotrain-store-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{what}={uri}: cannot write in {ancestor} ({e.strerror or e})") from None
    if kind == "file" and path.exists():
        if not path.is_file():
            raise UserError(f"{what}={uri}: {path} is not a file")
        try:
            with open(path, "r+b") as f:
                head = f.read(16)
        except OSError as e:
            raise UserError(f"{what}={uri}: cannot write {path} ({e.strerror or e})") from None
        if head and head != b"SQLite format 3\x00":
            raise UserError(f"{what}={uri}: {path} is not an SQLite database")


def check_store(uri: str, what: str = "logger.tracking_uri", timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Stop with one line (UserError) unless the MLflow store at `uri` can take a run, within a few
    seconds: a known scheme, a local file that can be written, a server or database that answers.

        check_store("http://127.0.0.1:9")   # UserError: ... does not answer (Connection refused) ...
    """
    if uri in _CHECKED:  # `aotrain fit` checks before Lightning loads; fit() then need not ask again
        return
    _check_store(uri, what, timeout_s)
    _CHECKED.add(uri)


def _check_store(uri: str, what: str, timeout_s: float) -> None:
    scheme = urlparse(uri).scheme.lower() if "://" in uri or uri.startswith("sqlite:") else ""
    if scheme == "sqlite":
        target = uri.split("sqlite:///", 1)[1] if uri.startswith("sqlite:///") else ""
        if target and target != ":memory:":
            _check_local_file(Path(target.split("?", 1)[0]), what, uri, "file")
        return
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
            raise UserError(f"{what}={uri}: MLflow 3 no longer writes file stores (unless MLFLOW_ALLOW_FILE_STORE="
                            "true); use sqlite:///PATH/mlflow.db or a server (http://HOST:PORT)")
        _check_local_file(Path(urlparse(uri).path if scheme else uri), what, uri, "folder")
        return
    if scheme not in SERVER_SCHEMES + DATABASE_SCHEMES and "+" not in scheme:
        raise UserError(f"{what}={uri}: MLflow has no store for scheme '{scheme}'; use sqlite:///PATH/mlflow.db, "
                        "http(s)://HOST:PORT (mlflow server) or a database URL (postgresql://, mysql://, mssql://)")
    _probe(uri, what, timeout_s)


def _probe(uri: str, what: str, timeout_s: float) -> None:
    """One read request (search one experiment) with no retries, given `timeout_s` to answer; a database
    URL is probed in a thread, as its driver has no such setting."""
    import threading

    from mlflow.tracking import MlflowClient  # imported first: a loaded machine must not eat the answer time

    outcome: dict = {}

    def ask():
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - reported as one line below
            outcome["error"] = e

    started = time.time()
    with _env(short_http_env(int(timeout_s))):
        worker = threading.Thread(target=ask, daemon=True)
        worker.start()
        worker.join(2 * timeout_s)
    if worker.is_alive():
        raise UserError(f"{what}={uri}: the tracking store did not answer within {2 * timeout_s:.0f} s; "
                        "start it or point MLFLOW_TRACKING_URI elsewhere")
    error = outcome.get("error")
    if error is None:
        return
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    if isinstance(error, UnsupportedModelRegistryStoreURIException):
        raise UserError(f"{what}={uri}: MLflow has no store for this URI; use sqlite:///PATH/mlflow.db or "
                        "http(s)://HOST:PORT (mlflow server)")
    status = getattr(error, "get_http_status_code", lambda: 500)()
    if status in (401, 403):
        reason = "permission denied: set MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN"
    else:
        reason = f"{short_reason(error)} after {time.time() - started:.1f} s"
    raise UserError(f"{what}={uri}: the tracking store does not answer ({reason}); start it "
                    "(mlflow server --host 127.0.0.1 ...) or point MLFLOW_TRACKING_URI elsewhere")


def experiment_id(client, name: str, tracking_uri: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created (with our artifact location on a local store) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = tracking_uri.startswith(LOCAL_SCHEMES)
    return client.create_experiment(name, artifact_location=artifact_location if local else None)


def use_short_http(timeout_s: int) -> None:
    """For the rest of this process (a fit's rank 0): requests fail within `timeout_s` instead of
    retrying for minutes; the journal retries instead. Settings the user exported win."""
    for key, value in short_http_env(timeout_s).items():
        os.environ.setdefault(key, value)
