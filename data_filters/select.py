"""Pick a subset of a labelled caption pool whose attribute-object NMI hits a target.

    from data_filters.select import select_many, write_subset
    subs = select_many(uids, attr_idx, obj_idx, attributes, objects, size=2000, nmi_targets=[0.05, 0.2])
    write_subset(subs[0], "subsets/nmi-0.05", source="labels.parquet")

Command line: `python -m data_filters.select_cli select LABELS.parquet --size 2000 --nmi 0.05 0.2 --out DIR`.

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
Every manifest.json has "diversity" (data_filters.diversity): the pair measures, and distinct
captions and templates when caption_keys (label.load_caption_keys) are given.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse
from scipy.optimize import linprog
from scipy.sparse.linalg import spsolve

from data_filters.diversity import caption_diversity, pair_diversity
from data_filters.files import publish_dir, temp_dir_for
from data_filters.kept_pairs import PairOrder, pair_order, transport_on_cells
from data_filters.nmi import joint_stats


class InfeasibleTarget(ValueError):
    """The pool cannot give a subset of that size (and marginals) at the requested NMI.

    `largest_size` is set when the size alone is the problem: the most samples the pool can give
    without repeats (each front end names its own way to upsample, or none).
    """

    def __init__(self, message: str, largest_size: int | None = None):
        super().__init__(message)
        self.largest_size = largest_size


@dataclass
class Subset:
    """One selected subset; `uids` sorted, attr_idx/obj_idx aligned with it."""

    uids: np.ndarray
    attr_idx: np.ndarray
    obj_idx: np.ndarray
    attributes: list
    objects: list
    table: np.ndarray  # [A, O] integer pair counts of the subset
    stats: dict  # joint_stats(table)
    manifest: dict = field(default_factory=dict)


# ---------------------------------------------------------------- tables
def pair_counts(attr_idx, obj_idx, n_attributes: int, n_objects: int) -> np.ndarray:
    """Integer [A, O] table of how often each attribute-object pair occurs."""
    table = np.zeros((n_attributes, n_objects), dtype=np.int64)
    np.add.at(table, (np.asarray(attr_idx), np.asarray(obj_idx)), 1)
    return table


def largest_remainder(weights, total: int) -> np.ndarray:
    """Integers proportional to `weights` summing exactly to `total` (ties: lowest index first)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or (w < 0).any() or w.sum() <= 0:
        raise ValueError("marginal weights must be a 1-D array of non-negative numbers with a positive sum")
    quota = w * total / w.sum()
    out = np.floor(quota).astype(np.int64)
    short = total - int(out.sum())
    order = np.argsort(-(quota - out), kind="stable")
    out[order[:short]] += 1
    return out


def _capacity(counts: np.ndarray, allow_repeats: bool) -> np.ndarray:
    return np.where(counts > 0, np.inf, 0.0) if allow_repeats else counts.astype(np.float64)


def _transport_lp(cost, r, c, lower, upper, support=None):
    """Integer table with row sums r, column sums c, lower <= T <= upper minimising sum(cost * T); None if none.

    support (bool [A, O], optional): the only cells that may be non-zero; the LP then has a variable
    per support cell instead of per grid cell (kept pairs: hundreds instead of A * O).
    """
    if support is not None:
        return _support_lp(cost, r, c, lower, upper, support)
    n_a, n_o = len(r), len(c)
    # sparse row- and column-sum constraints on the flattened table (vocabularies can be large)
    rows = sparse.kron(sparse.identity(n_a), np.ones((1, n_o)))
    cols = sparse.kron(np.ones((1, n_a)), sparse.identity(n_o))
    bounds = [(lo, None if np.isinf(hi) else hi) for lo, hi in zip(lower.ravel(), upper.ravel())]
    res = linprog(np.asarray(cost, dtype=np.float64).ravel(), A_eq=sparse.vstack([rows, cols]).tocsr(),
                  b_eq=np.concatenate([r, c]).astype(np.float64), bounds=bounds, method="highs-ds")
    if res.status != 0:
        return None
    table = np.rint(res.x).reshape(n_a, n_o).astype(np.int64)
    # the polytope is integral, so a simplex vertex is integral up to float noise; check anyway
    if not (np.array_equal(table.sum(1), r) and np.array_equal(table.sum(0), c)
            and (table >= lower).all() and (table <= upper).all()):
        return None
    return table


