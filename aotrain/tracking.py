"""MLflow: the logger every run uses, the curated params it records, and the artifacts it keeps.

The URI is always explicit (Lightning's MLFlowLogger would otherwise fall back to a ./mlruns file
store): `logger.tracking_uri` in the config, which defaults to $MLFLOW_TRACKING_URI or
sqlite:///<paths.root>/mlflow.db.  Open the UI on the default store with

    mlflow ui --backend-store-uri sqlite:///$PWD/outputs/mlflow.db
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger

LOCAL_SCHEMES = ("sqlite:", "file:", "/")


def make_logger(cfg, run_name: str) -> MLFlowLogger:
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
    )


def curated_params(cfg, world: dict | None, datamodule, module) -> dict:
    """The flat set of params every run records: what a comparison across runs filters on."""
    params = {
        "recipe": cfg.name,
        "seed": cfg.seed,
        "model": cfg.model.name,
        "model_params": module.parameter_count(),
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
    subset = (world or {}).get("subset")
    if subset is not None:  # the training data is the selected subset: its numbers win
        params.update({
            "data_nmi": round(subset["nmi"], 6),
            "data_nmi_target": subset["nmi_target"],
            "data_nmi_normaliser": subset["normaliser"],
            "data_distinct_pairs": subset["distinct_pairs"],
            "subset_size": subset["size"],
            "subset_uid_checksum": subset["uid_checksum"],
        })
    return params


def log_artifacts(logger: MLFlowLogger, paths) -> None:
    for path in paths:
        path = Path(path)
        if path.is_dir():
            logger.experiment.log_artifacts(logger.run_id, str(path), artifact_path=path.name)
        elif path.exists():
            logger.experiment.log_artifact(logger.run_id, str(path))
