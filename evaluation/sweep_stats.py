"""Ablation-sweep statistics: per-cell means with t-intervals, effect slopes and the supervision gap.

A sweep is a grid of training runs (e.g. NMI x dataset size x seed x supervision).  The input is a
pandas DataFrame with one row per finished run: the axis columns (``seed`` is the replicate axis;
``supervision`` is ``"language"`` for CLIP, ``"labels"`` for the supervised twin or ``"self"`` for the
image-only arm, which has linear-probe metrics only) plus metric columns named like the MLflow keys
(``eval/unseen/pair_top1`` ...).  Reading MLflow happens elsewhere.

* a *cell* is the set of runs that agree on every axis except ``seed``; its mean comes with a
  t-interval over seeds (``mean_ci``, ``cell_table``);
* an *effect* is the OLS slope of a metric on one numeric axis (``size`` in log2, i.e. per
  doubling), fitted to the individual runs (seeds pooled) with the other axes held fixed; its
  t-interval has n - 2 degrees of freedom and treats runs as independent (``slopes``);
* the *supervision gap* is language minus labels accuracy, paired by seed within a cell
  (``supervision_gap``);
* a *paired difference* is a metric at one level of an axis minus at its lowest level, paired by
  seed, with whether its CI excludes zero and how many seeds a CI of a given half-width would need
  at the observed spread (``paired_differences``).

Usage::

    from evaluation.sweep_stats import cell_table, slopes, supervision_gap
    axes = ["nmi", "size", "seed", "supervision"]
    cell_table(runs, axes, "eval/unseen/pair_top1")           # one row per cell: mean, ci, n, "mean ± ci"
    slopes(runs, axes, "eval/unseen/pair_top1", x="nmi")      # one row per (size, supervision)
    supervision_gap(runs, axes, "eval/unseen/object_top1")    # one row per (nmi, size)

Plain pandas / numpy / scipy.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from evaluation.line_fit import fit_line

__all__ = ["NUMERIC_AXES", "cell_table", "mean_ci", "paired_differences", "seeds_for_half_width", "slopes",
           "supervision_gap"]

NUMERIC_AXES = {"nmi": "linear", "size": "log2", "diversity": "linear"}  # x-transform for slopes
REPLICATE_AXIS = "seed"
SUPERVISION_AXIS = "supervision"
CONFIDENCE = 0.95

CELL_COLUMNS = ("mean", "ci", "n", "mean ± ci")
SLOPE_COLUMNS = ("x", "slope", "se", "ci_low", "ci_high", "n", "x_range")
GAP_COLUMNS = ("language_mean", "labels_mean", "mean_diff", "ci", "n", "mean ± ci")
DIFF_COLUMNS = ("x", "from", "to", "mean_diff", "ci", "n", "resolved", "seeds_needed", "mean ± ci")


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def mean_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided t-interval, n) of ``values``, NaNs dropped.

    With n < 2 the half-width is NaN (no spread to estimate); with n == 0 the mean is NaN too.

        >>> mean_ci([0.1, 0.2, 0.3])          # (0.2, 0.248..., 3)
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    if n < 2:
        return mean, math.nan, n
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    return mean, float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sem, n


def cell_table(runs: pd.DataFrame, axes: Sequence[str], metric: str) -> pd.DataFrame:
    """Per-cell summary of ``metric``: the axes except ``seed``, then mean, ci, n and "mean ± ci".

    Axes missing from ``runs`` are ignored; cells without a value (e.g. a pair metric of
    label-supervised runs) are left out.

        >>> cell_table(runs, ["nmi", "size", "seed", "supervision"], "eval/unseen/pair_top1")
    """
    check_runs(runs)
    _check_metric(runs, metric)
    keys = swept_cell_axes(runs, axes)
    rows = []
    for cell, sub in cell_groups(runs, keys):
        mean, ci, n = mean_ci(sub[metric])
        if n:
            rows.append({**cell, "mean": mean, "ci": ci, "n": n, "mean ± ci": plus_minus(mean, ci)})
    return pd.DataFrame(rows, columns=[*keys, *CELL_COLUMNS])


def slopes(runs: pd.DataFrame, axes: Sequence[str], metric: str, x: str,
           confidence: float = CONFIDENCE) -> pd.DataFrame:
    """OLS slope of ``metric`` on ``x`` (transformed per ``NUMERIC_AXES``) for each fixed setting.

    One row per combination of the other non-seed axes that has >= 2 distinct ``x`` values with
    data; seeds are pooled as separate points.  Columns: the fixed axes, then ``x`` (the axis
    name), slope, se, ci_low, ci_high (t-interval, n - 2 df; NaN when n <= 2), n and x_range
    ((min, max) in the axis' own units).  ``size`` is log2-transformed, so its slope is the
    change per doubling.

        >>> slopes(runs, ["nmi", "size", "seed", "supervision"], "eval/unseen/pair_top1", x="nmi")
    """
    check_runs(runs)
    _check_metric(runs, metric)
    if x not in runs.columns:
        raise ValueError(f"axis {x!r} is not a column of the runs frame (columns: {list(runs.columns)})")
    kind = NUMERIC_AXES.get(x, "linear")
    fixed = [a for a in swept_cell_axes(runs, axes) if a != x]
    rows = []
    for cell, sub in cell_groups(runs, fixed):
        sub = sub[sub[metric].notna() & sub[x].notna()]
        if sub[x].nunique() >= 2:
            rows.append({**cell, "x": x, **_fit_row(sub[x], sub[metric], kind, confidence)})
    return pd.DataFrame(rows, columns=[*fixed, *SLOPE_COLUMNS])


def supervision_gap(runs: pd.DataFrame, axes: Sequence[str], metric: str,
                    confidence: float = CONFIDENCE, labels_metric: str | None = None) -> pd.DataFrame:
    """Language minus labels ``metric`` per cell, paired by seed: mean diff, ci and n (pairs).

    ``labels_metric``: the supervised side's metric when it differs (e.g. CLIP's pair-marginalised
    object accuracy against the twin's head, which has no pair prompts); default ``metric``.

    A pair is a language run and a labels run with the same other-axis values and seed (repeated
    runs of one setting are averaged first).  Columns: the cell axes (without supervision), then
    language_mean, labels_mean (over the paired runs), mean_diff, ci, n, "mean ± ci".  Empty
    when the frame has no supervision column or no pair.

        >>> supervision_gap(runs, ["nmi", "size", "seed", "supervision"], "eval/unseen/object_top1")
    """
    check_runs(runs)
    _check_metric(runs, metric)
    keys = [a for a in swept_cell_axes(runs, axes) if a != SUPERVISION_AXIS]
    columns = [*keys, *GAP_COLUMNS]
    if SUPERVISION_AXIS not in runs.columns:
        return pd.DataFrame(columns=columns)
    paired = _paired_twins(runs, keys, metric, labels_metric or metric)
    rows = []
    for cell, sub in cell_groups(paired, keys):
        mean, ci, n = mean_ci(sub["language"] - sub["labels"], confidence)
        rows.append({**cell, "language_mean": float(sub["language"].mean()),
                     "labels_mean": float(sub["labels"].mean()), "mean_diff": mean, "ci": ci, "n": n,
                     "mean ± ci": plus_minus(mean, ci)})
    return pd.DataFrame(rows, columns=columns)


def paired_differences(runs: pd.DataFrame, axes: Sequence[str], metric: str, x: str,
                       half_width: float = 0.05, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """``metric`` at each level of ``x`` minus at its lowest level, paired by seed, per fixed setting.

    A pair is two runs with the same other-axis values and seed (repeated runs of one setting are
    averaged first). Columns: the fixed axes, then x (the axis name), from, to (the levels), mean_diff
    (to − from), ci (t half-width), n (pairs), resolved (the CI excludes zero), seeds_needed (the
    fewest seeds whose CI half-width would be ``half_width`` at the observed spread of the
    differences; NaN with fewer than 2 pairs) and "mean ± ci".

        >>> paired_differences(runs, ["nmi", "size", "seed", "supervision"], "eval/unseen/pair_top1", "nmi")
    """
    check_runs(runs)
    _check_metric(runs, metric)
    fixed = [a for a in swept_cell_axes(runs, axes) if a != x]
    columns = [*fixed, *DIFF_COLUMNS]
    if x not in runs.columns or REPLICATE_AXIS not in runs.columns:
        return pd.DataFrame(columns=columns)
    frame = runs[runs[metric].notna() & runs[x].notna()]
    rows = []
    for cell, sub in cell_groups(frame, fixed):
        by_seed = sub.groupby([x, REPLICATE_AXIS])[metric].mean().unstack(x)  # [seed, level]
        levels = sorted(by_seed.columns)
        for level in levels[1:]:
            diff = (by_seed[level] - by_seed[levels[0]]).dropna()
            mean, ci, n = mean_ci(diff, confidence)
            rows.append({**cell, "x": x, "from": as_scalar(levels[0]), "to": as_scalar(level), "mean_diff": mean,
                         "ci": ci, "n": n, "resolved": bool(n >= 2 and abs(mean) > ci),
                         "seeds_needed": seeds_for_half_width(diff, half_width, confidence),
                         "mean ± ci": plus_minus(mean, ci)})
    return pd.DataFrame(rows, columns=columns)


def seeds_for_half_width(values, half_width: float, confidence: float = CONFIDENCE, most: int = 10_000) -> float:
    """The fewest replicates n whose t-interval half-width t(n-1) * sd / sqrt(n) is at most ``half_width``,
    with sd the sample standard deviation of ``values``; NaN with fewer than 2 values.

        >>> seeds_for_half_width([0.1, 0.3, 0.2], 0.05)   # sd 0.1: 18 seeds
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2:
        return math.nan
    sd = float(arr.std(ddof=1))
    for n in range(2, most + 1):
        if float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n) <= half_width:
            return float(n)
    return math.inf


