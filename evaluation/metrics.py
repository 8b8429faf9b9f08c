"""Per-class accuracy helpers (plain torch).

Usage::

    correct = logits.argmax(-1) == targets                          # [N] bool
    per_class = per_class_accuracy(correct, targets, num_classes)  # [C], nan where no sample
    class_mean = class_mean_accuracy(correct, targets, num_classes)  # mean over present classes
"""

from __future__ import annotations

import numpy as np
import torch


def per_class_accuracy(correct: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C] float accuracy per class; NaN for classes with no sample."""
    targets = targets.long()
    counts = torch.bincount(targets, minlength=num_classes).double()  # [C]
    hits = torch.bincount(targets, weights=correct.double(), minlength=num_classes)  # [C]
    return torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(counts, float("nan")))


def class_mean_accuracy(correct: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Mean over classes that have samples of the per-class accuracy."""
    acc = per_class_accuracy(correct, targets, num_classes)
    return float(acc[~acc.isnan()].mean())


def as_numpy(x) -> np.ndarray:
    """A numpy array of `x` (torch tensors are detached and moved to CPU first)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
