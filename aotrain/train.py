"""`fit(cfg)`: toy world (if configured) -> shards -> Lightning CLIP -> zero-shot evaluation -> MLflow.

A plain function the CLI wraps (`aotrain fit ...`); tests call it with a composed config.

    aotrain fit                                  # toy_low_nmi on one CPU
    aotrain fit recipe=toy_high_nmi trainer.max_steps=600
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf, open_dict

from aotrain.ao_benchmark import Benchmark
from aotrain.callbacks.evaluation import BenchmarkEvaluation
from aotrain.callbacks.fault import fault_callbacks
from aotrain.callbacks.step_guard import Interrupted, StepGuard, install_signal_flags, stop_at_step_boundary
from aotrain.callbacks.step_timer import StepTimer, describe
from aotrain.checkpoints import load_checkpoint_file
from aotrain.config import UserError, instantiate, resolve, to_dict
from aotrain.data.labels import label_classes
from aotrain.parity import RECORD, differences, flat_params, load_record, parity_record
from aotrain.pool_stages import pool_shards, prepare_subset
from aotrain.toyworld import generate_world, load_world
from aotrain.resume import find_resume
from aotrain.tracking import (close_logger, curated_params, is_rank_zero, log_artifacts, make_logger, read_run_pointer,
                              write_run_pointer)
from aotrain.tracking_store import check_store
from data_filters.files import OutputError, check_writable, write_text_atomic
from evaluation.probe_eval import probe_columns


def _launch_id() -> str:
    # Lightning's DDP launcher re-runs this command in child processes: they must land in the
    # parent's run folder, so the id travels through the environment.
    run_id = os.environ.get("AOTRAIN_RUN_ID") or time.strftime("%Y%m%d-%H%M%S")
    os.environ["AOTRAIN_RUN_ID"] = run_id
    return run_id


def prepare(cfg) -> tuple[dict | None, dict | None]:
    """Fill in run_id, world_dir (generating the toy world when missing) and the training shards
    (selecting the subset when subset.nmi is set), then resolve everything. Every user mistake here
    (a missing pool or benchmark, an unreachable NMI) stops the run before training.

    Returns (the toy world's facts or None, the subset's manifest or None).
    """
    cfg.run_id = cfg.run_id or _launch_id()
    _check_writable_paths(cfg)  # before the world, the cache or the run folder is made
    world = None
    if cfg.get("world") is not None:
        if "objects" not in cfg.world:  # `~world` dropped the group but a recipe re-added a piece
            raise UserError(f"recipe {cfg.name} (or debug=...) sets toy-world keys, but ~world removed the "
                            "toy world; for real data use recipe=null ~world data.pool=... eval=imagenet_ao")
        try:
            world_path = generate_world(to_dict(cfg.world), cfg.paths.world_root)
        except ValueError as e:
            raise UserError(f"world: {e}") from None
        cfg.world_dir = str(world_path)
        world = load_world(world_path)
        pool, vocabulary, cache = world_path / "pool", f"world:{world_path}", world_path
    else:
        _require_real_paths(cfg)
        pool, vocabulary, cache = Path(cfg.data.pool), cfg.data.vocabulary or "builtin", Path(cfg.paths.cache)
        _check_pool(pool)
    _check_benchmarks(cfg)  # before the selection, which can take minutes on a real pool
    subset = None
    if cfg.subset.nmi is not None or cfg.subset.pairs is not None:
        pool, subset = _select(pool, vocabulary, cache, cfg)
        if world is None:  # the toy world's split names say which pairs were seen (held out of its pool)
            _seen_from_subset(cfg, subset_manifest(pool), vocabulary)
    cfg.train_pool = str(pool)
    cfg.data.pool = cfg.train_pool
    resolve(cfg)
    return world, subset


def _select(pool: Path, vocabulary: str, cache: Path, cfg) -> tuple[Path, dict]:
    spec = {k: cfg.subset[k] for k in ("size", "nmi", "pairs", "seed", "tol", "dedupe", "single_share")}
    if spec["size"] is None:
        raise UserError("subset.nmi or subset.pairs is set but subset.size is not: set subset.size=N")
    try:
        return prepare_subset(pool, vocabulary, spec, cache, cfg.subset.samples_per_shard)
    except (ValueError, FileNotFoundError) as e:  # InfeasibleTarget names the feasible range
        if getattr(e, "largest_size", None):  # fit has no way to upsample: name the size that works
            raise UserError(f"subset.size={spec['size']}: the pool has {e.largest_size:,} labelled samples, "
                            f"so subset.size can be at most {e.largest_size}") from None
        raise UserError(f"subset: {e}") from None


def subset_manifest(shards: Path) -> Path:
    """The manifest.json of the subset whose shards are `shards` (aotrain/pool_stages.py's layout)."""
    return Path(shards).parent / "subset" / "manifest.json"


def _seen_from_subset(cfg, manifest: Path, vocabulary: str) -> None:
    """Unless eval.seen_from is set, the benchmark's pairs are marked seen or unseen by the training
    subset's pairs, read in the vocabulary the subset was labelled with (data.vocabulary)."""
    if cfg.eval.get("seen_from") is not None:  # an explicit setting wins
        return
    with open_dict(cfg.eval):
        cfg.eval.seen_from = str(manifest)
        if cfg.eval.get("seen_vocabulary") is None:
            cfg.eval.seen_vocabulary = vocabulary


def subset_facts(subset: dict | None) -> dict | None:
    """What the run trained on and what the pool lost on the way to it: summary.json's "subset"."""
    if subset is None:
        return None
    facts = {k: subset.get(k) for k in ("size", "nmi", "nmi_target", "distinct_pairs", "distinct_pairs_target",
                                         "pool", "pool_captions", "pool_labelled", "pool_single_side")}
    if facts["pool_captions"] is not None and facts["pool_labelled"] is not None:
        facts["pool_unlabelled"] = facts["pool_captions"] - facts["pool_labelled"] - (facts["pool_single_side"] or 0)
    for key in ("not_downloaded", "duplicates_dropped"):  # present when the pool stage counts them
        if subset.get(key) is not None:
            facts[key] = subset[key]
    if subset.get("single_side"):  # the size counts them; nmi and distinct_pairs are the pairs'
        facts["single_side"] = subset["single_side"]
    facts["pool_skipped"] = dict(subset.get("pool_skipped") or {})
    facts["pool_truncated_shards"] = len(subset.get("pool_truncated_shards") or [])
    return facts


def _subset_params(facts: dict | None) -> dict:
    """The subset's MLflow params that aotrain.tracking.curated_params does not already log (it logs
    subset_size, data_nmi, data_nmi_target, data_distinct_pairs, subset_source_labelled, _skipped_*)."""
    if facts is None or facts.get("pool") is None:
        return {}
    names = {"pool_captions": "subset_source_captions", "pool_unlabelled": "subset_source_unlabelled",
             "not_downloaded": "subset_source_not_downloaded",
             "duplicates_dropped": "subset_source_duplicates_dropped"}
    return {name: int(facts[key]) for key, name in names.items() if facts.get(key) is not None}


def _check_writable_paths(cfg) -> None:
    """Every folder fit and world write under (paths.*) can be written: one line naming the key if not."""
    for key in ("root", "world_root", "cache", "run_dir"):
        if key in cfg.paths:
            try:
                check_writable(Path(str(cfg.paths[key])))
            except OutputError as e:
                raise UserError(f"paths.{key}: {e}") from None


def _require_real_paths(cfg) -> None:
    """Without a toy world the pool and the benchmark must be given, and not point into a world."""
    if OmegaConf.is_missing(cfg.data, "pool"):
        raise UserError(f"recipe {cfg.name} trains on your caption pool: set data.pool=/path/to/pool "
                        "(img2dataset or DataComp output: .tar shards with .parquet metadata)")
    needed = {"data.pool": "set data.pool=/path/to/shards",
              "eval.benchmarks": "use eval=imagenet_ao eval.benchmarks.imagenet_ao=/path/to/ImageNet-AO"}
    for key, advice in needed.items():
        group, field = key.split(".")
        unresolved = OmegaConf.to_container(cfg[group], resolve=False)[field]
        if "${world_dir}" in str(unresolved) or "${train_pool}" in str(unresolved):
            raise UserError(f"no toy world (~world) but {key} points into it: {advice} (your own data: "
                            "recipe=null ~world, or a real-data recipe such as recipe=low_nmi_cc12m)")


def _check_pool(pool: Path) -> None:
    try:
        pool_shards(pool)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"data.pool: {e}") from None


