"""Write a toy world to disk: pool shards (img2dataset-style webdataset), ImageNet-AO eval folders, world.json.

    python -c "from aotrain.toyworld import generate_world; print(generate_world({'seed': 0}, 'data/worlds'))"

Layout of world_dir(root, cfg):
    pool/shard-000000.tar ...        keys <shard:06d><index:04d>: .png|.jpg, .txt, .json
    pool/sizes.json                  {shard filename: count}
    imagenet_ao/unseen/<attr obj>/0000.png ...   held-out pairs
    imagenet_ao/seen/<attr obj>/0000.png ...     seen pairs
    imagenet_ao_alt/{unseen,seen}/...            the same pairs drawn by the second renderer
                                                 (alt_renderer.py; eval.alt_images_per_pair, evaluation only)
    world.json                       written last; its presence marks a complete world
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import struct
import tarfile
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_filters.files import add_tar_member, no_empty_folders_on_error, sweep_stale, temp_dir_for
from data_filters.nmi import joint_stats
from data_filters.workers import tied_to_parent, usable_cpus

from .alt_renderer import render_alt
from .captions import NAMES, make_caption, plural
from .shapes import render
from .world import EVAL, EVAL_ALT, PAIR, POOL, normalise_config, plan_world, rng_for, world_dir

WORLD_FILE = "world.json"


def load_world(path) -> dict:
    """Read world.json from a world directory (or the file itself)."""
    path = Path(path)
    with open(path / WORLD_FILE if path.is_dir() else path) as f:
        return json.load(f)


def _png(img: np.ndarray) -> bytes:
    """Minimal RGB PNG (filter 0 rows + zlib): same pixels as PIL's, ~5x faster for tiny images."""
    h, w, _ = img.shape
    rows = np.zeros((h, w * 3 + 1), np.uint8)  # a leading 0 byte per row = "no filter"
    rows[:, 1:] = img.reshape(h, -1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(rows.tobytes(), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encode(img: np.ndarray, fmt: str) -> bytes:
    if fmt == "png":
        return _png(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_shard(path: Path, cfg: dict, plan: dict, shard: int, pairs: np.ndarray, naming: np.ndarray,
                 start: int) -> int:
    """One tar shard holding samples start .. start+len(pairs)-1 of the pool; returns its size."""
    seed, fmt = cfg["seed"], cfg["pool"]["image_format"]
    digits = max(4, len(str(cfg["pool"]["samples_per_shard"] - 1)))
    attrs, objs, kinds = plan["attributes"], plan["objects"], plan["attribute_kinds"]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for within, ((a, o), names) in enumerate(zip(pairs, naming)):
            index, attr, obj = start + within, attrs[a], objs[o]
            rng = rng_for(seed, POOL, index)  # per-sample stream: images do not depend on shard layout
            image = render(obj, attr, kinds[attr], cfg["image_size"], rng)
            caption = make_caption(attr, kinds[attr], obj, rng, names=NAMES[names])
            key = f"{shard:06d}{within:0{digits}d}"
            meta = {
                "uid": hashlib.sha256(f"toyworld-{seed}-{index}".encode()).hexdigest()[:32],
                "key": key,
                "caption": caption,
                "attribute": attr,
                "object": obj,
                "attribute_kind": kinds[attr],
                "caption_names": NAMES[names],  # pair | object | attribute: what the caption names
            }
            add_tar_member(tar, f"{key}.{fmt}", _encode(image, fmt))
            add_tar_member(tar, f"{key}.txt", caption.encode())
            add_tar_member(tar, f"{key}.json", json.dumps(meta).encode())
    return len(pairs)


def _write_pool(out: Path, cfg: dict, plan: dict, bar, workers: int) -> list[str]:
    """Shards of samples_per_shard samples each, `workers` processes; returns the shard file names."""
    out.mkdir()
    per_shard = cfg["pool"]["samples_per_shard"]
    pairs = plan["sample_pairs"]
    small = {k: plan[k] for k in ("attributes", "objects", "attribute_kinds")}
    jobs = [
        (out / f"shard-{s:06d}.tar", cfg, small, s, pairs[start : start + per_shard],
         plan["sample_naming"][start : start + per_shard], start)
        for s, start in enumerate(range(0, len(pairs), per_shard))
    ]
    can_fork = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
    if workers > 1 and can_fork:
        # fork, not spawn: spawn re-imports the caller's __main__ (breaks scripts without a main
        # guard) and pays for imports; the children only run numpy/PIL, never torch or CUDA.
        # tied_to_parent: a killed `aotrain world` must not leave writers filling a temporary folder.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 **tied_to_parent()) as ex:
            for n in ex.map(_write_shard, *zip(*jobs)):
                bar.update(n)
    else:
        for job in jobs:
            bar.update(_write_shard(*job))
    sizes = {job[0].name: len(job[4]) for job in jobs}
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1))
    return list(sizes)


def _eval_sets(cfg: dict) -> list[tuple[str, Callable, int, dict[str, int]]]:
    """(folder, renderer, RNG stream, images per pair of each split) of every evaluation benchmark."""
    ev = cfg["eval"]
    return [("imagenet_ao", render, EVAL, {"unseen": ev["images_per_unseen_pair"], "seen": ev["images_per_seen_pair"]}),
            ("imagenet_ao_alt", render_alt, EVAL_ALT, dict.fromkeys(("unseen", "seen"), ev["alt_images_per_pair"]))]


def _write_eval(out: Path, cfg: dict, plan: dict, bar, draw: Callable, stream: int, per_pair: dict[str, int]) -> None:
    """ImageNet-AO folders drawn by `draw`; each image seeded by (seed, stream, split, attribute, object, i) only."""
    attrs, objs, kinds = plan["attributes"], plan["objects"], plan["attribute_kinds"]
    for split_id, (split, key) in enumerate([("unseen", "held_out_pairs"), ("seen", "seen_pairs")]):
        n = per_pair[split]
        if n == 0:
            continue  # no empty class folders
        for attr, obj in plan[key]:
            folder = out / split / f"{attr} {obj}"
            folder.mkdir(parents=True)
            for i in range(n):
                rng = rng_for(cfg["seed"], stream, split_id, attrs.index(attr), objs.index(obj), i)
                image = draw(obj, attr, kinds[attr], cfg["image_size"], rng)
                (folder / f"{i:04d}.png").write_bytes(_encode(image, "png"))
                bar.update()


def _publish(tmp: Path, final: Path) -> None:
    """Move the finished temporary world into place; tolerate a concurrent writer that won."""
    if final.exists():
        if (final / WORLD_FILE).exists():
            shutil.rmtree(tmp)
            return
        shutil.rmtree(final)  # leftovers without world.json are never a valid world
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / WORLD_FILE).exists():
            raise
        shutil.rmtree(tmp)