def _support_lp(cost, r, c, lower, upper, support):
    cells = np.flatnonzero(support.ravel())
    if (np.asarray(lower).ravel()[np.flatnonzero(~support.ravel())] > 0).any():
        return None  # a lower bound outside the support cannot be met
    values = transport_on_cells(cells, np.asarray(cost, dtype=np.float64).ravel()[cells], r, c,
                                np.asarray(lower, dtype=np.float64).ravel()[cells],
                                np.asarray(upper, dtype=np.float64).ravel()[cells], len(c))
    if values is None:
        return None
    table = np.zeros(support.shape, dtype=np.int64)
    table.ravel()[cells] = values
    return table


def _round_table(real, r, c, cap, lower=None, support=None):
    """Integer table near `real` with exact margins r, c, under `cap` and (if given) at least `lower`."""
    floor = np.floor(real + 1e-9)
    ceil = np.minimum(np.ceil(real - 1e-9), cap)
    # prefer rounding up the cells with the largest fractional part
    table = _transport_lp(-(real - floor), r, c, np.minimum(floor, ceil), ceil, support)
    if table is None:  # `real` was only approximately on the margins: allow any integer table
        table = _transport_lp(-real, r, c, np.zeros_like(real) if lower is None else lower, cap, support)
    return table


def _scale(target, weights, cap):
    """Per-row x with sum_o min(cap[a,o], x[a] * weights[a,o]) = target[a] (exact, piecewise linear)."""
    x = np.zeros(len(target))
    for a, want in enumerate(target):
        w, u = weights[a], cap[a]
        live = w > 0
        if want <= 0 or not live.any():
            continue
        w, u = w[live], u[live]
        brk = u / w  # x beyond which the cell is capped
        order = np.argsort(brk, kind="stable")
        brk, w, u = brk[order], w[order], u[order]
        # f(x) = sum of capped cells + x * weight of the uncapped ones, increasing and piecewise linear;
        # evaluate it at each breakpoint and solve on the first segment that reaches `want`
        capped = np.concatenate([[0.0], np.cumsum(u)[:-1]])  # mass of cells capped before breakpoint k
        free = w.sum() - np.concatenate([[0.0], np.cumsum(w)[:-1]])  # weight still growing at k
        with np.errstate(invalid="ignore"):  # inf breakpoints (uncapped cells) times zero weight
            reach = capped + brk * free
        k = int(np.searchsorted(np.nan_to_num(reach, nan=np.inf), want))
        x[a] = (want - capped[k]) / free[k] if k < len(brk) else brk[-1]  # past the end: infeasible row, saturate
    return x


def max_entropy_table(r, c, cap, iters: int = 3000) -> np.ndarray:
    """Real table with margins ~r, c and T <= cap of maximum entropy (capped IPF: T = min(cap, x_a y_o))."""
    x = np.ones(len(r))
    y = np.asarray(c, dtype=np.float64) / max(float(np.sum(c)), 1.0)
    support = (cap > 0).astype(np.float64)
    for _ in range(iters):
        x = _scale(r, support * y[None, :], cap)
        y = _scale(c, (support * x[:, None]).T, cap.T)
        table = np.minimum(cap, support * x[:, None] * y[None, :])
        if np.abs(table.sum(1) - r).max() < 1e-7 and np.abs(table.sum(0) - c).max() < 1e-7:
            break
    return np.nan_to_num(table, nan=0.0, posinf=0.0)


