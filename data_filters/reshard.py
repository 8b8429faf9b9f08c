"""Copy the samples of a uid subset out of webdataset tar shards into new shards.

    from data_filters.reshard import reshard
    reshard(sorted(glob.glob("pool/*.tar")), np.load("subset/subset.npy"), "subset_shards")

Command line: `aotrain filter reshard subset/subset.npy --shards pool --out subset_shards`.

Input: uncompressed tar shards in img2dataset layout ({key}.png|jpg, {key}.txt, {key}.json); a
sample's uid is the json's `uid_field` or, with uid_field="__key__", its key. Output:
out_dir/shard-000000.tar ... and out_dir/sizes.json ({shard file: samples}). Order: sorted by uid
(as strings), a uid listed k times gives k adjacent copies, each with its own new key
`<shard:06d><index:04d>`. Keys survive: each sample's json (added when the source had none) gets
"key" = the new key (img2dataset keeps key and file name equal), "source_key" = its key in the
pool (img2dataset's key) and "uid"; out_dir/key_map.parquet lists (key, uid, source_shard,
source_key) for every written sample. Tar headers use a fixed mtime/owner/mode, so the same
inputs give byte-identical shards. Two passes: the first reads only .json members (or names) to
index uid -> member offsets (one shard per core for a large pool), the second copies bytes by
offset, so memory holds the index, not the images. A uid present in several shards is taken from
the first (in the order given). Written to a temporary folder, then renamed.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_filters.files import add_tar_member, publish_dir, temp_dir_for
from data_filters.workers import PARALLEL_FROM_BYTES, tied_to_parent, usable_cpus


def _split(name: str) -> tuple[str, str]:
    """webdataset's key/extension split: the key ends at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def _index_shard(shard: str, uid_field: str) -> list[tuple[str | None, str, list]]:
    """(uid or None, key, [(ext, offset, size), ...]) per sample of one shard, in order."""
    samples: dict[str, list] = {}
    uid_of: dict[str, str] = {}
    try:
        with tarfile.open(shard, "r:") as tar:  # "r:" = uncompressed only: offsets must be seekable
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split(info.name)
                samples.setdefault(key, []).append((ext, info.offset_data, info.size))
                if uid_field != "__key__" and ext == "json":
                    meta = json.loads(tar.extractfile(info).read())
                    if uid_field in meta:
                        uid_of[key] = str(meta[uid_field])
    except (tarfile.ReadError, EOFError, ValueError):
        # A truncated shard: the samples before the damage are indexed (labelling read those too,
        # by data_filters/samples.py); a uid cut off is reported as missing below.
        if samples:
            samples.pop(next(reversed(samples)))  # the sample being read when the shard ended
    return [(key if uid_field == "__key__" else uid_of.get(key), key, members) for key, members in samples.items()]


def _index(shards, wanted: set, uid_field: str) -> dict:
    """uid -> (shard, source key, [(ext, offset, size), ...]) for every wanted uid found."""
    found = {}
    for shard, samples in zip(shards, _index_shards(shards, uid_field)):
        for uid, key, members in samples:
            if uid in wanted and uid not in found:
                found[uid] = (shard, key, members)
    return found


def _index_shards(shards: list[str], uid_field: str):
    """_index_shard of each shard, in order: on every core for a pool of PARALLEL_FROM_BYTES or more
    (reading tar headers is CPU-bound Python: ~0.4 s per 5,000-sample shard)."""
    workers = min(usable_cpus(), len(shards))
    can_fork = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
    if workers < 2 or not can_fork or sum(os.path.getsize(s) for s in shards) < PARALLEL_FROM_BYTES:
        yield from (_index_shard(shard, uid_field) for shard in shards)
        return
    # fork, as the toy world's writers do: the children read tar headers and json only, never torch.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), **tied_to_parent()) as ex:
        yield from ex.map(_index_shard, shards, [uid_field] * len(shards))


def reshard(src_shards, subset_uids, out_dir, samples_per_shard: int = 5000, uid_field: str = "uid",
            overwrite: bool = False) -> dict:
    """Write the samples listed in `subset_uids` (repeats allowed) as new shards; returns a summary.

    Summary: {"out_dir", "shards" (file names), "sizes" ({file: count}), "n_samples", "n_unique"}.
    Raises ValueError, before writing anything, if some uids are in none of the shards.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    src_shards = [str(s) for s in src_shards]
    if not src_shards:
        raise ValueError("no source shards given")
    wanted = [str(u) for u in np.asarray(subset_uids).ravel().tolist()]
    if not wanted:
        raise ValueError("the subset is empty")
    copies = Counter(wanted)
    found = _index(src_shards, set(copies), uid_field)
    missing = sorted(set(copies) - set(found))
    if missing:
        raise ValueError(f"{len(missing)} of {len(copies)} subset uids not found in the {len(src_shards)} shards "
                         f"(uid field {uid_field!r}; e.g. {', '.join(missing[:3])})")

    final = Path(out_dir)
    tmp = temp_dir_for(final)
    sizes = {}
    digits = max(4, len(str(samples_per_shard - 1)))
    order = [uid for uid in sorted(copies) for _ in range(copies[uid])]  # repeats adjacent
    handles = {}
    key_map: dict[str, list] = {"key": [], "uid": [], "source_shard": [], "source_key": []}
    try:
        for shard_no, start in enumerate(range(0, len(order), samples_per_shard)):
            name = f"shard-{shard_no:06d}.tar"
            chunk = order[start:start + samples_per_shard]
            with tarfile.open(tmp / name, "w", format=tarfile.USTAR_FORMAT) as tar:
                for within, uid in enumerate(chunk):
                    key = f"{shard_no:06d}{within:0{digits}d}"
                    src, source_key, members = found[uid]
                    f = handles.get(src) or handles.setdefault(src, open(src, "rb"))
                    ids = {"key": key, "source_key": source_key, "uid": uid}
                    if not any(ext == "json" for ext, _, _ in members):
                        add_tar_member(tar, f"{key}.json", json.dumps(ids).encode())
                    for ext, offset, size in members:
                        f.seek(offset)
                        data = f.read(size)
                        if ext == "json":
                            data = _rekey(data, ids)
                        add_tar_member(tar, f"{key}.{ext}", data)
                    for column, value in (("key", key), ("uid", uid), ("source_shard", Path(src).name),
                                          ("source_key", source_key)):
                        key_map[column].append(value)
            sizes[name] = len(chunk)
        (tmp / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
        pq.write_table(pa.table(key_map, schema=pa.schema([(c, pa.string()) for c in key_map])),
                       tmp / "key_map.parquet")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for f in handles.values():
            f.close()
    publish_dir(tmp, final, overwrite)
    return {"out_dir": str(final), "shards": list(sizes), "sizes": sizes, "n_samples": len(order),
            "n_unique": len(copies)}


def _rekey(data: bytes, ids: dict) -> bytes:
    """The json with "key" (the new key: img2dataset keeps key and file name equal), "source_key" and
    "uid" set; a json that is not an object is left as it was."""
    try:
        meta = json.loads(data)
    except ValueError:
        return data
    if not isinstance(meta, dict):
        return data
    return json.dumps({**meta, **ids}).encode()
