"""Compositional zero-shot learning (CZSL) calibration-bias curve: AUC and best harmonic mean.

Protocol.  Every test image has a true (attribute, object) pair; a model scores
all P candidate pairs.  Some candidate pairs are *unseen* (absent from
training), and models are biased against them.  The CZSL protocol adds one
calibration bias ``b`` to the scores of every unseen pair and sweeps ``b``:
seen accuracy (over images whose true pair is seen) falls and unseen accuracy
(over images whose true pair is unseen) rises.  Reported are the best harmonic
mean ``HM = 2 s u / (s + u)`` over the sweep and the area under the
seen-accuracy (y) vs unseen-accuracy (x) curve (AUC).

Exact curve.  With ``ms_i`` / ``mu_i`` the best seen / unseen score of image
``i``, the top-1 prediction is an unseen pair iff ``mu_i + b > ms_i``, i.e.
``b > d_i := ms_i - mu_i``.  Hence

  * a seen-target image is correct iff its target is the argmax among seen
    pairs and ``b < d_i``;
  * an unseen-target image is correct iff its target is the argmax among
    unseen pairs and ``b > d_i``.

Both accuracies are step functions of ``b`` with breakpoints at the ``d_i``;
this module evaluates them once per interval between consecutive distinct
breakpoints (plus both ends), so the curve contains *every* reachable
(seen, unseen) point, in O(N log N) (one sort plus cumulative counts).

Ties.  Strict inequalities as above: a bias exactly at a breakpoint (a tie
between the best seen and best unseen score) is never an evaluation point;
the reported ``biases`` are representatives of each open interval (midpoints,
and ``min - 1`` / ``max + 1`` at the ends) while the accuracies come from
counting, not from re-running argmax at those representatives.  Ties *within*
the seen (or unseen) pairs go to the first column, as ``np.argmax`` does.

Versus the literature.  The common reference CZSL implementation evaluates a
subsample of biases taken from the unseen-target images only, so it can skip
some steps of the curve and its AUC can be slightly lower than the exact one.

Usage::

    from evaluation.czsl import czsl_curve
    curve = czsl_curve(scores, targets, unseen)   # [N, P], [N], [P] bool
    curve.metrics()        # {"czsl/auc": ..., "czsl/best_hm": ..., ...}
    curve.plot("runs/x/eval/czsl.png")

Accepts numpy arrays or torch tensors (converted with ``.detach().cpu().numpy()``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_filters.files import atomic_path

from .metrics import as_numpy

__all__ = ["CZSLCurve", "czsl_curve"]


@dataclass
class CZSLCurve:
    """Exact seen/unseen accuracy step curve over the calibration bias (see module docstring)."""

    biases: np.ndarray  # [K] increasing representatives of the K open intervals between breakpoints
    seen_acc: np.ndarray  # [K] non-increasing
    unseen_acc: np.ndarray  # [K] non-decreasing
    harmonic_mean: np.ndarray  # [K] 0 where seen + unseen == 0
    auc: float  # trapezoid of seen_acc (y) over unseen_acc (x), points in bias order
    best_index: int  # first argmax of harmonic_mean
    seen_no_bias: float  # accuracies at b = 0, same strict inequalities
    unseen_no_bias: float

    @property
    def best_hm(self) -> float:
        return float(self.harmonic_mean[self.best_index])

    @property
    def best_seen(self) -> float:
        return float(self.seen_acc[self.best_index])

    @property
    def best_unseen(self) -> float:
        return float(self.unseen_acc[self.best_index])

    @property
    def best_bias(self) -> float:
        return float(self.biases[self.best_index])

    def metrics(self, prefix: str = "czsl/") -> dict[str, float]:
        """Flat python-float metrics, keys prefixed with ``prefix``."""
        values = {
            "auc": self.auc,
            "best_hm": self.best_hm,
            "best_hm_seen": self.best_seen,
            "best_hm_unseen": self.best_unseen,
            "best_hm_bias": self.best_bias,
            "seen_no_bias": self.seen_no_bias,
            "unseen_no_bias": self.unseen_no_bias,
        }
        return {f"{prefix}{k}": float(v) for k, v in values.items()}

    def to_rows(self) -> list[dict]:
        """One dict per curve point: bias, seen_acc, unseen_acc, harmonic_mean (python floats)."""
        return [
            {"bias": float(b), "seen_acc": float(s), "unseen_acc": float(u), "harmonic_mean": float(h)}
            for b, s, u, h in zip(self.biases, self.seen_acc, self.unseen_acc, self.harmonic_mean)
        ]

    def plot(self, path: str | os.PathLike) -> Path:
        """Write a PNG of seen (y) vs unseen (x) accuracy with the best-HM point marked."""
        # Figure + Agg canvas directly: no pyplot global state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(self.unseen_acc, self.seen_acc, "-", color="tab:blue", label="bias sweep")
        ax.plot([self.best_unseen], [self.best_seen], "o", color="tab:red",
                label=f"best HM (bias {self.best_bias:.3g})")
        ax.set_xlabel("unseen accuracy")
        ax.set_ylabel("seen accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        ax.set_title(f"CZSL: AUC {self.auc:.4f}, best HM {self.best_hm:.4f}")
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        return path


def czsl_curve(scores, targets, unseen) -> CZSLCurve:
    """Exact CZSL bias curve.

    scores: [N, P] finite floats; targets: [N] ints in [0, P); unseen: [P] bool
    mask of unseen candidate pairs.  Raises ValueError on inconsistent inputs,
    when either candidate group is empty, or when no image has a seen (or no
    image an unseen) target.
    """
    scores, targets, unseen = _validate(scores, targets, unseen)
    seen = ~unseen
    target_unseen = unseen[targets]  # [N] bool: true pair of image i is unseen
    n_seen_img = int((~target_unseen).sum())
    n_unseen_img = int(target_unseen.sum())

    seen_cols = np.flatnonzero(seen)  # [Ps]
    unseen_cols = np.flatnonzero(unseen)  # [Pu]
    seen_scores = scores[:, seen_cols]  # [N, Ps]
    unseen_scores = scores[:, unseen_cols]  # [N, Pu]
    # The target can only ever be predicted if it wins inside its own group.
    seen_argmax = seen_cols[seen_scores.argmax(axis=1)]  # [N] column index
    unseen_argmax = unseen_cols[unseen_scores.argmax(axis=1)]  # [N]
    gap = seen_scores.max(axis=1) - unseen_scores.max(axis=1)  # [N] d_i = ms_i - mu_i
    can_seen = ~target_unseen & (seen_argmax == targets)  # [N] correct iff b < d_i
    can_unseen = target_unseen & (unseen_argmax == targets)  # [N] correct iff b > d_i

    breaks = np.unique(gap)  # [M] sorted distinct breakpoints, M >= 1
    # Interval j is (breaks[j-1], breaks[j]) with breaks[-1] = -inf, breaks[M] = +inf: K = M + 1 intervals.
    rank = np.searchsorted(breaks, gap)  # [N] index of d_i in breaks
    n_intervals = len(breaks) + 1
    # Seen image with rank r is correct on intervals j <= r; unseen image on intervals j >= r + 1.
    seen_hits = np.bincount(rank[can_seen], minlength=n_intervals)  # [K]
    seen_correct = np.cumsum(seen_hits[::-1])[::-1]  # [K] suffix sums: #ranks >= j
    unseen_hits = np.bincount(rank[can_unseen] + 1, minlength=n_intervals)  # [K]
    unseen_correct = np.cumsum(unseen_hits)  # [K] prefix sums: #(rank + 1) <= j

    seen_acc = seen_correct / n_seen_img
    unseen_acc = unseen_correct / n_unseen_img
    hm = _harmonic_mean(seen_acc, unseen_acc)
    return CZSLCurve(
        biases=_interval_representatives(breaks),
        seen_acc=seen_acc,
        unseen_acc=unseen_acc,
        harmonic_mean=hm,
        auc=_trapezoid(y=seen_acc, x=unseen_acc),
        best_index=int(np.argmax(hm)),
        seen_no_bias=float((can_seen & (gap > 0)).sum() / n_seen_img),
        unseen_no_bias=float((can_unseen & (gap < 0)).sum() / n_unseen_img),
    )


def _interval_representatives(breaks: np.ndarray) -> np.ndarray:
    """[M + 1] one bias inside each open interval around the sorted distinct breakpoints [M]."""
    mids = breaks[:-1] + (breaks[1:] - breaks[:-1]) / 2  # written this way to avoid overflow
    return np.concatenate([[breaks[0] - 1.0], mids, [breaks[-1] + 1.0]])


def _harmonic_mean(s: np.ndarray, u: np.ndarray) -> np.ndarray:
    total = s + u
    with np.errstate(invalid="ignore", divide="ignore"):
        hm = np.where(total > 0, 2 * s * u / np.where(total > 0, total, 1.0), 0.0)
    return hm


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # Hand-written: np.trapz / np.trapezoid differ across numpy versions.
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def _validate(scores, targets, unseen) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert to numpy and check shapes / ranges; returns (scores [N, P] f64, targets [N] i64, unseen [P] bool)."""
    scores = as_numpy(scores)
    targets = as_numpy(targets)
    unseen = as_numpy(unseen)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [N, P] matrix, got shape {scores.shape}")
    n, p = scores.shape
    if not np.issubdtype(scores.dtype, np.number) or np.iscomplexobj(scores):
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape [N] = ({n},) to match scores {scores.shape}, got {targets.shape}")
    if unseen.shape != (p,):
        raise ValueError(f"unseen must be a [P] = ({p},) mask to match scores {scores.shape}, got {unseen.shape}")
    targets = _as_int_targets(targets)
    if targets.min() < 0 or targets.max() >= p:
        raise ValueError(f"targets must be in [0, {p}), got values in [{targets.min()}, {targets.max()}]")
    unseen = _as_bool_mask(unseen)
    if unseen.all():
        raise ValueError("no seen candidate pair: the unseen mask is all True")
    if not unseen.any():
        raise ValueError("no unseen candidate pair: the unseen mask is all False")
    if unseen[targets].all():
        raise ValueError("no image has a seen target pair; seen accuracy is undefined")
    if not unseen[targets].any():
        raise ValueError("no image has an unseen target pair; unseen accuracy is undefined")
    return scores, targets, unseen


def _as_int_targets(targets: np.ndarray) -> np.ndarray:
    if np.issubdtype(targets.dtype, np.integer):
        return targets.astype(np.int64)
    # Integer-valued floats are accepted (e.g. labels loaded from a float array); anything else is a mistake.
    integral = np.issubdtype(targets.dtype, np.floating) and np.isfinite(targets).all()
    if integral and (targets == np.round(targets)).all():
        return targets.astype(np.int64)
    raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.bool_:
        return mask
    if np.issubdtype(mask.dtype, np.number) and np.isin(mask, (0, 1)).all():
        return mask.astype(bool)
    raise ValueError(f"unseen must be a boolean mask (or 0/1), got dtype {mask.dtype}")
