"""Command-line front ends for subset selection and resharding (`aotrain filter select|reshard`).

    aotrain filter select labels.parquet --size 2000 --nmi 0.05 0.2 --out subsets
    aotrain filter select labels.parquet --size 2000 --pairs 40 [--nmi 0.5] --out subset-40
    aotrain filter reshard subsets/nmi-0.05/subset.npy --shards pool --out shards-0.05

Bad inputs print one line to stderr and return 2, with nothing written.
"""
from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

import numpy as np

from data_filters.command import run_command
from data_filters.dedupe import dropped_line, load_selection_pool
from data_filters.files import check_output
from data_filters.nmi import NORMALISERS

SELECT_EPILOG = """\
LABELS.parquet needs columns uid, attribute, object (one row per sample). With one --nmi value the
subset goes to OUT/{subset.npy,subset.parquet,manifest.json}; with several, to OUT/nmi-<target>/...
All targets share the same attribute and object counts unless --free-marginals.
--pairs K keeps exactly K distinct pairs (the first K of a seeded order: nested in K for one size
and seed), alone (the most even table on them) or with --nmi (targets reached inside them).
The feasible region printed: the NMI range at this size (and pair count), and with --pairs the
pair counts [K_min, K_max] this size and seed can hold. manifest.json "diversity" has the pair
measures, and distinct captions/templates when the labels file carries caption keys.
"""


def _select_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aotrain filter select", epilog=SELECT_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Pick pool subsets of a fixed size whose attribute-object NMI hits targets "
                                            "and/or that keep exactly K distinct pairs.")
    p.add_argument("labels", help="parquet file with columns uid, attribute, object")
    p.add_argument("--size", type=int, required=True, help="samples per subset")
    p.add_argument("--nmi", type=float, nargs="+", metavar="TARGET", help="NMI target(s) in [0, 1]")
    p.add_argument("--pairs", type=int, metavar="K", help="exactly K distinct attribute-object pairs")
    p.add_argument("--out", required=True, help="output folder (must not exist, or be empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for which pairs are kept (--pairs) and which uids fill each pair (default 0)")
    p.add_argument("--free-marginals", action="store_true",
                   help="let attribute/object frequencies change with the target (wider NMI range)")
    add_pool_options(p)
    return p


def add_pool_options(p: argparse.ArgumentParser) -> None:
    """How the labelled pool is read and a subset planned: the options `select` and `band` share."""
    p.add_argument("--allow-repeats", action="store_true", help="upsample: a uid may appear several times")
    p.add_argument("--normaliser", default="arithmetic", choices=NORMALISERS, help="NMI normaliser (default arithmetic)")
    p.add_argument("--tol", type=float, default=0.005, help="allowed |NMI - target| (default 0.005)")
    p.add_argument("--single-share", default="pool", metavar="SHARE",
                   help="share of each subset taken by single-side captions (one object or one attribute named, "
                        "no pair; data_filters/singles.py): 'pool' (default: the pool's own share) or a number in "
                        "[0, 1); the pairs fill the rest, so NMI, marginals and bands are those of the pairs")
    p.add_argument("--dedupe", action=argparse.BooleanOptionalAction, default=None,
                   help="one sample per image (by image hash) before selecting; default: on when the labels "
                        "carry image hashes (labels of img2dataset/DataComp pools and shards do)")


def _tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def select_main(argv=None) -> int:
    """`aotrain filter select`: returns the exit code."""
    return run_command(_select_parser(), _select, argv)


