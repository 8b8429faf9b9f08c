"""`aotrain filter label`: one row per labelled caption (uid, attribute, object): the pool `select` reads.

This module writes that file (label_captions) and reads it back (load_labels, load_caption_keys).

    aotrain filter label pool/ --vocab world:outputs/toyworld/toyworld-abc --out labels.parquet
    aotrain filter select labels.parquet --size 20000 --nmi 0.1 0.3 0.5 --out subsets

A caption is labelled when the parser finds exactly one distinct pair in it (CaptionParser.label);
captions with no pair or several pairs are counted and left out. The parquet file is written to a
temporary name and renamed at the end, so a failed run leaves nothing.

Two int64 columns carry caption diversity to `select` without storing the captions:
caption_hash (key of the caption text) and template_hash (key of its template, the pair's words
masked); see data_filters.diversity. Labels files written before them lack the two columns:
load_labels reads them as before and load_caption_keys returns None. image_hash (sha256 hex: the
pool table's "sha256", img2dataset's, or of a shard sample's image bytes; null when the source has
neither) lets `select` drop duplicate images (data_filters/dedupe.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .command import run_command
from .diversity import TemplateMasker, caption_key
from .files import atomic_path, check_output
from .parse import CaptionParser
from .pools import open_pool, say
from .sources import add_caption_arguments, iter_captions
from .vocab import load_vocabulary

PROG = "aotrain filter label"
SCHEMA = pa.schema([("uid", pa.string()), ("attribute", pa.string()), ("object", pa.string()),
                    ("caption_hash", pa.int64()), ("template_hash", pa.int64()), ("image_hash", pa.string())])
KEY_COLUMNS = ("caption_hash", "template_hash")
POOL_COUNTS = "aotrain.pool_counts"  # parquet key-value metadata
BATCH = 65536


def label_captions(sources, vocab_spec: str, out: Path, window: int = 2, uid_column: str | None = None,
                   caption_column: str = "caption") -> dict:
    """Stream captions, write labels to `out` (parquet); returns counts of what was read and kept."""
    parser = CaptionParser(load_vocabulary(vocab_spec), window)
    template = TemplateMasker(parser.vocab).template
    stream = iter_captions(sources, uid_column=uid_column, caption_column=caption_column, with_hashes=True)
    n = labelled = 0
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    with atomic_path(out, ".tmp") as tmp:
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            for uid, caption, image_hash in stream:
                n += 1
                pair = parser.label(caption)
                if pair is None:
                    continue
                labelled += 1
                rows["uid"].append(str(uid))
                rows["attribute"].append(pair[0])
                rows["object"].append(pair[1])
                rows["caption_hash"].append(caption_key(caption))
                rows["template_hash"].append(caption_key(template(caption, *pair)))
                rows["image_hash"].append(image_hash)
                if len(rows["uid"]) == BATCH:
                    writer.write_table(pa.table(rows, schema=SCHEMA))
                    rows = {k: [] for k in rows}
            if rows["uid"]:
                writer.write_table(pa.table(rows, schema=SCHEMA))
            counts = {"captions": n, "labelled": labelled, "malformed": stream.malformed,
                      "not_downloaded": stream.not_downloaded, "pool_kind": stream.pool.kind,
                      "skipped": dict(stream.skipped), "truncated_shards": sorted(set(stream.truncated))}
            # What was read, in the file itself: `select` copies it into each subset's manifest.
            writer.add_key_value_metadata({POOL_COUNTS: json.dumps(counts)})
        if labelled == 0:
            raise ValueError(f"no caption with exactly one attribute-object pair among {n:,} "
                             f"({stream.malformed:,} malformed rows): check --vocab and --caption-column")
    return {**counts, "out": str(out)}


def load_pool_counts(path) -> dict:
    """What `label_captions` read to write this labels file (captions, malformed, not_downloaded,
    skipped, ...); {} for a labels file written before it was recorded, or by another tool."""
    raw = (pq.read_metadata(path).metadata or {}).get(POOL_COUNTS.encode())
    return json.loads(raw) if raw else {}


def skipped_line(skipped: dict, truncated: list) -> str:
    """'skipped samples: 1 bad_image, 1 no_caption; truncated shards: shard-000003.tar' (what a shard-reading
    stage passed over by the sample rule, data_filters/samples.py)."""
    parts = [f"skipped samples: {', '.join(f'{v:,} {k}' for k, v in sorted(skipped.items()))}"] if skipped else []
    if truncated:
        parts.append(f"truncated shards (samples before the damage kept): {', '.join(Path(t).name for t in truncated)}")
    return "; ".join(parts)


def load_labels(path):
    """(uids, attr_idx, obj_idx, attributes, objects) from a labels parquet; ValueError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise ValueError(f"cannot read {path} as parquet: {e}") from None
    missing = [c for c in ("uid", "attribute", "object") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise ValueError(f"{path} has no rows: the pool is empty")
    cols = {c: table.column(c).to_pylist() for c in ("uid", "attribute", "object")}
    if any(v is None for col in cols.values() for v in col):
        raise ValueError(f"{path} has empty (null) uid, attribute or object values")
    uids = np.asarray(cols["uid"])
    if uids.dtype.kind not in "iuU":
        uids = np.asarray([str(u) for u in cols["uid"]])
    attributes, attr_idx = np.unique(np.asarray(cols["attribute"], dtype=str), return_inverse=True)
    objects, obj_idx = np.unique(np.asarray(cols["object"], dtype=str), return_inverse=True)
    return uids, attr_idx, obj_idx, attributes.tolist(), objects.tolist()


def load_caption_keys(path) -> tuple[np.ndarray, np.ndarray] | None:
    """(caption_hash, template_hash) int64 arrays in load_labels' row order, or None when the file lacks them."""
    names = pq.read_schema(path).names
    if not all(c in names for c in KEY_COLUMNS):
        return None  # a labels file from before the key columns: no caption diversity, nothing wrong
    table = pq.read_table(path, columns=list(KEY_COLUMNS))
    if any(table.column(c).null_count for c in KEY_COLUMNS):
        return None
    return tuple(table.column(c).to_numpy().astype(np.int64) for c in KEY_COLUMNS)


def label_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                epilog="vocabulary specs: builtin | benchmark:DIR | world:PATH | FILE.yaml|.txt")
    add_caption_arguments(p)
    p.add_argument("--vocab", default="builtin", metavar="SPEC", help="vocabulary (default: builtin)")
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="labels file to write (must not exist "
                   "unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return run_command(p, _label, argv)


def _label(args) -> int:
    check_output(Path(args.out), args.overwrite, kind="file")
    pool = open_pool(args.sources, args.uid_column)
    say(pool)
    done = label_captions(pool, args.vocab, Path(args.out), args.window, args.uid_column, args.caption_column)
    print(f"captions {done['captions']:,}  labelled {done['labelled']:,} "
          f"({done['labelled'] / done['captions']:.1%})  malformed {done['malformed']:,}"
          + (f"  failed downloads {done['not_downloaded']:,}" if done["not_downloaded"] else "") + f"  -> {done['out']}")
    if done["skipped"] or done["truncated_shards"]:
        print(skipped_line(done["skipped"], done["truncated_shards"]))
    return 0


if __name__ == "__main__":
    sys.exit(label_main())
