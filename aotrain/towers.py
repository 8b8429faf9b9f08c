"""One factory for CLIP towers, their tokenizer and their image transforms (open_clip, from scratch).

Our tiny configs live in aotrain/model_configs/*.json and are registered beside open_clip's own
(ViT-B-32, ViT-B-16, ...), so every name resolves the same way:

    >>> model = build_clip("toy-vit-tiny")          # random init, never downloads weights
    >>> tower = build_vision_tower("toy-vit-tiny")  # its image tower alone (the supervised twin's)
    >>> train_tf, eval_tf = image_transforms("toy-vit-tiny")
"""
from __future__ import annotations

import functools
from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


@functools.cache
def _register_configs() -> None:
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def model_names() -> list[str]:
    _register_configs()
    return open_clip.list_models()


def model_config(name: str) -> dict:
    """The open_clip JSON config for `name`; ValueError naming the known models when unknown."""
    _register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        ours = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
        raise ValueError(f"unknown model {name!r}; aotrain's own: {', '.join(ours)}; "
                         f"or any open_clip config such as ViT-B-32")
    return cfg


def build_clip(name: str, **overrides):
    """A from-scratch open_clip CLIP (no pretrained weights). `overrides` go to open_clip.create_model."""
    model_config(name)  # clear error before open_clip's own
    return open_clip.create_model(name, pretrained=None, output_dict=True, **overrides)


def build_vision_tower(name: str):
    """The image tower of `build_clip(name)`, built by that same call: under the same RNG state it has
    the CLIP twin's exact initial weights (open_clip builds the image tower first). Output [B, embed_dim]."""
    return build_clip(name).visual


def tokenizer(name: str):
    """open_clip's tokenizer for `name` (BPE vocab ships in the wheel: no network)."""
    _register_configs()
    return open_clip.get_tokenizer(name)


def image_transforms(name: str):
    """(train, eval) torchvision transforms matching the model's image size and normalisation."""
    size = model_config(name)["vision_cfg"]["image_size"]
    train = open_clip.image_transform(size, is_train=True)
    evaluation = open_clip.image_transform(size, is_train=False)
    return train, evaluation
