"""`aotrain filter stats`: attribute-object statistics (NMI, entropies, coverage, diversity) of caption sources.

    python -m data_filters.stats_cli stats data/pool/ --vocab builtin --out filter_stats
    python -m data_filters.stats_cli data/world/pool --vocab world:data/world --workers 2

The sources are read as data_filters/pools.py recognises them (an img2dataset folder's captions
once, from its .parquet; failed downloads counted in n_not_downloaded, not as captions).
Writes OUT/stats.json and OUT/joint_counts.csv (each via a temp file + os.replace, and only after
every input was read, so a failed run leaves no output behind). An OUT that exists and is not empty
is refused before any counting unless --overwrite (the rule of every `aotrain filter` command:
data_filters.files.check_output). Bad inputs print one line on
stderr and return exit code 2. stats.json "diversity" holds the pair measures of
data_filters.diversity (distinct pairs, grid coverage, attributes per object and objects per
attribute, joint entropy, effective pairs) and "caption_diversity" the distinct labelled captions
and caption templates (null with --no-caption-diversity, which keeps the counting throughput).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from .command import run_command
from .counts import count_files
from .files import check_output, write_text_atomic
from .nmi import NORMALISERS
from .pools import open_pool, say
from .sources import add_caption_arguments

PROG = "aotrain filter stats"
EXAMPLES = """examples:
  aotrain filter stats pool/ --vocab builtin
  aotrain filter stats a.parquet b.parquet --vocab world:data/worlds/toyworld-abc --caption-column text
  aotrain filter stats shards/ --vocab vocab.yaml --uid-column key --out stats/ --workers 4

vocabulary specs: builtin | benchmark:DIR (ImageNet-AO folders) | world:PATH (toy world.json) | FILE.yaml|.txt
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Count (attribute, object) pairs in captions and report the normalised mutual "
                    "information between attributes and objects.")
    add_caption_arguments(p)
    p.add_argument("--vocab", default="builtin", metavar="SPEC", help="vocabulary (default: builtin)")
    p.add_argument("--out", default="filter_stats", metavar="DIR",
                   help="output folder (default: ./filter_stats); must not exist, or be empty, unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out folder")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="processes, one file per task (default: 2)")
    p.add_argument("--normaliser", default="arithmetic", choices=NORMALISERS, help="NMI normaliser (default: arithmetic)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="rows of the joint table to print (default: 10)")
    p.add_argument("--no-caption-diversity", action="store_true",
                   help="skip distinct captions and templates (masking costs about a third of the throughput)")
    return p


def _fmt(x, spec=".4f") -> str:
    return "n/a" if x is None else format(x + 0, spec)  # + 0 turns -0.0 into 0.0


def summary(stats: dict, top: list[tuple[str, str, int]]) -> str:
    """Readable multi-line summary of PairCounts.stats() and the most frequent labelled pairs."""
    apo = stats["attributes_per_object"]
    div, cap = stats["diversity"], stats["caption_diversity"] or {}
    opa = div["objects_per_attribute"]
    lines = [
        f"captions            {stats['n_captions']:,} (malformed rows skipped: {stats['n_malformed']:,}"
        + (f"; failed downloads, not samples: {stats['n_not_downloaded']:,})" if stats.get("n_not_downloaded") else ")"),
        f"with a pair         {stats['n_with_pair']:,} ({stats['fraction_with_pair']:.1%}); "
        f"labelled (one pair) {stats['n_labelled']:,}; several pairs {stats['n_multi_pair']:,}",
        f"NMI ({stats['normaliser']})  {_fmt(stats['nmi'])}",
        f"entropy (nats)      H(attr) {_fmt(stats['h_attribute'])}  H(obj) {_fmt(stats['h_object'])}  "
        f"H(attr,obj) {_fmt(stats['h_joint'])}  MI {_fmt(stats['mi'])}",
        f"distinct pairs      {stats['distinct_pairs']:,} over {stats['n_attributes_seen']} attributes x "
        f"{stats['n_objects_seen']} objects",
        f"attributes/object   mean {_fmt(apo['mean'], '.2f')}  min {_fmt(apo['min'], 'd')}  max {_fmt(apo['max'], 'd')}",
        f"objects/attribute   mean {_fmt(opa['mean'], '.2f')}  min {_fmt(opa['min'], 'd')}  max {_fmt(opa['max'], 'd')}",
        f"pair diversity      {div['distinct_pairs']:,} of {div['grid_pairs']:,} grid cells "
        f"({div['grid_coverage']:.1%}); "
        f"effective pairs {_fmt(div['effective_pairs'], '.1f')} (joint entropy {_fmt(div['joint_entropy'])} nats)",
        f"caption diversity   distinct captions {cap['distinct_captions']:,}  templates {cap['distinct_templates']:,} "
        f"(labelled captions{'' if cap['exact'] else '; estimated'})" if cap else
        "caption diversity   not counted (--no-caption-diversity)",
    ]
    if top:
        lines.append("top pairs (attribute, object, captions):")
        width = max(len(a) for a, _, _ in top)
        lines += [f"  {a:<{width}}  {o}  {n:,}" for a, o, n in top]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    check_output(Path(args.out), args.overwrite)  # before counting, which can take hours on a real pool
    pool = open_pool(args.sources, args.uid_column)
    say(pool)
    counts = count_files(list(pool.caption_files), args.vocab, workers=args.workers, window=args.window,
                         caption_diversity=not args.no_caption_diversity, uid_column=args.uid_column,
                         caption_column=args.caption_column)
    if counts.n_captions == 0:
        raise ValueError(f"no captions found in {' '.join(args.sources)} ({counts.n_malformed} malformed rows)")
    stats = counts.stats(args.normaliser)
    stats.update(sources=[str(s) for s in args.sources], pool_kind=pool.kind, vocab=args.vocab, window=args.window)
    top = sorted(((a, o, n) for (a, o), n in counts.joint.items()), key=lambda t: (-t[2], t[0], t[1]))
    print(summary(stats, top[: args.top]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["attribute", "object", "count"])
    writer.writerows(top)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "joint_counts.csv", buf.getvalue())
    write_text_atomic(out / "stats.json", json.dumps(stats, indent=1))
    print(f"wrote {out / 'stats.json'} and {out / 'joint_counts.csv'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`aotrain filter stats ...`; returns the exit code (data_filters/command.py's contract)."""
    return run_command(build_parser(), _checked_run, argv)


def _checked_run(args) -> int:
    if args.workers < 1 or args.window < 0:
        raise ValueError("--workers must be >= 1 and --window >= 0")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
