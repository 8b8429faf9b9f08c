"""Tests for evaluation.robustness: effective-robustness line fits and the `aotrain robustness` command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.robustness import fit_effective_robustness, load_points, robustness_main

ID = np.array([0.42, 0.55, 0.61, 0.70, 0.78, 0.86])
OOD = np.array([0.20, 0.24, 0.33, 0.38, 0.52, 0.61])
NAMES = ["a", "b", "c", "d", "e", "f"]


def logit(p, eps=1e-4):
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_logit_fit_matches_polyfit():
    fit = fit_effective_robustness(ID, OOD, names=NAMES)
    slope, intercept = np.polyfit(logit(ID), logit(OOD), 1)
    assert fit.scale == "logit"
    assert fit.slope == pytest.approx(slope, abs=1e-10)
    assert fit.intercept == pytest.approx(intercept, abs=1e-10)
    predicted = sigmoid(slope * logit(ID) + intercept)
    np.testing.assert_allclose(fit.predict(ID), predicted, atol=1e-10)
    np.testing.assert_allclose(fit.effective_robustness, OOD - predicted, atol=1e-10)
    residual = logit(OOD) - (slope * logit(ID) + intercept)
    r2 = 1 - np.sum(residual**2) / np.sum((logit(OOD) - logit(OOD).mean()) ** 2)
    assert fit.r2 == pytest.approx(r2, abs=1e-10)
    assert fit.baseline.all()


@pytest.mark.parametrize("scale", ["logit", "linear"])
def test_points_on_a_line_have_zero_er(scale):
    ids = np.array([0.3, 0.45, 0.6, 0.8])
    if scale == "logit":
        oods = sigmoid(0.8 * logit(ids) - 0.6)
    else:
        oods = 0.7 * ids - 0.1
    fit = fit_effective_robustness(ids, oods, scale=scale)
    np.testing.assert_allclose(fit.effective_robustness, 0.0, atol=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    # A point off the line, excluded from the fit, gets ER = its vertical offset.
    fit = fit_effective_robustness([*ids, 0.5], [*oods, fit.predict(0.5) + 0.1], scale=scale,
                                   baseline=[True] * 4 + [False])
    np.testing.assert_allclose(fit.effective_robustness, [0, 0, 0, 0, 0.1], atol=1e-9)


def test_baseline_mask_fits_only_those_points():
    mask = np.array([True, True, False, True, False, True])
    fit = fit_effective_robustness(ID, OOD, names=NAMES, baseline=mask)
    slope, intercept = np.polyfit(logit(ID[mask]), logit(OOD[mask]), 1)
    assert fit.slope == pytest.approx(slope, abs=1e-10)
    assert fit.intercept == pytest.approx(intercept, abs=1e-10)
    full = fit_effective_robustness(ID, OOD, names=NAMES)
    assert fit.slope != pytest.approx(full.slope)
    np.testing.assert_array_equal(fit.baseline, mask)
    # The same baseline given by names.
    by_name = fit_effective_robustness(ID, OOD, names=NAMES, baseline=["a", "b", "d", "f"])
    assert by_name.slope == fit.slope and by_name.intercept == fit.intercept


def test_linear_scale_matches_polyfit():
    fit = fit_effective_robustness(ID, OOD, scale="linear")
    slope, intercept = np.polyfit(ID, OOD, 1)
    assert fit.slope == pytest.approx(slope, abs=1e-10)
    assert fit.intercept == pytest.approx(intercept, abs=1e-10)
    np.testing.assert_allclose(fit.effective_robustness, OOD - (slope * ID + intercept), atol=1e-10)


def test_to_dict_is_json_safe_and_plot_writes_png(tmp_path):
    fit = fit_effective_robustness(ID, OOD, names=NAMES, baseline=NAMES[:4])
    summary = json.loads(json.dumps(fit.to_dict()))
    assert summary["scale"] == "logit" and summary["n_baseline"] == 4
    assert [row["name"] for row in summary["rows"]] == NAMES
    assert set(summary["rows"][0]) == {"name", "id", "ood", "predicted", "effective_robustness", "baseline"}
    assert [row["baseline"] for row in summary["rows"]] == [True] * 4 + [False] * 2
    path = fit.plot(tmp_path / "er.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000


@pytest.mark.parametrize("kwargs, match", [
    (dict(id_acc=[0.1, 0.2], ood_acc=[0.1]), "lengths differ"),
    (dict(id_acc=[0.5], ood_acc=[0.3]), "at least 2 baseline points"),
    (dict(id_acc=[0.5, 0.6, 0.7], ood_acc=[0.3, 0.4, 0.5], baseline=[True, False, False]), "at least 2 baseline"),
    (dict(id_acc=[0.5, 0.5, 0.5], ood_acc=[0.3, 0.4, 0.5]), "id accuracies are equal"),
    (dict(id_acc=[0.5, 1.2], ood_acc=[0.3, 0.4]), r"in \[0, 1\]"),
    (dict(id_acc=[0.5, 0.6], ood_acc=[-0.1, 0.4]), r"in \[0, 1\]"),
    (dict(id_acc=[0.5, 0.6], ood_acc=[0.3, 0.4], scale="log"), "unknown scale"),
    (dict(id_acc=[0.5, 0.6], ood_acc=[0.3, 0.4], names=["x"]), "names has 1"),
    (dict(id_acc=[0.5, 0.6], ood_acc=[0.3, 0.4], names=["x", "y"], baseline=["z"]), "unknown baseline"),
])
def test_fit_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_effective_robustness(**kwargs)


def write_metrics(path, id_value, ood_value, extra=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seen/pair_top1": id_value, "unseen/pair_top1": ood_value, **(extra or {})}))
    return path


@pytest.fixture
def runs(tmp_path):
    """Four run layouts: run/eval/metrics.json (given as folder), run/metrics.json (folder) and a direct file."""
    write_metrics(tmp_path / "runs" / "r1" / "eval" / "metrics.json", 0.50, 0.20)
    write_metrics(tmp_path / "runs" / "r2" / "eval" / "metrics.json", 0.60, 0.28)
    write_metrics(tmp_path / "runs" / "r3" / "metrics.json", 0.70, 0.35)
    direct = write_metrics(tmp_path / "runs" / "r4" / "eval" / "metrics.json", 0.80, 0.55)
    return [tmp_path / "runs" / "r1", tmp_path / "runs" / "r2" / "eval", tmp_path / "runs" / "r3", direct]


def test_load_points_layouts(runs):
    names, ids, oods = load_points(runs, "seen/pair_top1", "unseen/pair_top1")
    assert names == ["r1", "r2", "r3", "r4"]
    assert ids == [0.50, 0.60, 0.70, 0.80] and oods == [0.20, 0.28, 0.35, 0.55]


def test_load_points_errors(tmp_path, runs):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_points([tmp_path / "nope"], "seen/pair_top1", "unseen/pair_top1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_points([tmp_path / "empty"], "seen/pair_top1", "unseen/pair_top1")
    with pytest.raises(ValueError, match=r"missing key 'val/x'.*available keys: seen/pair_top1, unseen/pair_top1"):
        load_points(runs, "val/x", "unseen/pair_top1")
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read metrics"):
        load_points([bad], "seen/pair_top1", "unseen/pair_top1")


def test_main_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "report"
    code = robustness_main([*map(str, runs), "--baseline", "r1", "--baseline", "r2", "--baseline", "r3",
                            "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0].split() == ["name", "id", "ood", "predicted", "ER"]
    assert lines[1].startswith("r1 *") and lines[4].startswith("r4 ")
    assert "fit (logit): slope=" in captured.out and "r2=" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["robustness.csv", "robustness.json", "robustness.png"]

    summary = json.loads((out / "robustness.json").read_text())
    fit = fit_effective_robustness([0.5, 0.6, 0.7, 0.8], [0.2, 0.28, 0.35, 0.55], baseline=[1, 1, 1, 0])
    assert summary["slope"] == pytest.approx(fit.slope)
    assert summary["rows"][3]["effective_robustness"] == pytest.approx(fit.effective_robustness[3])
    assert summary["rows"][3]["effective_robustness"] > 0.05  # r4 sits well above the r1-r3 trend
    with (out / "robustness.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["r1", "r2", "r3", "r4"]
    assert (out / "robustness.png").read_bytes().startswith(b"\x89PNG")


def test_main_linear_scale_without_out(runs, capsys):
    assert robustness_main([*map(str, runs), "--scale", "linear"]) == 0
    assert "fit (linear)" in capsys.readouterr().out


@pytest.mark.parametrize("make_args, message", [
    (lambda runs, tmp: [str(tmp / "missing")], "no such file or folder"),
    (lambda runs, tmp: [*map(str, runs), "--ood", "unseen/nope"], "missing key 'unseen/nope'"),
    (lambda runs, tmp: [str(runs[0])], "at least 2 baseline points"),
    (lambda runs, tmp: [*map(str, runs), "--baseline", "zzz"], "unknown baseline name"),
    (lambda runs, tmp: [*map(str, runs), "--scale", "cubic"], "invalid choice"),
    (lambda runs, tmp: [], "required"),
])
def test_main_user_mistakes(runs, tmp_path, capsys, make_args, message):
    code = robustness_main(make_args(runs, tmp_path))
    captured = capsys.readouterr()
    assert code == 2
    # data_filters/command.py's contract: one error line last (a flag mistake has argparse's usage above it)
    err_lines = captured.err.strip().splitlines()
    assert err_lines[-1].startswith("aotrain robustness: error: ")
    assert message in err_lines[-1]
    assert len(err_lines) == 1 or err_lines[0].startswith("usage: aotrain robustness"), captured.err
    assert "Traceback" not in captured.err


def test_module_entry_point_as_a_user_sees_it(runs, tmp_path):
    """`python -m evaluation.robustness`: exit 0 on success; a mistake is one stderr line, no traceback."""
    repo = Path(__file__).resolve().parent.parent
    ok = subprocess.run([sys.executable, "-m", "evaluation.robustness", *map(str, runs)],
                        capture_output=True, text=True, cwd=repo, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "fit (logit)" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "evaluation.robustness", str(tmp_path / "missing")],
                         capture_output=True, text=True, cwd=repo, timeout=120)
    assert bad.returncode == 2
    expected = f"aotrain robustness: error: no such file or folder: {tmp_path / 'missing'}"
    assert bad.stderr.strip().splitlines() == [expected]
