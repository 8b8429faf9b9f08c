"""The `aotrain` command.

    aotrain fit [recipe=NAME] [KEY=VALUE ...]    train + evaluate; Hydra overrides
    aotrain world [recipe=NAME] [KEY=VALUE ...]  generate (or find) the toy world only
    aotrain fit --help                           recipes, config groups and main options
    aotrain eval checkpoint=PATH [benchmark=DIR]  evaluate a saved model on ImageNet-AO-format folders
    aotrain robustness METRICS.json ...          effective robustness across evaluated models
    aotrain export CKPT_DIR [OUT.ckpt]           one file from a sharded DeepSpeed/FSDP checkpoint
    aotrain sweep recipe=NAME [KEY=VALUE ...]    a grid of fits under one MLflow parent run, then a report
    aotrain report sweep=NAME                    a sweep's tables, effect sizes with CIs and plots
    aotrain sync RUN_DIR [--to URI]              send a run's MLflow journal (after a tracking outage)
    aotrain filter stats|label|select|band|reshard  caption statistics and subset selection
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

from aotrain import __version__

USAGE = """usage: aotrain [--help] [--version] COMMAND [--help] [--print-config] [OVERRIDES ...]

Controlled experiments on compositional generalisation in CLIP-style models.

commands:
  fit      train a recipe (default: toy_low_nmi on the built-in toy world), evaluate it
           zero-shot on ImageNet-AO-format folders and log everything to MLflow
  world    generate (or find) the toy world of a recipe and print its folder
  eval     evaluate a checkpoint (or open_clip config + weights) on ImageNet-AO-format folders:
           pair (closed/open world), object, attribute, seen vs unseen, CZSL, contamination
  robustness  fit unseen- against seen-pair accuracy across evaluated models (effective robustness)
  export   one checkpoint file from a sharded DeepSpeed or FSDP checkpoint folder (for aotrain eval)
  sweep    a grid of fits (NMI x size x seed x supervision ...) as MLflow child runs of one parent,
           run here N at a time or on Slurm; skips finished cells when re-run; ends with the report
  report   a sweep's report: mean ± 95% CI per cell, effect sizes (slopes, CLIP minus supervised), plots
  sync     send what a run's MLflow journal holds and its store does not (after a tracking outage)
  filter   caption-side tools: stats (NMI of a caption set), label (pairs per caption),
           select (subsets at a target NMI), band (the NMI band at each pair count),
           reshard (shards holding exactly a subset),
           contamination (benchmark pairs found in a pool)
