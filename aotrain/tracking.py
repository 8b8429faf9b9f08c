"""MLflow: the logger every run uses, the curated params it records, and the artifacts it keeps.

The URI is always explicit (Lightning's MLFlowLogger would otherwise fall back to a ./mlruns file
store): `logger.tracking_uri` in the config, which defaults to $MLFLOW_TRACKING_URI or
sqlite:///<paths.root>/mlflow.db.  Open the UI on the default store with

    mlflow ui --backend-store-uri sqlite:///$PWD/outputs/mlflow.db
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger

LOCAL_SCHEMES = ("sqlite:", "file:", "/")


def make_logger(cfg, run_name: str, run_id: str | None = None) -> MLFlowLogger:
    """The run's MLFlowLogger; with `run_id` (a resumed run) it continues that MLflow run."""
    uri = cfg.logger.tracking_uri
    local = uri.startswith(LOCAL_SCHEMES)
    if uri.startswith("sqlite:"):
        Path(uri.split("sqlite:///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
    return MLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        tracking_uri=uri,
        run_name=run_name,
        # A server decides where artifacts go; a local store keeps them beside the database.
        artifact_location=str(cfg.logger.artifact_location) if local else None,
        log_model=False,
        run_id=run_id,
    )


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
        })
    return params


def log_artifacts(logger: MLFlowLogger, paths) -> None:
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


def experiment_id(client, name: str, tracking_uri: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created (with our artifact location on a local store) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = tracking_uri.startswith(LOCAL_SCHEMES)
    return client.create_experiment(name, artifact_location=artifact_location if local else None)


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
