"""Sweep report: t-intervals, effect slopes, the paired supervision gap and the written report."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from evaluation.sweep_report import write_report
from evaluation.sweep_stats import (cell_table, mean_ci, paired_differences, seeds_for_half_width, slopes,
                                     supervision_gap)

AXES = ["nmi", "size", "seed", "supervision"]
NMIS = (0.09, 0.4, 0.78)
SIZES = (1600, 12800)
NMI_SLOPE = -0.3  # per unit NMI
SIZE_SLOPE = 0.04  # per doubling of size


def make_grid(nmis=NMIS, sizes=SIZES, seeds=(0, 1, 2), supervisions=("language", "labels"),
              noise=0.005, rng_seed=0) -> pd.DataFrame:
    """A synthetic sweep: accuracy falls with NMI, rises per doubling of size; labels runs lack pair metrics."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for nmi, size, seed, supervision in itertools.product(nmis, sizes, seeds, supervisions):
        unseen = 0.5 + NMI_SLOPE * nmi + SIZE_SLOPE * math.log2(size / sizes[0]) + rng.normal(0, noise)
        row = {"nmi": nmi, "size": size, "seed": seed, "supervision": supervision,
               "eval/unseen/object_top1": unseen + 0.1, "eval/seen/object_top1": unseen + 0.25,
               "eval/unseen/pair_top1": math.nan, "eval/seen/pair_top1": math.nan, "eval/czsl/auc": math.nan}
        if supervision == "language":
            row.update({"eval/unseen/pair_top1": unseen, "eval/seen/pair_top1": unseen + 0.2,
                        "eval/czsl/auc": unseen / 4})
        rows.append(row)
    return pd.DataFrame(rows)


def test_mean_ci_matches_scipy_t_interval():
    values = [0.1, 0.2, 0.4, 0.3]
    for confidence in (0.95, 0.9):
        mean, half, n = mean_ci(values, confidence)
        expected = stats.t.ppf((1 + confidence) / 2, 3) * np.std(values, ddof=1) / math.sqrt(4)
        assert (mean, n) == (pytest.approx(0.25), 4)
        assert half == pytest.approx(expected)
    mean, half, n = mean_ci([0.3, math.nan])  # NaNs are dropped; one value has no interval
    assert (mean, n) == (pytest.approx(0.3), 1) and math.isnan(half)
    assert mean_ci([])[2] == 0


def test_cell_table_groups_over_seeds_and_skips_missing_cells():
    runs = make_grid()
    table = cell_table(runs, AXES, "eval/unseen/pair_top1")
    assert list(table.columns) == ["nmi", "size", "supervision", "mean", "ci", "n", "mean ± ci"]
    assert len(table) == len(NMIS) * len(SIZES)  # the labels cells have no pair metric
    assert (table["n"] == 3).all() and (table["supervision"] == "language").all()
    assert table["mean ± ci"].str.fullmatch(r"0\.\d{3} ± 0\.\d{3}").all()


def test_slopes_recover_known_nmi_slope():
    runs = make_grid(supervisions=("language",), noise=0.01)
    table = slopes(runs, AXES, "eval/unseen/pair_top1", x="nmi")
    assert len(table) == len(SIZES)
    for row in table.to_dict("records"):
        assert row["ci_low"] <= NMI_SLOPE <= row["ci_high"]
        assert row["ci_high"] < 0  # the CI excludes zero
        assert row["n"] == 9 and row["x_range"] == (0.09, 0.78)


def test_slopes_on_size_are_per_doubling():
    runs = make_grid(nmis=(0.4,), sizes=(1000, 2000, 4000, 8000), supervisions=("language",), noise=0.005)
    (row,) = slopes(runs, AXES, "eval/unseen/pair_top1", x="size").to_dict("records")
    assert row["slope"] == pytest.approx(SIZE_SLOPE, abs=0.01)
    assert row["ci_low"] <= SIZE_SLOPE <= row["ci_high"]
    assert row["x_range"] == (1000, 8000)


