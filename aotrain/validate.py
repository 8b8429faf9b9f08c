"""Types and ranges of the main config keys, checked when a config is composed (before anything is written).

    aotrain fit trainer.max_steps=-5      # aotrain fit: error: trainer.max_steps=-5: must be an integer > 0
    aotrain fit subset.nmi=abc            # aotrain fit: error: subset.nmi=abc: must be a number in [0, 1] or null

    from aotrain.validate import problems
    problems(cfg, "config")   # ["trainer.max_steps=-5: must be an integer > 0", ...]; aotrain.config.compose
                              # raises them as one UserError

RULES holds one table per root config (recipes/config.yaml, evaluate.yaml, sweep.yaml): key -> rule.
A key that a config does not have (a trainer without num_nodes, a key another recipe adds) is not
checked; neither is a value that is still missing (`???`) or an interpolation that does not resolve
yet (aotrain.config.resolve reports those when the run resolves its config).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException



@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    allowed: str   # completes "must be ..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True would pass as 1 otherwise


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(low: int | None = None) -> Rule:
    return Rule(lambda v: _is_int(v) and (low is None or v >= low),
                "an integer" if low is None else "an integer > 0" if low == 1 else f"an integer >= {low}")


def number(low: float, high: float | None = None, open_low: bool = False) -> Rule:
    def test(v):
        return _is_number(v) and (v > low if open_low else v >= low) and (high is None or v <= high)
    words = f"a number > {low:g}" if open_low else f"a number >= {low:g}"
    return Rule(test, f"a number in [{low:g}, {high:g}]" if high is not None else words)


def or_null(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.test(v), f"{rule.allowed} or null")


def choice(*options) -> Rule:
    return Rule(lambda v: v in options and not isinstance(v, bool),
                "one of " + ", ".join(dict.fromkeys(str(o) for o in options)))  # 16 and "16" read alike


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
POSITIVE_INT = integer(1)
COUNT = integer(0)   # workers, warmup steps, intervals: 0 allowed
DEVICES = Rule(lambda v: (_is_int(v) and (v > 0 or v == -1)) or v == "auto"
               or (isinstance(v, str) and re.fullmatch(r"\d+(,\d+)*,?", v) is not None)
               or (isinstance(v, list) and bool(v) and all(_is_int(i) and i >= 0 for i in v)),
               "an integer > 0, -1 (all), 'auto' or a list of device indices")
# What lightning.Trainer(precision=...) accepts (lightning.fabric.connector._PRECISION_INPUT).
PRECISION = choice(16, 32, 64, "16", "32", "64", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
                   "32-true", "64-true", "transformer-engine", "transformer-engine-float16")
BETAS = Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
             "two numbers in [0, 1), e.g. [0.9,0.98]")
DEVICE = Rule(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
              "auto, cpu, cuda or cuda:N")

RULES: dict[str, dict[str, Rule]] = {
    "config": {   # aotrain fit / aotrain world / each sweep cell
        "seed": integer(),
        "trainer.max_steps": POSITIVE_INT,
        "trainer.devices": DEVICES,
        "trainer.num_nodes": POSITIVE_INT,
        "trainer.precision": PRECISION,
        "trainer.accumulate_grad_batches": POSITIVE_INT,
        "trainer.gradient_clip_val": or_null(number(0)),
        "trainer.log_every_n_steps": POSITIVE_INT,
        # The sharded strategies' knobs (recipes/trainer/fsdp*.yaml); absent under a named strategy (ddp, deepspeed_*).
        "trainer.strategy.mixed_precision": choice("auto", "bf16", "fp32"),
        "trainer.strategy.reshard_after_forward": BOOL,
        "trainer.strategy.activation_checkpointing": BOOL,
        "trainer.strategy.cpu_offload": BOOL,
        "trainer.strategy.state_dict_type": choice("sharded", "full"),
        "data.batch_size": POSITIVE_INT,
        "data.num_workers": COUNT,
        "data.shuffle_buffer": COUNT,
        "data.samples_per_epoch": or_null(POSITIVE_INT),
        "data.resampled": BOOL,
        "data.require_label": BOOL,
        "data.targets": choice("captions", "labels", "views"),
        "data.views.flip": number(0, 1),
        "data.views.colour_jitter": number(0, 2.5),
        "data.views.greyscale": number(0, 1),
        "module.temperature": number(0, open_low=True),
        "data.max_bad_fraction": number(0, 1),
        "optim.lr": number(0, open_low=True),
        "optim.weight_decay": number(0),
        "optim.warmup_steps": COUNT,
        "optim.min_lr_ratio": number(0, 1),
        "optim.eps": number(0, open_low=True),
        "optim.betas": BETAS,
        "subset.size": or_null(POSITIVE_INT),
        "subset.nmi": or_null(number(0, 1)),
        "subset.pairs": or_null(POSITIVE_INT),
        "subset.seed": integer(),
        "subset.tol": number(0, open_low=True),
        "subset.dedupe": or_null(BOOL),
        "subset.single_share": Rule(lambda v: v == "pool" or (_is_number(v) and 0 <= v < 1), "pool or a number in [0, 1)"),
        "subset.samples_per_shard": POSITIVE_INT,
        "eval.every_n_steps": COUNT,
        "eval.probe_samples": COUNT,
        "eval.batch_size": POSITIVE_INT,
        "eval.num_workers": COUNT,
        "eval.open_world": BOOL,
        "eval.checkpoint_mode": choice("max", "min"),
        "world.seed": integer(),
        "world.image_size": POSITIVE_INT,
        "world.pool.n_samples": POSITIVE_INT,
        "world.pool.samples_per_shard": POSITIVE_INT,
    },
    "evaluate": {   # aotrain eval
        "batch_size": POSITIVE_INT,
        "num_workers": COUNT,
        "open_world": BOOL,
        "device": DEVICE,
    },
    # log_to= (aotrain eval) and launcher.kind= (aotrain sweep) are checked by their commands, first thing.
    "sweep": {   # aotrain sweep (each cell's fit config is checked with "config" when it is composed)
        "launcher.parallel": POSITIVE_INT,
        "launcher.threads": or_null(POSITIVE_INT),
        "twins": BOOL,
        "report.after_sweep": BOOL,
        "budget.epochs": or_null(number(0, open_low=True)),
    },
}

_ABSENT = object()


def _value(cfg: DictConfig, key: str, checked: dict):
    """The resolved value at `key`, or _ABSENT when the config has no such key, it cannot be known yet, or
    it only copies another key that is `checked` itself."""
    parent, _, leaf = key.rpartition(".")
    try:
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node or OmegaConf.is_missing(node, leaf):
            return _ABSENT
        # subset.seed: ${seed} -> only seed is named when it is wrong, not each key that copies it
        if OmegaConf.is_interpolation(node, leaf):
            copied = re.fullmatch(r"\$\{([\w.]+)\}", str(OmegaConf.to_container(node, resolve=False)[leaf]))
            if copied and copied.group(1) in checked:
                return _ABSENT
        value = node[leaf]
    except OmegaConfBaseException:  # an interpolation that resolves later (or never: resolve() says so)
        return _ABSENT
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value.strip() else repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def problems(cfg: DictConfig, config_name: str = "config") -> list[str]:
    """One "KEY=VALUE: must be ALLOWED" line per key of `cfg` that breaks its rule."""
    found = []
    for key, rule in RULES.get(config_name, {}).items():
        value = _value(cfg, key, RULES[config_name])
        if value is not _ABSENT and not rule.test(value):
            found.append(f"{key}={_show(value)}: must be {rule.allowed}")
    return found

