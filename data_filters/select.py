"""Pick a subset of a labelled caption pool whose attribute-object NMI hits a target.

    from data_filters.select import select_many
    from data_filters.subset_files import write_subset
    subs = select_many(uids, attr_idx, obj_idx, attributes, objects, size=2000, nmi_targets=[0.05, 0.2])
    write_subset(subs[0], "subsets/nmi-0.05", source="labels.parquet")

This docstring is the specification; the pieces live in one module each, and the target flows one
way through them: select.py (checks, the public API) -> plan.py (the two ends of the NMI range and
the table between them, steps 1-5 and a-c) -> maxent.py (the low end), transport.py (integer tables:
rounding, LPs and the high end), kept_pairs.py (which K pairs) -> subset_files.py (step 6: rows,
manifest, files).

Command line: `aotrain filter select LABELS.parquet --size 2000 --nmi 0.05 0.2 --out DIR`. From a
labels file (label.load_labels) the pool is numbers only, ~12 bytes per labelled caption: uid ranks
and attribute/object codes (data_filters/labels_file.py); uids are read for the chosen rows at the end.

Algorithm (all on the attribute x object count table; uids are chosen only at the end):
1. Target marginals r[A], c[O]: the pool's own marginals (or given weights) scaled to `size`,
   rounded to integers summing to `size` by largest remainder.
2. Capacity cap[A,O]: the pool's pair counts; with allow_repeats, unbounded on every pair the pool
   has (upsampling) and 0 elsewhere.
3. Low-NMI end L: the maximum-entropy table with margins r, c under the capacity (capped iterative
   proportional fitting: T = min(cap, x_a * y_o)), rounded to integers with exact margins by a
   small transportation LP (HiGHS simplex; the constraint matrix is totally unimodular, so its
   vertex solutions are integral).
4. High-NMI end H: vertices of the same transportation polytope that concentrate mass (start
   costs: pool count, pool lift), each improved by successive linearisation of the joint entropy
   (an LP per step); the highest-NMI one wins. This is a heuristic, so the range [NMI(L), NMI(H)]
   is an inner bound of what the pool can reach; it is what `feasible_nmi_range` reports.
5. Target t: T(t) = round((1 - t) L + t H). With fixed marginals the mutual information is convex
   in the joint table and L is (nearly) its minimum, so NMI(T(t)) rises with t; bisect on t until
   |NMI - target| <= tol. The mix of two tables under the capacity stays under it.
6. uids: for pair (a, o) take the first T[a, o] of that pair's uids (sorted by uid, then permuted
   by numpy default_rng([seed, a, o])); with repeats cycle through that permutation.
   Per-pair streams make subsets of different targets share as many uids as their tables allow.

With fixed_marginals=False the high end is the better of the fixed-margin table and a greedy
matching (each attribute with one object, largest pool pairs first), so the subset margins may drift
with t and differ between targets. Outputs of write_subset: subset.npy (sorted uids), subset.parquet
(uid/attribute/object), manifest.json; written to a temporary folder, then renamed.

Distinct pairs (distinct_pairs=K, `--pairs K`): exactly K pairs, same marginals r, c.
    subs = select_many(..., size=2000, nmi_targets=[0.4], distinct_pairs=60)   # or nmi_targets=None
a. Kept pairs: the first K of a seeded, count-weighted order that is feasible at every prefix from
   K_min to K_max (data_filters/kept_pairs.py), so pair sets are nested in K for one size and seed.
b. One sample is fixed on every kept pair (lower bound 1) and the capacity is 0 elsewhere; steps
   3-5 then run inside the kept pairs: the low end is the maximum-entropy table of the remainder
   (max_entropy_dual: Newton on the dual, as capped IPF crawls when many capacities bind), the LPs
   have a variable per kept pair only. With no NMI target the subset is the low end.
c. Targets outside the band raise InfeasibleTarget naming the NMI band at (size, K) and which pair
   counts reach the target; K outside [K_min, K_max], above the pool's pairs or above the size raise
   it with that range. The pool-wide path (no distinct_pairs) is unchanged, byte for byte.
d. The whole region at one size and seed, before selecting: nmi_bands() gives [K_min, K_max] and the band
   at each K, from the same keep order and plans (`aotrain filter band LABELS --size N --nmi T` prints it).
Every manifest.json has "diversity" (data_filters.diversity): the pair measures, and distinct
captions and templates when caption_keys (label.load_caption_keys) are given.
"""
from __future__ import annotations

import numpy as np