def test_supervision_gap_is_paired_by_seed():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 0.1, size=6)  # large and shared by both twins of a seed
    gap = 0.02
    rows = []
    for seed, effect in enumerate(seed_effect):
        labels = 0.5 + effect
        rows.append({"nmi": 0.4, "seed": seed, "supervision": "labels", "eval/unseen/object_top1": labels})
        rows.append({"nmi": 0.4, "seed": seed, "supervision": "language",
                     "eval/unseen/object_top1": labels + gap + rng.normal(0, 0.001)})
    rows.append({"nmi": 0.4, "seed": 99, "supervision": "language", "eval/unseen/object_top1": 0.9})  # no twin
    runs = pd.DataFrame(rows)
    (row,) = supervision_gap(runs, ["nmi", "size", "seed", "supervision"], "eval/unseen/object_top1").to_dict("records")
    assert row["n"] == 6  # the twinless seed is not paired
    assert row["mean_diff"] - row["ci"] <= gap <= row["mean_diff"] + row["ci"]
    unpaired_half = mean_ci(seed_effect)[1]  # the spread an unpaired comparison would carry
    assert row["ci"] < 0.01 < unpaired_half


def test_write_report_writes_tables_plots_and_headlines(tmp_path):
    runs = make_grid()
    paths = write_report(runs, tmp_path / "report", AXES + ["diversity"], title="Synthetic sweep")
    out = tmp_path / "report"
    expected = {"report.md", "effects.csv", "effects.json", "supervision_gap.csv", "paired_differences.csv", "acc_vs_nmi.png",
                "acc_vs_size.png", "robustness.png", "effective_robustness.png", "tables/eval_unseen_pair_top1.csv",
                "tables/eval_seen_object_top1.csv", "tables/eval_czsl_auc.csv"}
    assert expected <= set(paths)
    assert all(path.is_file() and path.parent.is_relative_to(out) for path in paths.values())
    for name in ("acc_vs_nmi.png", "acc_vs_size.png", "robustness.png", "effective_robustness.png"):
        assert paths[name].stat().st_size > 10_000
        with Image.open(paths[name]) as image:
            assert min(image.size) > 200

    effects = pd.read_csv(paths["effects.csv"])
    assert len(json.loads(paths["effects.json"].read_text())) == len(effects)
    nmi_pair = effects[(effects["x"] == "nmi") & (effects["metric"] == "eval/unseen/pair_top1")]
    assert len(nmi_pair) == len(SIZES) and (nmi_pair["slope"] < 0).all()
    gaps = pd.read_csv(paths["supervision_gap.csv"])
    assert set(gaps["metric"]) == {"eval/unseen/object_top1", "eval/seen/object_top1"}

    report = paths["report.md"].read_text(encoding="utf-8")
    for name in ("acc_vs_nmi.png", "acc_vs_size.png", "robustness.png", "effective_robustness.png"):
        assert f"]({name})" in report
    assert "At size 1,600 (CLIP, language supervision), unseen-pair top-1 changes by -0." in report
    assert "lowering NMI from 0.78 to 0.09 raises it by about 0.2" in report  # 0.3 * 0.69
    assert "growing size from 1,600 to 12,800 (3 doublings) raises it by about 0.1" in report  # 0.04 * 3
    assert "not in the data: diversity" in report
    assert "## Differences between levels (paired by seed)" in report and "| NMI 0.09 → 0.78 |" in report


def test_write_report_with_one_seed_per_cell(tmp_path):
    paths = write_report(make_grid(seeds=(0,)), tmp_path, AXES, title="One seed")
    report = paths["report.md"].read_text(encoding="utf-8")
    assert "± n/a (1)" in report
    assert "unseen-pair top-1 changes by" in report  # 3 NMI values still give a slope


def test_single_size_grid_skips_size_plot(tmp_path):
    paths = write_report(make_grid(sizes=(1600,)), tmp_path, AXES, title="One size")
    assert "acc_vs_size.png" not in paths and not (tmp_path / "acc_vs_size.png").exists()
    assert (tmp_path / "acc_vs_nmi.png").is_file() and (tmp_path / "robustness.png").is_file()
    assert "(acc_vs_size.png)" not in paths["report.md"].read_text(encoding="utf-8")


def test_single_value_axes_still_write_robustness(tmp_path):
    runs = make_grid(nmis=(0.4,), sizes=(1600,), supervisions=("language",))
    paths = write_report(runs, tmp_path, AXES, title="One cell")
    assert {"robustness.png", "report.md"} <= set(paths)
    assert "acc_vs_nmi.png" not in paths and "No effect could be estimated" in paths["report.md"].read_text()


