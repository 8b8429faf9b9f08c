"""Ablation-sweep report: per-cell tables, effects, supervision gap, plots and a Markdown summary on disk.

The statistics come from ``evaluation.sweep_stats`` and the plots from ``evaluation.sweep_plots``;
this file formats them: CSV / JSON tables, one headline sentence per effect, and report.md.

Usage::

    from evaluation.sweep_report import write_report
    axes = ["nmi", "size", "seed", "supervision"]
    paths = write_report(runs, "reports/nmi_sweep", axes, title="NMI sweep")
    paths["report.md"]                                        # Path of the Markdown report
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from data_filters.files import write_text_atomic
from evaluation.fixed_nmi import MATCH_COLUMNS, NMI_MATCH, nmi_match, varies_diversity
from evaluation.sweep_plots import (PROBE_UNSEEN_OBJECT, RENDERER_LABELS, SUPERVISION_LABELS, SUPERVISION_ORDER,
                                    UNSEEN_OBJECT, alt_metric, axis_label, format_value, has_values, metric_label,
                                    unique_values, write_plots)
from evaluation.sweep_stats import (CELL_COLUMNS, DIFF_COLUMNS, GAP_COLUMNS, NUMERIC_AXES, SUPERVISION_AXIS,
                                    as_scalar, axis_transform, cell_table, check_runs, is_missing,
                                    paired_differences, plus_minus, present_axes, slopes, supervision_gap,
                                    swept_cell_axes)

__all__ = ["headline", "write_report"]

PRIMARY_METRIC = "eval/unseen/pair_top1"
CZSL_AUC = "eval/czsl/auc"

# Verbs for moving an axis up / down in a headline sentence.
AXIS_VERBS = {"size": ("growing", "shrinking")}
DEFAULT_VERBS = ("raising", "lowering")

EFFECT_STATS = ("slope", "se", "ci_low", "ci_high", "n", "x_min", "x_max", "change")


# ----------------------------------------------------------------------------------------------
# Frame helpers
# ----------------------------------------------------------------------------------------------


def _numeric_axes(runs: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Cell axes with numbers (known numeric axes or numeric dtype) and more than one value."""
    return [a for a in swept_cell_axes(runs, axes)
            if (a in NUMERIC_AXES or is_numeric_dtype(runs[a])) and runs[a].nunique() > 1]


def _seen_counterpart(metric: str) -> str:
    """The seen-split key of an unseen-split metric (``eval/unseen/x`` -> ``eval/seen/x``)."""
    return metric.replace("/unseen/", "/seen/")


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def _decimals(value: float) -> int:
    """Decimals that show ``value`` with two significant digits (at least 2, at most 6)."""
    if is_missing(value) or value == 0 or not math.isfinite(value):
        return 2
    return int(min(6, max(2, 1 - math.floor(math.log10(abs(value))))))


def _fmt_effect(value: float, decimals: int) -> str:
    """A slope / CI bound / change with ``decimals`` decimals ("n/a" for NaN)."""
    return "n/a" if is_missing(value) else f"{value:.{decimals}f}"


def _unit_phrase(axis: str, kind: str) -> str:
    """What one unit of slope means: "per unit NMI" or "per doubling of size"."""
    return f"per doubling of {axis_label(axis)}" if kind == "log2" else f"per unit {axis_label(axis)}"