def max_entropy_dual(r, c, cap, tol: float = 1e-6, iters: int = 500) -> np.ndarray:
    """The maximum-entropy table of max_entropy_table (T = min(cap, x_a y_o)), by Newton's method on its dual.

    The dual variables are log x, log y (one per margin); the dual is convex with a sparse Hessian
    (a bipartite graph over the uncapped cells), so damped Newton steps converge in tens of
    iterations where capped IPF needs thousands of sweeps when many capacities bind (pools of
    small pair counts, kept pairs). Levenberg-style damping handles the flat directions of capped
    cells and the (x * s, y / s) gauge. Stops when every margin is within `tol`.
    """
    r, c, cap = (np.asarray(v, dtype=np.float64) for v in (r, c, cap))
    n_a, n = len(r), len(r) + len(c)
    a, o = np.nonzero((cap > 0) & (r[:, None] > 0) & (c[None, :] > 0))  # a zero margin empties its line
    u, pos = cap[a, o], np.concatenate([a, n_a + o])
    log_u, want = np.log(u), np.concatenate([r, c])

    def dual(z):  # (value, gradient = margins - targets, curvature of each cell)
        s = np.minimum(z[a] + z[n_a + o], 700.0)  # exp(700) is finite; no real cell needs more
        capped = s > log_u
        t = np.where(capped, u, np.exp(np.minimum(s, log_u)))
        with np.errstate(invalid="ignore"):  # inf * 0 in the capped branch of uncapped cells, not selected
            value = np.where(capped, u * (1.0 + s - log_u), t).sum() - want @ z
        return value, np.bincount(pos, np.concatenate([t, t]), n) - want, np.where(capped, 0.0, t)

    total = max(r.sum(), 1.0)
    z = np.log(np.maximum(want, 1.0) / np.sqrt(total))  # the independence table r c / total
    value, grad, h = dual(z)
    damping = 1e-6
    rows, cols = np.concatenate([pos, a, n_a + o]), np.concatenate([pos, n_a + o, a])
    for _ in range(iters):
        if np.abs(grad).max() < tol:
            break
        hessian = sparse.csc_matrix((np.concatenate([h, h, h, h]), (rows, cols)), shape=(n, n))
        scale = max(h.max(), 1.0)
        while damping < 1e12:
            step = spsolve((hessian + sparse.identity(n, format="csc") * (damping * scale)), -grad)
            trial = dual(z + step)
            if trial[0] <= value + 1e-4 * (grad @ step):  # sufficient decrease: take it, trust the model more
                z, (value, grad, h) = z + step, trial
                damping = max(damping / 10, 1e-12)
                break
            damping *= 10
    table = np.zeros(cap.shape)
    table[a, o] = np.minimum(u, np.exp(np.minimum(z[a] + z[n_a + o], 700.0)))
    return table


def _entropy_descent(table, r, c, cap, steps: int = 8, lower=None, support=None):
    """Lower the joint entropy by successive LPs on its linearisation (cost = -log T)."""
    best = table
    lower = np.zeros(best.shape) if lower is None else lower
    for _ in range(steps):
        cost = -np.log(best + 0.5)
        nxt = _transport_lp(cost, r, c, lower, cap, support)
        if nxt is None or joint_stats(nxt)["h_joint"] >= joint_stats(best)["h_joint"] - 1e-12:
            break
        best = nxt
    return best


def _high_fixed(counts, r, c, cap, normaliser, lower=None, support=None):
    """Concentrated table with margins r, c, under cap (and over `lower`): the best of a few entropy-descent runs."""
    lower = np.zeros(counts.shape) if lower is None else lower
    n = counts.sum()
    lift = counts * n / np.maximum(np.outer(counts.sum(1), counts.sum(0)), 1)
    starts = [-np.log1p(counts), -np.log1p(lift), -np.log1p(counts) - np.log1p(lift)]
    best, best_nmi = None, -1.0
    for cost in starts:
        start = _transport_lp(cost, r, c, lower, cap, support)
        if start is None:
            continue
        table = _entropy_descent(start, r, c, cap, lower=lower, support=support)
        nmi = joint_stats(table, normaliser)["nmi"]
        if nmi > best_nmi + 1e-12:
            best, best_nmi = table, nmi
    return best


def _high_free(counts, size, cap):
    """Any-margin concentrated table: greedy matching (one object per attribute) on the largest pairs."""
    table = np.zeros(counts.shape, dtype=np.float64)
    left = float(size)
    order = np.argsort(-counts.ravel(), kind="stable")
    used_a, used_o = set(), set()
    for matching in (True, False):  # first a matching, then top up on any pair by size
        for flat in order:
            a, o = divmod(int(flat), counts.shape[1])
            if left <= 0 or counts[a, o] == 0 or (matching and (a in used_a or o in used_o)):
                continue
            room = (cap[a, o] if np.isfinite(cap[a, o]) else left) - table[a, o]
            if matching and not np.isfinite(cap[a, o]):
                room = np.ceil(size * counts[a, o] / counts.sum())  # upsampling: share by pool count
            take = min(room, left)
            table[a, o] += take
            left -= take
            used_a.add(a)
            used_o.add(o)
    return table.astype(np.int64)