def test_empty_frame_raises(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_report(make_grid().iloc[:0], tmp_path, AXES, title="Nothing")
    with pytest.raises(ValueError, match="empty"):
        cell_table(pd.DataFrame(), AXES, "eval/unseen/pair_top1")


def test_a_diversity_axis_gets_its_slope_and_plot(tmp_path):
    """Size x diversity (distinct pairs) grid: accuracy rises 0.002 per extra pair at every size."""
    rng = np.random.default_rng(1)
    rows = [{"size": size, "diversity": k, "seed": seed, "supervision": "language",
             "eval/unseen/pair_top1": 0.2 + 0.002 * k + rng.normal(0, 0.005), "eval/seen/pair_top1": 0.5}
            for size, k, seed in itertools.product((6400, 12800), (30, 60, 100), (0, 1, 2))]
    runs = pd.DataFrame(rows)
    axes = ["size", "diversity", "seed", "supervision"]
    found = slopes(runs, axes, "eval/unseen/pair_top1", "diversity")
    assert len(found) == 2 and (found["ci_low"] < 0.002).all() and (found["ci_high"] > 0.002).all()
    written = write_report(runs, tmp_path, axes=axes, title="diversity")
    assert "acc_vs_diversity.png" in written and "acc_vs_size.png" in written
    assert Image.open(tmp_path / "acc_vs_diversity.png").size[0] > 300
    assert "acc_vs_diversity.png" in (tmp_path / "report.md").read_text()


def test_paired_differences_pair_by_seed_and_say_what_is_resolved():
    runs = make_grid(noise=0.005)
    diffs = paired_differences(runs, AXES, "eval/unseen/pair_top1", "nmi", half_width=0.01)
    language = diffs[diffs["supervision"] == "language"]
    assert len(language) == len(SIZES) * (len(NMIS) - 1)  # every level against the lowest, per size
    for row in language.to_dict("records"):
        sub = runs[(runs["supervision"] == "language") & (runs["size"] == row["size"])]
        at = {level: sub[sub["nmi"] == level].set_index("seed")["eval/unseen/pair_top1"] for level in NMIS}
        diff = (at[row["to"]] - at[row["from"]]).to_numpy()  # paired by seed
        mean, ci, n = mean_ci(diff)
        assert row["from"] == 0.09 and row["mean_diff"] == pytest.approx(mean) and row["ci"] == pytest.approx(ci)
        assert row["mean_diff"] == pytest.approx(NMI_SLOPE * (row["to"] - 0.09), abs=0.02) and row["resolved"]
    assert diffs[diffs["supervision"] == "labels"].empty  # labels runs have no pair metric
    noisy = paired_differences(make_grid(noise=0.3), AXES, "eval/unseen/pair_top1", "nmi", half_width=0.01)
    assert not noisy["resolved"].all() and (noisy["seeds_needed"] > 3).all()


def test_seeds_for_half_width_is_the_smallest_n_whose_t_interval_fits():
    values = [0.12, 0.31, 0.2, 0.05]
    sd = np.std(values, ddof=1)
    n = int(seeds_for_half_width(values, 0.04))
    def half(k):
        return stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)
    assert half(n) <= 0.04 < half(n - 1)
    assert math.isnan(seeds_for_half_width([0.3], 0.04))


def test_clip_marginal_object_accuracy_is_paired_with_the_twins_head(tmp_path):
    runs = make_grid()
    clip = runs["supervision"] == "language"
    runs["eval/unseen/object_marginal_top1"] = np.where(clip, runs["eval/unseen/object_top1"] + 0.05, np.nan)
    gaps = pd.read_csv(write_report(runs, tmp_path, AXES, title="x")["supervision_gap.csv"])
    cross = gaps[gaps["metric"] == "eval/unseen/object_marginal_top1 vs eval/unseen/object_top1"]
    assert len(cross) == len(NMIS) * len(SIZES)
    for row in cross.to_dict("records"):  # CLIP's marginal accuracy minus the twin's head accuracy, by seed
        cell = runs[(runs["nmi"] == row["nmi"]) & (runs["size"] == row["size"])]
        language = cell[cell["supervision"] == "language"].set_index("seed")["eval/unseen/object_marginal_top1"]
        labels = cell[cell["supervision"] == "labels"].set_index("seed")["eval/unseen/object_top1"]
        assert row["mean_diff"] == pytest.approx((language - labels).mean())
    assert "unseen-object marginal top-1 (CLIP) vs unseen-object top-1 (twin)" in (tmp_path / "report.md").read_text()


