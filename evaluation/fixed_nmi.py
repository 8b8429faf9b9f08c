"""Diversity at a fixed NMI: did every cell's subset reach the NMI target it was selected for?

A sweep that varies the distinct pairs K (axis ``diversity``) at one NMI target compares diversity
alone only when every subset sits at that target; otherwise accuracy against K mixes K with NMI
(at fixed marginals fewer pairs force a higher NMI: docs/design_space.md). Each subset differs by
seed (its kept pairs are drawn with the fit's seed), so the check is per run.

The runs frame (evaluation.sweep_stats) carries, per run, what the fit logged about its subset
(aotrain/sweeps/collect.py reads it from the run's MLflow params): REACHED, the pair NMI of the
subset's manifest; TARGET, its NMI target (NaN without one); PAIRS, its distinct pairs.

    from evaluation.fixed_nmi import nmi_match
    nmi_match(runs, ["nmi", "size", "diversity", "seed", "supervision"])   # one row per cell
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from evaluation.sweep_stats import cell_groups, check_runs, swept_cell_axes

__all__ = ["MATCH_COLUMNS", "NMI_MATCH", "PAIRS", "REACHED", "TARGET", "nmi_match", "varies_diversity"]

REACHED, TARGET, PAIRS = "subset/nmi", "subset/nmi_target", "subset/distinct_pairs"
DIVERSITY_AXIS, NMI_AXIS = "diversity", "nmi"
# Twice the selector's default tolerance (subset.tol 0.005): a cell beyond it was not held at its target.
NMI_MATCH = 0.01

MATCH_COLUMNS = ("target", "reached", "reached_min", "reached_max", "max_abs_diff", "pairs", "n", "off")


def varies_diversity(runs: pd.DataFrame, axes: Sequence[str]) -> bool:
    """True when ``diversity`` is a swept axis with more than one value in ``runs``."""
    return DIVERSITY_AXIS in swept_cell_axes(runs, axes) and runs[DIVERSITY_AXIS].nunique() > 1


def _targets(runs: pd.DataFrame) -> pd.Series:
    """Each run's NMI target: the one its subset was selected for, else its ``nmi`` knob, else NaN."""
    logged = pd.to_numeric(runs[TARGET], errors="coerce") if TARGET in runs.columns else None
    knob = pd.to_numeric(runs[NMI_AXIS], errors="coerce") if NMI_AXIS in runs.columns else None
    if logged is None and knob is None:
        return pd.Series(np.nan, index=runs.index)
    if logged is None:
        return knob
    return logged if knob is None else logged.fillna(knob)


def nmi_match(runs: pd.DataFrame, axes: Sequence[str], within: float = NMI_MATCH) -> pd.DataFrame:
    """One row per cell: the cell axes, then target (NaN when the cell has none), reached (mean over its
    runs), reached_min, reached_max, max_abs_diff (the largest |reached - target| of its runs), pairs
    (distinct pairs reached: "45", or "44–45" when runs differ), n (runs with a reached NMI) and off
    (some run is more than ``within`` from the target; False without a target).

        >>> nmi_match(runs, ["nmi", "size", "diversity", "seed", "supervision"])
    """
    check_runs(runs)
    keys = swept_cell_axes(runs, axes)
    frame = runs.assign(_target=_targets(runs),
                        _reached=pd.to_numeric(runs[REACHED], errors="coerce") if REACHED in runs.columns else np.nan,
                        _pairs=pd.to_numeric(runs[PAIRS], errors="coerce") if PAIRS in runs.columns else np.nan)
    rows = []
    for cell, sub in cell_groups(frame, keys):
        reached = sub["_reached"].dropna()
        targets = sub["_target"].dropna().unique()
        target = float(targets[0]) if len(targets) == 1 else np.nan  # a cell holds one target
        diff = (sub["_reached"] - sub["_target"]).abs().dropna()
        rows.append({**cell, "target": target,
                     "reached": float(reached.mean()) if len(reached) else np.nan,
                     "reached_min": float(reached.min()) if len(reached) else np.nan,
                     "reached_max": float(reached.max()) if len(reached) else np.nan,
                     "max_abs_diff": float(diff.max()) if len(diff) else np.nan,
                     "pairs": _span(sub["_pairs"].dropna()), "n": int(len(reached)),
                     "off": bool(len(diff) and diff.max() > within)})
    return pd.DataFrame(rows, columns=[*keys, *MATCH_COLUMNS])


def _span(values: pd.Series) -> str:
    """"45", "44–45" or "—" for the distinct pairs the runs of a cell reached."""
    if not len(values):
        return "—"
    lo, hi = int(values.min()), int(values.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"
