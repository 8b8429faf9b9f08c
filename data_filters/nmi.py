"""Entropy, mutual information and normalised mutual information of an attribute x object count table.

    >>> from data_filters.nmi import joint_stats
    >>> joint_stats([[10, 0], [0, 10]])["nmi"]
    1.0
"""
from __future__ import annotations

import numpy as np

# How the mutual information is normalised. "arithmetic" (the mean of the two entropies) is
# scikit-learn's default for normalized_mutual_info_score; record which one a number used.
NORMALISERS = ("arithmetic", "geometric", "min", "max", "joint")


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def joint_stats(counts, normaliser: str = "arithmetic") -> dict:
    """Entropies (nats), MI and NMI of a count table `counts[attribute, object]`.

    Returns {"n", "h_attribute", "h_object", "h_joint", "mi", "nmi", "normaliser", "distinct_pairs"}.
    """
    if normaliser not in NORMALISERS:
        raise ValueError(f"unknown normaliser {normaliser!r}; choose one of {', '.join(NORMALISERS)}")
    table = np.asarray(counts, dtype=np.float64)  # [A, O]
    if table.ndim != 2 or (table < 0).any():
        raise ValueError("counts must be a 2-D table of non-negative numbers")
    n = table.sum()
    if n == 0:
        raise ValueError("counts are all zero: no attribute-object pair to measure")
    joint = table / n
    h_a = _entropy(joint.sum(axis=1))
    h_o = _entropy(joint.sum(axis=0))
    h_ao = _entropy(joint.ravel())
    mi = max(h_a + h_o - h_ao, 0.0)  # clip float noise below zero
    denom = {
        "arithmetic": (h_a + h_o) / 2,
        "geometric": np.sqrt(h_a * h_o),
        "min": min(h_a, h_o),
        "max": max(h_a, h_o),
        "joint": h_ao,
    }[normaliser]
    nmi = float(mi / denom) if denom > 0 else 0.0
    return {
        "n": int(round(n)),
        "h_attribute": h_a,
        "h_object": h_o,
        "h_joint": h_ao,
        "mi": mi,
        "nmi": min(nmi, 1.0),
        "normaliser": normaliser,
        "distinct_pairs": int((table > 0).sum()),
    }