def fixed_nmi_grid(reached_off: float = 0.0, target=0.6) -> pd.DataFrame:
    """Distinct pairs K at one NMI target, 3 seeds: accuracy rises 0.002 per pair; each run's subset
    reached the target within 0.004, except K=80 seed 2, which is `reached_off` away."""
    rng = np.random.default_rng(2)
    rows = []
    for k, seed in itertools.product((45, 60, 80, 100), (0, 1, 2)):
        reached = 0.6 + (reached_off if (k, seed) == (80, 2) else rng.uniform(-0.004, 0.004))
        rows.append({"nmi": 0.6, "size": 12800, "diversity": k, "seed": seed, "supervision": "language",
                     "subset/nmi": round(reached, 6), "subset/nmi_target": target, "subset/distinct_pairs": k,
                     "eval/unseen/pair_top1": 0.2 + 0.002 * k + rng.normal(0, 0.005), "eval/seen/pair_top1": 0.6})
    return pd.DataFrame(rows)


def test_diversity_at_fixed_nmi_checks_each_cells_reached_nmi(tmp_path):
    axes = ["nmi", "size", "diversity", "seed", "supervision"]
    runs = fixed_nmi_grid(reached_off=0.015)
    paths = write_report(runs, tmp_path, axes, title="K at NMI 0.6",
                         design="fixed steps: every cell trains the same number of steps")
    match = pd.read_csv(paths["fixed_nmi.csv"]).set_index("diversity")
    assert match.loc[80, "off"] and match.loc[80, "max_abs_diff"] == pytest.approx(0.015)
    assert not match.drop(index=80)["off"].any() and (match.drop(index=80)["max_abs_diff"] <= 0.004).all()
    assert (match["target"] == 0.6).all() and (match["n"] == 3).all() and (match["pairs"] == match.index).all()
    assert match.loc[45, "reached"] == pytest.approx(runs[runs["diversity"] == 45]["subset/nmi"].mean())

    report = paths["report.md"].read_text(encoding="utf-8")
    assert "Training budget: fixed steps" in report
    section = report.split("## Diversity at fixed NMI", 1)[1].split("## Per-cell tables", 1)[0]
    assert ("**Outside ±0.01 of the target: 1 of 4 cells** (NMI 0.6, size 12,800, diversity 80, supervision "
            "language)") in section
    row_80 = next(line for line in section.splitlines() if line.startswith("| 0.6 | 12,800 | 80 |"))
    assert "| 0.0150 | no | 80 |" in row_80
    k100 = cell_table(runs, axes, "eval/unseen/pair_top1").set_index("diversity").loc[100]
    assert f"{k100['mean']:.3f} ± {k100['ci']:.3f} (3)" in section  # accuracy against K, mean ± CI over seeds
    assert "acc_vs_diversity.png" in paths and "acc_vs_diversity.png" in section

    held = write_report(fixed_nmi_grid(), tmp_path / "held", axes, title="held")
    assert "All 4 cells are within ±0.01 of their target." in held["report.md"].read_text(encoding="utf-8")


def test_diversity_without_an_nmi_target_says_nmi_moved_with_it(tmp_path):
    runs = fixed_nmi_grid(target="None").drop(columns=["nmi"])  # a fit without subset.nmi logs the target None
    runs["subset/nmi"] = 1.0 - runs["diversity"] / 120  # fewer pairs, higher NMI
    paths = write_report(runs, tmp_path, ["size", "diversity", "seed", "supervision"], title="K alone")
    match = pd.read_csv(paths["fixed_nmi.csv"])
    assert match["target"].isna().all() and not match["off"].any()
    report = paths["report.md"].read_text(encoding="utf-8")
    assert "Diversity varies without an NMI target" in report
    assert "| 12,800 | 45 | language | 0.6250 (0.6250–0.6250) | 45 |" in report
    assert "within ±" not in report.split("## Diversity at fixed NMI", 1)[1]
    no_k = write_report(make_grid(), tmp_path / "nmi", AXES, title="NMI only")
    assert "fixed_nmi.csv" not in no_k and "## Diversity at fixed NMI" not in no_k["report.md"].read_text()
