"""Label a pool's captions on every core: parts of the pool (data_filters.sources.caption_parts) are
parsed in worker processes with the batch parser, and their rows come back in reading order.

    python -c "from data_filters.labelling import label_parts; print(sum(t.num_rows for t, _ in label_parts('pool/', 'builtin')))"

label.py's `label_captions` writes what this yields to labels.parquet; the rows are the same, in the
same order, whatever the number of workers (tests/test_labelling.py checks 1 against 2).
A labelled row holds the caption's uid, its pair, caption and template keys (data_filters.diversity)
and its image hash; a single-side row (data_filters/singles.py) the uid, the one side the caption
names and the image hash; the per-part counts say what was read and left out.
"""
from __future__ import annotations

import itertools
import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from .batch_parse import BATCH, BatchParser
from .diversity import TemplateMasker, caption_key
from .parse import CaptionParser
from .pools import Pool, open_pool
from .singles import SCHEMA as SINGLES_SCHEMA
from .sources import CaptionStream, caption_parts
from .vocab import load_vocabulary
from .workers import PARALLEL_FROM_BYTES, tied_to_parent, usable_cpus

SCHEMA = pa.schema([("uid", pa.string()), ("attribute", pa.string()), ("object", pa.string()),
                    ("caption_hash", pa.int64()), ("template_hash", pa.int64()), ("image_hash", pa.string())])
ROWS_PER_PART = 1 << 18  # a parquet file larger than this is split by row groups into parts of about this size

_WORKER: dict = {}


def _start(vocab_spec: str, window: int, uid_column: str | None, caption_column: str) -> None:
    parser = CaptionParser(load_vocabulary(vocab_spec), window)
    _WORKER.update(parser=BatchParser(parser), template=TemplateMasker(parser.vocab).template,
                   uid_column=uid_column, caption_column=caption_column)


def _label_part(part: tuple[Path, tuple[int, ...] | None]) -> tuple[pa.Table, pa.Table, dict]:
    """(labelled rows, single-side rows, counts) of one part, in the worker's state (_start)."""
    path, row_groups = part
    parser, template = _WORKER["parser"], _WORKER["template"]
    vocab = parser.reference.vocab
    stream = CaptionStream(path, _WORKER["uid_column"], _WORKER["caption_column"], with_hashes=True,
                           row_groups=row_groups)
    rows, tables, singles = iter(stream), [], []
    n = 0
    while batch := list(itertools.islice(rows, BATCH)):
        n += len(batch)
        uids, captions, hashes = zip(*batch)
        attr, obj = parser.labels(list(captions))
        keep = np.flatnonzero((attr >= 0) & (obj >= 0)).tolist()
        names = [(vocab.attributes[a], vocab.objects[o]) for a, o in zip(attr[keep].tolist(), obj[keep].tolist())]
        tables.append(pa.table({
            "uid": [str(uids[i]) for i in keep],
            "attribute": [a for a, _ in names],
            "object": [o for _, o in names],
            "caption_hash": [caption_key(captions[i]) for i in keep],
            "template_hash": [caption_key(template(captions[i], a, o)) for i, (a, o) in zip(keep, names)],
            "image_hash": [hashes[i] for i in keep],
        }, schema=SCHEMA))
        one = np.flatnonzero((attr >= 0) != (obj >= 0)).tolist()
        singles.append(pa.table({
            "uid": [str(uids[i]) for i in one],
            "attribute": [vocab.attributes[a] if a >= 0 else None for a in attr[one].tolist()],
            "object": [vocab.objects[o] if o >= 0 else None for o in obj[one].tolist()],
            "image_hash": [hashes[i] for i in one],
        }, schema=SINGLES_SCHEMA))
    counts = {"captions": n, "malformed": stream.malformed, "not_downloaded": stream.not_downloaded,
              "skipped": dict(stream.skipped), "truncated": list(stream.truncated)}
    return (pa.concat_tables(tables) if tables else SCHEMA.empty_table(),
            pa.concat_tables(singles) if singles else SINGLES_SCHEMA.empty_table(), counts)


def label_parts(sources, vocab_spec: str, window: int = 2, uid_column: str | None = None,
                caption_column: str = "caption", workers: int | None = None):
    """Yield (labelled rows, single-side rows, counts) per part of the pool, in reading order.

    workers: processes (default: every core this process may use, or one for a pool under
    PARALLEL_FROM_BYTES of caption files).
    """
    pool = sources if isinstance(sources, Pool) else open_pool(sources, uid_column)
    parts = caption_parts(pool, ROWS_PER_PART)
    start = (vocab_spec, window, uid_column, caption_column)
    if workers is None:
        workers = usable_cpus() if _bytes(pool) >= PARALLEL_FROM_BYTES else 1
    workers = min(workers, len(parts))
    if workers < 2:
        _start(*start)
        yield from map(_label_part, parts)
        return
    load_vocabulary(vocab_spec)  # a bad spec fails here, in one line, before any process starts
    # spawn, not fork: the fit calls this with torch loaded, whose thread pools do not survive a fork.
    # tied_to_parent: workers of a killed run would otherwise live on.
    with multiprocessing.get_context("spawn").Pool(workers, **tied_to_parent(_start, start)) as processes:
        yield from processes.imap(_label_part, parts)


def _bytes(pool: Pool) -> int:
    return sum(path.stat().st_size for path in pool.caption_files)


def merge_counts(total: dict, part: dict) -> dict:
    """Add one part's counts into `total` (captions, malformed, not_downloaded, skipped, truncated)."""
    for key in ("captions", "malformed", "not_downloaded"):
        total[key] = total.get(key, 0) + part[key]
    total["skipped"] = dict(Counter(total.get("skipped", {})) + Counter(part["skipped"]))
    total["truncated"] = total.get("truncated", []) + part["truncated"]
    return total
