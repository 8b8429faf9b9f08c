"""Effective robustness: OOD accuracy above the line fitted across models (Taori et al. 2020).

Across several models / runs, out-of-distribution accuracy (here: unseen-pair
accuracy) is plotted against in-distribution accuracy (seen-pair accuracy) and
a line is fitted by ordinary least squares on a set of *baseline* models.  By
default both axes are logit-transformed first (``logit(p) = log(p / (1 - p))``
after clipping ``p`` to ``[eps, 1 - eps]``), as in Taori et al.; the linear
scale fits raw accuracies.  A model's effective robustness (ER) is its OOD
accuracy minus the line's prediction at its ID accuracy, in accuracy units:
ER > 0 means more robust than the baseline trend explains.

Usage::

    aotrain robustness runs/*/eval --out runs/robustness          # as wired into the CLI
    python -m evaluation.robustness runs/a/eval runs/b/eval runs/c/metrics.json \\
        --id seen/pair_top1 --ood unseen/pair_top1 --baseline a --baseline b --out out/

    from evaluation.robustness import fit_effective_robustness
    fit = fit_effective_robustness([0.5, 0.6, 0.7], [0.2, 0.3, 0.45], names=["a", "b", "c"])
    fit.effective_robustness   # [3] accuracy units
    fit.plot("robustness.png")

This module is numpy-only (matplotlib imported lazily for plots).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from data_filters.command import run_command
from data_filters.files import atomic_path, write_text_atomic

from .line_fit import fit_line
from .metrics import as_numpy

__all__ = ["RobustnessFit", "fit_effective_robustness", "load_points", "logit", "robustness_main"]

SCALES = ("logit", "linear")
DEFAULT_ID_KEY = "seen/pair_top1"
DEFAULT_OOD_KEY = "unseen/pair_top1"
CSV_COLUMNS = ("name", "id", "ood", "predicted", "effective_robustness", "baseline")


@dataclass
class RobustnessFit:
    """A line fitted to (ID, OOD) accuracies of baseline models, and every model's ER against it."""

    names: list[str]
    id_acc: np.ndarray  # [n] in [0, 1]
    ood_acc: np.ndarray  # [n] in [0, 1]
    baseline: np.ndarray  # [n] bool: points used for the fit
    scale: str  # "logit" or "linear"
    slope: float  # in the transformed space
    intercept: float  # in the transformed space
    r2: float  # on the baseline points, in the transformed space
    effective_robustness: np.ndarray  # [n] ood_acc - predict(id_acc), accuracy units
    eps: float = 1e-4
    id_name: str = DEFAULT_ID_KEY
    ood_name: str = DEFAULT_OOD_KEY

    def predict(self, id_acc) -> np.ndarray:
        """Predicted OOD accuracy (accuracy units) at ``id_acc`` (scalar or array; same shape back)."""
        x = _transform(np.asarray(as_numpy(id_acc), dtype=np.float64), self.scale, self.eps)
        return _inverse(self.slope * x + self.intercept, self.scale)

    def to_dict(self) -> dict:
        """JSON-safe summary: fit parameters and one row per model."""
        predicted = self.predict(self.id_acc)
        rows = [
            {
                "name": name,
                "id": float(i),
                "ood": float(o),
                "predicted": float(p),
                "effective_robustness": float(er),
                "baseline": bool(b),
            }
            for name, i, o, p, er, b in zip(
                self.names, self.id_acc, self.ood_acc, predicted, self.effective_robustness, self.baseline
            )
        ]
        return {
            "id_name": self.id_name,
            "ood_name": self.ood_name,
            "scale": self.scale,
            "eps": float(self.eps),
            "slope": float(self.slope),
            "intercept": float(self.intercept),
            "r2": float(self.r2),
            "n_baseline": int(self.baseline.sum()),
            "rows": rows,
        }

    def plot(self, path: str | os.PathLike) -> Path:
        """PNG scatter of OOD vs ID accuracy: baseline vs other models, fitted line, y = x dashed."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 5))
        FigureCanvasAgg(fig)  # Agg canvas attached directly: no pyplot state, no display
        ax = fig.add_subplot()
        base = self.baseline
        ax.scatter(self.id_acc[base], self.ood_acc[base], marker="o", color="tab:blue", label="baseline (fit)")
        if (~base).any():
            ax.scatter(self.id_acc[~base], self.ood_acc[~base], marker="^", color="tab:orange", label="other")
        # The line is straight only in the transformed space, so draw it densely in accuracy units.
        xs = np.linspace(self.id_acc.min(), self.id_acc.max(), 200)  # [200]
        ax.plot(xs, self.predict(xs), "-", color="tab:blue", alpha=0.8, label=f"{self.scale} fit")
        lo = float(min(self.id_acc.min(), self.ood_acc.min()))
        hi = float(max(self.id_acc.max(), self.ood_acc.max()))
        ax.plot([lo, hi], [lo, hi], "--", color="grey", label="y = x")
        for name, x, y in zip(self.names, self.id_acc, self.ood_acc):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(self.id_name)
        ax.set_ylabel(self.ood_name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.set_title(f"{self.scale} fit: slope {self.slope:.3f}, intercept {self.intercept:.3f}, R² {self.r2:.3f}",
                     fontsize=10)
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        return path


def fit_effective_robustness(
    id_acc,
    ood_acc,
    names: Sequence[str] | None = None,
    baseline=None,
    scale: str = "logit",
    eps: float = 1e-4,
    id_name: str = DEFAULT_ID_KEY,
    ood_name: str = DEFAULT_OOD_KEY,
) -> RobustnessFit:
    """Fit OOD ~ ID on the baseline points (OLS in ``scale`` space) and compute every point's ER.

    ``baseline``: None (all points), a [n] bool mask, or an iterable of names.
    Raises ValueError on mismatched lengths, accuracies outside [0, 1], an
    unknown scale, fewer than 2 baseline points, or equal baseline ID values.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    x_acc = np.asarray(as_numpy(id_acc), dtype=np.float64).reshape(-1)  # [n]
    y_acc = np.asarray(as_numpy(ood_acc), dtype=np.float64).reshape(-1)  # [n]
    if len(x_acc) != len(y_acc):
        raise ValueError(f"id_acc and ood_acc lengths differ: {len(x_acc)} vs {len(y_acc)}")
    names = [str(i) for i in range(len(x_acc))] if names is None else [str(n) for n in names]
    if len(names) != len(x_acc):
        raise ValueError(f"names has {len(names)} entries but there are {len(x_acc)} points")
    for label, values in (("id", x_acc), ("ood", y_acc)):
        bad = ~(np.isfinite(values) & (values >= 0) & (values <= 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{label} accuracies must be in [0, 1]; {names[i]!r} has {values[i]}")
    mask = _baseline_mask(baseline, names)
    if mask.sum() < 2:
        raise ValueError(f"need at least 2 baseline points to fit a line, got {int(mask.sum())}")

    x = _transform(x_acc[mask], scale, eps)  # [b]
    y = _transform(y_acc[mask], scale, eps)  # [b]
    if np.ptp(x) == 0:
        raise ValueError("all baseline id accuracies are equal (after clipping); the line's slope is undefined")
    slope, intercept, r2, _ = fit_line(x, y)
    predicted = _inverse(slope * _transform(x_acc, scale, eps) + intercept, scale)  # [n]
    return RobustnessFit(
        names=names, id_acc=x_acc, ood_acc=y_acc, baseline=mask, scale=scale,
        slope=slope, intercept=intercept, r2=r2, effective_robustness=y_acc - predicted,
        eps=eps, id_name=id_name, ood_name=ood_name,
    )


def load_points(paths: Iterable[str | os.PathLike], id_key: str, ood_key: str
                ) -> tuple[list[str], list[float], list[float]]:
    """Read (names, id accuracies, ood accuracies) from metrics.json files or run folders.

    A folder is searched for ``metrics.json``, then ``eval/metrics.json``.  The
    name is the folder holding the file, or the folder above it when that is
    ``eval``.  Raises FileNotFoundError for missing files and ValueError for
    unreadable JSON or a missing / non-numeric key.
    """
    names, ids, oods = [], [], []
    for path in paths:
        file = _find_metrics_file(Path(path))
        metrics = _read_metrics(file)
        names.append(_run_name(file))
        ids.append(_metric(metrics, id_key, file))
        oods.append(_metric(metrics, ood_key, file))
    return names, ids, oods


def robustness_main(argv: Sequence[str] | None = None) -> int:
    """``aotrain robustness`` command line; returns the exit status (2 on user mistakes)."""
    return run_command(_build_parser(), _robustness, argv)


def _robustness(args) -> int:
    names, ids, oods = load_points(args.metrics, args.id, args.ood)
    fit = fit_effective_robustness(ids, oods, names=names, baseline=args.baseline, scale=args.scale,
                                   id_name=args.id, ood_name=args.ood)
    print(format_table(fit))
    if args.out is not None:
        for path in write_outputs(fit, Path(args.out)):
            print(f"wrote {path}")
    return 0


def format_table(fit: RobustnessFit) -> str:
    """Aligned text table (name, id, ood, predicted, ER; * marks baseline points) plus the fit line."""
    predicted = fit.predict(fit.id_acc)
    header = ["name", "id", "ood", "predicted", "ER"]
    # round(...) + 0.0 prints a tiny negative ER as +0.0000 rather than -0.0000.
    body = [
        [name + (" *" if b else ""), f"{i:.4f}", f"{o:.4f}", f"{p:.4f}", f"{round(er, 4) + 0.0:+.4f}"]
        for name, i, o, p, er, b in zip(fit.names, fit.id_acc, fit.ood_acc, predicted,
                                        fit.effective_robustness, fit.baseline)
    ]
    widths = [max(len(row[c]) for row in [header, *body]) for c in range(len(header))]
    lines = []
    for row in [header, *body]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.append(f"(* = baseline)  id = {fit.id_name}, ood = {fit.ood_name}")
    lines.append(f"fit ({fit.scale}): slope={fit.slope:.4f} intercept={fit.intercept:.4f} r2={fit.r2:.4f}")
    return "\n".join(lines)


def write_outputs(fit: RobustnessFit, out_dir: Path) -> list[Path]:
    """Write robustness.json, robustness.csv and robustness.png into ``out_dir`` (each atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = fit.to_dict()
    json_path = out_dir / "robustness.json"
    write_text_atomic(json_path, json.dumps(summary, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(summary["rows"])
    csv_path = out_dir / "robustness.csv"
    write_text_atomic(csv_path, buf.getvalue())
    png_path = fit.plot(out_dir / "robustness.png")
    return [json_path, csv_path, png_path]


# --- fitting helpers ---------------------------------------------------------------------------


def logit(p, eps: float) -> np.ndarray:
    """log(p / (1 - p)) of accuracies clipped to [eps, 1 - eps] (logit is infinite at 0 and 1)."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(q / (1 - q))


def _transform(p: np.ndarray, scale: str, eps: float) -> np.ndarray:
    return p if scale == "linear" else logit(p, eps)


def _inverse(z: np.ndarray, scale: str) -> np.ndarray:
    if scale == "linear":
        return z
    return 1 / (1 + np.exp(-z))


def _baseline_mask(baseline, names: list[str]) -> np.ndarray:
    """[n] bool from None (all), a bool mask, or an iterable of names."""
    n = len(names)
    if baseline is None:
        return np.ones(n, dtype=bool)
    values = list(as_numpy(baseline)) if hasattr(baseline, "detach") else list(baseline)
    if values and all(isinstance(v, str) for v in values):
        unknown = [v for v in values if v not in names]
        if unknown:
            raise ValueError(f"unknown baseline name(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(names)}")
        return np.isin(np.asarray(names, dtype=object), values)
    mask = np.asarray(values)
    if mask.shape != (n,) or not (mask.dtype == np.bool_ or np.isin(mask, (0, 1)).all()):
        raise ValueError(f"baseline must be None, a [n] = ({n},) bool mask, or a list of names")
    return mask.astype(bool)


def _find_metrics_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "metrics.json", path / "eval" / "metrics.json"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"no metrics.json in {path} (looked for {path / 'metrics.json'} "
                                f"and {path / 'eval' / 'metrics.json'})")
    raise FileNotFoundError(f"no such file or folder: {path}")


def _read_metrics(file: Path) -> dict:
    try:
        metrics = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read metrics from {file}: {e}") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{file} must hold a flat JSON object of metrics, got {type(metrics).__name__}")
    return metrics


