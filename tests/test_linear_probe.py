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


# ------------------------------------------------ the probe on a benchmark (evaluation/probe_eval.py)
from torchvision.transforms.functional import to_tensor  # noqa: E402

from evaluation.probe_eval import probe_benchmark  # noqa: E402
from test_evaluation import OBJECTS, SEEN, _image, _splits, make_encode_image, world  # noqa: E402,F401

TRAIN = [tuple(p.split()) for p in SEEN] * 4  # training images: the seen pairs only (square, circle)


def _train_batches(pairs, batch_size=5):
    images = torch.stack([to_tensor(_image(a, o)) for a, o in pairs])  # [N, 3, 32, 32]
    objects = torch.tensor([OBJECTS.index(o) for _, o in pairs])
    return [(images[i:i + batch_size], objects[i:i + batch_size]) for i in range(0, len(pairs), batch_size)]


def test_probe_benchmark_equals_fitting_and_reading_the_probe_directly(world):
    tower = make_encode_image()  # features: one-hot colour + one-hot object
    splits = _splits(world)
    metrics = probe_benchmark(tower, _train_batches(TRAIN), splits, OBJECTS, batch_size=4)

    batches = _train_batches(TRAIN)
    probe = fit_probe(torch.cat([tower(x) for x, _ in batches]), torch.cat([y for _, y in batches]), len(OBJECTS))
    for name, ds in splits.items():
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        truth = np.array([OBJECTS.index(ds.pairs[y][1]) for _, y in ds.samples])
        predicted = probe.logits(tower(images)).numpy().argmax(1)  # the benchmark's objects are all of OBJECTS
        assert metrics[f"probe/{name}/object_top1"] == pytest.approx((predicted == truth).mean(), abs=1e-12)
    assert metrics["probe/n_train"] == len(TRAIN) and metrics["chance/probe_object_top1"] == 1 / 3
    assert metrics["probe/seen/object_top1"] == 1.0  # square and circle, whatever the colour


def test_a_tower_that_only_knows_seen_pairs_fails_the_probe_on_unseen_ones(world):
    """Features naming the seen pair (zero for any other): objects of unseen pairs are lost, while a
    tower with separate colour and object features keeps them."""
    object_aware = make_encode_image()

    def pair_only(images):  # [B, D] -> [B, 3]: which seen pair, if any
        feats = object_aware(images)
        seen = torch.tensor([[1.0, 0, 0, 0, 1, 0], [0, 1.0, 0, 0, 1, 0], [0, 0, 1.0, 1, 0, 0]])  # red/green square, blue circle
        return ((feats @ seen.T) == 2).float()

    seen_pairs = {tuple(p.split()) for p in SEEN}
    aware = probe_benchmark(object_aware, _train_batches(TRAIN), _splits(world), OBJECTS, seen_pairs=seen_pairs)
    entangled = probe_benchmark(pair_only, _train_batches(TRAIN), _splits(world), OBJECTS, seen_pairs=seen_pairs)
    assert aware["probe/seen/object_top1"] == entangled["probe/seen/object_top1"] == 1.0
    assert entangled["probe/unseen/object_top1"] + 0.3 < aware["probe/unseen/object_top1"]
