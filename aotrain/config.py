"""Compose Hydra configs from recipes/ and instantiate `_target_` nodes: the one place for both.

    >>> cfg = compose(["recipe=toy_high_nmi", "trainer.max_steps=10"])
    >>> trainer = instantiate(cfg.trainer, logger=False)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import hydra
import yaml
from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aotrain.validate import problems

RECIPES_DIR = Path(os.environ.get("AOTRAIN_RECIPES", Path(__file__).resolve().parent.parent / "recipes"))


class UserError(Exception):
    """A mistake in what the user asked for: the CLI prints the message and exits 2, no traceback."""


if not OmegaConf.has_resolver("abspath"):
    OmegaConf.register_new_resolver("abspath", lambda p: str(Path(p).expanduser().resolve()))


def group_options(group: str) -> list[str]:
    """The choices of a config group, e.g. group_options("recipe") -> ["toy_high_nmi", "toy_low_nmi"]
    (what several recipes share lives in its own group, recipe_base/, so it is never a recipe)."""
    return sorted(p.stem for p in (RECIPES_DIR / group).glob("*.yaml"))


def groups() -> list[str]:
    return sorted(p.name for p in RECIPES_DIR.iterdir() if p.is_dir())


def describe(group: str, option: str) -> str:
    """The first comment line of a group option's YAML (its one-line description)."""
    for line in (RECIPES_DIR / group / f"{option}.yaml").read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").strip()
    return ""


def default_choice(group: str) -> str | None:
    """The choice recipes/config.yaml's defaults list makes for `group` (None: none)."""
    return _config_defaults().get(group)


def _config_defaults() -> dict:
    defaults = yaml.safe_load((RECIPES_DIR / "config.yaml").read_text()).get("defaults", [])
    return {k: v for d in defaults if isinstance(d, dict) for k, v in d.items()}


def _null_groups(overrides) -> list[str]:
    """`GROUP=null` -> drop the group (`~GROUP`), or nothing for a group whose default is already null;
    Hydra itself only accepts the `~` form."""
    null_by_default = {group for group, choice in _config_defaults().items() if choice is None}
    out = []
    for o in overrides:
        group, _, value = o.partition("=")
        if value.lower() in ("null", "none") and (RECIPES_DIR / group).is_dir():
            if group not in null_by_default:
                out.append(f"~{group}")
            continue
        out.append(o)
    return out


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """The composed config for `overrides`; UserError (short, names the bad key/choice) on mistakes."""
    if not RECIPES_DIR.is_dir():
        raise UserError(f"recipes folder not found: {RECIPES_DIR} (set AOTRAIN_RECIPES)")
    overrides = _null_groups(overrides)
    try:
        with hydra.initialize_config_dir(config_dir=str(RECIPES_DIR), version_base="1.3"):
            cfg = hydra.compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        message = _short(e)
    else:
        found = problems(cfg, config_name)  # types and ranges now, before any command writes anything
        if found:
            raise UserError("; ".join(found))
        return cfg
    bad_key = re.search(r"Could not override '([^']+)'", message)
    if bad_key and overrides:  # name the keys that do exist where the user was aiming
        message = f"unknown config key '{bad_key.group(1)}'"
        parent, _, _ = bad_key.group(1).rpartition(".")
        root = compose(config_name=config_name)
        node = OmegaConf.select(root, parent) if parent else root
        if isinstance(node, DictConfig):
            message += f". Valid keys{' under ' + parent if parent else ''}: {', '.join(map(str, node.keys()))}"
    raise UserError(message)


def _short(e: Exception) -> str:
    """Hydra's message on one line: no search path, no HYDRA_FULL_ERROR advice, choices comma-separated."""
    lines = []
    for line in str(e).splitlines():
        if line.startswith("Config search path") or "HYDRA_FULL_ERROR" in line:
            break
        if line.strip():
            lines.append(line.strip())
    if len(lines) > 1 and lines[1].startswith("Available options"):
        return f"{lines[0]}. {lines[1]} {', '.join(lines[2:])}"
    return " ".join(lines).split(" See https://")[0]


def resolve(cfg: DictConfig) -> None:
    """Resolve every interpolation now, so a missing value fails before any work starts."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise UserError(f"config error: {e}".splitlines()[0]) from None


def to_dict(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def instantiate(node, **kwargs):
    """Build the object a `_target_` node names (hydra.utils.instantiate); extra kwargs win.

    A constructor's refusal of a config value (TypeError/ValueError/FileNotFoundError) becomes a
    UserError naming the config section, since it is the user's value that was wrong.
    """
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (TypeError, ValueError, FileNotFoundError)):
            section = node._key() if isinstance(node, DictConfig) else node.get("_target_")
            raise UserError(f"{section}: {cause}") from None
        raise
