"""`aotrain eval`: evaluate a saved model on an ImageNet-AO-format benchmark, as the training callback does.

    aotrain eval checkpoint=outputs/runs/toy_low_nmi-<id>/checkpoints/last.ckpt          # the run's own benchmark
    aotrain eval checkpoint=... benchmark=/data/ImageNet-AO-filtered log_to=checkpoint
    aotrain eval model_name=ViT-B-32 weights=/data/vit_b32.pt benchmark=/data/ImageNet-AO-filtered log_to=new

With only a checkpoint, the run's config.yaml beside it gives the benchmark, templates, vocabulary
and batch size, so the numbers equal the callback's for that checkpoint. With benchmark=..., the
paper's protocol applies unless set: the 80 OpenAI templates and the folder names as vocabulary.
Writes metrics.json, eval_table.{csv,md}, czsl_curve.{csv,png} (when seen and unseen pairs are
known) and contamination.json (with seen_from=...) into one folder, all at once.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from aotrain.benchmarks import Benchmark
from aotrain.checkpoints import evaluation_model, load_checkpoint, load_open_clip
from aotrain.config import UserError, to_dict
from aotrain.tracking import check_store, log_evaluation, read_run_pointer
from data_filters.files import OutputError, check_writable, publish_dir, temp_dir_for


def _load_model(cfg):
    if cfg.checkpoint and cfg.weights:
        raise UserError("give checkpoint=PATH (aotrain) or model_name=NAME weights=PATH (open_clip), not both")
    try:
        if cfg.checkpoint:
            return load_checkpoint(cfg.checkpoint, cfg.model_name)
        if cfg.model_name and cfg.weights:
            return load_open_clip(cfg.model_name, cfg.weights)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    raise UserError("nothing to evaluate: set checkpoint=PATH, or model_name=NAME weights=PATH")


def _section(cfg, info) -> tuple[dict, str]:
    """The eval section to load (aotrain/benchmarks.py keys) and a short name for the benchmark."""
    if cfg.benchmark is None:
        if info["run_dir"] is None:
            raise UserError(f"{info['source']} has no run folder to take a benchmark from: set benchmark=/path/to/folder")
        run = to_dict(OmegaConf.load(Path(info["run_dir"]) / "config.yaml").eval)
        section, name = {k: run.get(k) for k in ("benchmarks", "templates", "vocabulary", "seen_from",
                                                  "batch_size")}, "run"
    else:
        bench = to_dict(cfg.benchmark) if OmegaConf.is_config(cfg.benchmark) else str(cfg.benchmark)
        section = {"benchmarks": bench, "templates": "openai", "vocabulary": None, "seen_from": None,
                   "batch_size": cfg.batch_size}
        name = "+".join(bench) if isinstance(bench, dict) else Path(bench).name
    for key in ("templates", "vocabulary", "seen_from"):  # explicit settings win over both defaults
        if cfg[key] is not None:
            section[key] = to_dict(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
    section.update(open_world=cfg.open_world, num_workers=cfg.num_workers)
    return section, name


def _out_dir(cfg, info, bench_name: str) -> Path:
    if cfg.out:
        return Path(cfg.out)
    source = Path(info["source"])
    if info["run_dir"] is not None:
        return Path(info["run_dir"]) / f"eval-{source.stem}-{bench_name}"
    return Path(cfg.paths.root) / "eval" / f"{info['model_name']}-{source.stem}-{bench_name}"


def _check_out(out: Path) -> None:
    """The results folder can be written (it is published from a temporary folder beside it)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out}: exists and is a file, not a folder")
    try:
        # a missing folder: its nearest existing parent must be a writable folder (not a file)
        check_writable(out.parent if out.exists() else out)
    except OutputError as e:
        raise UserError(f"out={out}: {e}") from None


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={spec} but no CUDA GPU is visible; use device=cpu")
    return torch.device(spec)


def _log_target(cfg, info) -> dict | None:
    """The checkpoint's MLflow run pointer for log_to=checkpoint; checked before any work is done."""
    if cfg.log_to != "checkpoint":
        return None
    pointer = read_run_pointer(info["run_dir"]) if info["run_dir"] else None
    if pointer is None:
        raise UserError(f"log_to=checkpoint: no mlflow.json in the run folder of {info['source']}; use log_to=new")
    return pointer


def _log(cfg, info, pointer, result, out: Path, bench_name: str) -> str | None:
    metrics = {f"eval/{k}": v for k, v in result.metrics.items()}
    if cfg.log_to == "none":
        return None
    if cfg.log_to == "checkpoint":
        return log_evaluation(pointer["tracking_uri"], metrics, out, step=info["step"], run_id=pointer["run_id"])
    params = {"model": info["model_name"], "weights": info["source"], "benchmark": bench_name,
              "step": info["step"], "open_world": cfg.open_world}
    return log_evaluation(cfg.logger.tracking_uri, metrics, out, step=info["step"],
                          experiment_name=cfg.logger.experiment_name,
                          artifact_location=cfg.logger.artifact_location,
                          run_name=f"eval-{info['model_name']}-{bench_name}", params=params)


def evaluate_checkpoint(cfg) -> dict:
    """Load, evaluate, write, log; returns a summary (printed by the CLI)."""
    if cfg.log_to not in ("none", "new", "checkpoint"):  # before loading anything
        raise UserError(f"log_to={cfg.log_to}: choose none, new or checkpoint")
    device = _device(str(cfg.device))
    if cfg.out:
        _check_out(Path(cfg.out))  # before loading anything
    model, info = _load_model(cfg)
    pointer = _log_target(cfg, info)
    if cfg.log_to != "none":  # the store must take the results: known now, not after the evaluation
        check_store(pointer["tracking_uri"] if pointer else cfg.logger.tracking_uri,
                    what="the checkpoint's tracking URI" if pointer else "logger.tracking_uri")
    section, bench_name = _section(cfg, info)
    out = _out_dir(cfg, info, bench_name)
    _check_out(out)  # the default lies beside the checkpoint: known only now, still before the evaluation
    try:
        benchmark = Benchmark.from_config(section, info["model_name"])
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"benchmark: {e}") from None

    adapter = evaluation_model(model.to(device), info, device)
    with torch.no_grad():
        result = benchmark.run(adapter, progress=True)

    tmp = temp_dir_for(out)
    try:
        result.write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out, overwrite=True)  # a folder appears whole or not at all
    run_id = _log(cfg, info, pointer, result, out, bench_name)
    return {"model": info["model_name"], "source": info["source"], "step": info["step"], "out": str(out),
            "mlflow_run": run_id, "skipped": {s: ds.skipped for s, ds in benchmark.splits.items()},
            "metrics": result.headline()}


def format_summary(summary: dict) -> str:
    lines = [f"model         {summary['model']}  (step {summary['step']})",
             f"weights       {summary['source']}",
             f"results       {summary['out']}"]
    if summary["mlflow_run"]:
        lines.append(f"MLflow run    {summary['mlflow_run']}")
    for split, skipped in summary["skipped"].items():
        if any(skipped.values()):
            lines.append(f"skipped in {split}: " + ", ".join(f"{k} {v}" for k, v in skipped.items() if v))
    lines += [f"{k:<32}{v:.4f}" for k, v in summary["metrics"].items()]
    return "\n".join(lines)
