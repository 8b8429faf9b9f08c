"""`aotrain eval`: evaluate a saved model on an ImageNet-AO-format benchmark, as the training callback does.

    aotrain eval checkpoint=outputs/runs/toy_low_nmi-<id>/checkpoints/last.ckpt          # the run's own benchmark
    aotrain eval checkpoint=... benchmark=/data/ImageNet-AO-filtered log_to=checkpoint
    aotrain eval model_name=ViT-B-32 weights=/data/vit_b32.pt benchmark=/data/ImageNet-AO-filtered log_to=new
    aotrain eval model_name=/data/my-vit.json weights=logs/RUN/checkpoints/epoch_32.pt benchmark=...   # open_clip_train's

With only a checkpoint, the run's config.yaml beside it gives the benchmark, templates, vocabulary
and batch size, so the numbers equal the callback's for that checkpoint. With benchmark=..., the
paper's protocol applies unless set: the 80 OpenAI templates and the folder names as vocabulary.
Writes metrics.json, eval_table.{csv,md}, czsl_curve.{csv,png} (when seen and unseen pairs are
known) and contamination.json (with seen_from=...) into one folder, all at once.

model_name= is a registered name (aotrain's toy configs, open_clip's ViT-B-32 ...) or the path of an
open_clip model config .json (aotrain/towers.py registers it under its file name). weights= is an
open_clip_train checkpoint ({"epoch", "state_dict", ...}, keys with or without DDP's "module."), a
plain state dict (torch.save(model.state_dict())) or an aotrain .ckpt. open_clip, MLflow and the
benchmark code are imported only once the inputs have been checked, so a wrong path fails fast.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from aotrain.config import UserError, to_dict
from aotrain.tracking import log_evaluation, read_run_pointer
from aotrain.tracking_store import check_store
from data_filters.files import OutputError, check_writable, publish_dir, temp_dir_for

if TYPE_CHECKING:
    import torch

WEIGHT_FORMATS = ("an open_clip_train checkpoint (logs/NAME/checkpoints/epoch_N.pt: a dict with 'state_dict'), "
                  "a state dict (torch.save(model.state_dict())) or an aotrain .ckpt")


def _peek(path: str):
    """The file's contents with its tensors mapped, not read: a cheap check, before open_clip is imported,
    that it exists and reads (FileNotFoundError/ValueError in one line otherwise). torch's legacy
    (non-zip) format cannot be mapped, so it is read."""
    from aotrain.checkpoints import load_checkpoint_file

    return load_checkpoint_file(path, mmap=zipfile.is_zipfile(path))


def _weights_format(obj, path: str) -> str:
    """'aotrain' | 'open_clip_train' | 'state_dict' for the contents of a weights file; ValueError naming
    the accepted formats for anything else."""
    import torch

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return "aotrain" if "hyper_parameters" in obj else "open_clip_train"
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return "state_dict"
    if isinstance(obj, dict):
        keys = list(obj)
        found = f"a dict with keys {', '.join(map(repr, keys[:5]))}{', ...' if len(keys) > 5 else ''}" if keys \
            else "an empty dict"
    else:
        found = f"a {type(obj).__name__}"
    raise ValueError(f"weights={path} holds {found}; expected {WEIGHT_FORMATS}")


def _load_model(cfg):
    if cfg.checkpoint and cfg.weights:
        raise UserError("give checkpoint=PATH (aotrain) or model_name=NAME weights=PATH (open_clip), not both")
    if not cfg.checkpoint and not (cfg.model_name and cfg.weights):
        raise UserError("nothing to evaluate: set checkpoint=PATH, or model_name=NAME|CONFIG.json weights=PATH")
    from aotrain.checkpoints import load_checkpoint, load_open_clip

    name = None
    try:
        if cfg.weights and not Path(cfg.weights).exists():
            raise FileNotFoundError(f"weights file not found: {cfg.weights}")
        contents = _peek(cfg.checkpoint or cfg.weights)
        fmt = "aotrain" if cfg.checkpoint else _weights_format(contents, cfg.weights)
        del contents
        if cfg.model_name:  # a config .json is registered with open_clip here (imported only now)
            from aotrain.towers import resolve_model_name

            name = resolve_model_name(cfg.model_name)
        if fmt == "aotrain":  # checkpoint=, or an aotrain .ckpt given as weights=: read the same way
            model, info = load_checkpoint(cfg.checkpoint or cfg.weights, name)
        else:
            model, info = load_open_clip(name, cfg.weights)
    except (FileNotFoundError, ValueError) as e:
        message = str(e)
        if name is not None and name != cfg.model_name and "do not fit" in message:
            message += f" (model {name} built from {cfg.model_name})"
        raise UserError(message) from None
    if name is not None and name != cfg.model_name:
        info["model_config"] = str(Path(cfg.model_name).resolve())
    return model, info


def _section(cfg, info) -> tuple[dict, str]:
    """The eval section to load (aotrain/ao_benchmark.py keys) and a short name for the benchmark."""
    if cfg.benchmark is None:
        if info["run_dir"] is None:
            raise UserError(f"{info['source']} has no run folder to take a benchmark from: set benchmark=/path/to/folder")
        run = to_dict(OmegaConf.load(Path(info["run_dir"]) / "config.yaml").eval)
        section, name = {k: run.get(k) for k in ("benchmarks", "templates", "vocabulary", "seen_from",
                                                  "seen_vocabulary", "batch_size")}, "run"
    else:
        bench = to_dict(cfg.benchmark) if OmegaConf.is_config(cfg.benchmark) else str(cfg.benchmark)
        section = {"benchmarks": bench, "templates": "openai", "vocabulary": None, "seen_from": None,
                   "batch_size": cfg.batch_size}
        name = "+".join(bench) if isinstance(bench, dict) else Path(bench).name
    for key in ("templates", "vocabulary", "seen_from", "seen_vocabulary"):  # explicit settings win over both defaults
        if cfg.get(key) is not None:
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
    import torch

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
    if "model_config" in info:  # model_name= was a config file
        params["model_config"] = info["model_config"]
    return log_evaluation(cfg.logger.tracking_uri, metrics, out, step=info["step"],
                          experiment_name=cfg.logger.experiment_name,
                          artifact_location=cfg.logger.artifact_location,
                          run_name=f"eval-{info['model_name']}-{bench_name}", params=params)


def evaluate_checkpoint(cfg) -> dict:
    """Load, evaluate, write, log; returns a summary (printed by the CLI)."""
    import torch

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
    from aotrain import towers
    from aotrain.ao_benchmark import Benchmark
    from evaluation.models import adapter_for

    try:
        benchmark = Benchmark.from_config(section, info["model_name"])
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"benchmark: {e}") from None

    adapter = adapter_for(model.to(device), info["kind"], towers.tokenizer(info["model_name"]), device)
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
