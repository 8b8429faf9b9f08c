"""MLflow: the logger every run uses, the curated params it records, and the artifacts it keeps.

The URI is always explicit (Lightning's MLFlowLogger would otherwise fall back to a ./mlruns file
store): `logger.tracking_uri` in the config, which defaults to $MLFLOW_TRACKING_URI or
sqlite:///<paths.root>/mlflow.db.  Open the UI on the default store with

    mlflow ui --backend-store-uri sqlite:///$PWD/outputs/mlflow.db

Commands that log check the store first (aotrain/tracking_store.py's `check_store`: reachable and
writable within seconds, else one line and exit 2); a fit then logs through its journal
(aotrain/tracking_journal.py), so a store that stops answering mid-run costs no training and no metric.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aotrain.config import UserError
from aotrain.tracking_store import LOCAL_SCHEMES, experiment_id, short_reason, use_short_http

if TYPE_CHECKING:  # Lightning loads in seconds: the store check (`aotrain fit` runs it first) does without
    from lightning.pytorch.loggers import MLFlowLogger

def is_rank_zero() -> bool:
    """Whether this process is global rank 0, from the launcher's environment (srun, torchrun,
    Lightning's DDP children), before any Trainer exists: only rank 0 opens the store."""
    if os.environ.get("NODE_RANK", "0") not in ("", "0"):
        return False
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var, "") != "":
            return os.environ[var] == "0"
    return True