def _fit_row(x: pd.Series, y: pd.Series, kind: str, confidence: float) -> dict:
    """Slope statistics of y on transform(x): slope, se, ci_low, ci_high, n, x_range."""
    t = axis_transform(x.to_numpy(dtype=np.float64), kind)
    line = fit_line(t, y.to_numpy(dtype=np.float64))
    slope, se = line.slope, line.se
    n = int(t.size)
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 2)) * se if n > 2 else math.nan
    return {"slope": slope, "se": se, "ci_low": slope - half, "ci_high": slope + half, "n": n,
            "x_range": (as_scalar(x.min()), as_scalar(x.max()))}


def axis_transform(values, kind: str) -> np.ndarray:
    """``values`` on the slope's x scale: unchanged ("linear") or log2 ("log2", positive only)."""
    x = np.asarray(values, dtype=np.float64)
    if kind == "linear":
        return x
    if kind == "log2":
        if (x <= 0).any():
            raise ValueError(f"a log2 axis needs positive values, got {x[x <= 0].tolist()}")
        return np.log2(x)
    raise ValueError(f"unknown axis transform {kind!r} (expected 'linear' or 'log2')")


def _paired_twins(runs: pd.DataFrame, keys: list[str], metric: str, labels_metric: str) -> pd.DataFrame:
    """One row per (keys, seed) with both twins: the key columns plus "language" and "labels"."""
    pair_keys = [*keys, REPLICATE_AXIS] if REPLICATE_AXIS in runs.columns else list(keys)
    # A constant column keeps groupby/merge working when there is nothing else to pair on.
    frame = runs.assign(_pair=0)
    pair_keys.append("_pair")
    sides = [_twin_side(frame[frame[m].notna()], side, pair_keys, m)
             for side, m in (("language", metric), ("labels", labels_metric))]
    return sides[0].merge(sides[1], on=pair_keys, how="inner")


