"""Ablation-sweep plots: accuracy against NMI and size (95% CIs over seeds), unseen against seen per run.

``write_plots`` writes acc_vs_nmi.png / acc_vs_size.png (when that axis has more than one value)
and robustness.png from the runs frame described in ``evaluation.sweep_stats``.  This file also
holds the display labels (metric and axis names, axis values) that the Markdown report shares.

matplotlib is imported lazily and only through its Agg canvas.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data_filters.files import atomic_path
from evaluation.robustness import fit_effective_robustness, logit
from evaluation.sweep_stats import SUPERVISION_AXIS, cell_groups, cell_table, is_missing, present_axes

__all__ = ["alt_metric", "metric_label"]

UNSEEN_OBJECT = "eval/unseen/object_top1"
ALT = "alt"  # the group of the toy world's second renderer: eval/alt/unseen/..., eval/probe/alt/unseen/...
RENDERER_LABELS = {"": "first renderer (the training images' style)", ALT: "second renderer (never trained on)"}
PROBE_UNSEEN_OBJECT = "eval/probe/unseen/object_top1"  # the one object metric every arm has, the self arm only it

AXIS_LABELS = {"nmi": "NMI", "size": "size", "diversity": "diversity"}
SUPERVISION_LABELS = {"language": "CLIP, language supervision", "labels": "supervised twin, label supervision",
                      "self": "image-only arm, two views (self-supervised)"}
SUPERVISION_MARKERS = {"language": "o", "labels": "s", "self": "^"}
SUPERVISION_ORDER = {"language": 0, "labels": 1, "self": 2}


# ----------------------------------------------------------------------------------------------
# Frame helpers
# ----------------------------------------------------------------------------------------------


def has_values(runs: pd.DataFrame, column: str) -> bool:
    """True if ``column`` exists and holds at least one non-NaN value."""
    return column in runs.columns and bool(runs[column].notna().any())


def _supervisions(runs: pd.DataFrame) -> list:
    """Supervision values present, language first; [None] when the sweep has no such axis."""
    if SUPERVISION_AXIS not in runs.columns:
        return [None]
    return sorted(runs[SUPERVISION_AXIS].dropna().unique().tolist(),
                  key=lambda s: (SUPERVISION_ORDER.get(s, len(SUPERVISION_ORDER)), str(s)))


def unique_values(items) -> list:
    """``items`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(items))


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------


def format_value(value) -> str:
    """An axis value for prose and tables: 12800 -> "12,800", 0.78 -> "0.78", NaN -> "n/a"."""
    if is_missing(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{float(value):g}"


def alt_metric(metric: str) -> str:
    """The second renderer's key of a metric: "eval/unseen/pair_top1" -> "eval/alt/unseen/pair_top1",
    "eval/probe/seen/object_top1" -> "eval/probe/alt/seen/object_top1", "eval/czsl/auc" -> "eval/alt/czsl/auc"."""
    return re.sub(r"/(unseen|seen|czsl)/", rf"/{ALT}/\1/", metric, count=1)


def metric_label(metric: str) -> str:
    """Human name of an MLflow metric key: "eval/unseen/pair_top1" -> "unseen-pair top-1".

        >>> metric_label("eval/czsl/auc")    # "CZSL AUC"
        >>> metric_label("eval/alt/unseen/pair_top1")    # "unseen-pair top-1 (second renderer)"
    """
    parts = metric.removeprefix("eval/").split("/")
    if ALT in parts[:-1]:
        parts.remove(ALT)
        return f"{metric_label('/'.join(parts))} (second renderer)"
    name = parts[-1]
    match = re.fullmatch(r"(.*)_top(\d+)(.*)", name)
    if match:
        name = f"{match[1].replace('_', ' ')} top-{match[2]}{match[3].replace('_', ' ')}"
    else:
        name = name.upper() if len(name) <= 3 else name.replace("_", " ")
    if len(parts) == 2 and parts[0] == "czsl":
        return f"CZSL {name}"
    return "-".join([*parts[:-1], name]) if len(parts) > 1 else name


def axis_label(axis: str) -> str:
    """Display name of an axis ("nmi" -> "NMI")."""
    return AXIS_LABELS.get(axis, axis)


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _figure(nrows: int, ncols: int, panel_size: tuple[float, float] = (4.6, 3.6)):
    """A matplotlib Figure on its own Agg canvas and its [nrows][ncols] grid of axes.

    The canvas is attached directly instead of switching the pyplot backend, so making a plot
    neither needs a display nor changes any global matplotlib state.  Constrained layout keeps
    labels and a colorbar spanning several panels from overlapping.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    return fig, grid


def _save_png(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically."""
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _no_data(ax) -> None:
    """Mark an empty panel (e.g. pair accuracy of label-supervised runs) and hide its axes."""
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_axis_off()


def _plot_metric_lines(runs: pd.DataFrame, out: Path, x: str, line_axis: str,
                       metrics: Sequence[str], log_x: bool) -> Path:
    """Grid of panels (rows: metrics, columns: supervisions): metric vs ``x``, one line per ``line_axis``.

    Error bars are 95% t-intervals over the runs of each point (the seeds, for the usual grid).
    """
    supervisions = _supervisions(runs)
    fig, grid = _figure(len(metrics), len(supervisions))
    for i, metric in enumerate(metrics):
        for j, supervision in enumerate(supervisions):
            ax = grid[i][j]
            sub = runs if supervision is None else runs[runs[SUPERVISION_AXIS] == supervision]
            _draw_lines(ax, sub, x, line_axis, metric)
            if log_x:
                _log2_ticks(ax, runs[x])
            ax.set_xlabel(axis_label(x) + (" (log scale)" if log_x else ""))
            ax.set_ylabel(metric_label(metric))
            ax.set_title(SUPERVISION_LABELS.get(supervision, format_value(supervision)) if supervision else "",
                         fontsize=9)
            ax.grid(alpha=0.3)
    return _save_png(fig, out)


def _draw_lines(ax, runs: pd.DataFrame, x: str, line_axis: str, metric: str) -> None:
    """Mean ± CI of ``metric`` against ``x``, one errorbar line per value of ``line_axis``."""
    keys = [k for k in (line_axis, x) if k in runs.columns]
    table = cell_table(runs, keys, metric) if len(runs) else pd.DataFrame()
    if not len(table):
        _no_data(ax)
        return
    for line, sub in cell_groups(table, [line_axis] if line_axis in table.columns else []):
        sub = sub.sort_values(x)
        yerr = sub["ci"].fillna(0.0).to_numpy(dtype=np.float64)  # n = 1: a point without a bar
        label = f"{axis_label(line_axis)} {format_value(line[line_axis])}" if line else "all runs"
        ax.errorbar(sub[x].to_numpy(dtype=np.float64), sub["mean"].to_numpy(dtype=np.float64), yerr=yerr,
                    marker="o", capsize=3, label=label)
    ax.legend(fontsize=7, loc="best")


def _log2_ticks(ax, values: pd.Series) -> None:
    """Log2 x axis ticked at the values swept, labelled like "12,800"."""
    from matplotlib.ticker import NullLocator

    ticks = sorted(values.dropna().unique().tolist())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([format_value(t) for t in ticks], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())


def _plot_robustness(runs: pd.DataFrame, out: Path) -> Path:
    """Unseen vs seen accuracy per run: pair top-1 (CLIP runs) and object top-1 (all runs).

    Colour is NMI (when the sweep has it), marker is the supervision; the dashed line is y = x.
    """
    panels = [("pair", "eval/seen/pair_top1", "eval/unseen/pair_top1", "language"),
              ("object", "eval/seen/object_top1", UNSEEN_OBJECT, None)]
    fig, grid = _figure(1, len(panels), panel_size=(4.8, 4.2))
    color_range = _nmi_range(runs)
    mappable = None
    for ax, (task, seen, unseen, only) in zip(grid[0], panels):
        sub = runs
        if only is not None and SUPERVISION_AXIS in runs.columns:
            sub = runs[runs[SUPERVISION_AXIS] == only]
        mappable = _scatter_seen_unseen(ax, sub, seen, unseen, color_range) or mappable
        ax.set_title(f"{task} top-1 per run", fontsize=9)
        ax.set_xlabel(metric_label(seen))
        ax.set_ylabel(metric_label(unseen))
        ax.grid(alpha=0.3)
    if mappable is not None:
        fig.colorbar(mappable, ax=list(grid[0]), label="NMI")
    return _save_png(fig, out)


def _nmi_range(runs: pd.DataFrame) -> tuple[float, float] | None:
    """(min, max) NMI for a shared colour scale, or None when the sweep has no NMI values."""
    if not has_values(runs, "nmi"):
        return None
    lo, hi = float(runs["nmi"].min()), float(runs["nmi"].max())
    return (lo, hi if hi > lo else lo + 1e-9)


def _scatter_seen_unseen(ax, runs: pd.DataFrame, seen: str, unseen: str, color_range):
    """Scatter one point per run with both metrics; returns a colour mappable when NMI colours it."""
    if seen not in runs.columns or unseen not in runs.columns:
        _no_data(ax)
        return None
    runs = runs[runs[seen].notna() & runs[unseen].notna()]
    if not len(runs):
        _no_data(ax)
        return None
    from matplotlib.lines import Line2D

    mappable, handles = None, []
    for name in _supervisions(runs):
        sub = runs if name is None else runs[runs[SUPERVISION_AXIS] == name]
        marker = SUPERVISION_MARKERS.get(name, "^")
        style = {"marker": marker, "edgecolors": "black", "linewidths": 0.4, "s": 36}
        if color_range is not None:
            style.update(c=sub["nmi"].to_numpy(dtype=np.float64), cmap="viridis",
                         vmin=color_range[0], vmax=color_range[1])
        mappable = ax.scatter(sub[seen], sub[unseen], **style)
        # Grey proxy: a legend entry coloured like its first point would suggest an NMI.
        handles.append(Line2D([], [], linestyle="", marker=marker, color="grey", label=name or "runs"))
    lo = float(min(runs[seen].min(), runs[unseen].min()))
    hi = float(max(runs[seen].max(), runs[unseen].max()))
    handles += ax.plot([lo, hi], [lo, hi], "--", color="grey", linewidth=1, label="y = x")
    ax.legend(handles=handles, fontsize=7, loc="best")
    return mappable if color_range is not None else None


# (panel title, seen metric, unseen metric): object accuracy by the arm's own head or prompts, and by the
# linear probe every arm is read with alike (evaluation/probe_eval.py)
ROBUSTNESS_PANELS = (("object top-1, own head / prompts", "eval/seen/object_top1", UNSEEN_OBJECT),
                     ("object top-1, linear probe", "eval/probe/seen/object_top1", "eval/probe/unseen/object_top1"),
                     ("object top-1, own head / prompts, second renderer", alt_metric("eval/seen/object_top1"),
                      alt_metric(UNSEEN_OBJECT)))
ARM_COLOURS = {"language": "tab:blue", "labels": "tab:orange", "self": "tab:green"}


def _plot_effective_robustness(runs: pd.DataFrame, axes: Sequence[str], out: Path) -> Path:
    """Unseen against seen object accuracy on logit axes (Taori et al.): one point per cell (mean over
    seeds), one colour per arm, each arm's least-squares line in logit space; a point above its arm's
    line is more robust on unseen pairs than that arm's trend across cells."""
    panels = [p for p in ROBUSTNESS_PANELS if has_values(runs, p[1]) and has_values(runs, p[2])] or ROBUSTNESS_PANELS[:1]
    fig, grid = _figure(1, len(panels), panel_size=(4.8, 4.2))
    keys = [a for a in present_axes(runs, axes) if a != "seed"]
    for ax, (title, seen, unseen) in zip(grid[0], panels):
        if seen not in runs.columns or unseen not in runs.columns:
            _no_data(ax)
            continue
        cells = runs[runs[seen].notna() & runs[unseen].notna()]
        cells = cells.groupby(keys, dropna=False)[[seen, unseen]].mean().reset_index() if keys else cells
        for arm in _supervisions(cells):
            sub = cells if arm is None else cells[cells[SUPERVISION_AXIS] == arm]
            x, y = logit(sub[seen], EPS), logit(sub[unseen], EPS)
            colour = ARM_COLOURS.get(arm, "tab:grey")
            ax.scatter(x, y, color=colour, edgecolors="black", linewidths=0.4, s=36,
                       label=SUPERVISION_LABELS.get(arm, arm or "cells"))
            if len(sub) >= 2 and np.ptp(x) > 0:
                fit = fit_effective_robustness(sub[seen].to_numpy(), sub[unseen].to_numpy(), scale="logit", eps=EPS)
                xs = np.linspace(x.min(), x.max(), 50)
                ax.plot(xs, fit.slope * xs + fit.intercept, "-", color=colour, linewidth=1.2)
        _probability_ticks(ax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{metric_label(seen)} (logit axis)")
        ax.set_ylabel(f"{metric_label(unseen)} (logit axis)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _save_png(fig, out)


EPS = 1e-3  # accuracies clipped to [EPS, 1 - EPS] before the logit (0 and 1 have none)


def _probability_ticks(ax) -> None:
    """Ticks labelled in accuracy on both logit axes."""
    ticks = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        shown = ticks[(logit(ticks, EPS) >= lo) & (logit(ticks, EPS) <= hi)]
        axis.set_ticks(logit(shown, EPS), labels=[f"{t:g}" for t in shown])


# x axis -> the axes its lines may stand for, in order of preference
PLOT_LINES = {"nmi": ("size", "diversity"), "size": ("nmi", "diversity"), "diversity": ("size", "nmi")}


def write_plots(runs: pd.DataFrame, out_dir: Path, axes: Sequence[str], primary: str) -> dict[str, Path]:
    """acc_vs_<axis>.png for nmi, size and diversity (when swept), robustness.png and effective_robustness.png.
    The accuracy plots have a row for the linear probe's unseen object accuracy when the runs have it (the
    self-supervised arm's only metric, so its column is empty in the other rows), and the second renderer's
    metrics, when the runs have them, rows of their own."""
    firsts = [primary, UNSEEN_OBJECT, PROBE_UNSEEN_OBJECT]
    metrics = [m for m in unique_values([*firsts, *map(alt_metric, firsts)]) if has_values(runs, m)]
    present = present_axes(runs, axes)
    written = {}
    for x, line_axes in PLOT_LINES.items():
        if metrics and x in present and runs[x].nunique() > 1:
            # one line per value of the first other swept axis (size for NMI and diversity)
            line_axis = next((a for a in line_axes if a in present and runs[a].nunique() > 1), line_axes[0])
            name = f"acc_vs_{x}.png"
            written[name] = _plot_metric_lines(runs, out_dir / name, x, line_axis, metrics, log_x=x == "size")
    written["robustness.png"] = _plot_robustness(runs, out_dir / "robustness.png")
    written["effective_robustness.png"] = _plot_effective_robustness(runs, axes, out_dir / "effective_robustness.png")
    return written
