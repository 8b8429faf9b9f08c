"""One sample per image: the labelled pool `select` draws from, with duplicate images dropped.

    aotrain filter select labels.parquet --size 20000 --nmi 0.1 --out subset            # dedupes by default
    aotrain filter select labels.parquet --size 20000 --nmi 0.1 --out subset --no-dedupe

Web pools list the same picture more than once (one URL under two captions, one image behind two
URLs); a subset holding both copies trains on that image twice and counts its pairs twice. A
duplicate group is the labelled rows sharing an `image_hash` (labels.parquet, data_filters/label.py:
img2dataset's sha256, or a hash of the shard's image bytes). The row with the smallest uid is kept,
whatever order the files were read in; rows without a hash are kept. Hashes are compared as 128-bit
keys computed from their bytes batch by batch (no Python string per row; see string_keys). The
manifest records `dedupe` and `duplicates_dropped`, and `pool_counts` (what labelling read).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .label import load_caption_keys, load_labels, load_pool_counts
from .labels_file import batches, index_dtype, release_arrow_memory

# Two rows of odd 64-bit multipliers, one per byte (or 8-byte word) position: an image hash string's
# key is two independent sums of its bytes times these. 128 bits: the chance that two of 160M
# distinct image hashes share a key is about 1e-22, so equal keys are taken as equal hashes.
MIX = np.random.default_rng(18).integers(0, 2**63, size=(2, 64), dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def load_image_keys(path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(key_a, key_b, has_hash): per row of load_labels' order, the two uint64 halves of the image hash's
    128-bit key and whether it has one; None when the file has no hashes. Read batch by batch."""
    if "image_hash" not in pq.read_schema(path).names:
        return None  # a labels file written before the column
    n = pq.read_metadata(path).num_rows
    key_a, key_b, has = np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint64), np.empty(n, dtype=bool)
    start = 0
    for batch in batches(path, ["image_hash"]):
        column, end = batch.column(0), start + batch.num_rows
        key_a[start:end], key_b[start:end] = string_keys(column)
        has[start:end] = column.is_valid().to_numpy(zero_copy_only=False)
        start = end
    release_arrow_memory()
    if not has.any():
        return None  # a caption table without images or hashes: nothing to compare
    return key_a, key_b, has


def string_keys(column: pa.Array) -> np.ndarray:
    """uint64 [2, N]: a 128-bit key per string, equal for equal strings (no Python string is made)."""
    column = column.cast(pa.binary())  # int32 offsets and the bytes, whatever the string type
    _, offsets, data = column.buffers()
    offsets = np.frombuffer(offsets, np.int32)[column.offset:column.offset + len(column) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    start, length = offsets[:-1], np.diff(offsets)
    keys = np.tile(length.astype(np.uint64), (2, 1))
    width = int(length.max(initial=0))
    if width and (length == width).all():  # one width (hex digests): the bytes form a block, 8 at a time
        block = np.pad(data[offsets[0]:offsets[-1]].reshape(-1, width), ((0, 0), (0, -width % 8)))
        words = block.view("<u8")
        for j in range(words.shape[1]):
            keys += words[:, j] * MIX[:, j % MIX.shape[1], None]
        return keys
    for j in range(width):  # one byte position at a time: memory O(rows), not O(bytes)
        live = np.flatnonzero(length > j)
        keys[:, live] += (data[start[live] + j].astype(np.uint64) + np.uint64(1)) * MIX[:, j % MIX.shape[1], None]
    return keys


def first_of_each_image(uid_order: np.ndarray, key_a: np.ndarray, key_b: np.ndarray, has: np.ndarray) -> np.ndarray:
    """bool[N]: True for rows without a hash and for the smallest-uid row of each image hash (key_a, key_b).

    Rows whose key_a no other row shares are single images; only the rest are sorted by the whole key
    and the uid, so the memory this needs beyond the keys is one int64 per row, then per shared row.
    """
    order = np.argsort(key_a)
    sorted_a = key_a[order]
    same = sorted_a[1:] == sorted_a[:-1]  # neighbours in key order share key_a
    del sorted_a
    shared = np.zeros(len(key_a), dtype=bool)
    shared[order[1:][same]] = True
    shared[order[:-1][same]] = True
    del order, same
    rows = np.flatnonzero(has & shared)
    keep = ~has | ~shared
    rows = rows[np.lexsort((uid_order[rows], key_b[rows], key_a[rows]))]  # by key, then uid
    a, b = key_a[rows], key_b[rows]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    keep[rows[first]] = True
    return keep


def _reindex(names: list[str], idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Indices into the names still used (a dropped row may have been a name's only one); names stay sorted."""
    used = np.bincount(idx, minlength=len(names)) > 0
    new = (np.cumsum(used) - 1).astype(idx.dtype)
    return new[idx], [name for name, u in zip(names, used) if u]


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
    hashes = None if dedupe is False else load_image_keys(labels)
    if dedupe is None:
        dedupe = hashes is not None
    if not dedupe:
        return pool, keys, {"dedupe": False, "duplicates_dropped": 0, **read}
    if hashes is None:
        raise ValueError(f"{labels} has no image hashes (label the pool again with this version of "
                         "`aotrain filter label`), so duplicates cannot be found; use --no-dedupe")
    uids, attr_idx, obj_idx, attributes, objects = pool
    keep = first_of_each_image(uids.order, *hashes)
    del hashes
    dropped = int((~keep).sum())
    if dropped:
        kept = np.flatnonzero(keep).astype(index_dtype(len(keep)))  # one array, shared by the lazy columns
        attr_idx, attributes = _reindex(attributes, attr_idx[kept])
        obj_idx, objects = _reindex(objects, obj_idx[kept])
        pool = (uids.select(kept), attr_idx, obj_idx, attributes, objects)
        keys = keys and tuple(k.select(kept) for k in keys)
    return pool, keys, {"dedupe": True, "duplicates_dropped": dropped, **read}