def _check_benchmarks(cfg, node=None, key: str = "eval.benchmarks") -> None:
    """Every evaluation folder exists (the toy world's were just written), also those of a nested
    group (a style: eval.benchmarks.alt.unseen, the toy world's second renderer)."""
    node = cfg.eval.benchmarks if node is None else node
    for name in node:
        if OmegaConf.is_missing(node, name):
            raise UserError(f"set {key}.{name}=/path/to/ImageNet-AO (the evaluation folders)")
        if OmegaConf.is_dict(node[name]):
            _check_benchmarks(cfg, node[name], f"{key}.{name}")
            continue
        path = Path(str(node[name]))
        if not path.is_dir():
            hint = ""
            if path.parent.name == "imagenet_ao_alt" and cfg.get("world") is not None:
                hint = "; world.eval.alt_images_per_pair=0 renders none: drop the group with ~" + key
            raise UserError(f"{key}.{name}: no folder {path} (ImageNet-AO-style <attribute object>/ folders){hint}")


def check_twin(parity: dict, twin: str) -> None:
    """Stop before training when this run is not the twin of `twin` (aotrain/parity.py)."""
    try:
        diffs = differences(parity, load_record(twin))
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if diffs:
        raise UserError(f"parity: this run is not a twin of {twin}: " + "; ".join(diffs))
    print(f"parity: a twin of {twin} (tower, transforms, data, batch, steps, schedule, precision)",
          file=sys.stderr, flush=True)


