"""Which benchmark pairs occur in training data: `aotrain filter contamination` and `training_pairs`.

    aotrain filter contamination pool/ --benchmark ImageNet-AO-filtered/ --report contamination.json
    aotrain filter contamination pool/ --benchmark bench/ --keep-uids clean.npy
    aotrain filter reshard clean.npy --shards pool/ --out clean-pool/

The benchmark's pairs are its folder names ("<attribute> <object>") read by the same parser as the
captions, so "red" never matches "tired" and "sea lions" matches "sea lion". A caption is
contaminated when any pair the parser finds in it is a benchmark pair (captions with several
pairs included). `--keep-uids` writes the sorted uids of every other caption: the pool with the
benchmark's pairs removed.

`training_pairs(source, vocab)` reads the pairs a model was trained on from a subset's manifest.json,
a labels/subset parquet or a caption pool; `aotrain eval seen_from=...` uses it to mark benchmark
pairs as seen and to report them (evaluation/evaluate.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from .command import run_command
from .counts import count_captions
from .files import atomic_path, check_output, write_text_atomic
from .parse import CaptionParser
from .pools import open_pool, say
from .sources import add_caption_arguments, iter_captions
from .vocab import Vocabulary, class_folders, load_vocabulary, phrase, split_pair_name

PROG = "aotrain filter contamination"


def benchmark_pairs(folder, parser: CaptionParser) -> set[tuple[str, str]]:
    """The (attribute, object) pairs named by a benchmark's class folders, in the parser's canonical names."""
    names = {p.name for p in class_folders(folder)}
    pairs = {pair for name in names if (pair := split_pair_name(name, parser.vocab)) is not None}
    if not pairs:
        raise ValueError(f"no '<attribute> <object>' folders under {folder} that the vocabulary resolves")
    return pairs


def scan(sources, benchmark: str, vocab_spec: str | None = None, window: int = 2,
         uid_column: str | None = None, caption_column: str = "caption") -> tuple[Counter, list[str], dict]:
    """(contaminated pair -> captions, uids of clean captions, totals)."""
    vocab = load_vocabulary(vocab_spec) if vocab_spec else Vocabulary.from_benchmark(benchmark)
    parser = CaptionParser(vocab, window)
    wanted = benchmark_pairs(benchmark, parser)
    stream = iter_captions(sources, uid_column=uid_column, caption_column=caption_column)
    hits: Counter = Counter()
    clean: list[str] = []
    n = 0
    for uid, caption in stream:
        n += 1
        found = wanted.intersection(parser.pairs(caption))
        if found:
            hits.update(found)
        else:
            clean.append(str(uid))
    if n == 0:
        raise ValueError(f"no captions found in {stream.pool.root}")
    totals = {"captions": n, "contaminated": n - len(clean), "malformed": stream.malformed,
              "benchmark_pairs": len(wanted), "benchmark_pairs_found": len(hits)}
    return hits, clean, totals


def training_pairs(source, vocab: Vocabulary, window: int = 2) -> Counter:
    """(attribute, object) -> training samples holding it, in `vocab`'s canonical names.

    `source`: a subset's manifest.json (or the folder holding it), a parquet with attribute and
    object columns (labels.parquet, subset.parquet), or any caption source `iter_captions` reads
    (webdataset shards, caption parquet/arrow/jsonl), parsed with `vocab`.
    """
    path = Path(source)
    if path.is_dir() and (path / "manifest.json").is_file():
        path = path / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    def canonical(a: str, o: str) -> tuple[str, str]:
        return vocab.attribute_forms.get(phrase(a), a), vocab.object_forms.get(phrase(o), o)

    pairs: Counter = Counter()
    if path.name == "manifest.json":
        table = json.loads(path.read_text()).get("pair_counts")
        if not table:
            raise ValueError(f"{path} has no pair_counts: not a subset manifest of aotrain filter select")
        for a, row in zip(table["attributes"], table["counts"]):
            for o, n in zip(table["objects"], row):
                if n:
                    pairs[canonical(a, o)] += int(n)
        return pairs
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if "attribute" in columns and "object" in columns:
            t = pq.read_table(path, columns=["attribute", "object"])
            pairs.update(canonical(a, o) for a, o in zip(t.column("attribute").to_pylist(),
                                                          t.column("object").to_pylist())
                         if a is not None and o is not None)  # a single-side row (subset.parquet) is no pair
            return pairs
    counts = count_captions(iter_captions([path]), CaptionParser(vocab, window))
    if counts.n_captions == 0:
        raise ValueError(f"no captions found in {path}")
    return Counter(counts.all_pairs)


def contamination_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Report benchmark pairs that occur in a caption pool, "
                                "and optionally write the uids of the pool without them.")
    add_caption_arguments(p)
    p.add_argument("--benchmark", required=True, metavar="DIR", help="ImageNet-AO-format folder (<attribute object>/...)")
    p.add_argument("--vocab", default=None, metavar="SPEC", help="vocabulary (default: the benchmark's own names)")
    p.add_argument("--report", default=None, metavar="FILE.json", help="write the per-pair counts here")
    p.add_argument("--keep-uids", default=None, metavar="FILE.npy", help="write the sorted uids of clean captions")
    p.add_argument("--overwrite", action="store_true", help="replace existing --report / --keep-uids files")
    return run_command(p, _contamination, argv)


def _contamination(args) -> int:
    for out in (args.report, args.keep_uids):
        if out:
            check_output(Path(out), args.overwrite, kind="file")
    pool = open_pool(args.sources, args.uid_column)
    say(pool)
    hits, clean, totals = scan(pool, args.benchmark, args.vocab, args.window, args.uid_column, args.caption_column)
    print(f"captions {totals['captions']:,}; contaminated {totals['contaminated']:,}; "
          f"benchmark pairs found {totals['benchmark_pairs_found']} of {totals['benchmark_pairs']}")
    for (attribute, obj), count in sorted(hits.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {attribute} {obj}: {count:,}")
    if args.report:
        report = {**totals, "pairs": [{"attribute": a, "object": o, "captions": c}
                                      for (a, o), c in sorted(hits.items())]}
        write_text_atomic(Path(args.report), json.dumps(report, indent=1) + "\n")
    if args.keep_uids:
        with atomic_path(Path(args.keep_uids), ".npy") as tmp:  # .npy suffix: np.save keeps the name
            np.save(tmp, np.array(sorted(clean), dtype=str), allow_pickle=False)
        print(f"wrote {len(clean):,} clean uids to {args.keep_uids}")
    return 0


if __name__ == "__main__":
    sys.exit(contamination_main())
