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

from data_filters.files import publish_dir, temp_dir_for
from data_filters.nmi import joint_stats


class InfeasibleTarget(ValueError):
    """The pool cannot give a subset of that size (and marginals) at the requested NMI."""


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


def _transport_lp(cost, r, c, lower, upper):
    """Integer table with row sums r, column sums c, lower <= T <= upper minimising sum(cost * T); None if none."""
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


def _round_table(real, r, c, cap):
    """Integer table near `real` with exact margins r, c and under `cap`."""
    floor = np.floor(real + 1e-9)
    ceil = np.minimum(np.ceil(real - 1e-9), cap)
    # prefer rounding up the cells with the largest fractional part
    table = _transport_lp(-(real - floor), r, c, np.minimum(floor, ceil), ceil)
    if table is None:  # `real` was only approximately on the margins: allow any integer table
        table = _transport_lp(-real, r, c, np.zeros_like(real), cap)
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


def _entropy_descent(table, r, c, cap, steps: int = 8):
    """Lower the joint entropy by successive LPs on its linearisation (cost = -log T)."""
    best = table
    for _ in range(steps):
        cost = -np.log(best + 0.5)
        nxt = _transport_lp(cost, r, c, np.zeros(best.shape), cap)
        if nxt is None or joint_stats(nxt)["h_joint"] >= joint_stats(best)["h_joint"] - 1e-12:
            break
        best = nxt
    return best


def _high_fixed(counts, r, c, cap, normaliser):
    """Concentrated table with margins r, c under cap: the best of a few entropy-descent runs."""
    n = counts.sum()
    lift = counts * n / np.maximum(np.outer(counts.sum(1), counts.sum(0)), 1)
    starts = [-np.log1p(counts), -np.log1p(lift), -np.log1p(counts) - np.log1p(lift)]
    best, best_nmi = None, -1.0
    for cost in starts:
        start = _transport_lp(cost, r, c, np.zeros(counts.shape), cap)
        if start is None:
            continue
        table = _entropy_descent(start, r, c, cap)
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

    def table(self, t: float) -> np.ndarray:
        real = (1 - t) * self.low + t * self.high
        if self.fixed:
            return _round_table(real, self.r, self.c, self.cap)
        # free margins: largest remainder over all cells keeps the total; real <= cap and cap is
        # integer, so a cell with a fractional part can always take one more
        table = np.floor(real + 1e-9)
        frac = np.where(table < self.cap, real - table, -1.0).ravel()  # a full cell never rounds up
        short = int(self.low.sum() - table.sum())
        table.ravel()[np.argsort(-frac, kind="stable")[:short]] += 1
        return table.astype(np.int64)

    def nmi(self, table) -> float:
        return joint_stats(table, self.normaliser)["nmi"]


def _plan(counts, size, fixed_marginals, allow_repeats, normaliser, marginals=None) -> _Plan:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.sum() == 0:
        raise ValueError("the pool is empty: no labelled attribute-object pair")
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    if not allow_repeats and size > counts.sum():
        raise InfeasibleTarget(f"size {size} exceeds the pool ({int(counts.sum())} samples); use allow_repeats to upsample")
    ra, co = marginals if marginals is not None else (counts.sum(1), counts.sum(0))
    r, c = largest_remainder(ra, size), largest_remainder(co, size)
    cap = _capacity(counts, allow_repeats)
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
                       normaliser: str = "arithmetic", marginals=None) -> tuple[float, float]:
    """(low, high) NMI this selector can reach at `size` from a pool with pair `counts[A, O]`."""
    plan = _plan(counts, size, fixed_marginals, allow_repeats, normaliser, marginals)
    return plan.nmi_low, plan.nmi_high


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


# ---------------------------------------------------------------- uids from a table
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


def _build(uids, attr_idx, obj_idx, attributes, objects, table, t, plan, target, seed, tol, allow_repeats):
    rows = _pick(uids, attr_idx, obj_idx, table, seed)
    rows = rows[np.argsort(uids[rows], kind="stable")]
    sub_uids = uids[rows]
    stats = joint_stats(table, plan.normaliser)
    manifest = {
        "size": int(len(rows)),
        "unique_uids": int(len(np.unique(sub_uids))),
        "nmi": stats["nmi"],
        "nmi_target": float(target),
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
    }
    return Subset(sub_uids, attr_idx[rows], obj_idx[rows], list(attributes), list(objects), table, stats, manifest)


def select_many(uids, attr_idx, obj_idx, attributes, objects, size: int, nmi_targets, seed: int = 0,
                normaliser: str = "arithmetic", fixed_marginals: bool = True, allow_repeats: bool = False,
                tol: float = 0.005, marginals=None) -> list[Subset]:
    """One subset of `size` per NMI target, all sharing one marginal target; InfeasibleTarget before any work is returned."""
    uids, attr_idx, obj_idx = _check_pool(uids, attr_idx, obj_idx, attributes, objects)
    counts = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    plan = _plan(counts, int(size), fixed_marginals, allow_repeats, normaliser, marginals)
    solved = [(_solve(plan, float(target), tol), target) for target in nmi_targets]  # all checked first
    return [_build(uids, attr_idx, obj_idx, attributes, objects, table, t, plan, target, seed, tol, allow_repeats)
            for (table, t), target in solved]


def select_subset(uids, attr_idx, obj_idx, attributes, objects, size: int, nmi_target: float, seed: int = 0,
                  normaliser: str = "arithmetic", fixed_marginals: bool = True, allow_repeats: bool = False,
                  tol: float = 0.005, marginals=None) -> Subset:
    """The subset of `size` samples whose attribute-object NMI is within `tol` of `nmi_target`."""
    return select_many(uids, attr_idx, obj_idx, attributes, objects, size, [nmi_target], seed, normaliser,
                       fixed_marginals, allow_repeats, tol, marginals)[0]


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
