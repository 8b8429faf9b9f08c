"""Integer attribute x object tables with given margins under a capacity: the transportation LP and
what is built on it (data_filters/select.py's spec says where each piece is used).

    table = round_table(real, r, c, cap)               # integer, margins exactly r and c, T <= cap
    table = transport_lp(cost, r, c, lower, upper)     # the cheapest such table (HiGHS dual simplex)
    high = concentrated_table(counts, r, c, cap, "arithmetic")   # a high-NMI end of the NMI range

The constraint matrix of a transportation problem is totally unimodular, so simplex vertices are
integral: every LP here returns integers (checked, never assumed).
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from data_filters.nmi import joint_stats


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


def capacity(counts: np.ndarray, allow_repeats: bool) -> np.ndarray:
    """[A, O] how many samples a subset may take per pair: the pool's counts, or (repeats) unbounded where it has any."""
    return np.where(counts > 0, np.inf, 0.0) if allow_repeats else counts.astype(np.float64)


def transport_lp(cost, r, c, lower, upper, support=None):
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


def round_table(real, r, c, cap, lower=None, support=None):
    """Integer table near `real` with exact margins r, c, under `cap` and (if given) at least `lower`."""
    floor = np.floor(real + 1e-9)
    ceil = np.minimum(np.ceil(real - 1e-9), cap)
    # prefer rounding up the cells with the largest fractional part
    table = transport_lp(-(real - floor), r, c, np.minimum(floor, ceil), ceil, support)
    if table is None:  # `real` was only approximately on the margins: allow any integer table
        table = transport_lp(-real, r, c, np.zeros_like(real) if lower is None else lower, cap, support)
    return table


def transport_on_cells(cells, cost, r, c, lower, upper, n_objects: int) -> np.ndarray | None:
    """Integer values on `cells` (flat indices) with row sums r, column sums c, lower <= T <= upper,
    minimising sum(cost * T); None if none. Only the listed cells are variables (sparse pools)."""
    n_a, n = len(r), len(cells)
    a, o = np.divmod(np.asarray(cells, dtype=np.int64), n_objects)
    eq = sparse.csr_matrix((np.ones(2 * n), (np.concatenate([a, n_a + o]), np.tile(np.arange(n), 2))),
                           shape=(n_a + len(c), n))
    res = linprog(np.asarray(cost, dtype=np.float64), A_eq=eq, b_eq=np.concatenate([r, c]).astype(np.float64),
                  bounds=np.column_stack([lower, upper]).astype(np.float64), method="highs-ds")
    if res.status != 0:
        return None
    values = np.rint(res.x).astype(np.int64)
    # the polytope is integral (totally unimodular constraints), so a simplex vertex is; check anyway
    if not (np.array_equal(np.bincount(a, values, n_a), r) and np.array_equal(np.bincount(o, values, len(c)), c)
            and (values >= lower).all() and (values <= upper).all()):
        return None
    return values


# ---------------------------------------------------------------- the high-NMI end
def _entropy_descent(table, r, c, cap, steps: int = 8, lower=None, support=None):
    """Lower the joint entropy by successive LPs on its linearisation (cost = -log T)."""
    best = table
    lower = np.zeros(best.shape) if lower is None else lower
    for _ in range(steps):
        cost = -np.log(best + 0.5)
        nxt = transport_lp(cost, r, c, lower, cap, support)
        if nxt is None or joint_stats(nxt)["h_joint"] >= joint_stats(best)["h_joint"] - 1e-12:
            break
        best = nxt
    return best


def concentrated_table(counts, r, c, cap, normaliser, lower=None, support=None):
    """Concentrated table with margins r, c, under cap (and over `lower`): the best of a few entropy-descent runs."""
    lower = np.zeros(counts.shape) if lower is None else lower
    n = counts.sum()
    lift = counts * n / np.maximum(np.outer(counts.sum(1), counts.sum(0)), 1)
    starts = [-np.log1p(counts), -np.log1p(lift), -np.log1p(counts) - np.log1p(lift)]
    best, best_nmi = None, -1.0
    for cost in starts:
        start = transport_lp(cost, r, c, lower, cap, support)
        if start is None:
            continue
        table = _entropy_descent(start, r, c, cap, lower=lower, support=support)
        nmi = joint_stats(table, normaliser)["nmi"]
        if nmi > best_nmi + 1e-12:
            best, best_nmi = table, nmi
    return best


def matching_table(counts, size, cap):
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
