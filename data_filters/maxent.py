"""The maximum-entropy table with margins r, c under a capacity: the low-NMI end of selection.

    table = max_entropy_table(r, c, cap)   # capped iterative proportional fitting, T = min(cap, x_a y_o)
    table = max_entropy_dual(r, c, cap)    # the same table by Newton's method on the dual (fast when
                                           # many capacities bind: kept pairs, small pair counts)
Both are real-valued; data_filters.transport.round_table makes integers of them.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve


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