from data_filters.plan import (InfeasibleTarget, KeptPairs, Plan, check_band, in_band, keep_order,
                               margins_and_capacity, nmi_band, plan_for_pairs, plan_for_size, solve)
from data_filters.labels_file import LabelColumn, LabelUids
from data_filters.subset_files import Subset, build_subset, pair_index

# The public API of selection (write_subset and write_subsets are in data_filters.subset_files).
__all__ = ["InfeasibleTarget", "Subset", "feasible_nmi_range", "feasible_pairs_range", "in_band", "nmi_bands",
           "pair_counts", "select_many", "select_subset"]


def pair_counts(attr_idx, obj_idx, n_attributes: int, n_objects: int) -> np.ndarray:
    """Integer [A, O] table of how often each attribute-object pair occurs."""
    flat = pair_index(attr_idx, np.asarray(obj_idx), (n_attributes, n_objects))
    return np.bincount(flat, minlength=n_attributes * n_objects).astype(np.int64).reshape(n_attributes, n_objects)


def feasible_nmi_range(counts, size: int, fixed_marginals: bool = True, allow_repeats: bool = False,
                       normaliser: str = "arithmetic", marginals=None, distinct_pairs: int | None = None,
                       seed: int = 0) -> tuple[float, float]:
    """(low, high) NMI this selector can reach at `size` from a pool with pair `counts[A, O]`.

    With distinct_pairs=K: inside the K pairs that `seed` keeps (see select_subset).
    """
    if distinct_pairs is None:
        plan = plan_for_size(counts, size, fixed_marginals, allow_repeats, normaliser, marginals)
    else:
        plan, _ = plan_for_pairs(counts, size, distinct_pairs, seed, fixed_marginals, allow_repeats, normaliser, marginals)
    return plan.nmi_low, plan.nmi_high


def feasible_pairs_range(counts, size: int, seed: int = 0, allow_repeats: bool = False,
                         marginals=None) -> tuple[int, int]:
    """(K_min, K_max): the distinct-pair counts select_subset(distinct_pairs=K) can reach at `size` with `seed`."""
    counts, r, c, cap = margins_and_capacity(counts, size, allow_repeats, marginals)
    order = keep_order(counts, r, c, cap, seed)
    return order.n_min, order.n_max


def nmi_bands(counts, size: int, pairs=None, seed: int = 0, allow_repeats: bool = False,
              normaliser: str = "arithmetic", marginals=None) -> tuple[tuple[int, int], dict[int, tuple[float, float]]]:
    """((K_min, K_max), {K: (low, high)}): the NMI band select_subset(distinct_pairs=K, seed=seed) can reach at
    `size`, for each K of `pairs` inside [K_min, K_max] (default: every K there); `aotrain filter band` prints it.

        (k_min, k_max), bands = nmi_bands(counts, 12800, seed=0)
        [k for k, (lo, hi) in bands.items() if in_band(lo, hi, 0.6, tol=0.005)]   # the K at which NMI 0.6 is reachable
    """
    counts, r, c, cap = margins_and_capacity(counts, int(size), allow_repeats, marginals)
    order = keep_order(counts, r, c, cap, seed)  # one order for every K, as select_subset draws it
    ks = range(order.n_min, order.n_max + 1) if pairs is None else [k for k in pairs if order.n_min <= k <= order.n_max]
    return (order.n_min, order.n_max), {int(k): nmi_band(counts, r, c, cap, order, int(k), normaliser) for k in ks}


def _check_pool(uids, attr_idx, obj_idx, attributes, objects):
    """The pool checked: uids a numpy array or a LabelUids (label.load_labels), codes as given (no copy)."""
    lazy = isinstance(uids, LabelUids)
    uids, attr_idx, obj_idx = uids if lazy else np.asarray(uids), np.asarray(attr_idx), np.asarray(obj_idx)
    if not ((lazy or uids.ndim == 1) and attr_idx.ndim == obj_idx.ndim == 1
            and len(uids) == len(attr_idx) == len(obj_idx)):
        raise ValueError("uids, attr_idx and obj_idx must be 1-D arrays of the same length")
    if len(uids) == 0:
        raise ValueError("the pool is empty: no labelled samples")
    if uids.dtype.kind not in "iuU":
        raise ValueError(f"uids must be integers or strings, got dtype {uids.dtype}")
    for name, idx, names in (("attr_idx", attr_idx, attributes), ("obj_idx", obj_idx, objects)):
        if idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(names):
            raise ValueError(f"{name} must hold integer indices into its {len(names)} names")
    if not (uids.unique if lazy else len(np.unique(uids)) == len(uids)):
        raise ValueError("uids must be unique within the pool")
    return uids, attr_idx, obj_idx


