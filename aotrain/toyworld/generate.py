"""Write a toy world to disk: pool shards (img2dataset-style webdataset), ImageNet-AO eval folders, world.json.

    python -c "from aotrain.toyworld import generate_world; print(generate_world({'seed': 0}, 'data/worlds'))"

Layout of world_dir(root, cfg):
    pool/shard-000000.tar ...        keys <shard:06d><index:04d>: .png|.jpg, .txt, .json
    pool/sizes.json                  {shard filename: count}
    imagenet_ao/unseen/<attr obj>/0000.png ...   held-out pairs
    imagenet_ao/seen/<attr obj>/0000.png ...     seen pairs
    world.json                       written last; its presence marks a complete world
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from data_filters.nmi import joint_stats

from .captions import make_caption, plural
from .shapes import render
from .world import EVAL, POOL, normalise_config, plan_world, rng_for, world_dir

WORLD_FILE = "world.json"


def load_world(path) -> dict:
    """Read world.json from a world directory (or the file itself)."""
    path = Path(path)
    with open(path / WORLD_FILE if path.is_dir() else path) as f:
        return json.load(f)


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(img).save(buf, format="PNG")
    else:
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_pool(out: Path, cfg: dict, plan: dict, bar) -> list[str]:
    """Shards of samples_per_shard samples each; returns the shard file names."""
    out.mkdir()
    pool, seed = cfg["pool"], cfg["seed"]
    per_shard, fmt = pool["samples_per_shard"], pool["image_format"]
    digits = max(4, len(str(per_shard - 1)))
    attrs, objs, kinds = plan["attributes"], plan["objects"], plan["attribute_kinds"]
    sizes: dict[str, int] = {}
    writer = None
    for index, (a, o) in enumerate(plan["sample_pairs"]):
        shard, within = divmod(index, per_shard)
        if within == 0:
            if writer is not None:
                writer.close()
            name = f"shard-{shard:06d}.tar"
            # mtime=0 and encoder=False (we pass bytes): shard bytes depend only on the config
            writer = wds.TarWriter(str(out / name), mtime=0, encoder=False)
            sizes[name] = 0
        attr, obj = attrs[a], objs[o]
        rng = rng_for(seed, POOL, index)  # per-sample stream: images do not depend on shard layout
        image = render(obj, attr, kinds[attr], cfg["image_size"], rng)
        caption = make_caption(attr, kinds[attr], obj, rng)
        key = f"{shard:06d}{within:0{digits}d}"
        meta = {
            "uid": hashlib.sha256(f"toyworld-{seed}-{index}".encode()).hexdigest()[:32],
            "key": key,
            "caption": caption,
            "attribute": attr,
            "object": obj,
            "attribute_kind": kinds[attr],
        }
        writer.write({"__key__": key, fmt: _encode(image, fmt), "txt": caption.encode(), "json": json.dumps(meta).encode()})
        sizes[name] += 1
        bar.update()
    writer.close()
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1))
    return list(sizes)


def _write_eval(out: Path, cfg: dict, plan: dict, bar) -> None:
    """ImageNet-AO folders; each image seeded by (seed, split, attribute, object, i) only."""
    attrs, objs, kinds = plan["attributes"], plan["objects"], plan["attribute_kinds"]
    for split_id, (split, key) in enumerate([("unseen", "held_out_pairs"), ("seen", "seen_pairs")]):
        n = cfg["eval"][f"images_per_{split}_pair"]
        for attr, obj in plan[key] if n else []:
            folder = out / split / f"{attr} {obj}"
            folder.mkdir(parents=True)
            for i in range(n):
                rng = rng_for(cfg["seed"], EVAL, split_id, attrs.index(attr), objs.index(obj), i)
                image = render(obj, attr, kinds[attr], cfg["image_size"], rng)
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


def generate_world(cfg: Mapping, root, progress: bool = True) -> Path:
    """Generate the world for `cfg` under `root` (or return it at once if it exists); returns its dir."""
    cfg = normalise_config(cfg)
    final = world_dir(root, cfg)
    if (final / WORLD_FILE).exists():
        return final
    plan = plan_world(cfg)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        ev = cfg["eval"]
        total = len(plan["sample_pairs"]) + ev["images_per_unseen_pair"] * len(plan["held_out_pairs"])
        total += ev["images_per_seen_pair"] * len(plan["seen_pairs"])
        with tqdm(total=total, disable=not progress, desc=f"toyworld {final.name}", unit="img") as bar:
            shards = _write_pool(tmp / "pool", cfg, plan, bar)
            _write_eval(tmp / "imagenet_ao", cfg, plan, bar)
        counts = plan["counts"]
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
            "n_samples": int(counts.sum()),
            "shards": [f"pool/{s}" for s in shards],  # relative to the world directory
            "created_by": "aotrain.toyworld",
        }
        (tmp / WORLD_FILE).write_text(json.dumps(info, indent=1))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written world behind
        raise
    return final
