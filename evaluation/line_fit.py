"""Ordinary least squares of a line, the one fit behind effective robustness (robustness.py) and the
sweep report's slopes (sweep_stats.py).

    fit = fit_line(x, y)     # x, y: [n] float arrays
    fit.slope, fit.intercept, fit.r2, fit.se
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Line(NamedTuple):
    slope: float
    intercept: float
    r2: float  # 1.0 when y is constant: a flat line fits it exactly (not 0/0)
    se: float  # standard error of the slope; NaN with n <= 2 (no residual degrees of freedom)


def fit_line(x: np.ndarray, y: np.ndarray) -> Line:
    """y = slope * x + intercept by least squares, with its r2 and the slope's standard error."""
    xc, yc = x - x.mean(), y - y.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ yc) / sxx
    intercept = float(y.mean() - slope * x.mean())
    resid = yc - slope * xc  # [n]
    ss_res, ss_tot = float(resid @ resid), float(yc @ yc)
    r2 = 1.0 if ss_tot == 0 else 1.0 - ss_res / ss_tot
    se = math.sqrt(ss_res / (x.size - 2) / sxx) if x.size > 2 else math.nan
    return Line(slope, intercept, r2, se)
