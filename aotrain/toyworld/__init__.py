"""Procedural attribute-object "toy world": images + captions, deterministic from a seed.

    from aotrain.toyworld import generate_world, load_world
    path = generate_world({"seed": 0, "pool": {"joint": "skewed"}}, "data/worlds")
    load_world(path)["nmi"]["nmi"]

Writes a webdataset training pool (img2dataset layout) and ImageNet-AO evaluation folders;
see generate.py for the layout and world.py for how pairs and counts are chosen.
"""
from .generate import WORLD_FILE, generate_world, load_world
from .world import DEFAULT_CONFIG, normalise_config, world_dir

__all__ = ["WORLD_FILE", "DEFAULT_CONFIG", "generate_world", "load_world", "normalise_config", "world_dir"]