def load_benchmark(cfg) -> Benchmark:
    """The eval section's benchmark, loaded now: a bad folder or vocabulary fails before any training."""
    try:
        return Benchmark.from_config(to_dict(cfg.eval), cfg.model.name)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"eval: {e}") from None


def check_probe(cfg, benchmark: Benchmark) -> None:
    """The end-of-fit linear probe can name every benchmark object: checked before training, not after it."""
    if not cfg.data.vocabulary:
        raise UserError("eval.probe_samples needs object labels of the training samples: set data.vocabulary "
                        "(builtin, world:PATH, a file) or eval.probe_samples=0")
    try:
        probe_columns(benchmark.splits, label_classes(cfg.data.vocabulary)["object"], benchmark.vocab)
    except ValueError as e:
        raise UserError(f"eval.probe_samples: the probe's classes (data.vocabulary's objects): {e}") from None


def build_callbacks(cfg, run_dir: Path, module) -> list:
    every = cfg.eval.every_n_steps or cfg.trainer.max_steps
    benchmark, probe_samples = load_benchmark(cfg), cfg.eval.get("probe_samples") or 0
    if not module.classifies and not probe_samples:
        raise UserError(f"supervision={module.kind} is evaluated by the linear probe only: set eval.probe_samples "
                        "to a number of training samples (e.g. 2048)")
    if probe_samples:
        check_probe(cfg, benchmark)
    mode = cfg.eval.get("checkpoint_mode") or "max"  # checked when composed (aotrain/validate.py)
    return [
        BenchmarkEvaluation(benchmark, str(run_dir), every_n_steps=cfg.eval.every_n_steps,
                            probe_samples=probe_samples),
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-{step}" if cfg.eval.checkpoint_monitor
                        else "{step}", save_last=True,
                        monitor=cfg.eval.checkpoint_monitor, mode=mode, save_top_k=1,
                        every_n_train_steps=every),
        LearningRateMonitor(logging_interval="step"),
        StepGuard(str(run_dir), max_bad_fraction=cfg.data.max_bad_fraction, error_log=cfg.data.error_log),
        StepTimer(),
    ]