# ---------------------------------------------------------------- the plan for one size
@dataclass
class _Plan:
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
            return _round_table(real, self.r, self.c, self.cap, self.lower, self.support)
        # free margins: largest remainder over all cells keeps the total; real <= cap and cap is
        # integer, so a cell with a fractional part can always take one more
        table = np.floor(real + 1e-9)
        frac = np.where(table < self.cap, real - table, -1.0).ravel()  # a full cell never rounds up
        short = int(self.low.sum() - table.sum())
        table.ravel()[np.argsort(-frac, kind="stable")[:short]] += 1
        return table.astype(np.int64)

    def nmi(self, table) -> float:
        return joint_stats(table, self.normaliser)["nmi"]


def _targets(counts, size, allow_repeats, marginals):
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
    return counts, r, c, _capacity(counts, allow_repeats)


def _plan(counts, size, fixed_marginals, allow_repeats, normaliser, marginals=None) -> _Plan:
    counts, r, c, cap = _targets(counts, size, allow_repeats, marginals)
    low = _round_table(max_entropy_table(r, c, cap), r, c, cap)
    if low is None:
        raise InfeasibleTarget(f"no subset of size {size} has those marginals within the pool's pair counts")
    high = _high_fixed(counts, r, c, cap, normaliser)
    if high is None:
        high = low
    if not fixed_marginals:  # the greedy matching wins on skewed pools, the fixed-margin table on flat ones
        free = _high_free(counts, size, cap)
        if joint_stats(free, normaliser)["nmi"] > joint_stats(high, normaliser)["nmi"]:
            high = free
    nmi_low, nmi_high = joint_stats(low, normaliser)["nmi"], joint_stats(high, normaliser)["nmi"]
    if nmi_high < nmi_low:
        high, nmi_high = low, nmi_low
    return _Plan(low, high, cap, fixed_marginals, normaliser, nmi_low, nmi_high, r, c)


def feasible_nmi_range(counts, size: int, fixed_marginals: bool = True, allow_repeats: bool = False,
                       normaliser: str = "arithmetic", marginals=None, distinct_pairs: int | None = None,
                       seed: int = 0) -> tuple[float, float]:
    """(low, high) NMI this selector can reach at `size` from a pool with pair `counts[A, O]`.

    With distinct_pairs=K: inside the K pairs that `seed` keeps (see select_subset).
    """
    if distinct_pairs is None:
        plan = _plan(counts, size, fixed_marginals, allow_repeats, normaliser, marginals)
    else:
        plan, _ = _pairs_plan(counts, size, distinct_pairs, seed, fixed_marginals, allow_repeats, normaliser, marginals)
    return plan.nmi_low, plan.nmi_high


def feasible_pairs_range(counts, size: int, seed: int = 0, allow_repeats: bool = False,
                         marginals=None) -> tuple[int, int]:
    """(K_min, K_max): the distinct-pair counts select_subset(distinct_pairs=K) can reach at `size` with `seed`."""
    counts, r, c, cap = _targets(counts, size, allow_repeats, marginals)
    order = _order(counts, r, c, cap, seed)
    return order.n_min, order.n_max


def _solve(plan: _Plan, target: float, tol: float):
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
class _Pairs:
    """A distinct-pairs target: the keep order at this size and seed, and the first k pairs of it."""

    k: int
    order: PairOrder
    kept: np.ndarray  # bool [A, O]
    seed: int
    cap: np.ndarray  # the pool's capacity (not yet restricted to the kept pairs)


def _order(counts, r, c, cap, seed) -> PairOrder:
    order = pair_order(counts, r, c, cap, seed)
    if order is None:
        raise InfeasibleTarget(f"no subset of size {int(r.sum())} has those marginals within the pool's pair counts")
    return order