def _markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub Markdown table (cells formatted with ``_fmt_cell``)."""
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _fmt_cell(value) -> str:
    """A Markdown table cell: floats to 4 significant digits, "|" escaped, NaN as "—"."""
    if is_missing(value):
        return "—"
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        return f"{float(value):.4g}"
    return format_value(value).replace("|", "\\|")


# ----------------------------------------------------------------------------------------------
# Effects and gaps as report tables
# ----------------------------------------------------------------------------------------------


def _effect_metrics(runs: pd.DataFrame, primary: str) -> list[str]:
    """Metrics whose slopes are reported: primary, unseen object top-1 (own head or prompts, and linear probe)
    and their seen counterparts, on each renderer the runs were evaluated on."""
    candidates = [primary, UNSEEN_OBJECT, PROBE_UNSEEN_OBJECT, _seen_counterpart(primary),
                  _seen_counterpart(UNSEEN_OBJECT), _seen_counterpart(PROBE_UNSEEN_OBJECT)]
    return [m for m in unique_values([*candidates, *map(alt_metric, candidates)]) if has_values(runs, m)]


def _effects(runs: pd.DataFrame, axes: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """All slopes of ``metrics`` on every numeric axis with > 1 value, in one long frame.

    Columns: metric, x, transform, the cell axes (NaN where the axis is ``x``), then slope, se,
    ci_low, ci_high, n, x_min, x_max and change (slope times the transformed range swept).
    """
    cell_axes = swept_cell_axes(runs, axes)
    frames = []
    for metric in metrics:
        for x in _numeric_axes(runs, axes):
            table = slopes(runs, axes, metric, x)
            if len(table):
                frames.append(_effect_frame(table, metric, x))
    columns = ["metric", "x", "transform", *cell_axes, *EFFECT_STATS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


def _effect_frame(table: pd.DataFrame, metric: str, x: str) -> pd.DataFrame:
    """A ``slopes`` table with metric/transform columns, x_range split into x_min/x_max, and change."""
    kind = NUMERIC_AXES.get(x, "linear")
    out = table.drop(columns=["x_range"]).assign(metric=metric, transform=kind)
    out["x_min"] = [lo for lo, _ in table["x_range"]]
    out["x_max"] = [hi for _, hi in table["x_range"]]
    span = axis_transform(out["x_max"], kind) - axis_transform(out["x_min"], kind)
    out["change"] = out["slope"].to_numpy(dtype=np.float64) * span
    return out


def _gap_metrics(runs: pd.DataFrame) -> list[str]:
    """Object metrics (``eval/<group>/object_*``) that both supervisions have values for."""
    if SUPERVISION_AXIS not in runs.columns:
        return []
    object_metrics = [c for c in runs.columns if str(c).startswith("eval/") and str(c).split("/")[-1].startswith("object")]
    both = []
    for metric in object_metrics:
        sides = [runs.loc[runs[SUPERVISION_AXIS] == s, metric] for s in ("language", "labels")]
        if all(side.notna().any() for side in sides):
            both.append(metric)
    return both


# CLIP metrics compared with a differently named twin metric: object accuracy by pair marginalisation
# (a twin has no pair prompts) against the twin's own head
CROSS_GAPS = {f"eval/{g}/object_marginal_top1": f"eval/{g}/object_top1"
              for g in ("seen", "unseen", "alt/seen", "alt/unseen")}


def _gaps(runs: pd.DataFrame, axes: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """``supervision_gap`` of each metric (and of each CROSS_GAPS pair present), stacked with a leading
    metric column ("A vs B" for a cross pair)."""
    keys = [a for a in swept_cell_axes(runs, axes) if a != SUPERVISION_AXIS]
    frames = [supervision_gap(runs, axes, m).assign(metric=m) for m in metrics]
    if SUPERVISION_AXIS in runs.columns:
        frames += [supervision_gap(runs, axes, clip, labels_metric=twin).assign(metric=f"{clip} vs {twin}")
                   for clip, twin in CROSS_GAPS.items() if has_values(runs, clip) and has_values(runs, twin)]
    frames = [f for f in frames if len(f)]
    columns = ["metric", *keys, *GAP_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


# ----------------------------------------------------------------------------------------------
# Headlines
# ----------------------------------------------------------------------------------------------


def headline(effect: dict, cell_axes: Sequence[str]) -> str:
    """One sentence for one row of the effects table (a dict), e.g.

    "At size 12,800 (CLIP, language supervision), unseen-pair top-1 changes by -0.31 per unit NMI
    (95% CI -0.42 to -0.20, n=9): lowering NMI from 0.78 to 0.09 raises it by about 0.21."
    """
    x, kind, slope = effect["x"], effect["transform"], effect["slope"]
    d = _decimals(slope)
    ci = (f"95% CI {_fmt_effect(effect['ci_low'], d)} to {_fmt_effect(effect['ci_high'], d)}"
          if not is_missing(effect["ci_low"]) else "95% CI n/a")
    sentence = (f"{_where(effect, [a for a in cell_axes if a != x])}, {metric_label(effect['metric'])} changes by "
                f"{_fmt_effect(slope, d)} {_unit_phrase(x, kind)} ({ci}, n={effect['n']}): "
                f"{_implied_change(effect)}.")
    if not is_missing(effect["ci_low"]) and effect["ci_low"] <= 0 <= effect["ci_high"]:
        sentence += " The CI includes zero, so the direction is not established."
    return sentence


def _where(effect: dict, fixed: Sequence[str]) -> str:
    """"At size 12,800 (CLIP, language supervision)": the fixed axes of an effect row."""
    parts = [f"{axis_label(a)} {format_value(effect.get(a))}" for a in fixed if a != SUPERVISION_AXIS]
    text = "At " + ", ".join(parts) if parts else "Across the sweep"
    if SUPERVISION_AXIS in fixed:
        supervision = effect.get(SUPERVISION_AXIS)
        text += f" ({SUPERVISION_LABELS.get(supervision, format_value(supervision))})"
    return text


def _implied_change(effect: dict) -> str:
    """The change over the swept range, told in the direction that raises the metric."""
    x, lo, hi, change = effect["x"], effect["x_min"], effect["x_max"], effect["change"]
    up, down = AXIS_VERBS.get(x, DEFAULT_VERBS)
    doublings = ""
    if effect["transform"] == "log2":
        doublings = f" ({math.log2(hi / lo):g} doublings)"
    if change == 0:
        return f"it does not change between {axis_label(x)} {format_value(lo)} and {format_value(hi)}"
    verb, start, end = (up, lo, hi) if change > 0 else (down, hi, lo)
    return (f"{verb} {axis_label(x)} from {format_value(start)} to {format_value(end)}{doublings} "
            f"raises it by about {_fmt_effect(abs(change), _decimals(change))}")


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

HOW_TO_READ = (
    "Each run is one training job; a *cell* is the set of runs that share every axis value except "
    "the seed. Cell tables give the mean over seeds ± the half-width of a 95% t-interval, with the "
    "number of runs in parentheses (the interval is n/a for a cell with a single run). An *effect* "
    "is the least-squares slope of a metric on one swept axis with the other axes held fixed, fitted "
    "to the individual runs (seeds pooled), with a 95% t-interval on n − 2 degrees of freedom; "
    "slopes on NMI are per unit NMI, slopes on size are per doubling of the dataset size, and the "
    "implied change is the slope times the range actually swept (not an extrapolation). The "
    "intervals treat runs as independent samples and assume a straight line on that scale. The "
    "supervision gap is CLIP (language-supervised) minus supervised-twin (label-supervised) "
    "accuracy, paired by seed within each cell. An image-only arm (supervision=self, two augmented "
    "views per image) has no prompts and no head: it appears by its linear probe's metrics only "
    "(probe-object rows). Accuracies are fractions in [0, 1]."
)

PLOT_CAPTIONS = {
    "acc_vs_nmi.png": "Accuracy against NMI (one line per size, 95% CI over seeds)",
    "acc_vs_size.png": "Accuracy against size (one line per NMI or diversity, 95% CI over seeds)",
    "acc_vs_diversity.png": "Accuracy against diversity (distinct pairs; one line per size, 95% CI over seeds)",
    "robustness.png": "Unseen against seen accuracy per run (colour: NMI, marker: supervision)",
    "effective_robustness.png": ("Effective robustness: unseen against seen object accuracy on logit axes, one point "
                                 "per cell, one colour and fitted line per arm"),
}


def _report_metrics(runs: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    """The metrics to tabulate: given ones present in ``runs``, else every eval/ column with a value."""
    if metrics is None:
        metrics = [c for c in runs.columns if str(c).startswith("eval/")]
    chosen = [m for m in metrics if has_values(runs, m)]
    if not chosen:
        raise ValueError(f"no metric to report: none of {list(metrics)} is a column with a value")
    return chosen


def _main_metrics(metrics: Sequence[str], primary: str) -> list[str]:
    """Metrics whose per-cell tables go into report.md (all of ``metrics`` if none is a main one)."""
    main = [primary, _seen_counterpart(primary), UNSEEN_OBJECT, _seen_counterpart(UNSEEN_OBJECT),
            PROBE_UNSEEN_OBJECT, _seen_counterpart(PROBE_UNSEEN_OBJECT), CZSL_AUC,
            alt_metric(primary), alt_metric(UNSEEN_OBJECT), alt_metric(PROBE_UNSEEN_OBJECT)]
    chosen = [m for m in unique_values(main) if m in metrics]
    return chosen or list(metrics)


def _sweep_summary(runs: pd.DataFrame, axes: Sequence[str]) -> str:
    """"12 runs; axes: nmi (0.09, 0.78), seed (3 values) ...; not in the data: diversity"."""
    parts = []
    for axis in present_axes(runs, axes):
        values = sorted(runs[axis].dropna().unique().tolist(), key=str if not is_numeric_dtype(runs[axis]) else None)
        shown = ", ".join(format_value(v) for v in values) if len(values) <= 8 else f"{len(values)} values"
        parts.append(f"{axis} ({shown})")
    text = f"{len(runs)} runs; axes: " + ("; ".join(parts) if parts else "none")
    missing = [a for a in axes if a not in runs.columns]
    if missing:
        text += "; not in the data: " + ", ".join(missing)
    return f"_{text}._"


def _headlines_md(effects: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str], primary: str) -> list[str]:
    """Markdown lines: one bullet per effect of the headline metrics, grouped by axis."""
    cell_axes = swept_cell_axes(runs, axes)
    metrics = unique_values([primary, UNSEEN_OBJECT, PROBE_UNSEEN_OBJECT])
    chosen = effects[effects["metric"].isin(metrics)].to_dict("records")
    # The probe's sentence only for an arm with no object accuracy of its own (the self arm); the others'
    # probe effects are in the effects table.
    own = {e.get(SUPERVISION_AXIS) for e in chosen if e["metric"] == UNSEEN_OBJECT}
    chosen = [e for e in chosen if e["metric"] != PROBE_UNSEEN_OBJECT or e.get(SUPERVISION_AXIS) not in own]
    if not chosen:
        return ["_No effect could be estimated: no numeric axis has two or more values with data._"]
    # Reading order: per metric, CLIP before its twins (the stable sort keeps the rest).
    last = len(SUPERVISION_ORDER)
    chosen.sort(key=lambda e: (metrics.index(e["metric"]), SUPERVISION_ORDER.get(e.get(SUPERVISION_AXIS), last)))
    lines = []
    for x in unique_values(e["x"] for e in chosen):
        lines += ["", f"### {axis_label(x)}", ""]
        lines += [f"- {headline(e, cell_axes)}" for e in chosen if e["x"] == x]
    return lines


ARM_RANK = {"language": 0, "labels": 1}  # reading order of the arms in a line


def _renderers_md(effects: pd.DataFrame, gaps: pd.DataFrame, primary: str) -> list[str]:
    """"## Both renderers": one line per renderer saying whether the NMI effect (per arm) and the
    supervision gap hold on it (no section when the runs were evaluated on one renderer only)."""
    second = {alt_metric(m) for m in (primary, UNSEEN_OBJECT)}
    if not second & {*effects["metric"], *gaps["metric"]}:
        return []
    lines = ["## Both renderers", "",
             "Whether each effect holds on the images of the training renderer and on the second renderer's "
             "(the same pairs drawn with other shapes, textures, backgrounds, sizes and positions): the sign of "
             "the NMI slope per arm and of the supervision gap, cell by cell; resolved: its 95% CI excludes "
             "zero.", ""]
    for renderer, label in RENDERER_LABELS.items():
        key = alt_metric if renderer else (lambda m: m)
        parts = []
        for metric in unique_values([primary, UNSEEN_OBJECT]):
            rows = effects[(effects["x"] == "nmi") & (effects["metric"] == key(metric))]
            arms = [(None, rows)]
            if SUPERVISION_AXIS in rows.columns and rows[SUPERVISION_AXIS].notna().any():  # CLIP first, then the twin
                arms = sorted(rows.groupby(SUPERVISION_AXIS), key=lambda arm: (ARM_RANK.get(arm[0], 2), str(arm[0])))
            for arm, sub in arms:
                if not len(sub):  # NMI not swept (one level), or no runs of this metric
                    continue
                parts.append(f"NMI slope of {metric_label(metric)}{f' ({arm})' if arm else ''}: "
                             + _tally(sub["slope"], sub["ci_low"], sub["ci_high"]))
        rows = gaps[gaps["metric"] == key(UNSEEN_OBJECT)]
        if len(rows):
            ci = rows["ci"].to_numpy(dtype=np.float64)
            diff = rows["mean_diff"].to_numpy(dtype=np.float64)
            parts.append(f"supervision gap on {metric_label(UNSEEN_OBJECT)}: " + _tally(diff, diff - ci, diff + ci))
        lines.append(f"- **{label}**: " + ("; ".join(parts) if parts else "no effect could be estimated") + ".")
    return [*lines, ""]


def _tally(values, lows, highs) -> str:
    """"below zero in 2 of 2 cells (2 resolved; -0.31 to -0.25)": signs and resolution of per-cell estimates."""
    values, lows, highs = (np.asarray(v, dtype=np.float64) for v in (values, lows, highs))
    n, below, above = len(values), int((values < 0).sum()), int((values > 0).sum())
    resolved = int(((lows > 0) | (highs < 0)).sum())  # NaN bounds (one seed) are never resolved
    sign = f"below zero in {below} of {n} cells" if below >= above else f"above zero in {above} of {n} cells"
    d = _decimals(float(np.nanmax(np.abs(values))))
    lo, hi = _fmt_effect(float(np.nanmin(values)), d), _fmt_effect(float(np.nanmax(values)), d)
    return f"{sign} ({resolved} resolved; {lo if lo == hi else f'{lo} to {hi}'})"


def _effects_md(effects: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]) -> str:
    """The effects table for report.md: metric, axis (with unit), fixed axes, slope, CI, n, range, change."""
    if not len(effects):
        return "_No effects: no numeric axis has two or more values with data._"
    cell_axes = swept_cell_axes(runs, axes)
    rows = []
    for e in effects.to_dict("records"):
        d = _decimals(e["slope"])
        ci = "n/a" if is_missing(e["ci_low"]) else f"{_fmt_effect(e['ci_low'], d)} to {_fmt_effect(e['ci_high'], d)}"
        unit = "per doubling" if e["transform"] == "log2" else "per unit"
        rows.append({"metric": metric_label(e["metric"]), "axis": f"{axis_label(e['x'])} ({unit})",
                     **{a: ("swept" if a == e["x"] else e[a]) for a in cell_axes},
                     "slope": _fmt_effect(e["slope"], d), "95% CI": ci, "n": e["n"],
                     "range": f"{format_value(e['x_min'])} – {format_value(e['x_max'])}",
                     "change over range": _fmt_effect(e["change"], _decimals(e["change"]))})
    return _markdown_table(pd.DataFrame(rows))


def _gaps_md(gaps: pd.DataFrame) -> str:
    """The supervision-gap table for report.md, or a note why there is none."""
    if not len(gaps):
        return "_Not computed: no object metric has both language- and label-supervised runs to pair._"
    shown = gaps.drop(columns=["mean_diff", "ci", "mean ± ci", "n"]).assign(
        metric=[_gap_label(m) for m in gaps["metric"]],
        **{"gap (language − labels)": [plus_minus(m, c, n) for m, c, n in zip(gaps["mean_diff"], gaps["ci"], gaps["n"])]})
    return _markdown_table(shown)


def _gap_label(metric: str) -> str:
    """"unseen-object top-1", or for a cross pair "unseen-object marginal top-1 (CLIP) vs unseen-object top-1 (twin)"."""
    if " vs " not in metric:
        return metric_label(metric)
    clip, twin = metric.split(" vs ")
    return f"{metric_label(clip)} (CLIP) vs {metric_label(twin)} (twin)"


def _differences(runs: pd.DataFrame, axes: Sequence[str], metrics: Sequence[str], half_width: float) -> pd.DataFrame:
    """``paired_differences`` of each metric along each swept numeric axis, stacked with a leading metric column."""
    frames = [paired_differences(runs, axes, m, x, half_width).assign(metric=m)
              for m in metrics for x in _numeric_axes(runs, axes) if runs[x].nunique() > 1]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["metric", *DIFF_COLUMNS])
    table = pd.concat(frames, ignore_index=True)
    return table[["metric", *[c for c in table.columns if c != "metric"]]]


def _differences_md(diffs: pd.DataFrame, half_width: float) -> str:
    """The paired-differences table for report.md: which level differences the seeds resolve, and how
    many seeds a CI of ±half_width would take."""
    if not len(diffs):
        return "_Not computed: no swept numeric axis has two levels with runs of the same seeds._"
    rows = []
    for d in diffs.to_dict("records"):
        fixed = {k: v for k, v in d.items() if k not in ("metric", SUPERVISION_AXIS, *DIFF_COLUMNS) and not is_missing(v)}
        needed = d["seeds_needed"]
        rows.append({"metric": metric_label(d["metric"]), "arm": d.get(SUPERVISION_AXIS, "—"),
                     "at": ", ".join(f"{axis_label(k)} {format_value(v)}" for k, v in fixed.items()) or "—",
                     "levels": f"{axis_label(d['x'])} {format_value(d['from'])} → {format_value(d['to'])}",
                     "difference (paired by seed)": plus_minus(d["mean_diff"], d["ci"], d["n"]),
                     "resolved": "yes" if d["resolved"] else "no",
                     f"seeds for ±{half_width:g}": "n/a" if is_missing(needed) else f"{needed:.0f}"})
    return _markdown_table(pd.DataFrame(rows))


def _fixed_nmi_md(match: pd.DataFrame, tables: dict[str, pd.DataFrame], primary: str) -> list[str]:
    """The "Diversity at fixed NMI" section: per cell the NMI target, the NMI its subsets reached and
    how far off, flagged beyond ±NMI_MATCH, then accuracy against K (mean ± CI over seeds)."""
    keys = [c for c in match.columns if c not in MATCH_COLUMNS]  # the cell axes, diversity among them
    with_target = match["target"].notna()
    if not with_target.any():
        intro = ("Diversity varies without an NMI target: each subset is the most even table on its K pairs, so "
                 "NMI falls as K grows (docs/design_space.md) and accuracy against K mixes diversity with NMI. "
                 "The NMI each cell's subsets reached:")
    else:
        off = match[match["off"]]
        verdict = (f"All {int(with_target.sum())} cells are within ±{NMI_MATCH:g} of their target."
                   if not len(off) else
                   f"**Outside ±{NMI_MATCH:g} of the target: {len(off)} of {int(with_target.sum())} cells** "
                   f"({'; '.join(_cell_name(r, keys) for r in off.to_dict('records'))}): there K is not compared at "
                   "a fixed NMI.")
        intro = ("The grid varies the distinct pairs K at a fixed NMI target. Reached: the pair NMI of each run's "
                 "subset (its manifest, MLflow param data_nmi), mean and range over seeds; each seed keeps other "
                 f"pairs, so every run is checked. {verdict}")
    shown = match[keys].copy()
    if with_target.any():
        shown["NMI target"] = match["target"]
    shown["reached NMI: mean (min–max)"] = [
        "—" if is_missing(m) else f"{m:.4f} ({lo:.4f}–{hi:.4f})"
        for m, lo, hi in zip(match["reached"], match["reached_min"], match["reached_max"])]
    if with_target.any():  # ("|" would split a Markdown header cell, so no |reached - target| here)
        shown["largest distance to target"] = ["—" if is_missing(d) else f"{d:.4f}" for d in match["max_abs_diff"]]
        shown[f"within ±{NMI_MATCH:g}"] = ["—" if is_missing(t) or is_missing(d) else ("no" if o else "yes")
                                           for t, d, o in zip(match["target"], match["max_abs_diff"], match["off"])]
    shown["pairs reached"] = match["pairs"]
    for metric in [m for m in unique_values([primary, UNSEEN_OBJECT]) if m in tables]:
        merged = match[keys].merge(tables[metric][[*keys, "mean", "ci", "n"]], on=keys, how="left")
        shown[f"{metric_label(metric)} mean ± ci (n)"] = [
            "—" if is_missing(m) else plus_minus(m, c, int(n))
            for m, c, n in zip(merged["mean"], merged["ci"], merged["n"])]
    return [intro, "", _markdown_table(shown), "",
            "Accuracy against K: the plot acc_vs_diversity.png, the diversity rows of the effects and of the paired "
            "differences above, and the per-cell tables below."]


def _cell_name(row: dict, keys: Sequence[str]) -> str:
    """"NMI 0.6, size 12,800, diversity 80, supervision language": a cell in prose."""
    return ", ".join(f"{axis_label(k)} {format_value(row[k])}" for k in keys)


def _cells_md(table: pd.DataFrame) -> str:
    """A per-cell table for report.md: the cell axes and "mean ± ci (n)"."""
    if not len(table):
        return "_No cell has a value._"
    shown = table.drop(columns=list(CELL_COLUMNS)).assign(
        **{"mean ± ci (n)": [plus_minus(m, c, n) for m, c, n in zip(table["mean"], table["ci"], table["n"])]})
    return _markdown_table(shown)


def _report_md(title: str, runs: pd.DataFrame, axes: Sequence[str], primary: str, effects: pd.DataFrame,
               gaps: pd.DataFrame, tables: dict[str, pd.DataFrame], plots: dict[str, Path], diffs: pd.DataFrame,
               half_width: float, design: str | None, fixed_nmi: list[str] | None = None) -> str:
    """The whole report.md text; ``fixed_nmi``: the lines of the diversity-at-fixed-NMI section, if any."""
    lines = [f"# {title}", "", _sweep_summary(runs, axes), ""]
    if design:  # the scale axis means different things under fixed steps and fixed epochs
        lines += [f"Training budget: {design}.", ""]
    lines += ["## How to read", "", HOW_TO_READ, "",
             "## Headlines", *_headlines_md(effects, runs, axes, primary), "",
             *_renderers_md(effects, gaps, primary), "## Plots", ""]
    lines += [f"![{PLOT_CAPTIONS.get(name, name)}]({name})\n" for name in plots]
    lines += ["## Effects", "", _effects_md(effects, runs, axes), "",
              "## Differences between levels (paired by seed)", "",
              f"Each level minus the lowest level of its axis, paired by seed; resolved: the 95% CI excludes "
              f"zero. The last column is how many seeds would give a CI of ±{half_width:g} at the observed spread "
              f"of the differences.", "", _differences_md(diffs, half_width), "",
              "## Supervision gap (language − labels, paired by seed)", "", _gaps_md(gaps), ""]
    if fixed_nmi:
        lines += ["## Diversity at fixed NMI", "", *fixed_nmi, ""]
    lines += ["## Per-cell tables"]
    for metric in _main_metrics(list(tables), primary):
        lines += ["", f"### {metric_label(metric)} (`{metric}`)", "", _cells_md(tables[metric])]
    return "\n".join(lines) + "\n"


def _json_records(frame: pd.DataFrame) -> list[dict]:
    """``frame`` as JSON-safe records: numpy scalars to Python, NaN to None."""
    return [{str(k): (None if is_missing(v) else as_scalar(v)) for k, v in row.items()}
            for row in frame.to_dict("records")]


def _table_name(metric: str) -> str:
    """File name of a metric's per-cell table: "eval/unseen/pair_top1" -> "eval_unseen_pair_top1.csv"."""
    return metric.replace("/", "_") + ".csv"