def _resume(cfg) -> tuple[Path | None, dict | None]:
    """With resume=...: adopt the run id of the run to continue; (checkpoint, MLflow pointer) or (None, None)."""
    if not cfg.resume:
        return None, None
    found = find_resume(str(cfg.resume), Path(cfg.paths.root) / "runs", cfg.name)
    if found is None:
        print(f"resume: no unfinished {cfg.name} run with a checkpoint; starting a new one", file=sys.stderr)
        return None, None
    run_dir, ckpt = found
    prefix = f"{cfg.name}-"
    if not run_dir.name.startswith(prefix):
        raise UserError(f"resume: {run_dir} is not a run of {cfg.name} (its folder must be {prefix}<id>)")
    if ckpt.is_file():  # a sharded (DeepSpeed/FSDP) checkpoint is a folder: Lightning reads it
        try:
            load_checkpoint_file(ckpt, mmap=True)  # maps the tensors: cheap even for a large model
        except (ValueError, FileNotFoundError) as e:
            raise UserError(f"resume: {e}; delete it to resume from an older checkpoint, or give "
                            "resume=<another .ckpt>") from None
    cfg.run_id = run_dir.name[len(prefix):]
    os.environ["AOTRAIN_RUN_ID"] = cfg.run_id  # DDP children continue the same folder
    print(f"resume: continuing {run_dir} from {ckpt.name}", file=sys.stderr, flush=True)
    return ckpt, read_run_pointer(run_dir)


def fit(cfg) -> dict:
    """Train and evaluate one config; returns (and writes to <run_dir>/summary.json) where things are."""
    # SIGTERM/SIGUSR1/SIGUSR2 (aotrain/callbacks/step_guard.py): during set-up they stop the command at
    # once (nothing to save); from the Trainer on they set a flag and training stops at a step boundary
    # with a checkpoint.
    install_signal_flags(at_once=True)
    if is_rank_zero():  # the store answers and can be written, before any world, subset or run folder
        check_store(cfg.logger.tracking_uri)
    ckpt, pointer = _resume(cfg)
    world, subset = prepare(cfg)
    run_dir = Path(cfg.paths.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    try:
        parity = parity_record(cfg, subset, module.vision_parameter_count())
    except ValueError as e:  # a vocabulary that does not load
        raise UserError(str(e)) from None
    if cfg.parity.twin:
        check_twin(parity, cfg.parity.twin)  # before anything is written or trained
    callbacks = build_callbacks(cfg, run_dir, module)
    seen_line = callbacks[0].benchmark.describe_seen()
    if seen_line and is_rank_zero():
        print(f"eval: {seen_line}", file=sys.stderr, flush=True)
    stop_at_step_boundary()
    # Under Slurm the step guard handles the pre-emption signal: Lightning's own requeue handler
    # (it checkpoints inside the signal handler, which can deadlock DDP) stays off.
    slurm = {"plugins": [SLURMEnvironment(auto_requeue=False)]} if SLURMEnvironment.detect() else {}
    trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks + fault_callbacks(),
                          default_root_dir=str(run_dir), **slurm)
    # Only rank 0 talks to MLflow: ranks started together by srun would otherwise all open (and
    # migrate) a fresh SQLite store at once. The others log nothing, so they need no LR monitor.
    if trainer.is_global_zero:
        logger = make_logger(cfg, run_name=run_dir.name,
                             run_id=pointer["run_id"] if pointer else cfg.logger.get("run_id"))
        trainer.loggers = [logger]
    else:
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]

    if trainer.is_global_zero and ckpt is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml")
        write_text_atomic(run_dir / RECORD, json.dumps(parity, indent=1) + "\n")
        logger.log_hyperparams({**curated_params(cfg, world, subset, datamodule, module), **flat_params(parity),
                                **_subset_params(subset_facts(subset))})
        write_run_pointer(run_dir, cfg.logger.tracking_uri, logger)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    except Interrupted as stop:
        if trainer.is_global_zero and not stop.requeued:
            logger.finalize("KILLED")  # Lightning marked it FAILED; a signal is not a failure
        raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)  # after training, a signal stops the process as usual
    skipped = next(c for c in callbacks if isinstance(c, StepGuard)).describe_skipped()
    if not trainer.is_global_zero:
        return {}

    evaluation = callbacks[0].last
    checkpoint = callbacks[1]
    summary = {
        "recipe": cfg.name,
        "tracking_uri": cfg.logger.tracking_uri,
        "experiment": cfg.logger.experiment_name,
        "run_id": logger.run_id,
        "run_dir": str(run_dir),
        "last_checkpoint": checkpoint.last_model_path,
        "best_checkpoint": checkpoint.best_model_path,
        "steps": trainer.global_step,
        "step_time": next(c for c in callbacks if isinstance(c, StepTimer)).summary(),
        "metrics": evaluation.headline() if evaluation else {},
        "data_skipped": skipped,
        "subset": subset_facts(subset),
        "seen_pairs": callbacks[0].benchmark.seen_info,
    }
    # <run_dir>/summary.json marks the run done (a sweep skips such a cell), so it is written last, once
    # the journal has been sent or kept: its artifact copy is staged beside it first.
    staged = run_dir / "artifacts" / "summary.json"
    staged.parent.mkdir(exist_ok=True)
    staged.write_text(json.dumps(summary, indent=2))
    manifest = subset_manifest(Path(cfg.data.pool))  # when a subset was selected
    log_artifacts(logger, [run_dir / "config.yaml", staged, run_dir / RECORD, run_dir / "eval", manifest])
    close_logger(logger)  # a store still down: the journal keeps the rows for `aotrain sync`
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"recipe        {summary['recipe']}  ({summary['steps']} steps)",
        f"tracking URI  {summary['tracking_uri']}",
        f"MLflow run    {summary['run_id']}  (experiment {summary['experiment']})",
        f"checkpoint    {summary['last_checkpoint']}",
        f"run folder    {summary['run_dir']}",
    ]
    if summary.get("subset"):
        lines += _subset_lines(summary["subset"])
    if summary.get("step_time"):
        lines.append(f"steps         {describe(summary['step_time'])}")
    if summary.get("data_skipped"):
        lines.append(f"data          {summary['data_skipped']}")
    width = max([28, *(len(k) + 2 for k in summary["metrics"])])  # style-prefixed names (alt/...) are longer
    lines += [f"{k:<{width}}{v:.4f}" for k, v in summary["metrics"].items()]
    return "\n".join(lines)