def _twin_side(frame: pd.DataFrame, supervision: str, keys: list[str], metric: str) -> pd.DataFrame:
    """Mean ``metric`` of the ``supervision`` runs per ``keys``, in a column named ``supervision``."""
    side = frame[frame[SUPERVISION_AXIS] == supervision]
    return side.groupby(keys, dropna=False)[metric].mean().rename(supervision).reset_index()


# ----------------------------------------------------------------------------------------------
# Frame helpers
# ----------------------------------------------------------------------------------------------


def check_runs(runs: pd.DataFrame) -> None:
    """Raise ValueError for a missing or empty runs frame (nothing to report on)."""
    if runs is None or len(runs) == 0:
        raise ValueError("the sweep has no runs: the runs DataFrame is empty")


def _check_metric(runs: pd.DataFrame, metric: str) -> None:
    """Raise ValueError when ``metric`` is not a column, listing the metric columns there are."""
    if metric not in runs.columns:
        known = [c for c in runs.columns if str(c).startswith("eval/")]
        raise ValueError(f"metric {metric!r} is not a column of the runs frame (eval metrics: {known})")


def present_axes(runs: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The ``axes`` that are columns of ``runs``, in order (an axis may be absent from a sweep)."""
    return [a for a in axes if a in runs.columns]


def swept_cell_axes(runs: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The present axes that define a cell: all but the replicate axis."""
    return [a for a in present_axes(runs, axes) if a != REPLICATE_AXIS]


def cell_groups(frame: pd.DataFrame, keys: Sequence[str]) -> Iterator[tuple[dict, pd.DataFrame]]:
    """Yield ({key: value}, sub-frame) per distinct combination of ``keys`` (NaN is a value)."""
    if not keys:
        yield {}, frame
        return
    for values, sub in frame.groupby(list(keys), dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        yield {k: as_scalar(v) for k, v in zip(keys, values)}, sub


def as_scalar(value):
    """A plain Python value for a numpy scalar (so tables, JSON and f-strings behave)."""
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def plus_minus(mean: float, ci: float, n: int | None = None) -> str:
    """"0.412 ± 0.021" ("± n/a" without a CI), with " (n)" appended when ``n`` is given."""
    text = f"{mean:.3f} ± " + ("n/a" if is_missing(ci) else f"{ci:.3f}")
    return text if n is None else f"{text} ({n})"


def is_missing(value) -> bool:
    """True for None and float NaN (pandas' NA too)."""
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
