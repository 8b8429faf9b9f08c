"""ImageNet-AO zero-shot evaluation: pair, object and attribute accuracy per split.

Usage::

    import open_clip
    from evaluation import AOFolder, evaluate_zero_shot, SIMPLE_TEMPLATES
    splits = {s: AOFolder(f"world/imagenet_ao/{s}", transform=preprocess) for s in ("unseen", "seen")}
    model.eval()
    result = evaluate_zero_shot(model.encode_image, model.encode_text, tokenizer, splits, SIMPLE_TEMPLATES)
    result.metrics["unseen/pair_top1"]
    result.write("runs/x/eval")   # metrics.json, eval_table.csv, eval_table.md

Protocol (closed world):
  * candidate pairs = sorted union of the pairs of all splits; objects and
    attributes = sorted unique objects / attributes of those pairs.
  * pair task: classnames ``"attribute object"`` with ``templates``.
  * object task: classnames ``"object"`` with ``object_templates`` (default ``templates``).
  * attribute task: classnames ``"attribute object"`` literally, e.g. ``"red object"``,
    with ``attribute_templates`` (default ``templates``).
  * logits = ``logit_scale * image_feats @ classifier.T``; top-k is capped at
    the number of classes.  Text classifiers are built once per call, image
    features once per split.

Metric names (flat, python floats; callers add their own prefix such as ``eval/``):
  for each split ``s``:
    ``{s}/pair_top1``, ``{s}/pair_top5``, ``{s}/pair_top1_class_mean`` (mean over
    the split's pairs of per-pair top-1), ``{s}/object_top1``, ``{s}/object_top5``,
    ``{s}/attribute_top1``, ``{s}/attribute_top5``, ``{s}/n_images``, ``{s}/n_pairs``
  global:
    ``n_candidate_pairs``, ``chance/pair_top1`` (1 / #candidate pairs),
    ``chance/object_top1`` (1 / #objects), ``chance/attribute_top1`` (1 / #attributes)

Per-pair table rows (``EvalResult.table``):
  ``{"split", "attribute", "object", "n", "pair_top1", "pair_top5", "object_top1", "attribute_top1"}``
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .imagenet_ao import AOFolder
from .metrics import class_mean_accuracy, per_class_accuracy, topk_correct
from .zero_shot import Template, image_features, text_classifier

TABLE_COLUMNS = ("split", "attribute", "object", "n", "pair_top1", "pair_top5", "object_top1", "attribute_top1")


@dataclass
class EvalResult:
    """Flat metrics plus one table row per (split, pair)."""

    metrics: dict[str, float]
    table: list[dict]
    candidate_pairs: list[tuple[str, str]] = field(default_factory=list)

    def to_markdown(self) -> str:
        """Metrics summary table followed by the per-pair table."""
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in self.metrics.items()]
        lines += ["", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
        lines += ["| " + " | ".join(_fmt(row[c]) for c in TABLE_COLUMNS) + " |" for row in self.table]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write metrics.json, eval_table.csv and eval_table.md into ``out_dir`` (created).

        Returns ``{"metrics": ..., "table_csv": ..., "table_md": ...}``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"metrics": out / "metrics.json", "table_csv": out / "eval_table.csv", "table_md": out / "eval_table.md"}
        paths["metrics"].write_text(json.dumps(self.metrics, indent=2) + "\n")
        with paths["table_csv"].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
            writer.writeheader()
            writer.writerows(self.table)
        paths["table_md"].write_text(self.to_markdown())
        return paths


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}" if v.is_integer() else f"{v:.4f}"
    return str(v)


def evaluate_zero_shot(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    splits: Mapping[str, AOFolder],
    templates: Sequence[Template],
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    logit_scale: float = 100.0,
    object_templates: Sequence[Template] | None = None,
    attribute_templates: Sequence[Template] | None = None,
    progress: bool = False,
) -> EvalResult:
    """Zero-shot pair / object / attribute classification on every split (see module doc)."""
    if not splits:
        raise ValueError("evaluate_zero_shot needs at least one split")
    candidates = sorted({pair for ds in splits.values() for pair in ds.pairs})
    attributes = sorted({a for a, _ in candidates})
    objects = sorted({o for _, o in candidates})
    pair_idx = {p: i for i, p in enumerate(candidates)}
    attr_idx = {a: i for i, a in enumerate(attributes)}
    obj_idx = {o: i for i, o in enumerate(objects)}

    # Text side: once per call, shared by all splits.
    def classifier(names: list[str], temps: Sequence[Template]) -> torch.Tensor:
        return text_classifier(encode_text, tokenizer, names, temps, batch_size=batch_size, device=device)

    w_pair = classifier([f"{a} {o}" for a, o in candidates], templates)  # [P, D]
    w_obj = classifier(objects, object_templates or templates)  # [O, D]
    w_attr = classifier([f"{a} object" for a in attributes], attribute_templates or templates)  # [A, D]

    metrics: dict[str, float] = {
        "n_candidate_pairs": float(len(candidates)),
        "chance/pair_top1": 1.0 / len(candidates),
        "chance/object_top1": 1.0 / len(objects),
        "chance/attribute_top1": 1.0 / len(attributes),
    }
    table: list[dict] = []
    for split, ds in splits.items():
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
            pin_memory=torch.device(device).type == "cuda",
        )
        feats, local = image_features(encode_image, loader, device=device, progress=progress, desc=split)
        # Split-local class index -> candidate pair / object / attribute indices.
        to_pair = torch.tensor([pair_idx[p] for p in ds.pairs])
        to_obj = torch.tensor([obj_idx[o] for _, o in ds.pairs])
        to_attr = torch.tensor([attr_idx[a] for a, _ in ds.pairs])
        y_pair, y_obj, y_attr = to_pair[local], to_obj[local], to_attr[local]  # [N] each

        pair_logits = logit_scale * feats @ w_pair.T  # [N, P]
        obj_logits = logit_scale * feats @ w_obj.T  # [N, O]
        attr_logits = logit_scale * feats @ w_attr.T  # [N, A]
        correct = {
            "pair_top1": topk_correct(pair_logits, y_pair, 1),
            "pair_top5": topk_correct(pair_logits, y_pair, 5),
            "object_top1": topk_correct(obj_logits, y_obj, 1),
            "object_top5": topk_correct(obj_logits, y_obj, 5),
            "attribute_top1": topk_correct(attr_logits, y_attr, 1),
            "attribute_top5": topk_correct(attr_logits, y_attr, 5),
        }  # each [N] bool

        for name in ("pair_top1", "pair_top5"):
            metrics[f"{split}/{name}"] = float(correct[name].float().mean())
        metrics[f"{split}/pair_top1_class_mean"] = class_mean_accuracy(correct["pair_top1"], local, len(ds.pairs))
        for name in ("object_top1", "object_top5", "attribute_top1", "attribute_top5"):
            metrics[f"{split}/{name}"] = float(correct[name].float().mean())
        metrics[f"{split}/n_images"] = float(len(local))
        metrics[f"{split}/n_pairs"] = float(len(ds.pairs))

        # Per-pair rows, indexed by the split's own class index.
        counts = torch.bincount(local, minlength=len(ds.pairs))
        per_pair = {
            name: per_class_accuracy(correct[name], local, len(ds.pairs))
            for name in ("pair_top1", "pair_top5", "object_top1", "attribute_top1")
        }
        for i, (attr, obj) in enumerate(ds.pairs):
            row = {"split": split, "attribute": attr, "object": obj, "n": int(counts[i])}
            row.update({name: float(acc[i]) for name, acc in per_pair.items()})
            table.append(row)

    return EvalResult(metrics=metrics, table=table, candidate_pairs=candidates)
