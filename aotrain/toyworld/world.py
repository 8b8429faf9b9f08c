"""Toy-world plan: config validation, held-out pairs, preferred attributes, exact joint counts.

    >>> from aotrain.toyworld.world import DEFAULT_CONFIG, normalise_config, plan_world
    >>> plan = plan_world(normalise_config(DEFAULT_CONFIG))
    >>> len(plan["held_out_pairs"]), plan["counts"].sum()
    (20, 40000)

Held-out pairs, preferred attributes and evaluation images come from RNG streams that depend only
on seed, objects and attributes, never on pool.joint / concentration / n_samples: a uniform
(low-NMI) and a skewed (high-NMI) world with the same seed share their unseen pairs and eval images.
"""
from __future__ import annotations

import copy
import hashlib
import json
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .shapes import ATTRIBUTE_KINDS, SHAPES

DEFAULT_CONFIG = {
    "seed": 0,
    "image_size": 32,
    "objects": ["circle", "square", "triangle", "star", "heart", "cross", "diamond", "crescent", "arrow", "hexagon"],
    "attributes": {
        "colour": ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"],
        "pattern": ["striped", "dotted", "checkered", "hollow"],
    },
    "held_out_per_object": 2,
    "pool": {"n_samples": 40000, "samples_per_shard": 5000, "joint": "uniform", "concentration": 0.9, "image_format": "png",
             "object_only": 0.0, "attribute_only": 0.0},
    # alt_images_per_pair: images of every pair (seen and unseen) in the second style (alt_renderer.py), 0: none
    "eval": {"images_per_unseen_pair": 10, "images_per_seen_pair": 4, "alt_images_per_pair": 5},
}
JOINTS = ("uniform", "skewed", "mixture")
IMAGE_FORMATS = ("png", "jpg")

# Independent RNG streams: SeedSequence([seed, STREAM, ...]).
HELD_OUT, PREFERRED, SHUFFLE, POOL, EVAL, EVAL_ALT, NAMING = 1, 2, 3, 4, 5, 6, 7
PAIR, OBJECT_ONLY, ATTRIBUTE_ONLY = 0, 1, 2  # what a pool sample's caption names (captions.NAMES order)


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


