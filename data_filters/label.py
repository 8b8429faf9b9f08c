"""`aotrain filter label`: one row per labelled caption (uid, attribute, object): the pool `select` reads.

This module writes that file (label_captions) and reads it back (load_labels, load_caption_keys).

    aotrain filter label pool/ --vocab world:outputs/toyworld/toyworld-abc --out labels.parquet
    aotrain filter select labels.parquet --size 20000 --nmi 0.1 0.3 0.5 --out subsets

A caption is labelled when the parser finds exactly one distinct pair in it (CaptionParser.label);
captions with no pair or several pairs are counted and left out, except those naming one side alone
("a photo of a star"): they go to labels.singles.parquet beside it (data_filters/singles.py). Captions are parsed in batches
(data_filters/batch_parse.py) by one process per core (data_filters/labelling.py), with a progress bar
of captions/s. The parquet file is written to a temporary name and renamed at the end, so a failed
run leaves nothing.

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
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from .batch_parse import BATCH
from .command import run_command
from .files import atomic_path, check_output
from .labels_file import LabelColumn, null_count, read_labels
from .labelling import SCHEMA, label_parts, merge_counts
from .singles import SCHEMA as SINGLES_SCHEMA
from .singles import singles_path
from .pools import Pool, open_pool, say
from .sources import add_caption_arguments

PROG = "aotrain filter label"
KEY_COLUMNS = ("caption_hash", "template_hash")
POOL_COUNTS = "aotrain.pool_counts"  # parquet key-value metadata


def label_captions(sources, vocab_spec: str, out: Path, window: int = 2, uid_column: str | None = None,
                   caption_column: str = "caption", workers: int | None = None, progress: bool = True) -> dict:
    """Label every caption (on every core: data_filters/labelling.py), write labels to `out` (parquet)
    and the single-side captions beside it (data_filters/singles.py); returns counts of what was read
    and kept. progress: a bar with captions/s on stderr (when a terminal)."""
    pool = sources if isinstance(sources, Pool) else open_pool(sources, uid_column)
    total: dict = {}
    labelled, single = 0, Counter()
    with atomic_path(out, ".tmp") as tmp, atomic_path(singles_path(out), ".tmp") as tmp_singles:
        with pq.ParquetWriter(tmp, SCHEMA) as writer, pq.ParquetWriter(tmp_singles, SINGLES_SCHEMA) as singles, \
                tqdm(desc="label", unit=" captions", unit_scale=True, disable=None if progress else True) as bar:
            for rows, one_side, counts in label_parts(pool, vocab_spec, window, uid_column, caption_column, workers):
                if rows.num_rows:
                    writer.write_table(rows, row_group_size=BATCH)
                if one_side.num_rows:
                    singles.write_table(one_side, row_group_size=BATCH)
                    single["object_only"] += one_side.column("attribute").null_count
                    single["attribute_only"] += one_side.column("object").null_count
                labelled += rows.num_rows
                merge_counts(total, counts)
                bar.update(counts["captions"])
            counts = {"captions": total.get("captions", 0), "labelled": labelled,
                      "object_only": single["object_only"], "attribute_only": single["attribute_only"],
                      "malformed": total.get("malformed", 0), "not_downloaded": total.get("not_downloaded", 0),
                      "pool_kind": pool.kind, "skipped": total.get("skipped", {}),
                      "truncated_shards": sorted(set(total.get("truncated", [])))}
            # What was read, in the file itself: `select` copies it into each subset's manifest.
            writer.add_key_value_metadata({POOL_COUNTS: json.dumps(counts)})
        if labelled == 0:
            raise ValueError(f"no caption with exactly one attribute-object pair among {counts['captions']:,} "
                             f"({counts['malformed']:,} malformed rows): check --vocab and --caption-column")
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
    """(uids, attr_idx, obj_idx, attributes, objects) from a labels parquet; ValueError if unusable.

    In bounded memory (data_filters/labels_file.py): uids is a LabelUids (ranks in memory, uid strings
    read for the rows asked), attr_idx/obj_idx are int32 codes into the sorted names.
    """
    return read_labels(path)


def load_caption_keys(path) -> tuple[LabelColumn, LabelColumn] | None:
    """(caption_hash, template_hash) in load_labels' row order, read only for the rows asked
    (column.take(rows) -> int64), or None when the file lacks them or has nulls in them."""
    names = pq.read_schema(path).names
    if not all(c in names for c in KEY_COLUMNS):
        return None  # a labels file from before the key columns: no caption diversity, nothing wrong
    if null_count(path, KEY_COLUMNS):
        return None
    rows = pq.read_metadata(path).num_rows
    return tuple(LabelColumn(path, c, rows) for c in KEY_COLUMNS)


def label_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                epilog="vocabulary specs: builtin | benchmark:DIR | world:PATH | FILE.yaml|.txt")
    add_caption_arguments(p)
    p.add_argument("--vocab", default="builtin", metavar="SPEC", help="vocabulary (default: builtin)")
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="labels file to write (must not exist "
                   "unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes (default: every core, or one for a pool under 16 MiB of captions)")
    return run_command(p, _label, argv)


def _label(args) -> int:
    check_output(Path(args.out), args.overwrite, kind="file")
    pool = open_pool(args.sources, args.uid_column)
    say(pool)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    done = label_captions(pool, args.vocab, Path(args.out), args.window, args.uid_column, args.caption_column,
                          args.workers)
    print(f"captions {done['captions']:,}  labelled {done['labelled']:,} "
          f"({done['labelled'] / done['captions']:.1%})  object-only {done['object_only']:,}  "
          f"attribute-only {done['attribute_only']:,}  malformed {done['malformed']:,}"
          + (f"  failed downloads {done['not_downloaded']:,}" if done["not_downloaded"] else "") + f"  -> {done['out']}")
    if done["skipped"] or done["truncated_shards"]:
        print(skipped_line(done["skipped"], done["truncated_shards"]))
    return 0


if __name__ == "__main__":
    sys.exit(label_main())
