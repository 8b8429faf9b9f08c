"""Small accuracy helpers on logits (plain torch).

Usage::

    correct = topk_correct(logits, targets, k=5)       # [N] bool
    acc = correct.float().mean().item()
    per_class = per_class_accuracy(correct, targets, num_classes)  # [C], nan where no sample
    class_mean = class_mean_accuracy(correct, targets, num_classes)  # mean over present classes
"""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """[N] bool: is ``targets[i]`` among the top-k of ``logits[i]`` ([N, C])?

    ``k`` is capped at C, so top-5 over 3 classes is always correct.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices  # [N, k]
    return (top == targets.to(top.device).unsqueeze(-1)).any(dim=-1)


def per_class_accuracy(correct: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C] float accuracy per class; NaN for classes with no sample."""
    targets = targets.long()
    counts = torch.bincount(targets, minlength=num_classes).float()  # [C]
    hits = torch.bincount(targets, weights=correct.float(), minlength=num_classes)  # [C]
    return torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(counts, float("nan")))


def class_mean_accuracy(correct: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Mean over classes that have samples of the per-class accuracy."""
    acc = per_class_accuracy(correct, targets, num_classes)
    return float(acc[~acc.isnan()].mean())
