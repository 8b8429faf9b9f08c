"""`aotrain filter band`: the feasible region of a labelled pool at one size, before selecting anything.

    aotrain filter band labels.parquet --size 12800 --nmi 0.6 --seed 0 1 2
    aotrain filter band labels.parquet --size 12800 --pairs 45 60 80 100 --nmi 0.6

For each distinct-pair count K it prints the NMI band [low, high] that `aotrain filter select --pairs K`
(and a fit's subset.pairs) reaches at that size and seed, and, with --nmi, the counts K at which the
target is inside the band at every seed given: the values a diversity-at-fixed-NMI sweep can use.
The numbers come from data_filters.select.nmi_bands, the same keep order and plans select uses.
Bad inputs print one line to stderr and return 2.
"""
from __future__ import annotations

import argparse

from data_filters.command import run_command
from data_filters.select_cli import add_pool_options

BAND_EPILOG = """\
LABELS.parquet is what `aotrain filter label` writes (a fit on the toy world caches it as
WORLD/labels-*/labels.parquet; `aotrain world` prints WORLD). The pool is read as select reads it
(one sample per image with --dedupe). Which pairs a K-pair subset keeps depends on the seed (a fit's
subset.seed is its seed), so give every seed a sweep uses: a K is listed as reachable only when the
target is inside its band at each of them. margin: the smallest distance from the target to a band
edge over the seeds (negative: outside); pick K with room, as a pool that changes moves the bands.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aotrain filter band", epilog=BAND_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Print the NMI band at each distinct-pair count K for a subset size, "
                                            "and the K at which an NMI target is reachable.")
    p.add_argument("labels", help="parquet file with columns uid, attribute, object")
    p.add_argument("--size", type=int, required=True, help="samples per subset")
    p.add_argument("--nmi", type=float, metavar="TARGET", help="the NMI target held fixed, in [0, 1]")
    p.add_argument("--seed", type=int, nargs="+", default=[0], metavar="S",
                   help="seeds of the kept pairs (a fit's subset.seed; default 0)")
    p.add_argument("--pairs", type=int, nargs="+", metavar="K", help="list these K (default: every --step-th K "
                                                                       "from the smallest K_min to the largest K_max)")
    p.add_argument("--step", type=int, default=5, help="spacing of the listed K without --pairs (default 5)")
    add_pool_options(p)  # as select reads and plans the pool
    return p


def band_main(argv=None) -> int:
    """`aotrain filter band`: returns the exit code."""
    return run_command(_parser(), _band, argv)


def _check(args) -> None:
    if args.size < 1:
        raise ValueError(f"--size must be positive, got {args.size}")
    if args.step < 1:
        raise ValueError(f"--step must be positive, got {args.step}")
    if args.nmi is not None and not 0 <= args.nmi <= 1:
        raise ValueError(f"--nmi must be in [0, 1], got {args.nmi:g}")
    if args.pairs is not None and min(args.pairs) < 1:
        raise ValueError(f"--pairs must be positive, got {min(args.pairs)}")
    if len(set(args.seed)) != len(args.seed):
        raise ValueError(f"--seed repeats a value: {args.seed}")


def listed_pairs(spans: list[tuple[int, int]], step: int) -> list[int]:
    """Every step-th K from the smallest K_min to the largest K_max over the seeds, with each seed's ends."""
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    return sorted({k for k in range(lo, hi + 1) if k % step == 0} | {k for span in spans for k in span})


def margin(bands: list, target: float) -> float | None:
    """The smallest distance from `target` to an edge of the bands (negative: outside one); None when a
    seed has no band at this K."""
    if any(b is None for b in bands):
        return None
    return min(min(target - lo, hi - target) for lo, hi in bands)


def runs_of(ks: list[int], chosen: set) -> str:
    """"45-100" or "45-60, 70, 80-100": the chosen K as runs of consecutive listed K."""
    runs, current = [], []
    for k in ks:
        if k in chosen:
            current.append(k)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def _band(args) -> int:
    from data_filters.dedupe import dropped_line, load_selection_pool
    from data_filters.select import feasible_pairs_range, in_band, nmi_bands, pair_counts
    from data_filters.singles import load_singles, parse_share, single_sizes

    _check(args)
    share = parse_share(args.single_share)
    (uids, attr_idx, obj_idx, attributes, objects), _, dedupe = load_selection_pool(args.labels, args.dedupe)
    counts = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    dropped = dropped_line(dedupe)
    print(f"pool: {int(counts.sum()):,} labelled samples, {int((counts > 0).sum())} distinct pairs "
          f"({len(attributes)} attributes x {len(objects)} objects)" + (f"; {dropped}" if dropped else ""))
    pair_size, single = single_sizes(args.size, share, load_singles(args.labels), len(uids))
    if pair_size != args.size:  # the bands are about the pair captions: select gives them the rest
        print(f"size {args.size:,} holds {sum(single.values()):,} single-side captions; the bands below are at "
              f"the {pair_size:,} pair captions")
        args.size = pair_size
    spans = {s: feasible_pairs_range(counts, args.size, s, args.allow_repeats) for s in args.seed}
    print(f"feasible pairs at size {args.size}: "
          + ", ".join(f"[{lo}, {hi}] (seed {s})" for s, (lo, hi) in spans.items()))
    ks = sorted(set(args.pairs)) if args.pairs else listed_pairs(list(spans.values()), args.step)
    found = {s: nmi_bands(counts, args.size, ks, s, args.allow_repeats, args.normaliser)[1] for s in args.seed}
    print(_table(ks, found, args))
    if args.nmi is not None:
        reach = {k for k in ks
                 if all(k in bands and in_band(*bands[k], args.nmi, args.tol) for bands in found.values())}
        seeds = ", ".join(map(str, args.seed))
        if reach:
            print(f"NMI {args.nmi:g} (tol {args.tol:g}) is inside the band at every seed ({seeds}) with K in "
                  f"{runs_of(ks, reach)} (of the K listed)")
        else:
            print(f"NMI {args.nmi:g} (tol {args.tol:g}) is outside the band at some seed ({seeds}) for every K listed")
    return 0


def _table(ks: list[int], found: dict, args) -> str:
    """K | [low, high] per seed | margin to the target; "—" where K is outside a seed's [K_min, K_max]."""
    header = ["K", *(f"seed {s}" for s in found)] + ([f"margin to {args.nmi:g}"] if args.nmi is not None else [])
    rows = []
    for k in ks:
        bands = [found[s].get(k) for s in found]
        row = [str(k), *("—" if b is None else f"[{b[0]:.4f}, {b[1]:.4f}]" for b in bands)]
        if args.nmi is not None:
            m = margin(bands, args.nmi)
            row.append("—" if m is None else f"{m:+.4f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"NMI band [low, high] ({args.normaliser}) at size {args.size} with K distinct pairs:"]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines)