"""

# `aotrain filter SUB ...` runs Lightning-free tools in data_filters/ (argparse flags, not Hydra).
FILTER_COMMANDS = {
    "stats": ("data_filters.stats_cli", "main", "count attribute-object pairs in captions; entropies, MI, NMI"),
    "label": ("data_filters.label", "label_main", "one (uid, attribute, object) row per labelled caption"),
    "select": ("data_filters.select_cli", "select_main", "subsets of a labelled pool at a size and target NMI"),
    "band": ("data_filters.band_cli", "band_main", "NMI band per distinct-pair count K; the K that reach an NMI target"),
    "reshard": ("data_filters.select_cli", "reshard_main", "webdataset shards holding exactly a subset's uids"),
    "contamination": ("data_filters.contamination", "contamination_main",
                      "benchmark pairs that occur in a caption pool; the pool without them"),
    "table-shards": ("data_filters.table_shards", "table_shards_main",
                     "webdataset shards from a caption table with image paths (HF datasets, parquet, CSV)"),
}

MAIN_OPTIONS = [
    ("recipe=NAME", "what to run (see the list above; recipe=null for none)"),
    ("seed=INT", "seed for data order, initialisation and the toy world's sampling"),
    ("resume=auto|RUN_DIR|CKPT", "continue an interrupted run (weights, optimizer, step, data position, MLflow run)"),
    ("trainer=ddp|fsdp2|deepspeed_stage_N", "several processes (GPUs, or CPUs for ddp/fsdp2); + fsdp, _offload variants"),
    ("trainer.max_steps=INT", "optimizer steps"),
    ("trainer.devices=INT", "processes (CPU) or GPUs on this node"),
    ("data.batch_size=INT", "batch size per process"),
    ("data.pool=PATH", "a folder of webdataset shards (real data; with ~world)"),
    ("optim.lr=FLOAT", "peak learning rate (linear warmup, cosine decay)"),
    ("supervision=labels", "the supervised twin: same image tower, images, order and budget, object labels"),
    ("supervision=self", "image-only: the same tower, images, order and budget, two augmented views (SimCLR); "
                         "evaluated by the linear probe"),
    ("parity.twin=RUN_DIR", "stop unless this run is a twin of that run (tower, data, batch, steps, schedule)"),
    ("subset.nmi=FLOAT", "NMI target of the training subset selected from the toy pool"),
    ("subset.size=INT", "samples in that subset (same marginals at every target)"),
    ("subset.pairs=INT", "diversity: exactly this many distinct attribute-object pairs (nested across values)"),
    ("subset.single_share=pool|FLOAT", "share of the subset naming one side alone ('a photo of a star'); NMI is the pairs'"),
    ("world.pool.object_only=FLOAT", "share of toy captions naming the object alone (default 0.3; attribute_only too)"),
    ("eval.every_n_steps=INT", "zero-shot evaluation interval (0: at the end only)"),
    ("eval.probe_samples=INT", "training samples the end-of-fit linear object probe is fitted on (0: no probe)"),
    ("logger.tracking_uri=URI", "MLflow store (default: $MLFLOW_TRACKING_URI or sqlite in paths.root)"),
    ("paths.root=PATH", "where worlds, runs and the MLflow store go (default: $AOTRAIN_OUTPUT or ./outputs)"),
    ("debug=smoke", "a few steps on a tiny world, to check an install"),
    ("--print-config", "print the composed config and exit"),
]


def recipes_and_options() -> list[str]:
    from aotrain.config import default_choice, describe, group_options, groups

    lines = ["recipes (recipe=NAME; * the default, set in recipes/config.yaml):"]
    names, default = group_options("recipe"), default_choice("recipe")
    width = max(22, *(len(r) + 2 for r in names))  # a long name must not run into its description
    lines += [f"{'*' if r == default else ' '} {r:<{width}}{describe('recipe', r)}" for r in names]
    lines += ["", "config groups (GROUP=CHOICE):"]
    lines += [f"  {g:<22}{', '.join(group_options(g))}" for g in groups()
              if g not in ("recipe", "sweeps", "recipe_base", "paths")]
    lines += ["", "main options:"]
    lines += [f"  {k:<34}{v}" for k, v in MAIN_OPTIONS]
    lines += ["", "Any key of the composed config can be set as KEY=VALUE (see --print-config)."]
    return lines


def command_help(command: str) -> str:
    intro = {
        "fit": "usage: aotrain fit [--print-config] [recipe=NAME] [KEY=VALUE ...]\n\n"
               "Train a CLIP from scratch, evaluate it zero-shot and log the run to MLflow (supervision=labels:\n"
               "its supervised twin; supervision=self: its image tower on two views per image, probe only).",
        "world": "usage: aotrain world [recipe=NAME] [KEY=VALUE ...]\n\n"
                 "Generate the recipe's toy world (pool shards + ImageNet-AO folders) if missing; for a\n"
                 "real-data recipe, run its pool stages (stats, select, reshard) without training.",
    }[command]
    return "\n".join([intro, "", *recipes_and_options()])


EVAL_OPTIONS = [
    ("checkpoint=PATH", "an aotrain .ckpt; its run's config supplies the benchmark, templates, vocabulary"),
    ("model_name=NAME|CONFIG.json", "or an open_clip model: a known name (ViT-B-32) or a config .json file ..."),
    ("weights=PATH", "... and its weights: open_clip_train's epoch_N.pt, a state dict or an aotrain .ckpt"),
    ("benchmark=DIR", "<attribute object>/ folders, or <split>/<attribute object>/ (default: the run's)"),
    ("templates=openai|simple|[...]", "prompt templates (default: the run's, else the 80 OpenAI ones)"),
    ("vocabulary=SPEC", "builtin | benchmark:DIR | world:PATH | FILE (default: the run's, else folder names)"),
    ("seen_from=PATH", "training manifest.json / labels parquet / captions: their pairs count as seen"),
    ("seen_vocabulary=SPEC", "the vocabulary seen_from was labelled with (default: the run's, else vocabulary=)"),
    ("open_world=BOOL", "also rank all attribute x object pairs (default true)"),
    ("log_to=none|new|checkpoint", "log to MLflow: a new run, or the checkpoint's own run"),
    ("out=DIR", "where results go (default: beside the checkpoint's run)"),
    ("device=auto|cpu|cuda", "where to run (default auto)"),
]


def eval_help() -> str:
    lines = ["usage: aotrain eval [--print-config] KEY=VALUE ...", "",
             "Evaluate a model on an ImageNet-AO-format benchmark; writes metrics.json and tables.", "", "options:"]
    lines += [f"  {k:<32}{v}" for k, v in EVAL_OPTIONS]
    return "\n".join(lines)


SWEEP_OPTIONS = [
    ("recipe=NAME", "the sweep recipe (recipes/sweeps/): its name, base fit overrides and grid"),
    ("grid.AXIS=[v1,v2,...]", "values of an axis (nmi, size, diversity, seed, supervision, model); null: not swept"),
    ("grid.supervision=[...]", "language (CLIP), labels (supervised twin), self (image-only): twins check parity"),
    ("'extra=[\"KEY=VALUE\",...]'", "more fit overrides for every cell, after the recipe's base"),
    ("budget.epochs=E", "fixed epochs: each cell trains E passes over its subset (default: the base's fixed steps)"),
    ("launcher.parallel=INT", "fits at a time on this machine (default 1)"),
    ("launcher.threads=INT", "CPU threads per fit (default: cores / parallel)"),
    ("launcher.kind=submitit", "submit the fits through Hydra's submitit launcher (Slurm; slurm/README.md)"),
    ("paths.root=PATH", "where worlds, runs, sweeps and the MLflow store go (default ./outputs)"),
    ("report.after_sweep=false", "do not write the report at the end (aotrain report sweep=NAME does)"),
]


def sweep_help() -> str:
    from aotrain.config import describe, group_options

    lines = ["usage: aotrain sweep [--print-config] recipe=NAME [KEY=VALUE ...]", "",
             "Run a grid of fits as MLflow child runs of one parent run, then write the sweep's report.",
             "Re-running the same sweep skips finished cells and resumes interrupted ones.", "", "sweep recipes:"]
    recipes = group_options("sweeps")
    width = max(26, *(len(r) + 2 for r in recipes))  # the longest name still leaves a gap
    lines += [f"  {r:<{width}}{describe('sweeps', r)}" for r in recipes]
    lines += ["", "options:"] + [f"  {k:<30}{v}" for k, v in SWEEP_OPTIONS]
    return "\n".join(lines)


def run_eval(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from aotrain.config import compose
    from aotrain.evaluate_checkpoint import evaluate_checkpoint, format_summary

    unknown = [a for a in args if a.startswith("-") and a != "--print-config"]
    if unknown:
        raise_user(f"unknown option {unknown[0]}; see `aotrain eval --help`")
    cfg = compose([a for a in args if a != "--print-config"], config_name="evaluate")
    if "--print-config" in args:
        print(OmegaConf.to_yaml(cfg))
        return 0
    print(format_summary(evaluate_checkpoint(cfg)))
    return 0


def run(command: str, args: list[str]) -> int:
    from omegaconf import OmegaConf

    from aotrain.config import compose

    print_config = "--print-config" in args
    overrides = [a for a in args if a != "--print-config"]
    unknown = [a for a in overrides if a.startswith("-")]
    if unknown:
        raise_user(f"unknown option {unknown[0]}; see `aotrain {command} --help`")
    cfg = compose(overrides)  # recipes/config.yaml names the default recipe
    if print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    if command == "fit":  # before Lightning loads (seconds): a store that cannot take the run fails fast
        from aotrain.tracking import is_rank_zero
        from aotrain.tracking_store import check_store

        if is_rank_zero():
            check_store(cfg.logger.tracking_uri)
    if command == "world":
        from aotrain.train import prepare

        prepare(cfg)
        # Without a toy world this ran the pool's stages (stats, select, reshard): say what training reads.
        print(cfg.world_dir if cfg.get("world") is not None else f"training shards: {cfg.train_pool}")
        return 0
    from aotrain.train import fit, format_summary

    summary = fit(cfg)
    if summary:
        print("\n" + format_summary(summary))
    return 0


class _DropNoise(logging.Filter):
    """Drops third-party chatter a user cannot act on (adverts, expected 'random init' notes)."""

    NOISE = ("litlogger", "No pretrained weights loaded", "Tip: For seamless cloud logging")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


def _quiet_third_party() -> None:
    for name in ("", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropNoise())
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")


def raise_user(message: str):
    from aotrain.config import UserError

    raise UserError(message)


class _QuietWhenReaderLeaves:
    """stdout that goes quiet, instead of raising BrokenPipeError, once the reader of a pipe has gone:
    `aotrain filter stats pool/ | head` still writes its stats.json."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def _gone(self) -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())  # what is left goes nowhere

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run_filter(args: list[str]) -> int:
    import importlib

    if not args or args[0] in ("-h", "--help"):
        print("usage: aotrain filter COMMAND [--help] ...\n\ncommands:")
        print("\n".join(f"  {name:<15}{doc}" for name, (_, _, doc) in FILTER_COMMANDS.items()))
        return 0
    if args[0] not in FILTER_COMMANDS:
        print(f"aotrain filter: error: unknown command {args[0]!r}; choose {', '.join(FILTER_COMMANDS)}",
              file=sys.stderr)
        return 2
    module, function, _ = FILTER_COMMANDS[args[0]]
    stdout, sys.stdout = sys.stdout, _QuietWhenReaderLeaves(sys.stdout)
    try:
        return getattr(importlib.import_module(module), function)(args[1:])
    finally:
        sys.stdout = stdout


