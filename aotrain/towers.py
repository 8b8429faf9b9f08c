"""One factory for CLIP towers, their tokenizer and their image transforms (open_clip, from scratch).

Our tiny configs live in aotrain/model_configs/*.json and are registered beside open_clip's own
(ViT-B-32, ViT-B-16, ...), so every name resolves the same way:

    >>> model = build_clip("toy-vit-tiny")          # random init, never downloads weights
    >>> tower = build_vision_tower("toy-vit-tiny")  # its image tower alone (the supervised twin's)
    >>> net = SupervisedNet("toy-vit-tiny", {"object": ["cube", "sphere"]})   # that tower + linear heads
    >>> net = ProjectedTower("toy-vit-tiny", hidden=128, dim=64)   # that tower + a projection MLP (self-supervised)
    >>> train_tf, eval_tf = image_transforms("toy-vit-tiny")

Every function here also takes the path of an open_clip model config file (the JSON of open_clip's
model_configs/*.json: embed_dim, vision_cfg, text_cfg), as open_clip_train users write them:

    >>> resolve_model_name("/data/configs/my-vit.json")   # registered with open_clip as "my-vit"
    'my-vit'
    >>> model = build_clip("/data/configs/my-vit.json")
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import open_clip
import torch
from torch import nn

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


@functools.cache
def _register_configs() -> None:
    open_clip.add_model_config(MODEL_CONFIG_DIR)


CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def _is_config_path(name: str) -> bool:
    """A file path rather than a registered name: ends in .json or has a folder in it (open_clip's
    hf-hub:ORG/REPO and local-dir:PATH names are left to open_clip)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return False
    return name.lower().endswith(".json") or "/" in name


def resolve_model_name(name) -> str:
    """The open_clip name to build `name` with: a registered name as it is, or an open_clip model config
    file (path/to/NAME.json) registered with open_clip as NAME (the file's stem; it replaces any config
    of that name in this process). FileNotFoundError/ValueError with one clear line for a missing or
    malformed file."""
    _register_configs()  # ours first: a config file registered later wins a clash of names
    name = str(name)
    if not _is_config_path(name):
        return name
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model config not found: {path} (model_name= takes a model name or an "
                                f"open_clip model config .json)")
    if path.is_dir() or path.suffix != ".json":
        raise ValueError(f"model_name={path}: an open_clip model config is a .json file")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path} as an open_clip model config: {e}") from None
    missing = [k for k in CONFIG_KEYS if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ValueError(f"{path} is not an open_clip model config: it lacks {', '.join(missing)} "
                         f"(expected the JSON format of open_clip's model_configs/*.json: {', '.join(CONFIG_KEYS)})")
    if open_clip.get_model_config(path.stem) != cfg:  # new, or another file of the same name
        open_clip.add_model_config(path.resolve())
    return path.stem


def model_names() -> list[str]:
    _register_configs()
    return open_clip.list_models()


def model_config(name: str) -> dict:
    """The open_clip JSON config for `name` (or a config file's path); ValueError naming the known models when unknown."""
    name = resolve_model_name(name)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        ours = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
        raise ValueError(f"unknown model {name!r}; aotrain's own: {', '.join(ours)}; "
                         f"or any open_clip config such as ViT-B-32, or the path of a config .json")
    return cfg


def build_clip(name: str, **overrides):
    """A from-scratch open_clip CLIP (no pretrained weights). `overrides` go to open_clip.create_model."""
    name = resolve_model_name(name)
    model_config(name)  # clear error before open_clip's own
    return open_clip.create_model(name, pretrained=None, output_dict=True, **overrides)


def build_vision_tower(name: str):
    """The image tower of `build_clip(name)`, built by that same call: under the same RNG state it has
    the CLIP twin's exact initial weights (open_clip builds the image tower first). Output [B, embed_dim]."""
    return build_clip(name).visual


@functools.cache
def tokenizer(name: str):
    """open_clip's tokenizer for `name` (BPE vocab ships in the wheel: no network). Built once per name
    (~0.1 s): the evaluation callback asks for it at every evaluation."""
    return open_clip.get_tokenizer(resolve_model_name(name))


def image_transforms(name: str):
    """(train, eval) torchvision transforms matching the model's image size and normalisation."""
    size = model_config(name)["vision_cfg"]["image_size"]
    train = open_clip.image_transform(size, is_train=True)
    evaluation = open_clip.image_transform(size, is_train=False)
    return train, evaluation


class SupervisedNet(nn.Module):
    """Image tower + one linear head per task over its embedding. classify(images) -> {task: [B, C_task]}."""

    def __init__(self, model_name: str, classes: dict[str, list[str]]):
        super().__init__()
        self.classes = {task: list(names) for task, names in classes.items()}
        self.visual = build_vision_tower(model_name)  # first, so its init matches the CLIP twin's
        width = model_config(model_name)["embed_dim"]
        self.heads = nn.ModuleDict({task: nn.Linear(width, len(names)) for task, names in self.classes.items()})

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.visual(images)  # [B, embed_dim]
        return {task: head(feats) for task, head in self.heads.items()}


class ProjectedTower(nn.Module):
    """Image tower + SimCLR's projection MLP (embed_dim -> hidden -> ReLU -> dim), which only the
    self-supervised loss reads: evaluation and the linear probe read the tower (`visual`).
    forward(images [B,3,H,W]) -> [B, dim]."""

    def __init__(self, model_name: str, hidden: int | None = None, dim: int = 128):
        super().__init__()
        self.visual = build_vision_tower(model_name)  # first, so its init matches the CLIP twin's
        width = model_config(model_name)["embed_dim"]
        hidden = hidden or width
        self.projection = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.visual(images))  # [B, dim]
