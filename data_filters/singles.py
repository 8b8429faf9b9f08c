"""Single-side captions: a caption that names one object ("a photo of a star") or one attribute
("something red") and no pair. They are kept apart from the pairs, so they never move a subset's NMI.

    aotrain filter label pool/ --vocab builtin --out labels.parquet     # also writes labels.singles.parquet
    aotrain filter select labels.parquet --size 20000 --nmi 0.1 0.5 --single-share pool --out subsets

    from data_filters.singles import load_singles, single_sizes, add_singles
    singles = load_singles("labels.parquet")                  # None: no single-side rows beside it
    pair_size, wanted = single_sizes(20000, "pool", singles, pool_pairs=len(uids))
    subs = [add_singles(sub, singles, wanted, seed=0) for sub in select_many(..., size=pair_size)]

Web captions often name an object alone; a CLIP trained only on pair captions never sees one, which
handicaps it against a supervised twin read by object. So `aotrain filter label` writes every
single-side caption to a second file beside the labels file, and `select` adds them to each subset:
- How many: `share` of the subset's size ("pool": the pool's own share of single-side captions among
  everything labelled; or a number in [0, 1)), split between object-only and attribute-only as in
  the pool. The pairs fill the rest, chosen exactly as without single-side captions, so the
  subset's pair NMI, marginals and distinct pairs are those of its pair captions alone.
- Which: per object (per attribute), a count proportional to the pool's single-side rows of that
  name (largest remainder), the first ones of a seeded permutation of its uid-sorted rows (numpy
  default_rng([seed, SALT, side, name])). They depend on the size, share and seed only, so
  subsets at different NMI targets of one size and seed hold the same single-side rows.
Duplicate images are not dropped among single-side rows (dedupe covers the pairs).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .labels_file import LabelUids, read_labels, reading
from .plan import InfeasibleTarget
from .subset_files import uid_facts
from .transport import largest_remainder

SCHEMA = pa.schema([("uid", pa.string()), ("attribute", pa.string()), ("object", pa.string()),
                    ("image_hash", pa.string())])
SIDES = ("object_only", "attribute_only")
SALT = 0x51D6  # keeps these permutation streams apart from the pairs' [seed, a, o]


def singles_path(labels) -> Path:
    """The single-side file beside a labels file: labels.parquet -> labels.singles.parquet."""
    labels = Path(labels)
    return labels.with_name(f"{labels.stem}.singles{labels.suffix or '.parquet'}")


@dataclass
class Singles:
    """The single-side rows of a pool: uids, and per row the name it names (the other code -1)."""

    uids: LabelUids
    attr_idx: np.ndarray  # int32 [N]: into attributes, -1 on object-only rows
    obj_idx: np.ndarray  # int32 [N]: into objects, -1 on attribute-only rows
    attributes: list
    objects: list

    def count(self, side: str) -> int:
        return int(((self.attr_idx < 0) if side == "object_only" else (self.obj_idx < 0)).sum())


def load_singles(labels) -> Singles | None:
    """The single-side rows written beside `labels`, or None (no such file, or no rows in it)."""
    path = singles_path(labels)
    if not path.is_file():
        return None
    with reading(path):
        if pq.read_metadata(path).num_rows == 0:
            return None
    return Singles(*read_labels(path, single_side=True))


def check_share(share) -> str | float:
    """`share` checked: "pool" or a number in [0, 1); ValueError otherwise."""
    if share == "pool":
        return share
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
        raise ValueError(f"single-side share must be 'pool' or a number in [0, 1), got {share!r}")
    return float(share)


def single_sizes(size: int, share, singles: Singles | None, pool_pairs: int) -> tuple[int, dict]:
    """(pair size, {object_only: n, attribute_only: n}) of a subset of `size`; ValueError when the
    pool has too few single-side captions for an explicit share."""
    share = check_share(share)
    have = {side: singles.count(side) if singles is not None else 0 for side in SIDES}
    total = sum(have.values())
    if share == "pool":
        share = total / (total + pool_pairs) if total else 0.0
    n = int(round(share * size))
    if n and not total:
        raise ValueError(f"a single-side share of {share:g} needs single-side captions, and this pool has none "
                         "(label it again with this version of `aotrain filter label`), or set the share to 0")
    if n > total:
        raise ValueError(f"a single-side share of {share:g} at size {size:,} needs {n:,} single-side captions; "
                         f"the pool has {total:,}")
    split = largest_remainder(np.array([have[s] for s in SIDES]), n) if n else np.zeros(len(SIDES), int)
    return size - n, {side: int(k) for side, k in zip(SIDES, split)}


def pick_singles(singles: Singles, wanted: dict, seed: int) -> np.ndarray:
    """Rows of `singles` (sorted by uid): wanted[side] of each side, per name in proportion to the pool."""
    chosen = []
    for s, side in enumerate(SIDES):
        codes = singles.obj_idx if side == "object_only" else singles.attr_idx
        rows = np.flatnonzero((singles.attr_idx < 0) if side == "object_only" else (singles.obj_idx < 0))
        if not wanted[side]:
            continue
        names = codes[rows]
        have = np.bincount(names, minlength=int(names.max()) + 1)
        per_name = largest_remainder(have, wanted[side])
        rows = rows[np.lexsort((singles.uids.order[rows], names))]  # grouped by name, uid-sorted inside
        starts = np.concatenate([[0], np.cumsum(have)])
        for name in np.flatnonzero(per_name):
            group = rows[starts[name]:starts[name + 1]]
            order = np.random.default_rng([seed, SALT, s, int(name)]).permutation(len(group))
            chosen.append(group[order[:per_name[name]]])
    rows = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    return rows[np.argsort(singles.uids.order[rows], kind="stable")]


def add_singles(sub, singles: Singles | None, wanted: dict, seed: int):
    """`sub` (a data_filters.subset_files.Subset of pairs) with wanted[side] single-side rows added:
    its uids, rows table and manifest (size, uid checksum, "single_side") cover both; its pair
    table, NMI, marginals and diversity stay those of the pairs."""
    n = sum(wanted.values())
    manifest = {**sub.manifest, "single_side": {**wanted, "pair_size": int(len(sub.uids)),
                                                "share": n / (n + len(sub.uids)) if n else 0.0}}
    if not n:
        return replace(sub, manifest=manifest)
    rows = pick_singles(singles, wanted, seed)
    uids = singles.uids.take(rows)
    table = pa.table({"uid": pa.array(uids.tolist()),
                      "attribute": pa.array([singles.attributes[i] if i >= 0 else None
                                             for i in singles.attr_idx[rows].tolist()], pa.string()),
                      "object": pa.array([singles.objects[i] if i >= 0 else None
                                          for i in singles.obj_idx[rows].tolist()], pa.string())})
    pair_uids = sub.uids
    if pair_uids.dtype.kind != uids.dtype.kind:  # integer uids on one side: compare them as text
        pair_uids, uids = pair_uids.astype(str), uids.astype(str)
    every = np.sort(np.concatenate([pair_uids, uids]))
    manifest.update(uid_facts(every))
    return replace(sub, manifest=manifest, singles=table, all_uids=every)


def with_singles(labels, size: int, share, seed: int, pool_pairs: int, choose) -> list:
    """Subsets of `size` with the single-side rows beside `labels` at `share`: `choose(pair_size)`
    selects the pair subsets (select_many or select_subset, as a list), each then gets the same
    single-side rows (add_singles)."""
    singles = load_singles(labels)
    pair_size, wanted = single_sizes(size, share, singles, pool_pairs)
    try:
        chosen = choose(pair_size)
    except InfeasibleTarget as e:
        if pair_size == size:
            raise
        # the planner speaks of the pair captions: say how they relate to the size asked for
        raise InfeasibleTarget(f"{size:,} samples hold {size - pair_size:,} single-side captions, so the pairs "
                               f"are the other {pair_size:,}: {e}", e.largest_size) from None
    return [add_singles(sub, singles, wanted, seed) for sub in chosen]


def parse_share(text: str) -> str | float:
    """--single-share's value: "pool" or a number in [0, 1) (argparse type)."""
    try:
        value = text if text == "pool" else float(text)
    except ValueError:
        value = text  # not a number: check_share names what is accepted
    try:
        return check_share(value)
    except ValueError as e:
        raise ValueError(f"--single-share: {e}") from None
