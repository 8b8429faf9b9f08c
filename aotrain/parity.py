"""Parity between a CLIP run and its twins (supervised, self-supervised): what must be equal, recorded
for every run.

    aotrain fit recipe=toy_low_nmi                                                  # the CLIP run
    aotrain fit recipe=toy_low_nmi_supervised parity.twin=outputs/runs/toy_low_nmi-<id>   # checked against it
    aotrain fit recipe=toy_low_nmi supervision=self parity.twin=outputs/runs/toy_low_nmi-<id>

Every fit writes `<run_dir>/parity.json` and logs its items as `parity_*` params. With
`parity.twin=RUN_DIR` (or a parity.json path) a run first compares its record with the twin's and
stops, naming every item that differs, before any training. Items:

  vision_tower       the image tower's config (open_clip vision_cfg and embed_dim)
  vision_parameters  its parameter count
  image_transforms   the train and eval transforms (their repr)
  data               the images and their order: subset uid checksum (or the shard list), sampling
                     seed, shuffle buffer, label rule and the vocabulary (by content)
  global_batch       batch per process x processes x nodes x gradient accumulation
  max_steps          optimizer steps
  schedule           optimizer and learning-rate schedule settings
  precision          numeric precision

An arm's own item, recorded only by the arm that trains with it and compared only between two runs
that both record it:

  view_augmentation  the self-supervised arm's view augmentation (aotrain/data/views.py; data.views)

Why the views are an item of their own: the augmentation is the self arm's training signal, as the
captions are CLIP's and the labels the twin's, so the other arms have nothing to match it with; what
they do share is checked as for any twin: each view ends in the model's train transform, the
`image_transforms` item, and the tower is evaluated through the same eval transform. Two self runs
(e.g. across seeds) must also agree on the augmentation.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aotrain import towers
from aotrain.config import to_dict
from aotrain.data.views import view_augmentation
from data_filters.vocab import vocabulary_checksum

RECORD = "parity.json"
ITEMS = ("vision_tower", "vision_parameters", "image_transforms", "data", "global_batch", "max_steps",
         "schedule", "precision")
ARM_ITEMS = ("view_augmentation",)  # compared only when both records hold it


def _data_checksum(pool: str, subset: dict | None) -> str:
    """The subset's uid checksum, or a hash of the pool's shard names and sizes."""
    if subset is not None:
        return subset["uid_checksum"]
    sizes = Path(pool) / "sizes.json"
    listing = sizes.read_text() if sizes.is_file() else json.dumps(sorted(p.name for p in Path(pool).glob("*.tar")))
    return hashlib.sha256(listing.encode()).hexdigest()


def parity_record(cfg, subset: dict | None, vision_parameters: int) -> dict:
    """The parity items of a prepared (resolved) config; `subset` (its manifest) as `train.prepare`
    returns it and the built module's image-tower parameter count."""
    model = towers.model_config(cfg.model.name)
    train_tf, eval_tf = towers.image_transforms(cfg.model.name)
    trainer = cfg.trainer
    own = {}
    if cfg.data.get("targets") == "views":
        own["view_augmentation"] = repr(view_augmentation(cfg.model.name, **to_dict(cfg.data.views)))
    return {
        "vision_tower": {"embed_dim": model["embed_dim"], **model["vision_cfg"]},
        "vision_parameters": vision_parameters,
        "image_transforms": {"train": repr(train_tf), "eval": repr(eval_tf)},
        "data": {
            "checksum": _data_checksum(cfg.data.pool, subset),
            "seed": cfg.data.seed,
            "shuffle_buffer": cfg.data.shuffle_buffer,
            "require_label": cfg.data.require_label,
            "vocabulary": vocabulary_checksum(cfg.data.vocabulary),
        },
        "global_batch": cfg.data.batch_size * _int(trainer.get("devices", 1)) * _int(trainer.get("num_nodes", 1))
        * _int(trainer.get("accumulate_grad_batches", 1)),
        "max_steps": trainer.max_steps,
        "schedule": to_dict(cfg.optim),
        "precision": str(trainer.precision),
        **own,
    }


def _int(value) -> int:
    # devices may be "auto" or a list of ids; parity compares what it can count.
    if isinstance(value, int):
        return value
    return len(value) if hasattr(value, "__len__") and not isinstance(value, str) else 1


def differences(mine: dict, theirs: dict) -> list[str]:
    """One line per parity item that differs: 'item: this run X, twin Y' (sub-keys named where nested)."""
    lines = []
    for item in (*ITEMS, *(i for i in ARM_ITEMS if i in mine and i in theirs)):
        a, b = mine.get(item), theirs.get(item)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            lines += [f"{item}.{k}: this run {_short(a.get(k))}, twin {_short(b.get(k))}" for k in keys]
        else:
            lines.append(f"{item}: this run {_short(a)}, twin {_short(b)}")
    return lines


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def load_record(twin: str | Path) -> dict:
    """A twin's record: a run folder holding parity.json, or the file itself."""
    path = Path(twin)
    path = path / RECORD if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"parity.twin: no {RECORD} at {path} (a run folder of aotrain fit, or its parity.json)")
    return json.loads(path.read_text())


def flat_params(record: dict) -> dict:
    """MLflow params: short items as they are, long ones as a 12-character hash."""
    out = {}
    for item in (*ITEMS, *(i for i in ARM_ITEMS if i in record)):
        text = json.dumps(record[item], sort_keys=True) if isinstance(record[item], dict) else str(record[item])
        out[f"parity_{item}"] = text if len(text) <= 40 else hashlib.sha256(text.encode()).hexdigest()[:12]
    return out