def _kept_pairs(counts, r, c, cap, k: int, seed: int) -> _Pairs:
    """The first k pairs of the keep order, or InfeasibleTarget naming the reachable range of k."""
    size, n_pool = int(r.sum()), int((counts > 0).sum())
    if k < 1:
        raise ValueError(f"distinct_pairs must be a positive integer, got {k}")
    if k > n_pool:
        raise InfeasibleTarget(f"distinct_pairs {k} > the {n_pool} pairs the pool holds")
    if k > size:
        raise InfeasibleTarget(f"distinct_pairs {k} > size {size}: every kept pair needs at least one sample")
    order = _order(counts, r, c, cap, seed)
    if not order.n_min <= k <= order.n_max:
        fewest = max(int((r > 0).sum()), int((c > 0).sum()))  # every attribute and object needs a pair
        raise InfeasibleTarget(
            f"distinct_pairs {k} not reachable at size {size} with the target marginals: feasible pairs "
            f"[{order.n_min}, {order.n_max}] (seed {seed}; no table with these marginals has fewer than {fewest})")
    return _Pairs(k, order, order.mask(k, counts.shape), seed, cap)


def _kept_plan(counts, r, c, cap, kept, normaliser) -> _Plan:
    """The NMI plan inside the kept pairs: capacity 0 elsewhere and one sample fixed on each kept pair."""
    base = kept.astype(np.int64)
    cap = np.where(kept, cap, 0.0)
    # max entropy of what is left once every kept pair has its sample; base + it stays >= 1 on kept pairs
    rest = max_entropy_dual(r - base.sum(1), c - base.sum(0), cap - base)
    low = _round_table(base + rest, r, c, cap, lower=base, support=kept)
    if low is None:  # the keep order proved a table exists, so only a solver failure lands here
        raise InfeasibleTarget(f"no table on the {int(base.sum())} kept pairs has the target marginals")
    high = _high_fixed(counts, r, c, cap, normaliser, lower=base, support=kept)
    high = low if high is None else high
    nmi_low, nmi_high = joint_stats(low, normaliser)["nmi"], joint_stats(high, normaliser)["nmi"]
    if nmi_high < nmi_low:
        high, nmi_high = low, nmi_low
    return _Plan(low, high, cap, True, normaliser, nmi_low, nmi_high, r, c, lower=base, support=kept)


def _pairs_plan(counts, size, k, seed, fixed_marginals, allow_repeats, normaliser, marginals):
    """(plan, pairs) for a subset of `size` with exactly k distinct pairs and fixed marginals."""
    if not fixed_marginals:
        raise ValueError("distinct_pairs holds the marginals fixed; it cannot be combined with free marginals")
    counts, r, c, cap = _targets(counts, int(size), allow_repeats, marginals)
    pairs = _kept_pairs(counts, r, c, cap, int(k), seed)
    return _kept_plan(counts, r, c, cap, pairs.kept, normaliser), pairs


def _ends(counts, r, c, cap, pairs: _Pairs, k: int, normaliser) -> tuple[float, float]:
    plan = _kept_plan(counts, r, c, cap, pairs.order.mask(k, counts.shape), normaliser)
    return plan.nmi_low, plan.nmi_high


def _fewest_pairs_for(counts, r, c, cap, pairs: _Pairs, target, tol, normaliser) -> str:
    """A target below the band: the fewest pairs whose low end reaches it, by bisection on k.

    The low end falls as pairs are added: H(A, O) <= log k, so with fixed marginals
    NMI >= 2 - 2 log k / (H(A) + H(O)) (docs/design_space.md).
    """
    n_min, n_max = pairs.order.n_min, pairs.order.n_max
    span = f"feasible pairs [{n_min}, {n_max}], seed {pairs.seed}"
    lowest = _ends(counts, r, c, cap, pairs, n_max, normaliser)[0]
    if lowest >= target + tol:
        return f"no pair count reaches it at this size (lowest NMI {lowest:.4f}, with all {n_max} pairs; {span})"
    lo, hi = pairs.k, n_max  # lo: too high, hi: low enough
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _ends(counts, r, c, cap, pairs, mid, normaliser)[0] < target + tol else (mid, hi)
    return f"NMI {target:g} needs at least {hi} pairs at this size ({span})"