def main(argv: list[str] | None = None) -> int:
    """`aotrain ...`; returns the exit code."""
    try:
        return _main(argv)
    except BrokenPipeError:  # `aotrain filter stats ... | head`: the reader left early, nothing failed here
        # Python would try to flush stdout again at exit and print a second traceback: point it elsewhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("\n".join([USAGE, "", *recipes_and_options()]))
        return 0
    if argv[0] == "--version":
        print(f"aotrain {__version__}")
        return 0
    command, args = argv[0], argv[1:]
    if command == "filter":
        return run_filter(args)
    if command == "robustness":
        from evaluation.robustness import robustness_main

        return robustness_main(args)
    if command == "export":
        from aotrain.export import export_main

        return export_main(args)
    if command == "sync":
        from aotrain.tracking_journal import sync_main

        return sync_main(args)
    if command not in ("fit", "world", "eval", "sweep", "report"):
        print(f"aotrain: error: unknown command {command!r}; choose fit, world, eval, sweep, report, robustness, "
              "export, sync or filter (aotrain --help)", file=sys.stderr)
        return 2
    if ("-h" in args or "--help" in args) and command != "report":
        print(eval_help() if command == "eval" else sweep_help() if command == "sweep" else command_help(command))
        return 0
    from aotrain.config import UserError

    _quiet_third_party()
    try:
        if command == "sweep":
            from aotrain.sweeps.sweep import sweep_main

            return sweep_main(args)
        if command == "report":
            from aotrain.sweeps.collect import report_main

            return report_main(args)
        return run_eval(args) if command == "eval" else run(command, args)
    except UserError as e:
        print(f"aotrain {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aotrain: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a signal stopped training at a step boundary, its checkpoint saved
        from aotrain.callbacks.step_guard import Interrupted

        if not isinstance(e, Interrupted):
            raise
        print(f"aotrain {command}: {e}", file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
