"""Which attribute-object pairs a subset with exactly K distinct pairs keeps: one seeded, nested order.

    from data_filters.kept_pairs import pair_order
    order = pair_order(counts, r, c, cap, seed=0)   # counts[A, O] of the pool, target marginals r, c
    kept = order.mask(40, counts.shape)            # the 40 pairs a 40-pair subset keeps

`select_subset(..., distinct_pairs=K)` takes the first K pairs of this order; the NMI machinery of
plan.py then runs inside them with every kept pair holding at least one sample.

The order (fixed by pool, size, marginals and seed; the same for every K, so pair sets are nested):
1. Key every pair of the pool by a seeded draw weighted by its pool count (Efraimidis-Spirakis:
   key = Exp(1) / count, ascending), i.e. a count-weighted random order without replacement.
   Common pairs tend to come first: they carry the marginals with few pairs, and a subset with
   few pairs looks like the pool's main pairs rather than its rarest ones.
2. Spine: the support of a vertex of the transportation LP (margins r, c, 0 <= T <= capacity,
   minimise sum key * T), then pruned: latest key first, a spine pair is dropped when its samples
   can move onto the other spine pairs (augmenting paths, as in step 3; exact). What is left is
   the fewest pairs this selector needs, K_min: no single pair of it can go. A vertex has
   at most A + O - 1 cells strictly inside their bounds (plus cells at capacity, which is why
   K_min often exceeds A + O - 1 on pools of small pair counts), and no table has fewer than
   max(A, O) pairs (every attribute and object needs one).
3. Growth: the other pairs in key order, each kept if some table with margins r, c, under the
   capacity and with at least one sample on every kept pair still exists. That test is exact and
   cheap: with a witness table W of the current pairs, pair (a, o) fits iff an augmenting cycle
   exists - take one sample off a cell of row a holding >= 2, put it on a cell of that column with
   room, take one off that row, ... until column o (breadth-first search). A pair that does not fit
   is retried after the others (new pairs open new cycles); a pair whose attribute or object
   already has as many pairs as samples never fits. The order ends when a pass adds nothing: K_max.
So every K in [K_min, K_max] is feasible, with exactly K pairs, and the K-pair set contains the
K'-pair set for K' < K.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from data_filters.transport import transport_on_cells

ORDER_STREAM = 9  # seed stream of the pair keys; pick_rows in subset_files.py draws from [seed, a, o]


@dataclass
class PairOrder:
    """Flat pair indices (a * n_objects + o) in keep order; the first n_min form the spine."""

    order: np.ndarray
    n_min: int

    @property
    def n_max(self) -> int:
        return len(self.order)

    def mask(self, k: int, shape) -> np.ndarray:
        """Bool [A, O]: the pairs a subset with k distinct pairs keeps (n_min <= k <= n_max)."""
        if not self.n_min <= k <= self.n_max:
            raise ValueError(f"k={k} outside [{self.n_min}, {self.n_max}]")
        kept = np.zeros(shape, dtype=bool)
        kept.ravel()[self.order[:k]] = True
        return kept


def pair_keys(counts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cells, keys): the pool's pairs as flat indices (ascending) and their seeded count-weighted keys."""
    cells = np.flatnonzero(counts.ravel() > 0)
    u = np.random.default_rng([seed, ORDER_STREAM]).random(len(cells))
    return cells, -np.log1p(-u) / counts.ravel()[cells]  # Exp(1) / weight; 1 - u is in (0, 1]




def _vertex(cells, keys, r, c, cap, n_objects: int) -> dict | None:
    """{cell: count > 0} of a vertex table on `cells` minimising sum keys * T; None if none."""
    values = transport_on_cells(cells, keys / max(keys.max(), 1e-300), r, c, np.zeros(len(cells)), cap, n_objects)
    if values is None:
        return None
    return {int(cell): int(t) for cell, t in zip(cells, values) if t > 0}