def _pairs_reaching_high(counts, r, c, cap, pairs: _Pairs, target, tol, normaliser, n_scan: int = 9) -> str:
    """A target above the band: which of n_scan pair counts in [K_min, K_max] have a high end that reaches it.

    The high end is a heuristic and depends on which pairs are kept, not only on how many, so it
    is not monotone in k: scan a few counts instead of bisecting.
    """
    n_min, n_max = pairs.order.n_min, pairs.order.n_max
    span = f"feasible pairs [{n_min}, {n_max}], seed {pairs.seed}"
    scanned = sorted({int(k) for k in np.linspace(n_min, n_max, n_scan).round()} - {pairs.k})
    highs = {k: _ends(counts, r, c, cap, pairs, k, normaliser)[1] for k in scanned}
    reach = [k for k in scanned if highs[k] > target - tol]
    if reach:
        return (f"NMI {target:g} is within reach with {', '.join(map(str, reach))} pairs "
                f"({span}; {len(scanned)} counts scanned)")
    best = max(highs, key=highs.get) if highs else pairs.k
    return (f"no scanned pair count reaches it at this size (highest NMI {highs.get(best, float('nan')):.4f}, "
            f"with {best} pairs; {span}; {len(scanned)} counts scanned)")


def _check_band(plan: _Plan, counts, pairs: _Pairs, target, tol) -> None:
    """InfeasibleTarget when `target` is outside the NMI band of the kept pairs, naming both knobs' ranges."""
    if target is None or plan.nmi_low - tol < target < plan.nmi_high + tol:
        return
    if not 0 <= target <= 1:
        raise ValueError(f"NMI target must be in [0, 1], got {target}")
    more = _fewest_pairs_for if target < plan.nmi_low else _pairs_reaching_high
    need = more(counts, plan.r, plan.c, pairs.cap, pairs, target, tol, plan.normaliser)
    raise InfeasibleTarget(f"at size {int(plan.r.sum())} with {pairs.k} pairs, NMI {target:g} is outside "
                           f"[{plan.nmi_low:.4f}, {plan.nmi_high:.4f}] (tol {tol:g}); {need}")
def _check_pool(uids, attr_idx, obj_idx, attributes, objects):
    uids, attr_idx, obj_idx = np.asarray(uids), np.asarray(attr_idx), np.asarray(obj_idx)
    if not (uids.ndim == attr_idx.ndim == obj_idx.ndim == 1 and len(uids) == len(attr_idx) == len(obj_idx)):
        raise ValueError("uids, attr_idx and obj_idx must be 1-D arrays of the same length")
    if len(uids) == 0:
        raise ValueError("the pool is empty: no labelled samples")
    if uids.dtype.kind not in "iuU":
        raise ValueError(f"uids must be integers or strings, got dtype {uids.dtype}")
    for name, idx, names in (("attr_idx", attr_idx, attributes), ("obj_idx", obj_idx, objects)):
        if idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(names):
            raise ValueError(f"{name} must hold integer indices into its {len(names)} names")
    if len(np.unique(uids)) != len(uids):
        raise ValueError("uids must be unique within the pool")
    return uids, attr_idx.astype(np.int64), obj_idx.astype(np.int64)


