"""A caption pool in img2dataset's output layout, made from a toy world (for tests of real-data recipes).

    write_pool(world_dir, out_dir)  ->  out_dir/{00000.tar, 00000.parquet, 00000_stats.json, ...}

Like img2dataset: one `.tar` per shard with `{key}.jpg`, `{key}.txt`, `{key}.json`, a `.parquet` per
shard with one row per URL (key, caption, url, status, error_message, width, height, ...) including
URLs that failed to download (no sample in the tar), 9-digit keys (shard number + index). Captions
are written the way web alt-text reads ("Stock photo: striped red circle on a wooden table, high
resolution"), and some name no pair or two. `uid=True` adds DataComp's uid column and json field.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data_filters.files import add_tar_member

TEMPLATES = [
    "Stock photo: {a} {o} on a wooden table, high resolution",
    "{A} {o} isolated on white background",
    "My new {a} {o}!! #design #art",
    "vector illustration of a {a} {o} icon",
    "Close-up of the {a} {o} we found at the market",
    "{a} {o} - free image for commercial use",
]
NO_PAIR = ["Abstract wallpaper, 4k", "View from the hotel window at sunset", "Untitled", "IMG_2041.JPG"]


def _toy_samples(world_dir: Path):
    """(png bytes, attribute, object) of every sample in the toy world's pool."""
    for shard in sorted((Path(world_dir) / "pool").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".json")):
                meta = json.loads(tar.extractfile(members[name]).read())
                png = tar.extractfile(members[name[:-5] + ".png"]).read()
                yield png, meta["attribute"], meta["object"]


def _caption(rng: random.Random, attribute: str, obj: str, other: tuple[str, str]) -> str:
    roll = rng.random()
    if roll < 0.08:
        return rng.choice(NO_PAIR)
    text = rng.choice(TEMPLATES).format(a=attribute, o=obj, A=attribute.capitalize())
    if roll < 0.12:  # two pairs: the parser labels neither
        text += f" next to a {other[0]} {other[1]}"
    return text


def _jpeg(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_pool(world_dir: Path, out_dir: Path, samples_per_shard: int = 200, failed_every: int = 9,
               uid: bool = False, seed: int = 0, captions=None) -> dict:
    """Write the pool; returns {"samples", "failed", "shards"}. `captions(rng, attribute, object)`
    replaces the caption writer (e.g. to make a pool without one parseable caption)."""
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = list(_toy_samples(world_dir))
    written = failed = 0
    shards = [samples[i:i + samples_per_shard] for i in range(0, len(samples), samples_per_shard)]
    for number, shard in enumerate(shards):
        rows = []
        with tarfile.open(out_dir / f"{number:05d}.tar", "w") as tar:
            for index, (png, attribute, obj) in enumerate(shard):
                key = f"{number:05d}{index:04d}"
                other = rng.choice(samples)[1:]
                caption = captions(rng, attribute, obj) if captions else _caption(rng, attribute, obj, other)
                url = f"https://img.example.com/{key}.jpg"
                row = {"key": key, "caption": caption, "url": url, "width": 32, "height": 32,
                       "original_width": 32, "original_height": 32, "status": "success", "error_message": None}
                if uid:
                    row["uid"] = hashlib.md5(url.encode()).hexdigest()
                if failed_every and index % failed_every == failed_every - 1:
                    row.update(status="failed_to_download", error_message="HTTP Error 404", width=None,
                               height=None, original_width=None, original_height=None)
                    failed += 1
                else:
                    add_tar_member(tar, f"{key}.jpg", _jpeg(png))
                    add_tar_member(tar, f"{key}.txt", caption.encode())
                    add_tar_member(tar, f"{key}.json", json.dumps({k: v for k, v in row.items()}).encode())
                    written += 1
                rows.append(row)
        pq.write_table(pa.Table.from_pylist(rows), out_dir / f"{number:05d}.parquet")
        stats = {"count": len(rows), "successes": sum(r["status"] == "success" for r in rows)}
        (out_dir / f"{number:05d}_stats.json").write_text(json.dumps(stats))
    return {"samples": written, "failed": failed, "shards": len(shards)}