def _target_list(nmi_targets, distinct_pairs) -> list:
    """The NMI targets; [None] (no NMI target) when only a distinct-pairs target is given."""
    if nmi_targets is not None:
        return list(nmi_targets)
    if distinct_pairs is None:
        raise ValueError("give an NMI target, distinct_pairs, or both")
    return [None]


def _check_caption_keys(caption_keys, n: int):
    if caption_keys is None:
        return None
    # a LabelColumn (label.load_caption_keys) stays in the file until the subset's rows are known
    keys = tuple(k if isinstance(k, LabelColumn) else np.asarray(k) for k in caption_keys)
    if len(keys) != 2 or any(k.shape != (n,) for k in keys):
        raise ValueError(f"caption_keys must be two arrays (caption_hash, template_hash) of the pool's length {n}")
    return keys


def select_many(uids, attr_idx, obj_idx, attributes, objects, size: int, nmi_targets=None, seed: int = 0,
                normaliser: str = "arithmetic", fixed_marginals: bool = True, allow_repeats: bool = False,
                tol: float = 0.005, marginals=None, distinct_pairs: int | None = None,
                caption_keys=None) -> list[Subset]:
    """One subset of `size` per NMI target, all sharing one marginal target; InfeasibleTarget before any work is returned.

    distinct_pairs=K: each subset has exactly K distinct pairs, the first K of the seeded keep order
    (data_filters.kept_pairs; nested in K for one size and seed), with the same marginals as without
    it, and the NMI targets are reached inside those pairs; nmi_targets=None then gives the
    max-entropy table on them (the lowest NMI those pairs allow). caption_keys=(caption_hash,
    template_hash), aligned with uids (label.load_caption_keys), adds caption measures to "diversity".
    """
    uids, attr_idx, obj_idx = _check_pool(uids, attr_idx, obj_idx, attributes, objects)
    targets = _target_list(nmi_targets, distinct_pairs)
    caption_keys = _check_caption_keys(caption_keys, len(uids))
    counts = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    pairs = None
    if distinct_pairs is None:
        plan = plan_for_size(counts, int(size), fixed_marginals, allow_repeats, normaliser, marginals)
    else:
        plan, pairs = plan_for_pairs(counts, size, distinct_pairs, seed, fixed_marginals, allow_repeats, normaliser,
                                     marginals)
        for target in targets:
            check_band(plan, counts, pairs, target, tol)
    solved = [((plan.low, 0.0) if target is None else solve(plan, float(target), tol), target)
              for target in targets]  # all checked first
    return [build_subset(uids, attr_idx, obj_idx, attributes, objects, table, seed, normaliser,
                         _planned(plan, pairs, target, t, tol, allow_repeats), counts, caption_keys)
            for (table, t), target in solved]


def _planned(plan: Plan, pairs: KeptPairs | None, target, t: float, tol: float, allow_repeats: bool) -> dict:
    """The manifest's record of how a subset's table was planned."""
    return {
        "nmi_target": None if target is None else float(target),
        "tol": float(tol),
        "feasible_nmi_range": [plan.nmi_low, plan.nmi_high],
        "mix_t": float(t),  # the table's place between the low (0) and high (1) ends
        "fixed_marginals": plan.fixed,
        "allow_repeats": bool(allow_repeats),
        "distinct_pairs_target": None if pairs is None else pairs.k,
        "feasible_pairs_range": None if pairs is None else [pairs.order.n_min, pairs.order.n_max],
    }


def select_subset(uids, attr_idx, obj_idx, attributes, objects, size: int, nmi_target: float | None = None,
                  seed: int = 0, normaliser: str = "arithmetic", fixed_marginals: bool = True,
                  allow_repeats: bool = False, tol: float = 0.005, marginals=None, distinct_pairs: int | None = None,
                  caption_keys=None) -> Subset:
    """The subset of `size` samples whose attribute-object NMI is within `tol` of `nmi_target`.

    distinct_pairs=K: exactly K distinct pairs (see select_many); nmi_target may then be None.
    """
    targets = None if nmi_target is None else [nmi_target]
    return select_many(uids, attr_idx, obj_idx, attributes, objects, size, targets, seed, normaliser,
                       fixed_marginals, allow_repeats, tol, marginals, distinct_pairs, caption_keys)[0]
