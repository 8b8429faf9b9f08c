"""Pools written by the real img2dataset (tests/img2dataset_tool.py), read the way README's "Bring your
own data" says: `aotrain filter stats|label|select|reshard` by hand. (That `aotrain fit` on a real-data
recipe picks the same samples is tests/test_real_recipes.py's.)

The pool: 300 toy images through img2dataset 1.47.0 in 4 shards, 8 URLs listed twice under two
captions, 8 byte-identical copies under another file name, 20 missing files (failed downloads).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import run_cli
from data_filters.dedupe import load_selection_pool
from data_filters.select import feasible_nmi_range, pair_counts
from img2dataset_tool import toy_world_of

SIZE = 120
TOL = "0.02"  # a pool this small reaches NMI in coarse steps


def _tar_samples(folder: Path) -> dict:
    """key -> {extension: bytes} of every sample in the folder's .tar files."""
    samples: dict = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def _cli(tmp_path, *args):
    proc = run_cli("filter", *args, root=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def manual(img2dataset_pool, tmp_path_factory):
    """The manual route on the pool: stats -> label -> select (NMI in the middle of its range) -> reshard."""
    pool, world = img2dataset_pool["out_dir"], toy_world_of(img2dataset_pool)
    out = tmp_path_factory.mktemp("manual")
    vocab = f"world:{world}"
    stats = _cli(out, "stats", str(pool), "--vocab", vocab, "--out", str(out / "stats"))
    label = _cli(out, "label", str(pool), "--vocab", vocab, "--out", str(out / "labels.parquet"))
    (uids, a, o, attributes, objects), _, _ = load_selection_pool(out / "labels.parquet")
    low, high = feasible_nmi_range(pair_counts(a, o, len(attributes), len(objects)), SIZE)
    target = round((low + high) / 2, 3)
    select = _cli(out, "select", str(out / "labels.parquet"), "--size", str(SIZE), "--nmi", str(target),
                  "--tol", TOL, "--out", str(out / "subset"))
    reshard = _cli(out, "reshard", str(out / "subset" / "subset.npy"), "--shards", str(pool),
                   "--out", str(out / "shards"), "--samples-per-shard", "50")
    return {"dir": out, "target": target, "world": world, "stats": stats, "label": label,
            "select": select, "reshard": reshard}


def test_stats_counts_each_downloaded_caption_once_and_reports_failed_downloads(img2dataset_pool, manual):
    stats = json.loads((manual["dir"] / "stats" / "stats.json").read_text())
    assert stats["n_captions"] == img2dataset_pool["n_success"]  # parquet and tar hold each caption: once
    assert stats["n_not_downloaded"] == img2dataset_pool["n_failed"] == 20
    assert stats["pool_kind"] == "img2dataset"
    out = manual["stats"].stdout
    assert "reading img2dataset output: 4 shards" in out and "uid = key" in out
    assert f"failed downloads, not samples: {img2dataset_pool['n_failed']}" in out
    assert f"failed downloads {img2dataset_pool['n_failed']}" in manual["label"].stdout


def test_labels_are_keyed_by_img2dataset_key(img2dataset_pool, manual):
    labels = pq.read_table(manual["dir"] / "labels.parquet").to_pydict()
    keys = {r["key"]: r for r in img2dataset_pool["rows"]}
    assert labels["uid"] and set(labels["uid"]) <= {k for k, r in keys.items() if r["success"]}
    # The image hash is img2dataset's sha256 of the downloaded file.
    assert all(h == keys[u]["sha256"] for u, h in zip(labels["uid"], labels["image_hash"]))


def test_duplicate_images_are_dropped_and_counted(img2dataset_pool, manual):
    labels = pq.read_table(manual["dir"] / "labels.parquet").to_pydict()
    expected = len(labels["uid"]) - len(set(labels["image_hash"]))
    assert expected > 0  # the pool's same-URL and same-bytes rows were labelled
    manifest = json.loads((manual["dir"] / "subset" / "manifest.json").read_text())
    assert manifest["dedupe"] is True and manifest["duplicates_dropped"] == expected
    assert f"duplicates: {expected} labelled samples dropped" in manual["select"].stdout
    assert manifest["pool_counts"]["not_downloaded"] == img2dataset_pool["n_failed"]
    hashes = dict(zip(labels["uid"], labels["image_hash"]))
    chosen = np.load(manual["dir"] / "subset" / "subset.npy").tolist()
    assert len({hashes[u] for u in chosen}) == len(chosen) == SIZE  # one sample per image


def test_every_resharded_sample_maps_back_to_its_img2dataset_key(img2dataset_pool, manual):
    pool = _tar_samples(Path(img2dataset_pool["out_dir"]))
    shards = manual["dir"] / "shards"
    written = _tar_samples(shards)
    key_map = {r["key"]: r for r in pq.read_table(shards / "key_map.parquet").to_pylist()}
    chosen = sorted(np.load(manual["dir"] / "subset" / "subset.npy").tolist())
    assert len(written) == len(key_map) == SIZE
    assert sorted(json.loads(s["json"])["source_key"] for s in written.values()) == chosen
    for key, sample in written.items():
        meta = json.loads(sample["json"])
        source = pool[meta["source_key"]]
        assert meta["key"] == key and meta["uid"] == meta["source_key"]
        assert key_map[key]["source_key"] == meta["source_key"]
        assert (key_map[key]["source_shard"], sample["jpg"], sample["txt"]) == \
            (f"{meta['source_key'][:5]}.tar", source["jpg"], source["txt"])
        assert json.loads(source["json"])["url"] == meta["url"]  # the rest of img2dataset's json kept
    Image.open(io.BytesIO(next(iter(written.values()))["jpg"])).verify()


def test_a_datacomp_pool_is_keyed_by_uid(datacomp_pool, tmp_path):
    pool, world = datacomp_pool["out_dir"], toy_world_of(datacomp_pool)
    label = _cli(tmp_path, "label", str(pool), "--vocab", f"world:{world}", "--out", str(tmp_path / "labels.parquet"))
    assert "reading datacomp output: 4 shards" in label.stdout and "uid = uid" in label.stdout
    uids = pq.read_table(tmp_path / "labels.parquet").column("uid").to_pylist()
    assert set(uids) <= {r["uid"] for r in datacomp_pool["rows"] if r["success"]}
    _cli(tmp_path, "select", str(tmp_path / "labels.parquet"), "--size", "60", "--pairs", "30",
         "--out", str(tmp_path / "subset"))
    reshard = _cli(tmp_path, "reshard", str(tmp_path / "subset" / "subset.npy"), "--shards", str(pool),
                   "--out", str(tmp_path / "shards"))
    assert "uid = json 'uid'" in reshard.stdout
    chosen = np.load(tmp_path / "subset" / "subset.npy").tolist()
    written = _tar_samples(tmp_path / "shards")
    assert sorted(json.loads(s["json"])["uid"] for s in written.values()) == sorted(chosen)
