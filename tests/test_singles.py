"""Single-side captions (one object or one attribute named, no pair) in the toy world, the labels and
every subset: they never change a subset's pair NMI, marginals or pairs (data_filters/singles.py)."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from aotrain.data.shard_stream import MISSING, SKIP_COLUMNS
from aotrain.modules.supervised import SupervisedModule
from aotrain.toyworld import generate_world, load_world
from data_filters.label import label_main
from data_filters.select_cli import select_main

WORLD = {"seed": 3, "pool": {"n_samples": 2400, "samples_per_shard": 800, "joint": "mixture",
                             "object_only": 0.3, "attribute_only": 0.1},
         "eval": {"images_per_unseen_pair": 0, "images_per_seen_pair": 0}}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("singles")
    world = generate_world(WORLD, root, progress=False)
    labels = root / "labels.parquet"
    assert label_main([str(world / "pool"), "--vocab", f"world:{world}", "--out", str(labels)]) == 0
    return world, labels


def _select(labels, out, *extra) -> list[dict]:
    assert select_main([str(labels), "--size", "900", "--nmi", "0.15", "0.5", "--out", str(out), *extra]) == 0
    return [{"manifest": json.loads((out / f"nmi-{t}" / "manifest.json").read_text()),
             "rows": pq.read_table(out / f"nmi-{t}" / "subset.parquet").to_pylist(),
             "uids": np.load(out / f"nmi-{t}" / "subset.npy").tolist()} for t in ("0.15", "0.5")]


def test_the_toy_world_names_one_side_alone_at_its_rates_and_labelling_finds_every_one(labelled):
    world, labels = labelled
    info = load_world(world)
    single = info["single_side"]
    assert 0.25 < single["object_only"] / 2400 < 0.35 and 0.06 < single["attribute_only"] / 2400 < 0.14
    side = pq.read_table(labels.with_name("labels.singles.parquet"))
    assert side.column("attribute").null_count == single["object_only"]  # every object-only caption found
    assert side.column("object").null_count == single["attribute_only"]
    assert pq.read_metadata(labels).num_rows == 2400 - sum(single.values())  # and every pair caption
    # the labels say what each caption names: its image's object (or attribute), never another
    truth = {}
    for shard in sorted((world / "pool").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    truth[meta["uid"]] = meta
    for row in side.to_pylist():
        meta = truth[row["uid"]]
        if row["attribute"] is None:
            assert meta["caption_names"] == "object" and row["object"] == meta["object"]
        else:
            assert meta["caption_names"] == "attribute" and row["attribute"] == meta["attribute"]


def test_single_side_captions_never_change_a_subsets_pair_nmi_or_marginals(labelled, tmp_path):
    _, labels = labelled
    mixed = _select(labels, tmp_path / "mixed")  # the pool's share (default)
    for sub in mixed:
        m = sub["manifest"]
        single = m["single_side"]
        assert m["size"] == 900 == single["pair_size"] + single["object_only"] + single["attribute_only"]
        assert 0.35 < single["share"] < 0.45  # the pool's: 40% of captions name one side
        assert len(sub["rows"]) == len(sub["uids"]) == 900 and sub["uids"] == sorted(sub["uids"])
    # The same pair size without single-side captions: the same pairs, NMI and marginals, uid for uid.
    pair_size = mixed[0]["manifest"]["single_side"]["pair_size"]
    (tmp_path / "alone").mkdir()
    assert select_main([str(labels), "--size", str(pair_size), "--nmi", "0.15", "0.5", "--single-share", "0",
                        "--out", str(tmp_path / "alone")]) == 0
    for t, sub in zip(("0.15", "0.5"), mixed):
        alone = json.loads((tmp_path / "alone" / f"nmi-{t}" / "manifest.json").read_text())
        pairs = [r for r in sub["rows"] if r["attribute"] is not None and r["object"] is not None]
        alone_rows = pq.read_table(tmp_path / "alone" / f"nmi-{t}" / "subset.parquet").to_pylist()
        assert pairs == alone_rows
        for key in ("nmi", "mi", "attribute_marginal", "object_marginal", "pair_counts", "distinct_pairs"):
            assert sub["manifest"][key] == alone[key], key
        assert alone["single_side"] == {"object_only": 0, "attribute_only": 0, "pair_size": pair_size, "share": 0.0}
    # Both NMI targets hold the very same single-side rows.
    low, high = ([r for r in sub["rows"] if r["attribute"] is None or r["object"] is None] for sub in mixed)
    assert low == high and len(low) == 900 - pair_size
    assert abs(mixed[0]["manifest"]["nmi"] - 0.15) <= 0.005 and abs(mixed[1]["manifest"]["nmi"] - 0.5) <= 0.005


def test_a_share_the_pool_cannot_fill_is_a_one_line_error(labelled, tmp_path, capsys):
    _, labels = labelled
    for share, message in (("0.95", "the pool has"), ("1.5", "a number in [0, 1)"), ("lots", "a number in [0, 1)")):
        assert select_main([str(labels), "--size", "2000", "--nmi", "0.3", "--single-share", share,
                            "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "s").exists()


def test_the_twin_learns_only_the_side_a_caption_names():
    """A single-side caption's missing side is MISSING: its head gets no loss from it, and a batch
    with no target for a head adds zero (not NaN)."""
    module = SupervisedModule("toy-vit-micro", {"lr": 1e-3, "weight_decay": 0.0}, 10, "builtin",
                              heads=["object", "attribute"])
    images = torch.randn(4, 3, 32, 32)
    skipped = torch.zeros(4, len(SKIP_COLUMNS), dtype=torch.long)
    labels = torch.tensor([[0, 1], [MISSING, 2], [3, MISSING], [1, 0]])
    loss = module.training_step((images, labels, skipped), 0)
    logits = module.net(images)
    expect = (torch.nn.functional.cross_entropy(logits["object"][[0, 1, 3]], labels[[0, 1, 3], 1])
              + torch.nn.functional.cross_entropy(logits["attribute"][[0, 2, 3]], labels[[0, 2, 3], 0]))
    assert torch.allclose(loss, expect)
    no_attribute = torch.tensor([[MISSING, 1], [MISSING, 2], [MISSING, 0], [MISSING, 1]])
    loss = module.training_step((images, no_attribute, skipped), 0)
    assert torch.isfinite(loss)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(module.net(images)["object"], no_attribute[:, 1]))
