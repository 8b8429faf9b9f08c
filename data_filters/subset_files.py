"""A planned table made real: which pool rows a subset takes, its manifest, and its files.

    sub = build_subset(uids, attr_idx, obj_idx, attributes, objects, table, seed, "arithmetic", planned)
    write_subset(sub, "subsets/nmi-0.05", source="labels.parquet")     # subset.npy, .parquet, manifest.json
    write_subsets([sub_a, sub_b], "subsets/sweep")                      # nmi-<target>/ each, one rename

Rows: for pair (a, o) the first T[a, o] of that pair's uids (sorted by uid, then permuted by numpy
default_rng([seed, a, o])); with repeats the permutation is cycled. Per-pair streams make subsets
of different targets share as many uids as their tables allow.

uids is a numpy array or a LabelUids (label.load_labels, for a pool of any size): rows are ordered by
its uid ranks, and only the chosen rows' uids are read from the labels file, when the subset is built.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_filters.diversity import caption_diversity, pair_diversity
from data_filters.files import publish_dir, temp_dir_for
from data_filters.labels_file import LabelUids, index_dtype
from data_filters.nmi import joint_stats


@dataclass
class Subset:
    """One selected subset; `uids` sorted, attr_idx/obj_idx aligned with it."""

    uids: np.ndarray
    attr_idx: np.ndarray
    obj_idx: np.ndarray
    attributes: list
    objects: list
    table: np.ndarray  # [A, O] integer pair counts of the subset
    stats: dict  # joint_stats(table)
    manifest: dict = field(default_factory=dict)
    singles: pa.Table | None = None  # single-side rows added (data_filters/singles.py): uid, attribute, object
    all_uids: np.ndarray | None = None  # sorted uids of the pairs and the single-side rows together


def uid_order(uids) -> np.ndarray:
    """An array that sorts like the uids: a LabelUids' ranks (label.load_labels), or a uid array itself."""
    return uids.order if isinstance(uids, LabelUids) else uids


def pair_index(attr_idx, obj_idx, shape) -> np.ndarray:
    """Flat pair index a * n_objects + o per row of an [A, O] table: int32 below 2**31 cells, else int64."""
    flat = np.asarray(attr_idx).astype(index_dtype(shape[0] * shape[1]))
    flat *= shape[1]
    flat += obj_idx
    return flat