def _run_name(file: Path) -> str:
    folder = file.resolve().parent
    # runs/<name>/eval/metrics.json (the callback's) is named by the run folder; an `aotrain eval`
    # folder beside it (runs/<name>/eval-<...>/) by both.
    if folder.name == "eval" and folder.parent.name:
        return folder.parent.name
    if folder.name.startswith("eval-") and (folder.parent / "config.yaml").is_file():
        return f"{folder.parent.name}/{folder.name}"
    return folder.name or str(folder)


def _metric(metrics: dict, key: str, file: Path) -> float:
    if key not in metrics:
        available = ", ".join(sorted(map(str, metrics))) or "(none)"
        raise ValueError(f"{file}: missing key {key!r}; available keys: {available}")
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{file}: key {key!r} is not a finite number: {value!r}")
    return float(value)


# --- CLI helpers -------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aotrain robustness",
        description="Fit OOD vs ID accuracy across runs and report each run's effective robustness.",
    )
    parser.add_argument("metrics", nargs="+", metavar="METRICS",
                        help="metrics.json files or run folders (searched for metrics.json, then eval/metrics.json)")
    parser.add_argument("--id", default=DEFAULT_ID_KEY, metavar="KEY",
                        help=f"in-distribution accuracy key (default {DEFAULT_ID_KEY})")
    parser.add_argument("--ood", default=DEFAULT_OOD_KEY, metavar="KEY",
                        help=f"out-of-distribution accuracy key (default {DEFAULT_OOD_KEY})")
    parser.add_argument("--scale", choices=SCALES, default="logit", help="space of the linear fit (default logit)")
    parser.add_argument("--baseline", action="append", metavar="NAME",
                        help="run name to fit the line on (repeatable; default: all runs)")
    parser.add_argument("--out", metavar="DIR", help="write robustness.json, robustness.csv, robustness.png here")
    return parser


if __name__ == "__main__":
    sys.exit(robustness_main())