def _select(args) -> int:
    from data_filters.select import InfeasibleTarget, select_many
    from data_filters.singles import parse_share, with_singles
    from data_filters.subset_files import write_subset, write_subsets

    try:
        if args.size < 1:
            raise ValueError(f"--size must be positive, got {args.size}")
        if args.nmi is None and args.pairs is None:
            raise ValueError("give --nmi, --pairs or both")
        check_output(Path(args.out), args.overwrite)
        replace = Path(args.out).exists()  # allowed by check_output: --overwrite, or an empty folder
        pool, caption_keys, dedupe = load_selection_pool(args.labels, args.dedupe)
        dropped = dropped_line(dedupe)
        if dropped:
            print(f"duplicates: {dropped}")
        share = parse_share(args.single_share)
        subs = with_singles(args.labels, args.size, share, args.seed, len(pool[0]), lambda pair_size: select_many(
            *pool, size=pair_size, nmi_targets=args.nmi, seed=args.seed, normaliser=args.normaliser,
            fixed_marginals=not args.free_marginals, allow_repeats=args.allow_repeats, tol=args.tol,
            distinct_pairs=args.pairs, caption_keys=caption_keys))
        for sub in subs:
            sub.manifest.update(dedupe)
        if len(subs) == 1:
            write_subset(subs[0], args.out, source=os.path.abspath(args.labels), overwrite=replace)
        else:
            write_subsets(subs, args.out, source=os.path.abspath(args.labels), overwrite=replace)
    except InfeasibleTarget as e:
        if e.largest_size:  # the size alone is too large: name this command's way to upsample
            raise ValueError(f"{e}; --allow-repeats upsamples") from None
        raise
    print(_region(subs[0].manifest, args))
    single = subs[0].manifest["single_side"]
    if single["object_only"] or single["attribute_only"]:
        print(f"single-side captions in each subset: {single['object_only']:,} object-only, "
              f"{single['attribute_only']:,} attribute-only (share {single['share']:.3f}); "
              f"NMI and pairs below are those of the {single['pair_size']:,} pair captions")
    first = subs[0].manifest
    for sub in subs:
        m = sub.manifest
        tv_a = _tv(m["attribute_marginal"], first["attribute_marginal"])
        tv_o = _tv(m["object_marginal"], first["object_marginal"])
        target = "none" if m["nmi_target"] is None else f"{m['nmi_target']:g}"
        print(f"target {target}: nmi {m['nmi']:.4f} size {m['size']} pairs {m['distinct_pairs']} "
              f"effective pairs {m['diversity']['effective_pairs']:.1f} "
              f"marginal TV vs first: attribute {tv_a:.4f} object {tv_o:.4f}")
    print(f"wrote {args.out}")
    return 0


def _region(manifest: dict, args) -> str:
    """The feasible region at this size: NMI range (inside the kept pairs with --pairs) and pair counts."""
    lo, hi = manifest["feasible_nmi_range"]
    size = manifest["single_side"]["pair_size"]  # the pairs are what NMI and K are about
    size = f"{size}" if size == args.size else f"{size} (pair captions)"
    if args.pairs is None:
        return f"feasible NMI range at size {size}: [{lo:.4f}, {hi:.4f}] ({args.normaliser})"
    k_min, k_max = manifest["feasible_pairs_range"]
    return (f"feasible pairs at size {size} (seed {args.seed}): [{k_min}, {k_max}]\n"
            f"feasible NMI range at size {size} with {args.pairs} pairs: [{lo:.4f}, {hi:.4f}] ({args.normaliser})")


def _reshard_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aotrain filter reshard",
                                description="Copy the samples of a subset (.npy of uids) into new webdataset shards.")
    p.add_argument("subset", help="subset.npy from `aotrain filter select` (repeats allowed)")
    p.add_argument("--shards", required=True, help="folder of .tar shards, or a glob such as 'pool/shard-*.tar'")
    p.add_argument("--out", required=True, help="output folder (must not exist, or be empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--samples-per-shard", type=int, default=5000, help="samples per output shard (default 5000)")
    p.add_argument("--uid-field", default=None,
                   help="json field holding the uid, or __key__ for the sample name (default: what the pool "
                        "holds: DataComp's and the toy world's 'uid', else the key, as img2dataset names samples)")
    return p


def _pool_shards(spec: str, uid_field: str | None):
    """(shard paths, uid field) of a pool folder (data_filters/pools.py) or a glob of shards."""
    from data_filters.pools import open_pool

    files = spec if Path(spec).is_dir() else sorted(glob.glob(spec))
    pool = open_pool(files, uid_field) if files else None
    if pool is None or not pool.shards:
        raise ValueError(f"no .tar shards found at {spec}")
    return [str(s) for s in pool.shards], pool.shard_uid_field


def reshard_main(argv=None) -> int:
    """`aotrain filter reshard`: returns the exit code."""
    return run_command(_reshard_parser(), _reshard, argv)


def _reshard(args) -> int:
    from data_filters.reshard import reshard

    check_output(Path(args.out), args.overwrite)
    replace = Path(args.out).exists()  # allowed by check_output: --overwrite, or an empty folder
    if not Path(args.subset).is_file():
        raise ValueError(f"subset file not found: {args.subset}")
    try:
        uids = np.load(args.subset, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"cannot read {args.subset} as a .npy uid array: {e}") from None
    shards, uid_field = _pool_shards(args.shards, args.uid_field)  # a corrupt shard: a TarError, a user error
    info = reshard(shards, uids, args.out, args.samples_per_shard, uid_field, overwrite=replace)
    print(f"wrote {info['n_samples']} samples ({info['n_unique']} unique) in {len(info['shards'])} shards to "
          f"{args.out} (uid = {'sample key' if uid_field == '__key__' else 'json ' + repr(uid_field)}; "
          "key_map.parquet maps each new key to its source shard and key)")
    return 0


