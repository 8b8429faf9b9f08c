"""Plans: the two ends of the NMI range a subset can reach, and the table for a target between them
(steps 1-5 and a-c of data_filters/select.py's spec).

    plan = plan_for_size(counts, size, fixed_marginals=True, allow_repeats=False, normaliser="arithmetic")
    plan.nmi_low, plan.nmi_high                  # the feasible NMI range at this size
    table, t = solve(plan, 0.2, tol=0.005)       # integer [A, O] table within tol of NMI 0.2
    plan, pairs = plan_for_pairs(counts, size, 40, seed, True, False, "arithmetic", None)   # inside 40 kept pairs

Targets out of reach raise InfeasibleTarget naming what is reachable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_filters.kept_pairs import PairOrder, pair_order
from data_filters.maxent import max_entropy_dual, max_entropy_table
from data_filters.nmi import joint_stats
from data_filters.transport import capacity, concentrated_table, largest_remainder, matching_table, round_table


class InfeasibleTarget(ValueError):
    """The pool cannot give a subset of that size (and marginals) at the requested NMI.

    `largest_size` is set when the size alone is the problem: the most samples the pool can give
    without repeats (each front end names its own way to upsample, or none).
    """

    def __init__(self, message: str, largest_size: int | None = None):
        super().__init__(message)
        self.largest_size = largest_size

@dataclass
class Plan:
    low: np.ndarray
    high: np.ndarray
    cap: np.ndarray
    fixed: bool
    normaliser: str
    nmi_low: float
    nmi_high: float
    r: np.ndarray
    c: np.ndarray
    lower: np.ndarray | None = None  # with distinct pairs: one sample on every kept pair
    support: np.ndarray | None = None  # with distinct pairs: the kept pairs, the only LP variables

    def table(self, t: float) -> np.ndarray:
        real = (1 - t) * self.low + t * self.high
        if self.fixed:
            return round_table(real, self.r, self.c, self.cap, self.lower, self.support)
        # free margins: largest remainder over all cells keeps the total; real <= cap and cap is
        # integer, so a cell with a fractional part can always take one more
        table = np.floor(real + 1e-9)
        frac = np.where(table < self.cap, real - table, -1.0).ravel()  # a full cell never rounds up
        short = int(self.low.sum() - table.sum())
        table.ravel()[np.argsort(-frac, kind="stable")[:short]] += 1
        return table.astype(np.int64)

    def nmi(self, table) -> float:
        return joint_stats(table, self.normaliser)["nmi"]


def margins_and_capacity(counts, size, allow_repeats, marginals):
    """(counts, r, c, cap): the pool table checked, the target marginals at `size` and the capacity."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.sum() == 0:
        raise ValueError("the pool is empty: no labelled attribute-object pair")
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    if not allow_repeats and size > counts.sum():
        n = int(counts.sum())
        raise InfeasibleTarget(f"size {size} exceeds the pool: it has {n:,} labelled samples, so the largest size "
                               f"without repeats is {n}", largest_size=n)
    ra, co = marginals if marginals is not None else (counts.sum(1), counts.sum(0))
    r, c = largest_remainder(ra, size), largest_remainder(co, size)
    return counts, r, c, capacity(counts, allow_repeats)


def plan_for_size(counts, size, fixed_marginals, allow_repeats, normaliser, marginals=None) -> Plan:
    counts, r, c, cap = margins_and_capacity(counts, size, allow_repeats, marginals)
    low = round_table(max_entropy_table(r, c, cap), r, c, cap)
    if low is None:
        raise InfeasibleTarget(f"no subset of size {size} has those marginals within the pool's pair counts")
    high = concentrated_table(counts, r, c, cap, normaliser)
    if high is None:
        high = low
    if not fixed_marginals:  # the greedy matching wins on skewed pools, the fixed-margin table on flat ones
        free = matching_table(counts, size, cap)
        if joint_stats(free, normaliser)["nmi"] > joint_stats(high, normaliser)["nmi"]:
            high = free
    nmi_low, nmi_high = joint_stats(low, normaliser)["nmi"], joint_stats(high, normaliser)["nmi"]
    if nmi_high < nmi_low:
        high, nmi_high = low, nmi_low
    return Plan(low, high, cap, fixed_marginals, normaliser, nmi_low, nmi_high, r, c)


