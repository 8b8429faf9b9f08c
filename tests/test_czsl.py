"""Tests for evaluation.czsl: the exact CZSL bias curve against a brute-force argmax reference."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.czsl import CZSLCurve, czsl_curve

SEEDS = [0, 1, 2, 3, 4]


def make_problem(seed: int, n: int = 200, p: int = 30, signal: float = 1.5):
    """Random scores [n, p] with some signal on the target, targets [n], unseen mask [p] (~1/3 unseen)."""
    rng = np.random.default_rng(seed)
    unseen = np.zeros(p, dtype=bool)
    unseen[rng.choice(p, size=p // 3, replace=False)] = True
    targets = rng.integers(0, p, size=n)
    scores = rng.normal(size=(n, p))
    scores[np.arange(n), targets] += signal
    # A model biased against unseen pairs, as in practice: the sweep has to pull them up.
    scores[:, unseen] -= 0.5
    return scores, targets, unseen


def accuracies_at(scores, targets, unseen, bias: float) -> tuple[float, float]:
    """Reference from the definition: argmax of scores + bias on unseen columns."""
    pred = np.argmax(scores + bias * unseen, axis=1)
    correct = pred == targets
    target_unseen = unseen[targets]
    return float(correct[~target_unseen].mean()), float(correct[target_unseen].mean())


def reference_curve(scores, targets, unseen):
    """(biases [K], seen [K], unseen [K]) at ends + midpoints of the distinct breakpoints."""
    gaps = scores[:, ~unseen].max(axis=1) - scores[:, unseen].max(axis=1)
    breaks = np.unique(gaps)
    biases = np.concatenate([[breaks[0] - 1.0], (breaks[:-1] + breaks[1:]) / 2, [breaks[-1] + 1.0]])
    accs = np.array([accuracies_at(scores, targets, unseen, b) for b in biases])
    return biases, accs[:, 0], accs[:, 1]


def trapezoid(y, x) -> float:
    return float(sum((x[k + 1] - x[k]) * (y[k + 1] + y[k]) / 2 for k in range(len(x) - 1)))


def harmonic(s, u):
    s, u = np.asarray(s), np.asarray(u)
    return np.where(s + u > 0, 2 * s * u / np.maximum(s + u, 1e-300), 0.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_curve_matches_argmax_reference(seed):
    scores, targets, unseen = make_problem(seed)
    curve = czsl_curve(scores, targets, unseen)
    biases, ref_seen, ref_unseen = reference_curve(scores, targets, unseen)

    np.testing.assert_allclose(curve.biases, biases, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.seen_acc, ref_seen, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.unseen_acc, ref_unseen, rtol=0, atol=1e-12)
    ref_hm = harmonic(ref_seen, ref_unseen)
    np.testing.assert_allclose(curve.harmonic_mean, ref_hm, rtol=0, atol=1e-12)
    assert curve.auc == pytest.approx(trapezoid(ref_seen, ref_unseen), abs=1e-12)
    assert curve.best_hm == pytest.approx(ref_hm.max(), abs=1e-12)
    assert curve.best_index == int(np.argmax(ref_hm))
    # The best point is reproduced by argmax at the reported bias.
    assert (curve.best_seen, curve.best_unseen) == pytest.approx(
        accuracies_at(scores, targets, unseen, curve.best_bias), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_fine_grid_never_beats_exact_curve(seed):
    scores, targets, unseen = make_problem(seed)
    curve = czsl_curve(scores, targets, unseen)
    lo, hi = curve.biases[0], curve.biases[-1]
    grid = np.linspace(lo, hi, 3001)
    points = np.array([accuracies_at(scores, targets, unseen, b) for b in grid])  # [G, 2]

    assert harmonic(points[:, 0], points[:, 1]).max() <= curve.best_hm + 1e-12
    curve_points = np.stack([curve.seen_acc, curve.unseen_acc], axis=1)  # [K, 2]
    for point in np.unique(points, axis=0):
        assert np.abs(curve_points - point).max(axis=1).min() < 1e-12, f"grid point {point} missing from curve"


@pytest.mark.parametrize("seed", SEEDS)
def test_monotone_and_bounded(seed):
    curve = czsl_curve(*make_problem(seed))
    assert np.all(np.diff(curve.biases) > 0)
    assert np.all(np.diff(curve.seen_acc) <= 0)
    assert np.all(np.diff(curve.unseen_acc) >= 0)
    assert curve.unseen_acc[0] == 0.0 and curve.seen_acc[-1] == 0.0  # extreme biases predict one group only
    assert 0.0 <= curve.auc <= 1.0
    assert len(curve.biases) == len(curve.seen_acc) == len(curve.unseen_acc) == len(curve.harmonic_mean)


@pytest.mark.parametrize("seed", SEEDS)
def test_no_bias_equals_plain_argmax(seed):
    scores, targets, unseen = make_problem(seed)
    curve = czsl_curve(scores, targets, unseen)
    seen_acc, unseen_acc = accuracies_at(scores, targets, unseen, 0.0)
    metrics = curve.metrics()
    assert metrics["czsl/seen_no_bias"] == pytest.approx(seen_acc, abs=1e-12)
    assert metrics["czsl/unseen_no_bias"] == pytest.approx(unseen_acc, abs=1e-12)


def test_metrics_rows_and_prefix():
    curve = czsl_curve(*make_problem(0))
    metrics = curve.metrics(prefix="eval/czsl/")
    assert set(metrics) == {f"eval/czsl/{k}" for k in (
        "auc", "best_hm", "best_hm_seen", "best_hm_unseen", "best_hm_bias", "seen_no_bias", "unseen_no_bias")}
    assert all(type(v) is float for v in metrics.values())
    assert metrics["eval/czsl/best_hm"] == curve.best_hm
    rows = curve.to_rows()
    assert len(rows) == len(curve.biases)
    assert set(rows[0]) == {"bias", "seen_acc", "unseen_acc", "harmonic_mean"}
    assert rows[curve.best_index]["harmonic_mean"] == curve.best_hm


def test_hand_computed_example():
    # Columns 0, 1 seen; 2 unseen.  Gaps d = best seen - best unseen.
    scores = np.array([
        [2.0, 0.0, 1.0],  # target 0 (seen), d = 1   -> correct while b < 1
        [0.0, 3.0, 0.0],  # target 1 (seen), d = 3   -> correct while b < 3
        [1.0, 0.0, 0.5],  # target 2 (unseen), d = 0.5 -> correct once b > 0.5
        [0.0, 0.0, 2.0],  # target 2 (unseen), d = -2 -> correct once b > -2
    ])
    curve = czsl_curve(scores, np.array([0, 1, 2, 2]), np.array([False, False, True]))
    np.testing.assert_allclose(curve.biases, [-3.0, -0.75, 0.75, 2.0, 4.0])
    np.testing.assert_allclose(curve.seen_acc, [1.0, 1.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(curve.unseen_acc, [0.0, 0.5, 1.0, 1.0, 1.0])
    assert curve.auc == pytest.approx(1.0)
    assert curve.best_hm == 1.0 and curve.best_bias == 0.75
    assert (curve.seen_no_bias, curve.unseen_no_bias) == (1.0, 0.5)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    scores, targets, unseen = make_problem(0)
    expected = czsl_curve(scores, targets, unseen)
    got = czsl_curve(torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(unseen))
    np.testing.assert_array_equal(got.seen_acc, expected.seen_acc)
    assert got.auc == expected.auc


@pytest.mark.parametrize("case, match", [
    ("scores_1d", "scores must be"),
    ("targets_len", "targets must have shape"),
    ("unseen_len", "unseen must be"),
    ("all_unseen", "no seen candidate pair"),
    ("none_unseen", "no unseen candidate pair"),
    ("no_seen_images", "no image has a seen target"),
    ("no_unseen_images", "no image has an unseen target"),
    ("target_high", r"targets must be in \[0, 30\)"),
    ("target_negative", r"targets must be in \[0, 30\)"),
    ("nan", "finite"),
])
def test_bad_inputs(case, match):
    scores, targets, unseen = make_problem(0)
    if case == "scores_1d":
        scores = scores[0]
    elif case == "targets_len":
        targets = targets[:-1]
    elif case == "unseen_len":
        unseen = unseen[:-1]
    elif case == "all_unseen":
        unseen = np.ones_like(unseen)
    elif case == "none_unseen":
        unseen = np.zeros_like(unseen)
    elif case == "no_seen_images":
        targets = np.full_like(targets, np.flatnonzero(unseen)[0])
    elif case == "no_unseen_images":
        targets = np.full_like(targets, np.flatnonzero(~unseen)[0])
    elif case == "target_high":
        targets = targets.copy()
        targets[3] = 30
    elif case == "target_negative":
        targets = targets.copy()
        targets[3] = -1
    elif case == "nan":
        scores = scores.copy()
        scores[1, 2] = np.nan
    with pytest.raises(ValueError, match=match):
        czsl_curve(scores, targets, unseen)


def test_plot_writes_png(tmp_path):
    curve = czsl_curve(*make_problem(0))
    path = curve.plot(tmp_path / "sub" / "czsl.png")
    assert path == tmp_path / "sub" / "czsl.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["czsl.png"]  # no temp file left behind
    assert isinstance(curve, CZSLCurve)