def pick_rows(uids, attr_idx, obj_idx, table, seed: int) -> np.ndarray:
    """Pool row indices realising `table`: per pair, a seeded permutation of its uid-sorted rows."""
    n_o = table.shape[1]
    pair = pair_index(attr_idx, obj_idx, table.shape)
    starts = np.concatenate([[0], np.cumsum(np.bincount(pair, minlength=table.size))])  # each pair's first row
    order = np.lexsort((uid_order(uids), pair))  # rows grouped by pair, uid-sorted inside each pair
    del pair
    chosen = []
    for flat in np.flatnonzero(table.ravel()):
        a, o = divmod(int(flat), n_o)
        rows = order[starts[flat]:starts[flat + 1]]
        rows = rows[np.random.default_rng([seed, a, o]).permutation(len(rows))]
        want = int(table[a, o])
        reps = -(-want // len(rows))  # repeats (upsampling) cycle through the same permutation
        chosen.append(np.tile(rows, reps)[:want])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def _marginal(counts, names) -> dict:
    total = counts.sum()
    return {str(n): float(v / total) for n, v in zip(names, counts)}


def _diversity(table, counts, rows, caption_keys) -> dict:
    """The manifest's "diversity": pair measures, plus caption measures when the pool has caption keys."""
    out = pair_diversity(table, counts)
    if caption_keys is not None:
        out.update(caption_diversity(caption_keys[0].take(rows), caption_keys[1].take(rows)))
    return out


def build_subset(uids, attr_idx, obj_idx, attributes, objects, table, seed: int, normaliser: str, planned: dict,
                 counts=None, caption_keys=None) -> Subset:
    """The Subset realising `table`: its pool rows (sorted by uid) and manifest. `planned` is the
    manifest's record of how the table was planned (nmi_target, tol, feasible ranges, mix_t, ...)."""
    rows = pick_rows(uids, attr_idx, obj_idx, table, seed)
    rows = rows[np.argsort(uid_order(uids)[rows], kind="stable")]
    sub_uids = uids.take(rows)  # a LabelUids reads only these rows' uids from the labels file
    stats = joint_stats(table, normaliser)
    manifest = {
        **uid_facts(sub_uids),
        "nmi": stats["nmi"],
        "normaliser": normaliser,
        "mi": stats["mi"],
        "h_attribute": stats["h_attribute"],
        "h_object": stats["h_object"],
        "h_joint": stats["h_joint"],
        "distinct_pairs": stats["distinct_pairs"],
        "attribute_marginal": _marginal(table.sum(1), attributes),
        "object_marginal": _marginal(table.sum(0), objects),
        "pair_counts": {"attributes": [str(a) for a in attributes], "objects": [str(o) for o in objects],
                        "counts": table.tolist()},
        "seed": int(seed),
        "pool_size": int(len(uids)),
        "source": None,
        "diversity": _diversity(table, counts, rows, caption_keys),
        **planned,
    }
    return Subset(sub_uids, attr_idx[rows], obj_idx[rows], list(attributes), list(objects), table, stats, manifest)


def uid_facts(uids: np.ndarray) -> dict:
    """The manifest's facts about a subset's (sorted) uids: size, unique_uids, uid_checksum, uid_dtype."""
    return {"size": int(len(uids)), "unique_uids": int(len(np.unique(uids))),
            "uid_checksum": hashlib.sha256(np.ascontiguousarray(uids).tobytes()).hexdigest(),
            "uid_dtype": str(uids.dtype)}


def _write_files(sub: Subset, folder: Path, source: str) -> None:
    np.save(folder / "subset.npy", sub.uids if sub.all_uids is None else sub.all_uids, allow_pickle=False)
    table = pa.table({
        "uid": pa.array(sub.uids.tolist()),
        "attribute": pa.array([sub.attributes[i] for i in sub.attr_idx], pa.string()),
        "object": pa.array([sub.objects[i] for i in sub.obj_idx], pa.string()),
    })
    if sub.singles is not None:  # one side null; the rows sorted by uid like the pairs' alone
        table = pa.concat_tables([table, sub.singles.cast(table.schema)])
        table = table.take(pc.sort_indices(table, [("uid", "ascending")]))
    pq.write_table(table, folder / "subset.parquet")
    manifest = {**sub.manifest, "source": str(source)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def write_subset(sub: Subset, out_dir, source: str = "", overwrite: bool = False) -> dict:
    """Write subset.npy, subset.parquet and manifest.json into `out_dir` atomically; returns their paths."""
    final = Path(out_dir)
    tmp = temp_dir_for(final)
    try:
        _write_files(sub, tmp, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final, overwrite)
    return {k: final / f for k, f in (("npy", "subset.npy"), ("parquet", "subset.parquet"), ("manifest", "manifest.json"))}


def target_dirname(target: float) -> str:
    """Folder name for one target of a sweep, e.g. nmi-0.1."""
    return f"nmi-{float(target):g}"


def write_subsets(subs, out_dir, source: str = "", overwrite: bool = False) -> dict:
    """Write a sweep as out_dir/nmi-<target>/... in one atomic rename; returns {target: folder}."""
    final = Path(out_dir)
    names = [target_dirname(s.manifest["nmi_target"]) for s in subs]
    if len(set(names)) != len(names):
        raise ValueError(f"NMI targets must be distinct, got {names}")
    tmp = temp_dir_for(final)
    try:
        for sub, name in zip(subs, names):
            (tmp / name).mkdir()
            _write_files(sub, tmp / name, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final, overwrite)
    return {s.manifest["nmi_target"]: final / n for s, n in zip(subs, names)}