def make_logger(cfg, run_name: str, run_id: str | None = None) -> MLFlowLogger:
    """The run's logger, started: its MLflow run exists (created, or `run_id`'s for a resumed run) and
    it journals everything into the run folder before sending it (aotrain/tracking_journal.py)."""
    from aotrain.tracking_logger import JournaledMLFlowLogger  # Lightning: seconds to import, so only here

    uri = cfg.logger.tracking_uri
    local = uri.startswith(LOCAL_SCHEMES)
    if uri.startswith("sqlite:"):
        Path(uri.split("sqlite:///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
    # During the run a request fails within seconds instead of retrying for minutes: the journal
    # keeps the rows and its sender retries, so training never waits on the store.
    use_short_http(int(cfg.logger.get("request_timeout_s", 10)))
    logger = JournaledMLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        tracking_uri=uri,
        run_name=run_name,
        # A server decides where artifacts go; a local store keeps them beside the database.
        artifact_location=str(cfg.logger.artifact_location) if local else None,
        log_model=False,
        run_id=run_id,
        run_dir=cfg.paths.run_dir,
        retry_s=float(cfg.logger.get("retry_s", 5)),
        final_wait_s=float(cfg.logger.get("final_wait_s", 60)),
    )
    try:
        logger.start()
    except Exception as e:  # noqa: BLE001 - the store went away since check_store: one line, before training
        raise UserError(f"logger.tracking_uri={uri}: could not open the MLflow run ({short_reason(e)})") from None
    return logger


def close_logger(logger) -> int:
    """Send what the journal still holds (waiting up to logger.final_wait_s for the store); returns the
    rows left unsent, which `aotrain sync RUN_DIR` sends later."""
    close = getattr(logger, "close", None)
    return close() if close else 0


def curated_params(cfg, world: dict | None, subset: dict | None, datamodule, module) -> dict:
    """The flat set of params every run records: what a comparison across runs filters on."""
    params = {
        "recipe": cfg.name,
        "seed": cfg.seed,
        "model": cfg.model.name,
        "supervision": module.kind,
        "model_params": module.parameter_count(),
        "vision_params": module.vision_parameter_count(),
        "batch_size": cfg.data.batch_size,
        "max_steps": cfg.trainer.max_steps,
        "samples_seen": cfg.data.batch_size * cfg.trainer.max_steps,
        "lr": cfg.optim.lr,
        "weight_decay": cfg.optim.weight_decay,
        "warmup_steps": cfg.optim.warmup_steps,
        "precision": cfg.trainer.precision,
        "data_pool": cfg.data.pool,
        "data_samples": datamodule.n_samples,
        "data_shards": len(datamodule.urls),
    }
    if world is not None:
        nmi = world["nmi"]
        params.update({
            "world_joint": world["config"]["pool"]["joint"],
            "world_concentration": world["config"]["pool"]["concentration"],
            "world_seed": world["config"]["seed"],
            "world_pool_nmi": round(nmi["nmi"], 6),
            "data_nmi": round(nmi["nmi"], 6),
            "data_nmi_normaliser": nmi["normaliser"],
            "data_mi": round(nmi["mi"], 6),
            "data_distinct_pairs": nmi["distinct_pairs"],
            "data_held_out_pairs": len(world["held_out_pairs"]),
        })
    if subset is not None:  # the training data is the selected subset: its numbers win
        params.update({
            "data_nmi": round(subset["nmi"], 6),
            "data_nmi_target": subset["nmi_target"],
            "data_nmi_normaliser": subset["normaliser"],
            "data_distinct_pairs": subset["distinct_pairs"],
            "subset_size": subset["size"],
            "subset_uid_checksum": subset["uid_checksum"],
        })
    if subset is not None and "pool" in subset:  # where it was selected from
        params.update({
            "subset_source_pool": subset["pool"],
            "subset_source_pool_nmi": round(subset["pool_nmi"], 6),
            "subset_source_labelled": subset["pool_labelled"],
            # samples of the pool the sample rule passed over before selection (data_filters/samples.py)
            **{f"subset_source_skipped_{k}": v for k, v in subset.get("pool_skipped", {}).items()},
            "subset_source_truncated_shards": len(subset.get("pool_truncated_shards", [])),
        })
    return params


def log_artifacts(logger: MLFlowLogger, paths) -> None:
    if hasattr(logger, "log_artifact_paths"):  # journaled: uploaded by the sender, replayed if the store is down
        logger.log_artifact_paths(paths)
        return
    for path in paths:
        path = Path(path)
        if path.is_dir():
            logger.experiment.log_artifacts(logger.run_id, str(path), artifact_path=path.name)
        elif path.exists():
            logger.experiment.log_artifact(logger.run_id, str(path))


RUN_POINTER = "mlflow.json"


def write_run_pointer(run_dir: Path, tracking_uri: str, logger: MLFlowLogger) -> None:
    """<run_dir>/mlflow.json: which MLflow run holds this run folder (read by `aotrain eval log_to=checkpoint`)."""
    pointer = {"tracking_uri": tracking_uri, "experiment_id": logger.experiment_id, "run_id": logger.run_id}
    (Path(run_dir) / RUN_POINTER).write_text(json.dumps(pointer, indent=1) + "\n")


def read_run_pointer(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RUN_POINTER
    return json.loads(path.read_text()) if path.is_file() else None


def log_evaluation(tracking_uri: str, metrics: dict, out_dir: Path, step: int = 0, run_id: str | None = None,
                   experiment_name: str = "aotrain", artifact_location: str | None = None,
                   run_name: str = "eval", params: dict | None = None) -> str:
    """Log an evaluation to `run_id` (a training run: metrics at `step`, tables under <out_dir name>/),
    or to a new run in `experiment_name`. Returns the run id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    new = run_id is None
    if new:
        experiment = experiment_id(client, experiment_name, tracking_uri, artifact_location)
        run_id = create_run(client, experiment, run_name, tags={"aotrain.kind": "eval"})
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in (params or {}).items()] if new else [])
    client.log_artifacts(run_id, str(out_dir), artifact_path=Path(out_dir).name)
    if new:
        client.set_terminated(run_id)
    return run_id


def create_run(client, experiment: str, run_name: str, tags: dict, params: dict | None = None,
               parent_run_id: str | None = None) -> str:
    """A new RUNNING run (a child of `parent_run_id` when given, MLflow's own parent tag); returns its id."""
    from mlflow.entities import Param

    tags = dict(tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
    if params:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run_id
