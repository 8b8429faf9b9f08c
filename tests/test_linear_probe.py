"""The linear probe against a NumPy reference: its solution meets the objective's optimality condition."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.linear_probe import fit_probe


def _numpy_gradient(weight, bias, z, labels, l2):
    """Gradient of mean cross-entropy + l2/2 |W|^2, written out in NumPy."""
    logits = z @ weight.T + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1  # softmax minus one-hot
    p /= len(labels)
    return p.T @ z + l2 * weight, p.sum(0)


def _clusters(n_per=60, d=8, classes=4, seed=0, noise_seed=None):
    rng = np.random.default_rng(seed)
    centres, scale, offset = rng.normal(0, 2, (classes, d)), rng.uniform(0.1, 10, d), rng.normal(0, 5, d)
    labels = np.repeat(np.arange(classes), n_per)
    noise = np.random.default_rng(noise_seed) if noise_seed is not None else rng
    feats = centres[labels] + noise.normal(0, 1.5, (len(labels), d))
    return feats * scale + offset, labels  # features of mixed scale and offset


def test_probe_is_the_optimum_numpy_computes():
    feats, labels = _clusters()
    probe = fit_probe(torch.from_numpy(feats), torch.from_numpy(labels), 4, l2=1e-2)
    z = (feats - feats.mean(0)) / feats.std(0)
    gw, gb = _numpy_gradient(probe.weight.numpy(), probe.bias.numpy(), z, labels, 1e-2)
    assert np.abs(gw).max() < 1e-6 and np.abs(gb).max() < 1e-6
    accuracy = (probe.predict(torch.from_numpy(feats)).numpy() == labels).mean()
    assert accuracy > 0.8


def test_probe_is_deterministic_and_reads_held_out_features():
    feats, labels = _clusters(seed=1)
    a = fit_probe(torch.from_numpy(feats), torch.from_numpy(labels), 4)
    b = fit_probe(torch.from_numpy(feats), torch.from_numpy(labels), 4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    test, test_labels = _clusters(seed=1, n_per=30, noise_seed=7)  # same centres and scales, new noise
    assert (a.predict(torch.from_numpy(test)).numpy() == test_labels).mean() > 0.8
    noise = torch.from_numpy(np.random.default_rng(2).normal(size=feats.shape))  # features that hold nothing
    chance = fit_probe(noise, torch.from_numpy(labels), 4)
    assert (chance.predict(torch.from_numpy(test)).numpy() == test_labels).mean() < 0.5


def test_probe_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="features and"):
        fit_probe(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long), 2)
