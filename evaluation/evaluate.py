"""The ImageNet-AO protocol: pair (closed and open world), object and attribute accuracy per split,
seen vs unseen, CZSL calibration metrics and the contamination check.

Usage::

    from evaluation import ZeroShotModel, evaluate, load_benchmark
    splits = load_benchmark("world/imagenet_ao", transform=preprocess, vocab=vocab)  # {"seen": .., "unseen": ..}
    result = evaluate(ZeroShotModel(model.encode_image, model.encode_text, tokenizer), splits, templates)
    result.metrics["unseen/pair_top1"]
    result.write("runs/x/eval")   # metrics.json, eval_table.{csv,md}, czsl_curve.{csv,png}, contamination.json
    # in every rank of a process group (DDP): each encodes a slice of the images, all get this result
    result = evaluate(model, splits, templates, rank_slice=RankSlice.of_process_group())

Tasks (zero-shot models; logits = ``logit_scale * image @ classifier.T``, unit vectors both sides):
  * ``pair``: closed world, the candidate pairs = the sorted union of every split's pairs
    (classnames ``"attribute object"``);
  * ``pair_open``: open world, every attribute x object combination of the candidates' words;
  * ``object``: the candidates' objects (classnames ``"object"``);
  * ``attribute``: the candidates' attributes (classnames ``"attribute object"``, e.g. ``"red object"``);
  * ``object_marginal``: the candidates' objects again, each scored by summing the softmax probabilities
    of every pair prompt naming it (over the open-world grid, so each object has one prompt per
    attribute; the closed-world pairs without ``open_world``). Captions that always name an attribute
    never teach object-only prompts, so this is the object accuracy such a model can show through the
    prompts it was trained on.
A supervised model (``HeadModel``) has the ``object`` task (and ``attribute`` with an attribute
head): each head's logits restricted to the classes that name the benchmark's objects (attributes),
matched by vocabulary canonical name, so its accuracy has the same classes and chance as a CLIP's.

Seen status of a pair: from ``seen_pairs`` (the pairs of the training data, e.g. a subset manifest)
when given; otherwise a split named ``seen`` or ``unseen`` (or ``<style>/seen``, ``<style>/unseen``)
says it for its pairs. With a status, metrics are also reported for the groups ``seen`` and
``unseen`` (images pooled across splits by their pair's status; with ``seen_pairs`` these replace
splits of the same name), and the CZSL calibration sweep runs on the closed-world pair scores
(evaluation/czsl.py).

Styles (imagenet_ao.split_styles): splits named ``<style>/<split>`` hold the benchmark's pairs drawn
another way (the toy world's second renderer: ``alt/unseen``, ``alt/seen``). Every style is scored
among the same candidate pairs and prompts, but pooled apart: its groups are ``<style>/seen`` and
``<style>/unseen`` and its calibration sweep ``<style>/czsl/...``; when the styles hold the same pairs
(the toy world's do), the plain splits' numbers are those of the plain splits evaluated alone.
``EvalResult.czsl`` (czsl_curve.csv/png) is the first style's curve.

Metric names (flat floats; the training callback adds ``eval/``), for each group ``g``:
  ``g/{task}_top1``, ``g/{task}_top5``, ``g/{task}_top1_class_mean`` (mean over the group's classes
  of per-class top-1) for each task, ``g/n_images``, ``g/n_pairs``;
  global: ``n_candidate_pairs``, ``n_open_pairs``, ``chance/{task}_top1``; ``czsl/auc``,
  ``czsl/best_hm`` ... when the status is known; ``contamination/pairs_in_training`` with ``seen_pairs``.
Top-k is capped at the number of classes.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from data_filters.files import write_text_atomic
from data_filters.vocab import Vocabulary, phrase

from .czsl import CZSLCurve, czsl_curve
from .distributed import RankSlice, gather_rows, idle_forwards, rank_batches
from .imagenet_ao import AOFolder, split_styles, style_group
from .metrics import class_mean_accuracy, per_class_accuracy
from .models import HeadModel, ZeroShotModel
from .zero_shot import SIMPLE_TEMPLATES, Template

TASKS = ("pair", "pair_open", "object", "attribute", "object_marginal")
TABLE_COLUMNS = ("split", "attribute", "object", "seen", "n", "pair_top1", "pair_top5", "pair_open_top1",
                 "object_top1", "object_marginal_top1", "attribute_top1")
TOP_K = 5
HEADLINE = ("/pair_top1", "/pair_open_top1", "/object_top1", "/object_marginal_top1", "/attribute_top1", "czsl/auc",
            "czsl/best_hm")


@dataclass
class EvalResult:
    """Flat metrics, one table row per (split, pair), and the CZSL curve / contamination when known."""

    metrics: dict[str, float]
    table: list[dict]
    candidate_pairs: list[tuple[str, str]] = field(default_factory=list)
    czsl: CZSLCurve | None = None
    contamination: dict | None = None
    images_scored: int | None = None  # images this process encoded: all of them, or its rank's slice
    probe: dict[str, float] | None = None  # a linear probe's metrics (evaluation/probe_eval.py), when one was fitted

    def all_metrics(self) -> dict[str, float]:
        """The protocol's metrics and the probe's (whose fit needs training data, so only `aotrain fit` has it)."""
        return {**self.metrics, **(self.probe or {})}

    def headline(self) -> dict[str, float]:
        """The numbers a person reads first: top-1 of every task per group, CZSL, then chance levels."""
        metrics = self.all_metrics()
        chosen = [k for k in metrics if k.endswith(HEADLINE)]
        return {k: metrics[k] for k in sorted(chosen, key=lambda k: k.startswith("chance/"))}

    def to_markdown(self) -> str:
        """Metrics summary table followed by the per-pair table."""
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in self.metrics.items()]
        lines += ["", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
        lines += ["| " + " | ".join(_fmt(row[c]) for c in TABLE_COLUMNS) + " |" for row in self.table]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write metrics.json, eval_table.csv/.md, and czsl_curve.csv/.png, contamination.json, probe.json when
        known. A result holding a probe only (a model that does not classify) writes probe.json alone."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        if self.metrics or self.table or self.probe is None:
            paths = {"metrics": out / "metrics.json", "table_csv": out / "eval_table.csv",
                     "table_md": out / "eval_table.md"}
            write_text_atomic(paths["metrics"], json.dumps(self.metrics, indent=2) + "\n")
            write_text_atomic(paths["table_csv"], _csv(self.table, TABLE_COLUMNS))
            write_text_atomic(paths["table_md"], self.to_markdown())
        if self.czsl is not None:
            paths["czsl_csv"] = out / "czsl_curve.csv"
            write_text_atomic(paths["czsl_csv"], _csv(self.czsl.to_rows()))
            paths["czsl_png"] = self.czsl.plot(out / "czsl_curve.png")
        if self.probe is not None:
            paths["probe"] = out / "probe.json"
            write_text_atomic(paths["probe"], json.dumps(self.probe, indent=2) + "\n")
        if self.contamination is not None:
            paths["contamination"] = out / "contamination.json"
            write_text_atomic(paths["contamination"], json.dumps(self.contamination, indent=1) + "\n")
        return paths


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}" if v.is_integer() or v != v else f"{v:.4f}"
    return str(v)


def _csv(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns or (rows[0] if rows else [])))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------------ scoring
@dataclass
class _Scores:
    """Per-image predictions of every split, concatenated in split order."""

    split: list[str]  # [N] split name per image
    targets: dict[str, torch.Tensor]  # task -> [N] class index
    top: dict[str, torch.Tensor]  # task -> [N, <=TOP_K] predicted class indices, best first
    pair_scores: torch.Tensor | None  # [N, P] closed-world pair logits (zero-shot models)


def _top(logits: torch.Tensor) -> torch.Tensor:
    return logits.topk(min(TOP_K, logits.shape[-1]), dim=-1).indices


def _head_columns(task: str, classes: Sequence[str], names: list[str], vocab: Vocabulary | None) -> list[int]:
    """For each benchmark object (or attribute), the head class naming it; ValueError naming what the head lacks."""
    forms = (vocab.object_forms if task == "object" else vocab.attribute_forms) if vocab is not None else {}

    def canonical(name: str) -> str:
        key = phrase(name)
        return phrase(forms.get(key, key))

    index = {canonical(c): i for i, c in enumerate(classes)}
    missing = [n for n in names if canonical(n) not in index]
    if missing:
        raise ValueError(f"the {task} head has no class for {len(missing)} benchmark {task}(s): "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return [index[canonical(n)] for n in names]


def _score(model, splits: Mapping[str, AOFolder], candidates, attributes, objects, templates, object_templates,
           attribute_templates, open_world: bool, logit_scale: float, batch_size: int, num_workers: int,
           progress: bool, vocab: Vocabulary | None, rank_slice: RankSlice) -> tuple[_Scores, int]:
    """(every image's scores, in the one-process order; how many images this rank encoded)."""
    pair_idx = {p: i for i, p in enumerate(candidates)}
    attr_idx = {a: i for i, a in enumerate(attributes)}
    obj_idx = {o: i for i, o in enumerate(objects)}
    if isinstance(model, ZeroShotModel):
        weights = _text_weights(model, candidates, attributes, objects, templates, object_templates,
                                attribute_templates, open_world, rank_slice)
    else:
        wanted = {"object": objects, "attribute": attributes}
        unknown = set(model.classes) - set(wanted)
        if unknown:
            raise ValueError(f"head tasks {sorted(unknown)} are not evaluated: heads may be object, attribute")
        head_cols = {task: torch.tensor(_head_columns(task, classes, wanted[task], vocab))
                     for task, classes in model.classes.items()}
    classes = head_cols if isinstance(model, HeadModel) else weights  # task -> [C, ...], one row per class
    widths = {task: min(TOP_K, len(c)) for task, c in classes.items()}  # top-k columns per task
    if isinstance(model, ZeroShotModel):
        marginal_from = "pair_open" if "pair_open" in weights else "pair"  # the pair prompts summed per object
        pair_objects = _pair_objects(candidates, attributes, objects, marginal_from)  # [C] object of each prompt
        widths["object_marginal"] = min(TOP_K, len(objects))

    names = list(splits)
    pairs = [ds.pairs for ds in splits.values()]  # per split: its pair index -> (attribute, object)
    to_pair = [torch.tensor([pair_idx[p] for p in ps]) for ps in pairs]  # per split: -> candidate index
    to_attr = [torch.tensor([attr_idx[a] for a, _ in ps]) for ps in pairs]
    to_obj = [torch.tensor([obj_idx[o] for _, o in ps]) for ps in pairs]
    split_ids, targets, tops, pair_scores = [], {t: [] for t in TASKS}, {t: [] for t in widths}, []
    pin = torch.device(model.device).type == "cuda"
    for i, images, local in rank_batches(splits, batch_size, rank_slice, num_workers, pin, progress):
        feats = model.features(images)  # [B, D] unit features, or {task: [B, H]} head logits
        targets["pair"].append(to_pair[i][local])
        targets["attribute"].append(to_attr[i][local])
        targets["object"].append(to_obj[i][local])
        targets["pair_open"].append(to_attr[i][local] * len(objects) + to_obj[i][local])
        targets["object_marginal"].append(to_obj[i][local])
        split_ids.append(torch.full((len(local),), i))
        if isinstance(model, HeadModel):
            for task, cols in head_cols.items():
                tops[task].append(_top(feats[task][:, cols]))  # [B, <=5] over the benchmark's classes
            continue
        for task, w in weights.items():
            logits = logit_scale * feats @ w.T  # [B, C]
            tops[task].append(_top(logits))
            if task == "pair":
                pair_scores.append(logits)
            if task == marginal_from:
                tops["object_marginal"].append(_top(object_marginal(logits, pair_objects, len(objects))))
    idle_forwards(model.features, splits, batch_size, rank_slice)

    rows = {"split": _cat(split_ids, ())}  # [n] split index per image
    rows.update({f"target/{t}": _cat(v, ()) for t, v in targets.items()})  # [n] class index
    rows.update({f"top/{t}": _cat(tops[t], (k,)) for t, k in widths.items()})  # [n, k] best classes first
    if isinstance(model, ZeroShotModel):  # the CZSL sweep needs every image's closed-world pair scores
        rows["pair_scores"] = _cat(pair_scores, (len(candidates),), torch.float32)  # [n, P]
    scored = len(rows["split"])
    if rank_slice.world_size > 1:
        rows = {key: gather_rows(r) for key, r in rows.items()}  # every rank's rows, in rank order
    if not len(rows["split"]):
        raise ValueError("the benchmark has no images")
    return _Scores(
        split=[names[i] for i in rows["split"].tolist()],
        targets={t: rows[f"target/{t}"] for t in TASKS},
        top={t: rows[f"top/{t}"] for t in widths},
        pair_scores=rows.get("pair_scores"),
    ), scored


def _text_weights(model: ZeroShotModel, candidates, attributes, objects, templates, object_templates,
                  attribute_templates, open_world: bool, rank_slice: RankSlice) -> dict[str, torch.Tensor]:
    """{task: [C, D] unit text classifier} of a zero-shot model, each rank encoding a slice of the prompts."""
    attr_idx = {a: i for i, a in enumerate(attributes)}
    obj_idx = {o: i for i, o in enumerate(objects)}
    # The open-world grid holds every closed-world pair: encode it once and take the closed rows.
    grid = [(a, o) for a in attributes for o in objects]
    names = [f"{a} {o}" for a, o in (grid if open_world else candidates)]
    w_all = model.classifier(names, templates, rank_slice)  # [A*O or P, D]
    rows = [attr_idx[a] * len(objects) + obj_idx[o] for a, o in candidates] if open_world else list(range(len(candidates)))
    weights = {"pair": w_all[rows], "object": model.classifier(objects, object_templates or templates, rank_slice),
               "attribute": model.classifier([f"{a} object" for a in attributes], attribute_templates or templates,
                                             rank_slice)}
    if open_world:
        weights["pair_open"] = w_all
    return weights


def _pair_objects(candidates, attributes, objects, prompts: str) -> torch.Tensor:
    """[C] the object index of each pair prompt of `prompts` ("pair": the candidates; "pair_open": the grid)."""
    obj_idx = {o: i for i, o in enumerate(objects)}
    if prompts == "pair_open":  # attribute-major grid, as _text_weights encodes it
        return torch.arange(len(objects)).repeat(len(attributes))
    return torch.tensor([obj_idx[o] for _, o in candidates])


def object_marginal(pair_logits: torch.Tensor, pair_objects: torch.Tensor, n_objects: int) -> torch.Tensor:
    """[B, O] object scores from [B, C] pair-prompt logits: each object's summed pair probabilities.

    pair_objects: [C] the object index of each pair prompt.
    """
    probs = pair_logits.float().softmax(dim=-1)  # [B, C]
    return torch.zeros(len(probs), n_objects).index_add_(1, pair_objects, probs)  # [B, O]


def _cat(parts: list[torch.Tensor], row_shape: tuple[int, ...], dtype=torch.long) -> torch.Tensor:
    """The rows of `parts` as one tensor; [0, *row_shape] when this rank scored no image."""
    return torch.cat(parts) if parts else torch.empty((0, *row_shape), dtype=dtype)


# ------------------------------------------------------------------ protocol
def _seen_status(splits, candidates, seen_pairs) -> dict[tuple[str, str], bool] | None:
    """Pair -> seen in training, or None when nothing says so."""
    if seen_pairs is not None:
        return {p: p in seen_pairs for p in candidates}
    named = {s: ds for s, ds in splits.items() if s.rpartition("/")[2] in ("seen", "unseen")}
    if not named:
        return None
    status = {p: s.rpartition("/")[2] == "seen" for s, ds in named.items() for p in ds.pairs}
    return {p: status.get(p) for p in candidates}


def _groups(scores: _Scores, splits, status, candidates, from_manifest: bool) -> dict[str, torch.Tensor]:
    split_arr = np.array(scores.split)
    groups = {s: torch.from_numpy(split_arr == s) for s in splits}
    if status is not None:
        seen = torch.tensor([bool(status[candidates[i]]) for i in scores.targets["pair"].tolist()])
        known = torch.tensor([status[candidates[i]] is not None for i in scores.targets["pair"].tolist()])
        for style, names in split_styles(splits).items():
            drawn = torch.from_numpy(np.isin(split_arr, names))  # the style's images
            for group, mask in (("seen", seen & known), ("unseen", ~seen & known)):
                name = style_group(style, group)
                if from_manifest or name not in groups:
                    groups[name] = mask & drawn
    return {g: m for g, m in groups.items() if bool(m.any())}


def _group_metrics(scores: _Scores, group: str, mask: torch.Tensor, n_classes: dict[str, int]) -> dict[str, float]:
    out = {}
    for task, top in scores.top.items():
        y, t = scores.targets[task][mask], top[mask]  # [n], [n, k]
        hit = t == y.unsqueeze(-1)  # [n, k]
        out[f"{group}/{task}_top1"] = float(hit[:, 0].double().mean())
        out[f"{group}/{task}_top5"] = float(hit.any(-1).double().mean())
        out[f"{group}/{task}_top1_class_mean"] = class_mean_accuracy(hit[:, 0], y, n_classes[task])
    out[f"{group}/n_images"] = float(mask.sum())
    out[f"{group}/n_pairs"] = float(len(set(scores.targets["pair"][mask].tolist())))
    return out


def _table(scores: _Scores, splits, candidates, status, n_classes) -> list[dict]:
    split_arr = np.array(scores.split)
    nan = float("nan")
    index = {p: i for i, p in enumerate(candidates)}
    rows = []
    for name, ds in splits.items():
        mask = torch.from_numpy(split_arr == name)
        y = scores.targets["pair"][mask]
        counts = torch.bincount(y, minlength=n_classes["pair"])
        per = {}
        for task, column in (("pair", "pair_top1"), ("pair_open", "pair_open_top1"),
                             ("object", "object_top1"), ("object_marginal", "object_marginal_top1"),
                             ("attribute", "attribute_top1")):
            if task in scores.top:
                hit = scores.top[task][mask][:, 0] == scores.targets[task][mask]
                per[column] = per_class_accuracy(hit, y, n_classes["pair"])  # per pair, whatever the task
        if "pair" in scores.top:
            hit5 = (scores.top["pair"][mask] == y.unsqueeze(-1)).any(-1)
            per["pair_top5"] = per_class_accuracy(hit5, y, n_classes["pair"])
        for attr, obj in ds.pairs:
            i = index[(attr, obj)]
            seen = status.get((attr, obj)) if status else None
            row = {"split": name, "attribute": attr, "object": obj, "seen": "" if seen is None else seen,
                   "n": int(counts[i])}
            row.update({c: float(per[c][i]) if c in per else nan for c in TABLE_COLUMNS[5:]})
            rows.append(row)
    return rows


def _contamination(splits, candidates, seen_pairs) -> dict:
    def count(p):
        return int(seen_pairs[p]) if isinstance(seen_pairs, Mapping) else None

    found = [p for p in candidates if p in seen_pairs]
    split_pairs = {s: set(ds.pairs) for s, ds in splits.items()}
    in_splits = {p: sorted(s for s, pairs in split_pairs.items() if p in pairs) for p in found}
    return {
        "benchmark_pairs": len(candidates),
        "pairs_in_training": len(found),
        "pairs": [{"attribute": a, "object": o, "training_count": count((a, o)), "splits": in_splits[(a, o)]}
                  for a, o in found],
    }


def evaluate(
    model: ZeroShotModel | HeadModel,
    splits: Mapping[str, AOFolder],
    templates: Sequence[Template] = SIMPLE_TEMPLATES,
    *,
    object_templates: Sequence[Template] | None = None,
    attribute_templates: Sequence[Template] | None = None,
    open_world: bool = True,
    seen_pairs: Mapping | set | None = None,
    vocab: Vocabulary | None = None,
    logit_scale: float = 100.0,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
    rank_slice: RankSlice = RankSlice(),
) -> EvalResult:
    """Every task, metric and check of the module doc, for one model on one benchmark's splits.

    ``seen_pairs``: the (attribute, object) pairs of the training data (a set, or a mapping to counts),
    in the same canonical names as the splits' pairs. ``vocab`` maps head class names to objects.
    ``rank_slice``: in a process group, this rank's part of the images (evaluation/distributed.py);
    every rank gets the whole benchmark's result, equal to one process's.
    """
    if not splits:
        raise ValueError("evaluate needs at least one split")
    candidates = sorted({p for ds in splits.values() for p in ds.pairs})
    attributes = sorted({a for a, _ in candidates})
    objects = sorted({o for _, o in candidates})
    open_world = open_world and isinstance(model, ZeroShotModel)
    n_classes = {"pair": len(candidates), "pair_open": len(attributes) * len(objects),
                 "object": len(objects), "attribute": len(attributes), "object_marginal": len(objects)}

    scores, scored = _score(model, splits, candidates, attributes, objects, templates, object_templates,
                            attribute_templates, open_world, logit_scale, batch_size, num_workers, progress, vocab,
                            rank_slice)
    status = _seen_status(splits, candidates, seen_pairs)
    metrics: dict[str, float] = {"n_candidate_pairs": float(len(candidates)),
                                 "n_open_pairs": float(n_classes["pair_open"])}
    metrics.update({f"chance/{t}_top1": 1.0 / n_classes[t] for t in scores.top})
    for group, mask in _groups(scores, splits, status, candidates, seen_pairs is not None).items():
        metrics.update(_group_metrics(scores, group, mask, n_classes))

    curve = None
    if status is not None and scores.pair_scores is not None:
        unseen = np.array([status[p] is False for p in candidates])  # [P]
        for style, names in split_styles(splits).items():  # one sweep per style, on its own images
            drawn = np.isin(np.array(scores.split), names)  # [N]
            targets = scores.targets["pair"].numpy()[drawn]
            image_unseen = unseen[targets]
            if image_unseen.any() and (~image_unseen).any():
                style_curve = czsl_curve(scores.pair_scores.numpy()[drawn], targets, unseen)
                metrics.update(style_curve.metrics(prefix=style_group(style, "czsl/")))
                curve = style_curve if curve is None else curve
    contamination = None
    if seen_pairs is not None:
        contamination = _contamination(splits, candidates, seen_pairs)
        metrics["contamination/pairs_in_training"] = float(contamination["pairs_in_training"])
    return EvalResult(metrics, _table(scores, splits, candidates, status, n_classes), candidates, curve,
                      contamination, images_scored=scored)
