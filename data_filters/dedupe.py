"""One sample per image: the labelled pool `select` draws from, with duplicate images dropped.

    aotrain filter select labels.parquet --size 20000 --nmi 0.1 --out subset            # dedupes by default
    aotrain filter select labels.parquet --size 20000 --nmi 0.1 --out subset --no-dedupe

Web pools list the same picture more than once (one URL under two captions, one image behind two
URLs); a subset holding both copies trains on that image twice and counts its pairs twice. A
duplicate group is the labelled rows sharing an `image_hash` (labels.parquet, data_filters/label.py:
img2dataset's sha256, or a hash of the shard's image bytes). The row with the smallest uid is kept,
whatever order the files were read in; rows without a hash are kept. The manifest records
`dedupe` and `duplicates_dropped`, and `pool_counts` (what labelling read, from the labels file).
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from .label import load_caption_keys, load_labels, load_pool_counts


def load_image_hashes(path) -> np.ndarray | None:
    """image_hash per row (load_labels' order; None where unknown), or None when the file has none."""
    if "image_hash" not in pq.read_schema(path).names:
        return None  # a labels file written before the column
    column = pq.read_table(path, columns=["image_hash"]).column("image_hash")
    if column.null_count == len(column):
        return None  # a caption table without images or hashes: nothing to compare
    return np.asarray(column.to_pylist(), dtype=object)


def first_of_each_image(uids: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """bool[N]: True for rows without a hash and for the smallest-uid row of each hash."""
    keep = np.array([h is None for h in hashes], dtype=bool)
    rows = np.flatnonzero(~keep)
    if rows.size:
        h = hashes[rows].astype(str)
        order = rows[np.lexsort((uids[rows], h))]  # by hash, then uid
        sorted_h = hashes[order].astype(str)
        first = np.ones(order.size, dtype=bool)
        first[1:] = sorted_h[1:] != sorted_h[:-1]
        keep[order[first]] = True
    return keep


def _reindex(names: list[str], idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Indices into the names still used (a dropped row may have been a name's only one)."""
    kept, new_idx = np.unique(np.asarray(names, dtype=str)[idx], return_inverse=True)
    return new_idx, kept.tolist()


def dropped_line(info: dict) -> str | None:
    """'13 labelled samples dropped as duplicate images (one sample per image)', or None when none were."""
    n = info["duplicates_dropped"]
    return f"{n:,} labelled samples dropped as duplicate images (one sample per image)" if n else None


def load_selection_pool(labels, dedupe: bool | None = None):
    """(pool tuple for select_many, caption keys or None, manifest additions).

    The additions: "dedupe", "duplicates_dropped" and "pool_counts" (what labelling read: captions,
    malformed rows, failed downloads, skipped samples). dedupe=None: on when the labels carry image
    hashes; dedupe=True without hashes -> ValueError.
    """
    pool = load_labels(labels)
    read = {"pool_counts": load_pool_counts(labels)}
    keys = load_caption_keys(labels)
    hashes = load_image_hashes(labels)
    if dedupe is None:
        dedupe = hashes is not None
    if not dedupe:
        return pool, keys, {"dedupe": False, "duplicates_dropped": 0, **read}
    if hashes is None:
        raise ValueError(f"{labels} has no image hashes (label the pool again with this version of "
                         "`aotrain filter label`), so duplicates cannot be found; use --no-dedupe")
    uids, attr_idx, obj_idx, attributes, objects = pool
    keep = first_of_each_image(uids, hashes)
    dropped = int((~keep).sum())
    if dropped:
        attr_idx, attributes = _reindex(attributes, attr_idx[keep])
        obj_idx, objects = _reindex(objects, obj_idx[keep])
        pool = (uids[keep], attr_idx, obj_idx, attributes, objects)
        keys = keys and tuple(k[keep] for k in keys)
    return pool, keys, {"dedupe": True, "duplicates_dropped": dropped, **read}
