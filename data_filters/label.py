"""`aotrain filter label`: one row per labelled caption (uid, attribute, object): the pool `select` reads.

    aotrain filter label pool/ --vocab world:outputs/toyworld/toyworld-abc --out labels.parquet
    aotrain filter select labels.parquet --size 20000 --nmi 0.1 0.3 0.5 --out subsets

A caption is labelled when the parser finds exactly one distinct pair in it (CaptionParser.label);
captions with no pair or several pairs are counted and left out. The parquet file is written to a
temporary name and renamed at the end, so a failed run leaves nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .parse import CaptionParser
from .sources import add_caption_arguments, iter_captions
from .vocab import load_vocabulary

PROG = "aotrain filter label"
SCHEMA = pa.schema([("uid", pa.string()), ("attribute", pa.string()), ("object", pa.string())])
BATCH = 65536


def label_captions(sources, vocab_spec: str, out: Path, window: int = 2, uid_column: str | None = None,
                   caption_column: str = "caption") -> dict:
    """Stream captions, write labels to `out` (parquet); returns counts of what was read and kept."""
    parser = CaptionParser(load_vocabulary(vocab_spec), window)
    stream = iter_captions(sources, uid_column=uid_column, caption_column=caption_column)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    n = labelled = 0
    rows: dict[str, list] = {"uid": [], "attribute": [], "object": []}
    try:
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            for uid, caption in stream:
                n += 1
                pair = parser.label(caption)
                if pair is None:
                    continue
                labelled += 1
                rows["uid"].append(str(uid))
                rows["attribute"].append(pair[0])
                rows["object"].append(pair[1])
                if len(rows["uid"]) == BATCH:
                    writer.write_table(pa.table(rows, schema=SCHEMA))
                    rows = {k: [] for k in rows}
            if rows["uid"]:
                writer.write_table(pa.table(rows, schema=SCHEMA))
        if labelled == 0:
            raise ValueError(f"no caption with exactly one attribute-object pair among {n:,} "
                             f"({stream.malformed:,} malformed rows): check --vocab and --caption-column")
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return {"captions": n, "labelled": labelled, "malformed": stream.malformed, "out": str(out)}


def label_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                epilog="vocabulary specs: builtin | benchmark:DIR | world:PATH | FILE.yaml|.txt")
    add_caption_arguments(p)
    p.add_argument("--vocab", default="builtin", metavar="SPEC", help="vocabulary (default: builtin)")
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="labels file to write")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if Path(args.out).exists():
            raise ValueError(f"output {args.out} already exists")
        done = label_captions(args.sources, args.vocab, Path(args.out), args.window, args.uid_column,
                              args.caption_column)
    except (FileNotFoundError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"captions {done['captions']:,}  labelled {done['labelled']:,} "
          f"({done['labelled'] / done['captions']:.1%})  malformed {done['malformed']:,}  -> {done['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(label_main())