def write_report(runs: pd.DataFrame, out_dir: str | os.PathLike, axes: Sequence[str], title: str,
                 metrics: Sequence[str] | None = None, primary: str = PRIMARY_METRIC,
                 half_width: float = 0.05, design: str | None = None) -> dict[str, Path]:
    """Write the sweep's tables, effects, supervision gap, plots and report.md into ``out_dir``.

    Files: tables/<metric with / as _>.csv per metric, effects.csv, effects.json,
    supervision_gap.csv, paired_differences.csv (``half_width``: the CI half-width its seed counts aim
    at), fixed_nmi.csv (when diversity is swept: each cell's NMI target and the NMI its subsets reached,
    evaluation.fixed_nmi), acc_vs_nmi.png and acc_vs_size.png (only when that axis has more than
    one value), robustness.png, effective_robustness.png and report.md.  Returns {path relative to out_dir: Path}.
    ``metrics`` defaults to every ``eval/`` column with a value; ``design`` (the sweep's training-budget
    design, e.g. fixed steps or fixed epochs) is stated under the summary.  Raises ValueError for an empty
    frame or when no metric has a value.

        >>> paths = write_report(runs, "reports/nmi", ["nmi", "size", "seed", "supervision"], "NMI sweep")
        >>> paths["report.md"], paths["tables/eval_unseen_pair_top1.csv"]
    """
    check_runs(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = _report_metrics(runs, metrics)
    written: dict[str, Path] = {}

    tables = {m: cell_table(runs, axes, m) for m in metrics}
    for metric, table in tables.items():
        name = f"tables/{_table_name(metric)}"
        written[name] = write_text_atomic(out_dir / name, table.to_csv(index=False))

    effects = _effects(runs, axes, _effect_metrics(runs, primary))
    written["effects.csv"] = write_text_atomic(out_dir / "effects.csv", effects.to_csv(index=False))
    written["effects.json"] = write_text_atomic(out_dir / "effects.json",
                                          json.dumps(_json_records(effects), indent=2) + "\n")
    gaps = _gaps(runs, axes, _gap_metrics(runs))
    written["supervision_gap.csv"] = write_text_atomic(out_dir / "supervision_gap.csv", gaps.to_csv(index=False))

    firsts = [primary, UNSEEN_OBJECT, PROBE_UNSEEN_OBJECT]
    unseen = [m for m in unique_values([*firsts, *map(alt_metric, firsts)]) if has_values(runs, m)]
    diffs = _differences(runs, axes, unseen, half_width)
    written["paired_differences.csv"] = write_text_atomic(out_dir / "paired_differences.csv", diffs.to_csv(index=False))

    fixed_nmi = None
    if varies_diversity(runs, axes):  # K is compared at a fixed NMI only where each subset reached it
        match = nmi_match(runs, axes)
        written["fixed_nmi.csv"] = write_text_atomic(out_dir / "fixed_nmi.csv", match.to_csv(index=False))
        fixed_nmi = _fixed_nmi_md(match, tables, primary)

    plots = write_plots(runs, out_dir, axes, primary)
    written.update(plots)
    report = _report_md(title, runs, axes, primary, effects, gaps, tables, plots, diffs, half_width, design,
                        fixed_nmi)
    written["report.md"] = write_text_atomic(out_dir / "report.md", report)
    return written