# ---------------------------------------------------------------- config
def _int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _names(value, name: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{name} must be a non-empty list of names, got {value!r}")
    if not all(isinstance(v, str) and v.strip() == v and v for v in value):
        raise ValueError(f"{name} must contain non-empty strings without surrounding spaces, got {list(value)!r}")
    dupes = sorted({v for v in value if list(value).count(v) > 1})
    if dupes:
        raise ValueError(f"duplicate names in {name}: {', '.join(dupes)}")
    return list(value)


def _merge_section(cfg: Mapping, key: str) -> dict:
    section = cfg.get(key, {})
    if not isinstance(section, Mapping):
        raise ValueError(f"{key} must be a mapping, got {section!r}")
    unknown = sorted(set(section) - set(DEFAULT_CONFIG[key]))
    if unknown:
        raise ValueError(f"unknown {key} key(s): {', '.join(map(str, unknown))}; known: {', '.join(DEFAULT_CONFIG[key])}")
    return {**DEFAULT_CONFIG[key], **section}


def normalise_config(cfg: Mapping) -> dict:
    """Validated plain-dict copy of `cfg`, missing keys taken from DEFAULT_CONFIG; ValueError if bad."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"world config must be a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown world config key(s): {', '.join(map(str, unknown))}; known: {', '.join(DEFAULT_CONFIG)}")
    out = copy.deepcopy(DEFAULT_CONFIG)
    out["seed"] = _int(cfg.get("seed", out["seed"]), "seed", 0)
    out["image_size"] = _int(cfg.get("image_size", out["image_size"]), "image_size", 16)

    objects = _names(cfg.get("objects", out["objects"]), "objects")
    bad = [o for o in objects if o not in SHAPES]
    if bad:
        raise ValueError(f"unknown object(s) {', '.join(bad)}; known shapes: {', '.join(SHAPES)}")
    if len(objects) < 2:
        raise ValueError("objects must list at least two shapes")
    out["objects"] = objects

    attributes = cfg.get("attributes", out["attributes"])
    if not isinstance(attributes, Mapping) or len(attributes) < 2:
        raise ValueError(f"attributes must map at least two kinds ({', '.join(ATTRIBUTE_KINDS)}) to names, got {attributes!r}")
    out["attributes"] = {}
    for kind in sorted(attributes):  # sorted kinds: the attribute order matches the canonical (sorted-key) hash
        if kind not in ATTRIBUTE_KINDS:
            raise ValueError(f"unknown attribute kind {kind!r}; known kinds: {', '.join(ATTRIBUTE_KINDS)}")
        names = _names(attributes[kind], f"attributes.{kind}")
        bad = [a for a in names if a not in ATTRIBUTE_KINDS[kind]]
        if bad:
            raise ValueError(f"unknown {kind} attribute(s) {', '.join(bad)}; known: {', '.join(ATTRIBUTE_KINDS[kind])}")
        out["attributes"][kind] = names
    all_attrs = [a for names in out["attributes"].values() for a in names]
    _names(all_attrs, "attributes (all kinds)")
    clash = sorted(set(all_attrs) & set(objects))
    if clash:
        raise ValueError(f"names used as both attribute and object: {', '.join(clash)}")

    n_obj, n_attr = len(objects), len(all_attrs)
    h = out["held_out_per_object"] = _int(cfg.get("held_out_per_object", out["held_out_per_object"]), "held_out_per_object", 0)
    if h > n_attr - 1:
        raise ValueError(f"held_out_per_object={h} too large: at most {n_attr - 1} so every object keeps a seen attribute")
    if n_obj * h > n_attr * (n_obj - 1):
        raise ValueError(f"held_out_per_object={h} too large for {n_obj} objects: some attribute would have no seen pair")

    pool = _merge_section(cfg, "pool")
    n_seen = n_obj * (n_attr - h)
    pool["n_samples"] = _int(pool["n_samples"], "pool.n_samples", 1)
    if pool["n_samples"] < n_seen:
        raise ValueError(f"pool.n_samples={pool['n_samples']} is below the number of seen pairs ({n_seen}); the pool must cover every seen pair")
    pool["samples_per_shard"] = _int(pool["samples_per_shard"], "pool.samples_per_shard", 1)
    if pool["joint"] not in JOINTS:
        raise ValueError(f"unknown pool.joint {pool['joint']!r}; choose one of {', '.join(JOINTS)}")
    c = pool["concentration"]
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < c <= 1:
        raise ValueError(f"pool.concentration must be a number in (0, 1], got {c!r}")
    pool["concentration"] = float(c)
    for key in ("object_only", "attribute_only"):
        rate = pool[key]
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
            raise ValueError(f"pool.{key} must be a number in [0, 1), got {rate!r}")
        pool[key] = float(rate)
    if pool["object_only"] + pool["attribute_only"] >= 1:
        raise ValueError(f"pool.object_only + pool.attribute_only must be below 1 (some captions must name a pair), "
                         f"got {pool['object_only']:g} + {pool['attribute_only']:g}")
    if pool["image_format"] not in IMAGE_FORMATS:
        raise ValueError(f"unknown pool.image_format {pool['image_format']!r}; choose one of {', '.join(IMAGE_FORMATS)}")
    out["pool"] = pool

    ev = _merge_section(cfg, "eval")
    for key in ev:
        ev[key] = _int(ev[key], f"eval.{key}", 0)
    out["eval"] = ev
    return out


# Bump when a renderer draws other pixels for the same config: worlds are cached by config_hash, and an
# old world on disk must not pass for the new drawing. 2: the second renderer's dark paper and light ink.
DRAWING_VERSION = 2


def config_hash(cfg: Mapping) -> str:
    """12 hex chars of sha256 over the canonical (normalised, sorted-key) JSON of the config and DRAWING_VERSION."""
    keyed = {"config": normalise_config(cfg), "drawing": DRAWING_VERSION}
    text = json.dumps(keyed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def world_dir(root, cfg: Mapping) -> Path:
    """Where the world for `cfg` lives under `root` (no I/O): root/toyworld-<hash>."""
    return Path(root) / f"toyworld-{config_hash(cfg)}"


# ---------------------------------------------------------------- the plan
def choose_held_out(n_attr: int, n_obj: int, per_object: int, seed: int) -> np.ndarray:
    """Bool [A, O] mask of held-out pairs: a shuffled cyclic (Latin-square style) assignment.

    Object j (in a random order) holds out the `per_object` attributes at cyclic positions
    j*h .. j*h+h-1 of a random attribute order, so each attribute is held out for
    floor or ceil(O*h/A) objects.
    """
    rng = rng_for(seed, HELD_OUT)
    attr_order, obj_order = rng.permutation(n_attr), rng.permutation(n_obj)
    held = np.zeros((n_attr, n_obj), dtype=bool)
    for j, o in enumerate(obj_order):
        for k in range(per_object):
            held[attr_order[(j * per_object + k) % n_attr], o] = True
    return held


def choose_preferred(seen: np.ndarray, seed: int) -> np.ndarray:
    """For each object, one seen attribute index, spreading choices over the least-used attributes."""
    rng = rng_for(seed, PREFERRED)
    n_attr, n_obj = seen.shape
    used = np.zeros(n_attr, dtype=int)
    preferred = np.zeros(n_obj, dtype=int)
    for o in rng.permutation(n_obj):
        cands = np.flatnonzero(seen[:, o])
        cands = cands[used[cands] == used[cands].min()]  # distinct across objects where possible
        preferred[o] = rng.choice(cands)
        used[preferred[o]] += 1
    return preferred


def joint_probs(seen: np.ndarray, preferred: np.ndarray, joint: str, concentration: float) -> np.ndarray:
    """p[A, O] over seen pairs: uniform; object-uniform with p(preferred | object) = concentration;
    or the mixture (half each), a pool from which subsets of one size and one set of marginals can
    reach both low and high NMI (aotrain filter select)."""
    if joint == "mixture":
        return (joint_probs(seen, preferred, "uniform", concentration)
                + joint_probs(seen, preferred, "skewed", concentration)) / 2
    if joint == "uniform":
        return seen / seen.sum()
    p = np.zeros(seen.shape)
    for o in range(seen.shape[1]):
        others = [a for a in np.flatnonzero(seen[:, o]) if a != preferred[o]]
        p[preferred[o], o] = concentration if others else 1.0
        for a in others:
            p[a, o] = (1 - concentration) / len(others)
    return p / seen.shape[1]


def exact_counts(p: np.ndarray, seen: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to n: floor(p*n), largest remainders, then >= 1 for every seen pair."""
    raw = p.ravel() * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    flat_seen = seen.ravel()
    for i in np.flatnonzero(flat_seen & (counts == 0)):
        counts[np.argmax(counts)] -= 1  # take from the largest cell (n >= seen pairs, so it has >= 2)
        counts[i] = 1
    counts = counts.reshape(p.shape)
    assert counts.sum() == n and not counts[~seen].any() and (counts[seen] > 0).all()
    return counts


def plan_world(cfg: dict) -> dict:
    """Everything about a world except its images, from a normalised config."""
    objects = cfg["objects"]
    kinds = {a: kind for kind, names in cfg["attributes"].items() for a in names}
    attributes = list(kinds)
    held = choose_held_out(len(attributes), len(objects), cfg["held_out_per_object"], cfg["seed"])
    seen = ~held
    preferred = choose_preferred(seen, cfg["seed"])
    pool = cfg["pool"]
    counts = exact_counts(joint_probs(seen, preferred, pool["joint"], pool["concentration"]), seen, pool["n_samples"])
    # the pool's sample order: every (attribute, object) index repeated by its count, shuffled
    pairs = np.array([(a, o) for a in range(len(attributes)) for o in range(len(objects)) for _ in range(counts[a, o])])
    pairs = pairs[rng_for(cfg["seed"], SHUFFLE).permutation(len(pairs))]
    # What each sample's caption names: its own stream, so images and pair captions do not depend on it.
    u = rng_for(cfg["seed"], NAMING).random(len(pairs))
    naming = np.where(u < pool["object_only"], OBJECT_ONLY,
                      np.where(u < pool["object_only"] + pool["attribute_only"], ATTRIBUTE_ONLY, PAIR))

    def listing(mask):  # object-major in config order: [["red", "circle"], ["orange", "circle"], ...]
        return [[attributes[a], objects[o]] for o in range(len(objects)) for a in range(len(attributes)) if mask[a, o]]

    return {
        "objects": objects,
        "attributes": attributes,
        "attribute_kinds": kinds,
        "seen_pairs": listing(seen),
        "held_out_pairs": listing(held),
        "preferred_attribute": {objects[o]: attributes[preferred[o]] for o in range(len(objects))},
        "counts": counts,
        "sample_pairs": pairs,
        "sample_naming": naming,  # PAIR, OBJECT_ONLY or ATTRIBUTE_ONLY per sample
    }

