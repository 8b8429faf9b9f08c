"""A linear probe: multinomial logistic regression on frozen image features.

    probe = fit_probe(train_feats, train_objects, n_classes=len(objects))   # [N, D] float, [N] long
    accuracy = (probe.predict(test_feats) == test_objects).float().mean()

The probe compares image towers on what their features hold, whatever head or prompts each arm
trained with (CLIP, the supervised twin and an image-only arm alike): fit it on images of the seen
pairs, read its object accuracy on seen and on unseen pairs.

The fit is deterministic: features are standardised with the training set's mean and standard
deviation, and the L2-regularised cross-entropy (strictly convex) is minimised in float64 by
full-batch L-BFGS, so the same features give the same probe on every run and machine thread count
aside from float summation order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinearProbe:
    weight: torch.Tensor  # [C, D] on standardised features
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D] the training features' mean
    scale: torch.Tensor  # [D] their standard deviation (1 where a feature is constant)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[N, C] class scores of [N, D] features."""
        z = (features.double() - self.mean) / self.scale
        return z @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """[N] the best class of each of [N, D] features."""
        return self.logits(features).argmax(dim=1)


def probe_loss(weight, bias, z, labels, l2: float) -> torch.Tensor:
    """Mean cross-entropy of the probe on standardised features z [N, D], plus l2/2 * |weight|^2."""
    return torch.nn.functional.cross_entropy(z @ weight.T + bias, labels) + 0.5 * l2 * (weight * weight).sum()


def fit_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int, l2: float = 1e-3,
              max_iter: int = 500) -> LinearProbe:
    """The probe minimising `probe_loss` on [N, D] features with [N] labels in [0, n_classes)."""
    if features.ndim != 2 or len(features) != len(labels) or not len(labels):
        raise ValueError(f"a probe needs [N, D] features and N labels, got {tuple(features.shape)} and {len(labels)}")
    x = features.detach().double()
    mean, scale = x.mean(0), x.std(0, unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    z = (x - mean) / scale
    labels = labels.long()
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = probe_loss(weight, bias, z, labels, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, scale)