def generate_world(cfg: Mapping, root, progress: bool = True, workers: int | None = None) -> Path:
    """Generate the world for `cfg` under `root` (or return it at once if it exists); returns its dir.

    workers: processes writing pool shards; default $AOTRAIN_WORLD_WORKERS, else one per CPU for
    pools of >= 10000 samples (the output bytes do not depend on it). The writers die with this
    process, and a killed run's temporary world is deleted by the next run that writes beside it.
    """
    cfg = normalise_config(cfg)
    final = world_dir(root, cfg)
    sweep_stale(final.parent)  # a killed run's temporary world, also when another run finished it
    if (final / WORLD_FILE).exists():
        return final
    plan = plan_world(cfg)
    if workers is None and os.environ.get("AOTRAIN_WORLD_WORKERS"):
        workers = _env_workers(os.environ["AOTRAIN_WORLD_WORKERS"])
    with no_empty_folders_on_error(*reversed(final.parents)):
        # temp_dir_for first deletes the temporary worlds of killed runs (see data_filters.files).
        tmp = temp_dir_for(final)
        _fill(tmp, final, cfg, plan, progress, workers)
    return final


def _env_workers(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"AOTRAIN_WORLD_WORKERS must be a positive integer, got {value!r}")
    return int(value)


def _fill(tmp: Path, final: Path, cfg: dict, plan: dict, progress: bool, workers: int | None) -> None:
    """Write the world into `tmp`, then publish it as `final`; `tmp` never outlives an error."""
    try:
        evals = _eval_sets(cfg)
        total = len(plan["sample_pairs"]) + sum(n["unseen"] * len(plan["held_out_pairs"])
                                                + n["seen"] * len(plan["seen_pairs"]) for *_, n in evals)
        with tqdm(total=total, disable=not progress, desc=f"toyworld {final.name}", unit="img") as bar:
            if workers is None:
                workers = min(usable_cpus(), 8) if len(plan["sample_pairs"]) >= 10000 else 1  # small: fork costs more
            shards = _write_pool(tmp / "pool", cfg, plan, bar, workers)
            for folder, draw, stream, per_pair in evals:
                _write_eval(tmp / folder, cfg, plan, bar, draw, stream, per_pair)
        counts = plan["counts"]
        pairs, naming = plan["sample_pairs"], plan["sample_naming"]
        named = np.zeros_like(counts)  # samples whose caption names their pair: what `filter stats` counts
        np.add.at(named, tuple(pairs[naming == PAIR].T), 1)
        info = {
            "config": cfg,
            "objects": plan["objects"],
            "attributes": plan["attributes"],
            "attribute_kinds": plan["attribute_kinds"],
            "plurals": {o: plural(o) for o in plan["objects"]},
            "seen_pairs": plan["seen_pairs"],
            "held_out_pairs": plan["held_out_pairs"],
            "preferred_attribute": plan["preferred_attribute"],
            "joint_counts": {"attributes": plan["attributes"], "objects": plan["objects"], "counts": counts.tolist()},
            "nmi": joint_stats(counts),
            "pair_captions": {"counts": named.tolist(), "nmi": joint_stats(named)},
            "n_samples": int(counts.sum()),
            # samples whose caption names one side alone (their images still show a pair: joint_counts)
            "single_side": {f"{NAMES[k]}_only": int((plan["sample_naming"] == k).sum()) for k in (1, 2)},
            "shards": [f"pool/{s}" for s in shards],  # relative to the world directory
            "created_by": "aotrain.toyworld",
        }
        (tmp / WORLD_FILE).write_text(json.dumps(info, indent=1))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written world behind
        raise
