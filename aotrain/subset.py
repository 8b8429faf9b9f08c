"""The selection stage between a toy world and training: label its pool, select a subset, reshard it.

    captions (world pool) -> labels.parquet -> subset (size, NMI target, fixed marginals) -> shards

All of it is data_filters' code (`aotrain filter label|select|reshard` run the same functions).
Each output is keyed by its inputs and kept inside the world folder, so a second run with the same
settings reuses it and a changed target recomputes only the subset and its shards:

    <world>/labels.parquet
    <world>/subsets/nmi<target>-n<size>-<hash>/subset/{subset.npy,subset.parquet,manifest.json}
    <world>/subsets/nmi<target>-n<size>-<hash>/shards/{shard-*.tar,sizes.json}
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from data_filters.label import label_captions, load_labels
from data_filters.reshard import reshard
from data_filters.select import select_subset, write_subset


def _say(message: str) -> None:
    print(f"subset: {message}", file=sys.stderr, flush=True)


def subset_folder(world: Path, spec: dict) -> Path:
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return world / "subsets" / f"nmi{spec['nmi']:g}-n{spec['size']}-{key}"


def prepare_subset(world: Path, spec: dict, samples_per_shard: int) -> tuple[Path, dict]:
    """(shards folder, manifest) of the subset `spec` = {size, nmi, seed, tol} of the world's pool.

    Raises data_filters.select.InfeasibleTarget (a ValueError) with the feasible NMI range.
    """
    labels = world / "labels.parquet"
    if not labels.exists():
        _say(f"labelling the pool's captions -> {labels}")
        label_captions([world / "pool"], f"world:{world}", labels)
    folder = subset_folder(world, spec)
    manifest_path = folder / "subset" / "manifest.json"
    if not manifest_path.exists():
        _say(f"selecting {spec['size']:,} samples at NMI {spec['nmi']:g} -> {folder / 'subset'}")
        chosen = select_subset(*load_labels(labels), size=spec["size"], nmi_target=spec["nmi"],
                               seed=spec["seed"], tol=spec["tol"])
        write_subset(chosen, folder / "subset", source=str(labels))
    shards = folder / "shards"
    if not (shards / "sizes.json").exists():
        _say(f"resharding the subset -> {shards}")
        uids = np.load(folder / "subset" / "subset.npy")
        reshard(sorted(str(p) for p in (world / "pool").glob("*.tar")), uids, shards,
                samples_per_shard=samples_per_shard)
    return shards, json.loads(manifest_path.read_text())