def solve(plan: Plan, target: float, tol: float):
    """(table, t) with |NMI - target| <= tol, by bisection on the mixing weight t."""
    if not 0 <= target <= 1:
        raise ValueError(f"NMI target must be in [0, 1], got {target}")
    lo_t, hi_t = 0.0, 1.0
    ends = [(plan.low, 0.0, plan.nmi_low), (plan.high, 1.0, plan.nmi_high)]
    best = min(ends, key=lambda end: abs(end[2] - target))
    for t, nmi in ((0.0, plan.nmi_low), (1.0, plan.nmi_high)):
        if abs(nmi - target) <= tol:
            return (plan.low if t == 0 else plan.high), t
    if plan.nmi_low - tol < target < plan.nmi_high + tol:
        for _ in range(50):
            t = (lo_t + hi_t) / 2
            table = plan.table(t)
            nmi = plan.nmi(table)
            if abs(nmi - target) < abs(best[2] - target):
                best = (table, t, nmi)
            if abs(nmi - target) <= tol:
                return table, t
            lo_t, hi_t = (t, hi_t) if nmi < target else (lo_t, t)
    size = int(plan.r.sum())
    where = ""
    if plan.fixed:  # name the fixed marginals; in full only when short enough to read
        where = (f" with attribute counts {plan.r.tolist()} and object counts {plan.c.tolist()}"
                 if len(plan.r) + len(plan.c) <= 40 else
                 f" with fixed marginals over {len(plan.r)} attributes and {len(plan.c)} objects")
    raise InfeasibleTarget(
        f"NMI target {target:g} not reachable at size {size}{where}: feasible NMI range "
        f"[{plan.nmi_low:.4f}, {plan.nmi_high:.4f}] (closest reached {best[2]:.4f}, tol {tol:g})")


# ---------------------------------------------------------------- the plan inside K kept pairs
@dataclass
class KeptPairs:
    """A distinct-pairs target: the keep order at this size and seed, and the first k pairs of it."""

    k: int
    order: PairOrder
    kept: np.ndarray  # bool [A, O]
    seed: int
    cap: np.ndarray  # the pool's capacity (not yet restricted to the kept pairs)


def keep_order(counts, r, c, cap, seed) -> PairOrder:
    order = pair_order(counts, r, c, cap, seed)
    if order is None:
        raise InfeasibleTarget(f"no subset of size {int(r.sum())} has those marginals within the pool's pair counts")
    return order


def first_pairs(counts, r, c, cap, k: int, seed: int) -> KeptPairs:
    """The first k pairs of the keep order, or InfeasibleTarget naming the reachable range of k."""
    size, n_pool = int(r.sum()), int((counts > 0).sum())
    if k < 1:
        raise ValueError(f"distinct_pairs must be a positive integer, got {k}")
    if k > n_pool:
        raise InfeasibleTarget(f"distinct_pairs {k} > the {n_pool} pairs the pool holds")
    if k > size:
        raise InfeasibleTarget(f"distinct_pairs {k} > size {size}: every kept pair needs at least one sample")
    order = keep_order(counts, r, c, cap, seed)
    if not order.n_min <= k <= order.n_max:
        fewest = max(int((r > 0).sum()), int((c > 0).sum()))  # every attribute and object needs a pair
        raise InfeasibleTarget(
            f"distinct_pairs {k} not reachable at size {size} with the target marginals: feasible pairs "
            f"[{order.n_min}, {order.n_max}] (seed {seed}; no table with these marginals has fewer than {fewest})")
    return KeptPairs(k, order, order.mask(k, counts.shape), seed, cap)


def plan_in_pairs(counts, r, c, cap, kept, normaliser) -> Plan:
    """The NMI plan inside the kept pairs: capacity 0 elsewhere and one sample fixed on each kept pair."""
    base = kept.astype(np.int64)
    cap = np.where(kept, cap, 0.0)
    # max entropy of what is left once every kept pair has its sample; base + it stays >= 1 on kept pairs
    rest = max_entropy_dual(r - base.sum(1), c - base.sum(0), cap - base)
    low = round_table(base + rest, r, c, cap, lower=base, support=kept)
    if low is None:  # the keep order proved a table exists, so only a solver failure lands here
        raise InfeasibleTarget(f"no table on the {int(base.sum())} kept pairs has the target marginals")
    high = concentrated_table(counts, r, c, cap, normaliser, lower=base, support=kept)
    high = low if high is None else high
    nmi_low, nmi_high = joint_stats(low, normaliser)["nmi"], joint_stats(high, normaliser)["nmi"]
    if nmi_high < nmi_low:
        high, nmi_high = low, nmi_low
    return Plan(low, high, cap, True, normaliser, nmi_low, nmi_high, r, c, lower=base, support=kept)