def _subset_lines(facts: dict) -> list[str]:
    """The summary's "subset" and "dropped" lines (what the run trained on; what the pool lost before it)."""
    nmi = f"NMI {facts['nmi']:.3f}" + (f" (target {facts['nmi_target']:g})" if facts.get("nmi_target") is not None
                                       else " (no target)")
    pairs = f"{facts['distinct_pairs']:,} distinct pairs" + (
        f" (target {facts['distinct_pairs_target']})" if facts.get("distinct_pairs_target") is not None else "")
    single = facts.get("single_side") or {}
    alone = single.get("object_only", 0) + single.get("attribute_only", 0)
    labelled = f" of {facts['pool_labelled']:,} labelled" if facts.get("pool_labelled") is not None else ""
    if facts.get("pool_single_side"):  # single-side captions: NMI and pairs are those of the pair captions
        labelled = f" of {facts['pool_labelled']:,} pair + {facts['pool_single_side']:,} single-side captions"
    size = f"{facts['size']:,} samples" + (f" ({alone:,} naming one side alone)" if alone else "")
    lines = [f"subset        {size}{labelled}; {nmi}; {pairs}"]
    if facts.get("pool") is None:
        return lines
    dropped = []
    captions = facts.get("pool_captions")
    if facts.get("pool_unlabelled"):
        dropped.append(f"{facts['pool_unlabelled']:,} of {captions:,} pool captions name no single pair or side")
    for key, words in (("not_downloaded", "not downloaded"), ("duplicates_dropped", "duplicate images")):
        if facts.get(key):
            dropped.append(f"{facts[key]:,} {words}")
    dropped += [f"{n:,} {kind}" for kind, n in sorted(facts.get("pool_skipped", {}).items()) if n]
    if facts.get("pool_truncated_shards"):
        dropped.append(f"{facts['pool_truncated_shards']} truncated shard(s)")
    if not dropped:
        dropped = [f"nothing: all {captions:,} pool captions name one pair or one side" if captions else "nothing"]
    lines.append(f"dropped       {'; '.join(dropped)}")
    return lines