def _pick(uids, attr_idx, obj_idx, table, seed: int) -> np.ndarray:
    """Pool row indices realising `table`: per pair, a seeded permutation of its uid-sorted rows."""
    n_o = table.shape[1]
    pair = attr_idx * n_o + obj_idx
    order = np.lexsort((uids, pair))  # rows grouped by pair, uid-sorted inside each pair
    starts = np.searchsorted(pair[order], np.arange(table.size + 1))
    chosen = []
    for flat in np.flatnonzero(table.ravel()):
        a, o = divmod(int(flat), n_o)
        rows = order[starts[flat]:starts[flat + 1]]
        rows = rows[np.random.default_rng([seed, a, o]).permutation(len(rows))]
        want = int(table[a, o])
        reps = -(-want // len(rows))  # repeats (upsampling) cycle through the same permutation
        chosen.append(np.tile(rows, reps)[:want])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def _marginal(counts, names) -> dict:
    total = counts.sum()
    return {str(n): float(v / total) for n, v in zip(names, counts)}


def _diversity(table, counts, rows, caption_keys) -> dict:
    """The manifest's "diversity": pair measures, plus caption measures when the pool has caption keys."""
    out = pair_diversity(table, counts)
    if caption_keys is not None:
        out.update(caption_diversity(caption_keys[0][rows], caption_keys[1][rows]))
    return out


def _build(uids, attr_idx, obj_idx, attributes, objects, table, t, plan, target, seed, tol, allow_repeats,
           counts=None, pairs: _Pairs | None = None, caption_keys=None):
    rows = _pick(uids, attr_idx, obj_idx, table, seed)
    rows = rows[np.argsort(uids[rows], kind="stable")]
    sub_uids = uids[rows]
    stats = joint_stats(table, plan.normaliser)
    manifest = {
        "size": int(len(rows)),
        "unique_uids": int(len(np.unique(sub_uids))),
        "nmi": stats["nmi"],
        "nmi_target": None if target is None else float(target),
        "tol": float(tol),
        "normaliser": plan.normaliser,
        "mi": stats["mi"],
        "h_attribute": stats["h_attribute"],
        "h_object": stats["h_object"],
        "h_joint": stats["h_joint"],
        "distinct_pairs": stats["distinct_pairs"],
        "attribute_marginal": _marginal(table.sum(1), attributes),
        "object_marginal": _marginal(table.sum(0), objects),
        "pair_counts": {"attributes": [str(a) for a in attributes], "objects": [str(o) for o in objects],
                        "counts": table.tolist()},
        "feasible_nmi_range": [plan.nmi_low, plan.nmi_high],
        "mix_t": float(t),
        "fixed_marginals": plan.fixed,
        "allow_repeats": bool(allow_repeats),
        "seed": int(seed),
        "pool_size": int(len(uids)),
        "uid_checksum": hashlib.sha256(np.ascontiguousarray(sub_uids).tobytes()).hexdigest(),
        "uid_dtype": str(sub_uids.dtype),
        "source": None,
        "diversity": _diversity(table, counts, rows, caption_keys),
        "distinct_pairs_target": None if pairs is None else pairs.k,
        "feasible_pairs_range": None if pairs is None else [pairs.order.n_min, pairs.order.n_max],
    }
    return Subset(sub_uids, attr_idx[rows], obj_idx[rows], list(attributes), list(objects), table, stats, manifest)


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
    keys = tuple(np.asarray(k) for k in caption_keys)
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
        plan = _plan(counts, int(size), fixed_marginals, allow_repeats, normaliser, marginals)
    else:
        plan, pairs = _pairs_plan(counts, size, distinct_pairs, seed, fixed_marginals, allow_repeats, normaliser,
                                  marginals)
        for target in targets:
            _check_band(plan, counts, pairs, target, tol)
    solved = [((plan.low, 0.0) if target is None else _solve(plan, float(target), tol), target)
              for target in targets]  # all checked first
    return [_build(uids, attr_idx, obj_idx, attributes, objects, table, t, plan, target, seed, tol, allow_repeats,
                   counts, pairs, caption_keys)
            for (table, t), target in solved]


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


# ---------------------------------------------------------------- writing
def _write_files(sub: Subset, folder: Path, source: str) -> None:
    np.save(folder / "subset.npy", sub.uids, allow_pickle=False)
    table = pa.table({
        "uid": pa.array(sub.uids.tolist()),
        "attribute": pa.array([sub.attributes[i] for i in sub.attr_idx], pa.string()),
        "object": pa.array([sub.objects[i] for i in sub.obj_idx], pa.string()),
    })
    pq.write_table(table, folder / "subset.parquet")
    manifest = {**sub.manifest, "source": str(source)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def write_subset(sub: Subset, out_dir, source: str = "", overwrite: bool = False) -> dict:
    """Write subset.npy, subset.parquet and manifest.json into `out_dir` atomically; returns their paths."""
    final = Path(out_dir)
    tmp = temp_dir_for(final)
    try:
        _write_files(sub, tmp, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final, overwrite)
    return {k: final / f for k, f in (("npy", "subset.npy"), ("parquet", "subset.parquet"), ("manifest", "manifest.json"))}


def target_dirname(target: float) -> str:
    """Folder name for one target of a sweep, e.g. nmi-0.1."""
    return f"nmi-{float(target):g}"


def write_subsets(subs, out_dir, source: str = "", overwrite: bool = False) -> dict:
    """Write a sweep as out_dir/nmi-<target>/... in one atomic rename; returns {target: folder}."""
    final = Path(out_dir)
    names = [target_dirname(s.manifest["nmi_target"]) for s in subs]
    if len(set(names)) != len(names):
        raise ValueError(f"NMI targets must be distinct, got {names}")
    tmp = temp_dir_for(final)
    try:
        for sub, name in zip(subs, names):
            (tmp / name).mkdir()
            _write_files(sub, tmp / name, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final, overwrite)
    return {s.manifest["nmi_target"]: final / n for s, n in zip(subs, names)}