class _Witness:
    """A table W on a set of pairs (margins r, c, W <= cap) with its row/column adjacency.

    Changes go along augmenting paths that alternate between a row and a column: a path from row a
    to column o changes its cells by -1, +1, -1, ... (sign=-1: make room for a new pair (a, o)) or
    by +1, -1, +1, ... (sign=+1: move the samples of (a, o) elsewhere), which keeps every margin.
    """

    def __init__(self, table: dict, cap: dict, n_objects: int, n_a: int):
        self.w, self.cap, self.n_o = dict(table), cap, n_objects
        self.rows: list[list[int]] = [[] for _ in range(n_a)]
        self.cols: list[list[int]] = [[] for _ in range(n_objects)]
        for cell in self.w:
            self._link(cell)

    def _link(self, cell: int) -> None:
        a, o = divmod(cell, self.n_o)
        self.rows[a].append(o)
        self.cols[o].append(a)

    def _unlink(self, cell: int) -> None:
        a, o = divmod(cell, self.n_o)
        self.rows[a].remove(o)
        self.cols[o].remove(a)
        del self.w[cell]

    def _room(self, cell: int, sign: int, floor: int) -> float:
        """How far `cell` can move in direction `sign` (down to `floor`, up to its capacity)."""
        return self.cap[cell] - self.w[cell] if sign > 0 else self.w[cell] - floor

    def _path(self, a: int, o: int, sign: int, floor: int, banned: int = -1) -> list | None:
        """[(cell, sign)] of a path from row a to column o (breadth first), the row steps moving by `sign`."""
        n_o = self.n_o
        came_to_col, came_to_row = {}, {a: None}  # col -> row it was left from; row -> col it was reached by
        queue = deque([a])
        while queue:
            u = queue.popleft()
            for v in self.rows[u]:
                cell = u * n_o + v
                if v in came_to_col or cell == banned or self._room(cell, sign, floor) <= 0:
                    continue
                came_to_col[v] = u
                if v == o:
                    return self._steps(came_to_col, came_to_row, o, sign)
                for b in self.cols[v]:
                    back = b * n_o + v
                    if b not in came_to_row and back != banned and self._room(back, -sign, floor) > 0:
                        came_to_row[b] = v
                        queue.append(b)
        return None

    def _steps(self, came_to_col, came_to_row, o: int, sign: int) -> list:
        steps, v = [], o
        while True:
            u = came_to_col[v]
            steps.append((u * self.n_o + v, sign))
            v = came_to_row[u]
            if v is None:
                return steps
            steps.append((u * self.n_o + v, -sign))

    def _apply(self, steps, amount) -> None:
        for cell, sign in steps:
            self.w[cell] += sign * amount

    def try_add(self, cell: int) -> bool:
        """Keep `cell` with one sample if a path makes room for it, every kept pair keeping one; else False."""
        a, o = divmod(cell, self.n_o)
        steps = self._path(a, o, -1, floor=1)
        if steps is None:
            return False
        self._apply(steps, 1)
        self.w[cell] = 1
        self._link(cell)
        return True

    def try_remove(self, cell: int) -> bool:
        """Move all of `cell`'s samples onto the other pairs (which may empty) and drop it; False (and no
        change) when they do not fit. Exact: W[cell] is at its minimum iff no such path remains."""
        a, o = divmod(cell, self.n_o)
        done = []
        left = self.w[cell]
        while left > 0:
            steps = self._path(a, o, +1, floor=0, banned=cell)
            if steps is None:
                for undo, amount in reversed(done):
                    self._apply(undo, -amount)
                return False
            amount = min(left, *(self._room(step, sign, 0) for step, sign in steps))
            self._apply(steps, amount)
            done.append((steps, amount))
            left -= amount
        self._unlink(cell)
        return True

    def drop_empty(self) -> None:
        for cell in [cell for cell, value in self.w.items() if value == 0]:
            self._unlink(cell)


def _spine(cells, keys, r, c, cap, n_objects: int) -> _Witness | None:
    """The pruned vertex table (module docstring, step 2) as a witness; None if no table exists."""
    table = _vertex(cells, keys, r, c, cap, n_objects)
    if table is None:
        return None
    witness = _Witness(table, dict(zip(cells.tolist(), cap.tolist())), n_objects, len(r))
    key_of = dict(zip(cells.tolist(), keys.tolist()))
    for cell in sorted(table, key=lambda x: -key_of[x]):  # latest first: the earliest pairs are kept
        a, o = divmod(cell, n_objects)
        if cell in witness.w and len(witness.rows[a]) > 1 and len(witness.cols[o]) > 1:  # a lone cell is needed
            witness.try_remove(cell)
    witness.drop_empty()  # pairs emptied by moves are not needed either
    return witness


def _grow(witness: _Witness, candidates, r, c, n_objects: int) -> list:
    """Candidates in order, each kept when it fits; passes repeat over the deferred ones until none fits."""
    per_row = np.bincount([cell // n_objects for cell in witness.w], minlength=len(r))
    per_col = np.bincount([cell % n_objects for cell in witness.w], minlength=len(c))
    kept, pending = [], [int(cell) for cell in candidates]
    while pending:
        deferred, added = [], 0
        for cell in pending:
            a, o = divmod(cell, n_objects)
            if per_row[a] >= r[a] or per_col[o] >= c[o]:
                continue  # every kept pair needs a sample of its row and column: it never fits again
            if witness.try_add(cell):
                kept.append(cell)
                per_row[a] += 1
                per_col[o] += 1
                added += 1
            else:
                deferred.append(cell)  # a pair kept later may open a cycle for it
        if added == 0:
            break  # the witness did not change, so another pass would keep nothing either
        pending = deferred
    return kept


def pair_order(counts, r, c, cap, seed: int) -> PairOrder | None:
    """The keep order (module docstring) for target marginals r, c under capacity cap[A, O]; None if no
    table has those marginals."""
    counts = np.asarray(counts)
    n_objects = counts.shape[1]
    cells, keys = pair_keys(counts, seed)
    cap_cells = np.asarray(cap, dtype=np.float64).ravel()[cells]
    witness = _spine(cells, keys, np.asarray(r), np.asarray(c), cap_cells, n_objects)
    if witness is None:
        return None
    ordered = cells[np.argsort(keys, kind="stable")]
    in_spine = np.isin(ordered, list(witness.w))
    tail = _grow(witness, ordered[~in_spine], r, c, n_objects)
    return PairOrder(np.concatenate([ordered[in_spine], np.asarray(tail, dtype=np.int64)]), int(in_spine.sum()))
