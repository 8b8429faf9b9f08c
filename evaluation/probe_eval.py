"""Object accuracy of a linear probe on an image tower's frozen features, on a benchmark's splits.

    metrics = probe_benchmark(tower, train_batches, splits, objects, seen_pairs=None, vocab=vocab)
    metrics["probe/unseen/object_top1"]

`train_batches` yields (images [B, 3, H, W], object index [B]) of the training data (pairs seen in
training only), indices into `objects`; the probe (evaluation/linear_probe.py) is fitted on their
features and read on every benchmark image. The same protocol for every arm (CLIP, the supervised
twin, an image-only arm): what the tower's features hold, whatever head or prompts it trained with.

Groups are evaluate()'s: one per split, and `seen` / `unseen` by `seen_pairs` when given (otherwise
splits named seen / unseen are those groups), per style (`alt/seen`, `alt/unseen` for splits named
`alt/...`: imagenet_ao.split_styles). Metric names: ``probe/<group>/object_top1``,
``probe/n_train``, ``chance/probe_object_top1``.

In a process group each rank passes its own training batches (its shards) and encodes its slice of the
benchmark (`rank_slice`, as in evaluate()); features are gathered, so every rank fits the same probe on
the same features and reports the same numbers. Under sharded weights (lockstep) every rank must pass
the same number of training batches.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from data_filters.vocab import Vocabulary

from .distributed import RankSlice, gather_rows, idle_forwards, rank_batches
from .evaluate import _head_columns
from .imagenet_ao import AOFolder, split_styles, style_group
from .linear_probe import fit_probe


def probe_columns(splits: Mapping[str, AOFolder], objects: Sequence[str],
                  vocab: Vocabulary | None) -> tuple[list[str], torch.Tensor]:
    """(the benchmark's objects, sorted; the probe class of each), matched by canonical name as heads
    are: the probe chooses among the benchmark's objects only, so its chance level is the zero-shot
    one. ValueError naming the benchmark objects `objects` lacks (check it before training)."""
    candidates = sorted({o for ds in splits.values() for _, o in ds.pairs})
    return candidates, torch.tensor(_head_columns("object", objects, candidates, vocab))


@torch.no_grad()
def _features(tower: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device) -> torch.Tensor:
    return tower(images.to(device)).float().cpu()  # [B, D]


def probe_benchmark(tower: Callable[[torch.Tensor], torch.Tensor], train_batches: Iterable, splits: Mapping[str, AOFolder],
                    objects: Sequence[str], seen_pairs: Mapping | set | None = None, vocab: Vocabulary | None = None,
                    batch_size: int = 256, num_workers: int = 0, device: str | torch.device = "cpu",
                    rank_slice: RankSlice = RankSlice()) -> dict[str, float]:
    """Fit the probe on `train_batches`' features, report its object accuracy per benchmark group."""
    feats, labels = [], []
    for images, obj in train_batches:
        feats.append(_features(tower, images, device))
        labels.append(torch.as_tensor(obj).long())
    feats = torch.cat(feats) if feats else torch.empty(0, 0)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    if rank_slice.world_size > 1:
        feats, labels = gather_rows(feats), gather_rows(labels)
    if not len(labels):
        raise ValueError("the linear probe has no training image: the training data yielded no labelled sample")
    probe = fit_probe(feats, labels, len(objects))

    candidates, columns = probe_columns(splits, objects, vocab)
    target = {o: i for i, o in enumerate(candidates)}
    names = list(splits)
    rows = {"split": [], "object": [], "pair": [], "prediction": []}
    for i, images, local in rank_batches(splits, batch_size, rank_slice, num_workers):
        logits = probe.logits(_features(tower, images, device))[:, columns]  # [B, n candidates]
        rows["prediction"].append(logits.argmax(dim=1))
        rows["object"].append(torch.tensor([target[splits[names[i]].pairs[y][1]] for y in local.tolist()]))
        rows["pair"].append(local)
        rows["split"].append(torch.full((len(local),), i))
    idle_forwards(lambda images: _features(tower, images, device), splits, batch_size, rank_slice)
    cat = {k: torch.cat(v) if v else torch.empty(0, dtype=torch.long) for k, v in rows.items()}
    if rank_slice.world_size > 1:
        cat = {k: gather_rows(v) for k, v in cat.items()}

    hit = (cat["prediction"] == cat["object"]).numpy()
    split = cat["split"].numpy()
    pair = [splits[names[s]].pairs[p] for s, p in zip(split.tolist(), cat["pair"].tolist())]
    groups = {name: split == i for i, name in enumerate(names)}
    if seen_pairs is not None:
        seen = np.array([p in seen_pairs for p in pair], bool)
        for style, members in split_styles(names).items():
            drawn = np.isin(split, [names.index(m) for m in members])  # the style's images
            groups.update({style_group(style, "seen"): seen & drawn, style_group(style, "unseen"): ~seen & drawn})
    metrics = {f"probe/{g}/object_top1": float(hit[mask].mean()) for g, mask in groups.items() if mask.any()}
    metrics["probe/n_train"] = float(len(labels))
    metrics["chance/probe_object_top1"] = 1.0 / len(candidates)
    return metrics