def plan_for_pairs(counts, size, k, seed, fixed_marginals, allow_repeats, normaliser, marginals):
    """(plan, pairs) for a subset of `size` with exactly k distinct pairs and fixed marginals."""
    if not fixed_marginals:
        raise ValueError("distinct_pairs holds the marginals fixed; it cannot be combined with free marginals")
    counts, r, c, cap = margins_and_capacity(counts, int(size), allow_repeats, marginals)
    pairs = first_pairs(counts, r, c, cap, int(k), seed)
    return plan_in_pairs(counts, r, c, cap, pairs.kept, normaliser), pairs


def nmi_band(counts, r, c, cap, order: PairOrder, k: int, normaliser) -> tuple[float, float]:
    """(low, high) NMI of the plan inside the first k pairs of `order`: the band select_subset reaches with k pairs."""
    plan = plan_in_pairs(counts, r, c, cap, order.mask(k, counts.shape), normaliser)
    return plan.nmi_low, plan.nmi_high


def in_band(low: float, high: float, target: float, tol: float) -> bool:
    """Whether `target` is close enough to the band [low, high] for solve() to be tried (the selector's test)."""
    return low - tol < target < high + tol


def _fewest_pairs_for(counts, r, c, cap, pairs: KeptPairs, target, tol, normaliser) -> str:
    """A target below the band: the fewest pairs whose low end reaches it, by bisection on k.

    The low end falls as pairs are added: H(A, O) <= log k, so with fixed marginals
    NMI >= 2 - 2 log k / (H(A) + H(O)) (docs/design_space.md).
    """
    n_min, n_max = pairs.order.n_min, pairs.order.n_max
    span = f"feasible pairs [{n_min}, {n_max}], seed {pairs.seed}"
    lowest = nmi_band(counts, r, c, cap, pairs.order, n_max, normaliser)[0]
    if lowest >= target + tol:
        return f"no pair count reaches it at this size (lowest NMI {lowest:.4f}, with all {n_max} pairs; {span})"
    lo, hi = pairs.k, n_max  # lo: too high, hi: low enough
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if nmi_band(counts, r, c, cap, pairs.order, mid, normaliser)[0] < target + tol else (mid, hi)
    return f"NMI {target:g} needs at least {hi} pairs at this size ({span})"


def _pairs_reaching_high(counts, r, c, cap, pairs: KeptPairs, target, tol, normaliser, n_scan: int = 9) -> str:
    """A target above the band: which of n_scan pair counts in [K_min, K_max] have a high end that reaches it.

    The high end is a heuristic and depends on which pairs are kept, not only on how many, so it
    is not monotone in k: scan a few counts instead of bisecting.
    """
    n_min, n_max = pairs.order.n_min, pairs.order.n_max
    span = f"feasible pairs [{n_min}, {n_max}], seed {pairs.seed}"
    scanned = sorted({int(k) for k in np.linspace(n_min, n_max, n_scan).round()} - {pairs.k})
    highs = {k: nmi_band(counts, r, c, cap, pairs.order, k, normaliser)[1] for k in scanned}
    reach = [k for k in scanned if highs[k] > target - tol]
    if reach:
        return (f"NMI {target:g} is within reach with {', '.join(map(str, reach))} pairs "
                f"({span}; {len(scanned)} counts scanned)")
    best = max(highs, key=highs.get) if highs else pairs.k
    return (f"no scanned pair count reaches it at this size (highest NMI {highs.get(best, float('nan')):.4f}, "
            f"with {best} pairs; {span}; {len(scanned)} counts scanned)")


def check_band(plan: Plan, counts, pairs: KeptPairs, target, tol) -> None:
    """InfeasibleTarget when `target` is outside the NMI band of the kept pairs, naming both knobs' ranges."""
    if target is None or in_band(plan.nmi_low, plan.nmi_high, target, tol):
        return
    if not 0 <= target <= 1:
        raise ValueError(f"NMI target must be in [0, 1], got {target}")
    more = _fewest_pairs_for if target < plan.nmi_low else _pairs_reaching_high
    need = more(counts, plan.r, plan.c, pairs.cap, pairs, target, tol, plan.normaliser)
    raise InfeasibleTarget(f"at size {int(plan.r.sum())} with {pairs.k} pairs, NMI {target:g} is outside "
                           f"[{plan.nmi_low:.4f}, {plan.nmi_high:.4f}] (tol {tol:g}); {need}")
