"""Tests for the procedural toy world (aotrain.toyworld): determinism, pool/eval contents, validation.

    .venv/bin/python -m pytest tests/test_toyworld.py -q
"""
from __future__ import annotations

import copy
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from aotrain.toyworld import DEFAULT_CONFIG, WORLD_FILE, generate_world, load_world, world_dir
from aotrain.toyworld import generate as gen
from aotrain.toyworld.captions import make_caption, plural
from aotrain.toyworld.world import normalise_config, plan_world

SMALL = {
    "seed": 0,
    "image_size": 32,
    "objects": ["circle", "square", "star", "cross"],
    "attributes": {"colour": ["red", "orange", "blue"], "pattern": ["striped", "hollow"]},
    "held_out_per_object": 1,
    "pool": {"n_samples": 600, "samples_per_shard": 250, "joint": "uniform", "concentration": 0.9, "image_format": "png"},
    "eval": {"images_per_unseen_pair": 2, "images_per_seen_pair": 2},
}


def small(**changes) -> dict:
    """SMALL with dotted-path overrides, e.g. small(**{"pool.joint": "skewed"})."""
    cfg = copy.deepcopy(SMALL)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def files(world: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(world)): p.read_bytes() for p in sorted(world.glob(pattern)) if p.is_file()}


def samples(world: Path):
    urls = [str(world / s) for s in load_world(world)["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The small world generated twice (two roots), with another seed, and skewed."""
    root = tmp_path_factory.mktemp("worlds")
    return {
        "a": generate_world(SMALL, root / "a", progress=False),
        "b": generate_world(SMALL, root / "b", progress=False),
        "seed1": generate_world(small(seed=1), root / "a", progress=False),
        "skewed": generate_world(small(**{"pool.joint": "skewed"}), root / "a", progress=False),
    }


def test_world_dir_is_pure_and_keyed_by_config(tmp_path):
    path = world_dir(tmp_path / "root", SMALL)
    assert re.fullmatch(r"toyworld-[0-9a-f]{12}", path.name) and path.parent == tmp_path / "root"
    assert not (tmp_path / "root").exists()
    assert world_dir(tmp_path / "root", copy.deepcopy(SMALL)) == path
    assert world_dir(tmp_path / "root", small(seed=1)) != path
    assert world_dir(tmp_path, {}) == world_dir(tmp_path, DEFAULT_CONFIG)  # missing keys = defaults


def test_layout_and_world_json(worlds):
    world = worlds["a"]
    info = load_world(world)
    assert info["created_by"] == "aotrain.toyworld" and info["n_samples"] == 600
    assert info["shards"] == [f"pool/shard-{i:06d}.tar" for i in range(3)]
    assert json.loads((world / "pool" / "sizes.json").read_text()) == {
        "shard-000000.tar": 250, "shard-000001.tar": 250, "shard-000002.tar": 100}
    assert info["attributes"] == ["red", "orange", "blue", "striped", "hollow"]
    assert info["attribute_kinds"]["hollow"] == "pattern" and info["plurals"]["cross"] == "crosses"
    assert len(info["held_out_pairs"]) == 4 and len(info["seen_pairs"]) == 16
    for split, key, n in [("unseen", "held_out_pairs", 2), ("seen", "seen_pairs", 2)]:
        folders = sorted(p.name for p in (world / "imagenet_ao" / split).iterdir())
        assert folders == sorted(f"{a} {o}" for a, o in info[key])
        assert sorted(p.name for p in (world / "imagenet_ao" / split / folders[0]).iterdir()) == ["0000.png", "0001.png"][:n]
    counts = np.array(info["joint_counts"]["counts"])
    assert counts.shape == (5, 4) and counts.sum() == 600 and info["nmi"]["n"] == 600
    assert not list(world.parent.glob(".tmp-*"))


def test_generation_is_deterministic_and_seeded(worlds):
    a, b = files(worlds["a"], "**/*"), files(worlds["b"], "**/*")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)  # shards, eval images, world.json
    other = files(worlds["seed1"], "pool/*.tar")
    assert all(other[k] != a[k] for k in other)
    eval_a, eval_1 = files(worlds["a"], "imagenet_ao/**/*.png"), files(worlds["seed1"], "imagenet_ao/**/*.png")
    assert sum(eval_a[k] == eval_1.get(k) for k in eval_a) == 0


def test_worker_processes_do_not_change_bytes(tmp_path, worlds):
    world = generate_world(SMALL, tmp_path, progress=False, workers=2)
    assert files(world, "pool/*") == files(worlds["a"], "pool/*")


def test_pool_never_contains_held_out_pairs_and_covers_seen_ones(worlds):
    for name in ("a", "skewed"):
        world, info = worlds[name], load_world(worlds[name])
        held = {tuple(p) for p in info["held_out_pairs"]}
        seen = {tuple(p) for p in info["seen_pairs"]}
        found, per_shard = {}, {}
        for s in samples(world):
            meta = json.loads(s["json"])
            pair = (meta["attribute"], meta["object"])
            caption = s["txt"].decode().lower()
            assert pair not in held and pair in seen
            assert meta["attribute"] in caption and meta["object"] in caption and meta["caption"] == s["txt"].decode()
            assert meta["key"] == s["__key__"] and re.fullmatch(r"[0-9a-f]{32}", meta["uid"])
            found[pair] = found.get(pair, 0) + 1
            shard = Path(s["__url__"]).name
            per_shard[shard] = per_shard.get(shard, 0) + 1
        assert set(found) == seen
        counts = info["joint_counts"]
        for (attr, obj), n in found.items():
            assert counts["counts"][counts["attributes"].index(attr)][counts["objects"].index(obj)] == n
        assert per_shard == json.loads((world / "pool" / "sizes.json").read_text())


def test_uniform_and_skewed_share_held_out_pairs_and_eval_images(worlds):
    low, high = load_world(worlds["a"]), load_world(worlds["skewed"])
    assert low["held_out_pairs"] == high["held_out_pairs"] and low["seen_pairs"] == high["seen_pairs"]
    assert low["preferred_attribute"] == high["preferred_attribute"]
    assert files(worlds["a"], "imagenet_ao/**/*") == files(worlds["skewed"], "imagenet_ao/**/*")
    assert high["nmi"]["nmi"] > low["nmi"]["nmi"] + 0.3
    # skewed: each object's preferred attribute gets `concentration` of that object's samples
    counts = high["joint_counts"]
    for obj, attr in high["preferred_attribute"].items():
        column = [row[counts["objects"].index(obj)] for row in counts["counts"]]
        assert column[counts["attributes"].index(attr)] == pytest.approx(0.9 * sum(column), abs=2)
        assert [attr, obj] in high["seen_pairs"]
    assert len(set(high["preferred_attribute"].values())) == len(high["objects"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_pairs_are_spread(seed):
    cfg = normalise_config({**DEFAULT_CONFIG, "seed": seed})
    plan = plan_world(cfg)
    attrs, objs = plan["attributes"], plan["objects"]
    held = plan["held_out_pairs"]
    bound = math.ceil(len(objs) * cfg["held_out_per_object"] / len(attrs))
    assert all(sum(a == attr for a, _ in held) <= bound for attr in attrs)
    assert all(sum(o == obj for _, o in held) == cfg["held_out_per_object"] for obj in objs)
    seen = plan["seen_pairs"]
    assert {a for a, _ in seen} == set(attrs) and {o for _, o in seen} == set(objs)
    assert plan["counts"].sum() == 40000 and (plan["counts"] > 0).sum() == len(seen)


def test_every_seen_pair_gets_a_sample_even_when_n_is_tiny():
    plan = plan_world(normalise_config(small(**{"pool.joint": "skewed", "pool.n_samples": 16})))
    assert plan["counts"].sum() == 16 and (plan["counts"] > 0).sum() == len(plan["seen_pairs"]) == 16


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"pool.joint": "zipf"}, "unknown pool.joint"),
        ({"held_out_per_object": 5}, "held_out_per_object=5 too large"),
        ({"pool.n_samples": 10}, "below the number of seen pairs"),
        ({"image_size": 8}, "image_size must be >= 16"),
        ({"objects": ["circle", "circle"]}, "duplicate names in objects"),
        ({"objects": ["circle", "dragon"]}, "unknown object.*dragon.*known shapes: circle"),
        ({"attributes.colour": ["red", "mauve"]}, "unknown colour attribute.*mauve"),
        ({"attributes.texture": ["furry"]}, "unknown attribute kind 'texture'"),
        ({"attributes": {"colour": ["red", "blue"]}}, "at least two kinds"),
        ({"colour": "red"}, "unknown world config key"),
        ({"pool.shards": 3}, "unknown pool key"),
        ({"pool.concentration": 1.5}, "concentration"),
        ({"pool.image_format": "gif"}, "image_format"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_configs_raise_value_error(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        generate_world(small(**changes), tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_cache_hit_returns_without_rewriting(worlds, monkeypatch):
    stamp = (worlds["a"] / WORLD_FILE).stat().st_mtime_ns
    monkeypatch.setattr(gen, "_write_pool", lambda *a, **k: pytest.fail("regenerated a cached world"))
    t0 = time.perf_counter()
    assert generate_world(SMALL, worlds["a"].parent, progress=False) == worlds["a"]
    assert time.perf_counter() - t0 < 0.5
    assert (worlds["a"] / WORLD_FILE).stat().st_mtime_ns == stamp


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "_write_eval", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_world(SMALL, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_plain_webdataset_decoding(tmp_path, fmt):
    cfg = small(image_size=48, **{"pool.image_format": fmt, "pool.n_samples": 40, "pool.samples_per_shard": 25})
    world = generate_world(cfg, tmp_path, progress=False)
    urls = [str(world / s) for s in load_world(world)["shards"]]
    n = 0
    for image, text, meta in wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple(fmt, "txt", "json"):
        assert isinstance(image, Image.Image) and image.size == (48, 48) and image.mode == "RGB"
        assert isinstance(text, str) and meta["caption"] == text
        n += 1
    assert n == 40
    eval_image = next((world / "imagenet_ao" / "unseen").glob("*/0000.png"))
    assert Image.open(eval_image).size == (48, 48)


def test_captions_are_well_formed():
    rng = np.random.default_rng(0)
    for i in range(400):
        attr, kind = [("orange", "colour"), ("red", "colour"), ("hollow", "pattern"), ("striped", "pattern")][i % 4]
        obj = ["arrow", "cross", "hexagon", "star", "circle"][i % 5]
        caption = make_caption(attr, kind, obj, rng)
        words = caption.lower().rstrip(".").split()
        a = next(j for j, w in enumerate(words) if w.startswith(attr))
        o = next(j for j, w in enumerate(words) if w in (obj, plural(obj)))
        assert 1 <= o - a <= 2, caption
        for j, w in enumerate(words[:-1]):
            if w in ("a", "an"):
                assert w == ("an" if words[j + 1][0] in "aeiou" else "a"), caption
    assert plural("cross") == "crosses" and plural("star") == "stars"
