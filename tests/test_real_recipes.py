"""Real-data recipes (`aotrain fit recipe=low_nmi_cc12m data.pool=...`) on a pool the real img2dataset wrote.

The pool is conftest's `img2dataset_pool` (toy-world images through img2dataset 1.47.0, with failed
downloads and duplicate images); the recipes run as written, with overrides for a tiny model, one CPU
process and two steps. The hand-made img2dataset layout (tests/img2dataset_pool.py) is used only for a
pool whose captions never name a pair.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli, run_cli_here
from data_filters.dedupe import load_selection_pool
from data_filters.label import label_captions
from data_filters.select import feasible_nmi_range, pair_counts
from img2dataset_pool import write_pool
from img2dataset_tool import toy_world_of

SIZE = 120
TOL = 0.02  # a pool of 300 images reaches NMI in coarse steps


@pytest.fixture(scope="module")
def world(img2dataset_pool) -> Path:
    return toy_world_of(img2dataset_pool)


@pytest.fixture(scope="module")
def pool(img2dataset_pool) -> Path:
    return Path(img2dataset_pool["out_dir"])


@pytest.fixture(scope="module")
def target(pool, world, tmp_path_factory) -> float:
    """An NMI target in the middle of what the pool can reach at SIZE (the test's own labelling)."""
    labels = tmp_path_factory.mktemp("labels") / "labels.parquet"
    label_captions(pool, f"world:{world}", labels)
    (uids, a, o, attributes, objects), _, _ = load_selection_pool(labels)
    low, high = feasible_nmi_range(pair_counts(a, o, len(attributes), len(objects)), SIZE)
    return round((low + high) / 2, 3)


def _tiny(world: Path) -> list[str]:
    return ["model=toy_vit_micro", "trainer=cpu", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
            "data.batch_size=16", "data.num_workers=0", "optim.warmup_steps=1", "subset.samples_per_shard=100", f"subset.tol={TOL}",
            f"data.vocabulary=world:{world}", f"eval.vocabulary=world:{world}", "eval.templates=simple",
            "eval.num_workers=0", "eval.every_n_steps=0"]


def _fit(root: Path, world: Path, pool: Path, *extra: str, run=run_cli):
    return run("fit", "recipe=low_nmi_cc12m", f"data.pool={pool}",
                   f"eval.benchmarks.imagenet_ao={world}/imagenet_ao/unseen", *_tiny(world), *extra, root=root)


@pytest.fixture(scope="module")
def first_run(world, pool, target, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    proc = _fit(root, world, pool, f"subset.size={SIZE}", f"subset.nmi={target}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root, proc


def test_recipe_runs_stats_select_reshard_then_fit_and_logs_the_subset(first_run, target, img2dataset_pool):
    root, proc = first_run
    err = proc.stderr
    order = [err.index("; labelling -> "), err.index("select: selecting"), err.index("reshard: writing"),
             err.index("`Trainer.fit` stopped")]
    assert order == sorted(order)
    assert "not_downloaded" not in err  # failed downloads are skipped quietly, not an error
    summary = json.loads(next((root / "runs").glob("low_nmi_cc12m-*/summary.json")).read_text())
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    params = run.data.params
    assert params["subset_size"] == str(SIZE) and params["data_nmi_target"] == str(target)
    assert abs(float(params["data_nmi"]) - target) <= TOL
    assert len(params["subset_uid_checksum"]) >= 12 and params["model"] == "toy-vit-micro"
    manifest = json.loads(Path(client.download_artifacts(run.info.run_id, "manifest.json")).read_text())
    assert manifest["size"] == SIZE and manifest["uid_checksum"] == params["subset_uid_checksum"]
    assert 0.0 <= run.data.metrics["eval/imagenet_ao/pair_top1"] <= 1.0
    # the subset's shards hold exactly the selected samples, each mapped back to its img2dataset key
    shards = Path(params["data_pool"])
    assert sum(json.loads((shards / "sizes.json").read_text()).values()) == SIZE
    key_map = pq.read_table(shards / "key_map.parquet").to_pydict()
    assert sorted(key_map["source_key"]) == sorted(np.load(shards.parent / "subset" / "subset.npy").tolist())
    assert set(key_map["source_key"]) <= {r["key"] for r in img2dataset_pool["rows"] if r["success"]}


def test_the_manual_route_selects_the_same_subset(first_run, pool, world, target, tmp_path):
    """README's `aotrain filter label` + `select` on the pool give fit's subset.npy byte for byte."""
    root, _ = first_run
    for args in (["label", str(pool), "--vocab", f"world:{world}", "--out", str(tmp_path / "labels.parquet")],
                 ["select", str(tmp_path / "labels.parquet"), "--size", str(SIZE), "--nmi", str(target),
                  "--tol", str(TOL), "--out", str(tmp_path / "subset")]):
        proc = run_cli("filter", *args, root=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    (fitted,) = (root / "cache").glob(f"subsets/nmi{target:g}-n{SIZE}-*/subset/subset.npy")
    assert fitted.read_bytes() == (tmp_path / "subset" / "subset.npy").read_bytes()


def test_a_second_run_reuses_every_cached_stage(first_run, world, pool, target):
    root, _ = first_run
    proc = _fit(root, world, pool, f"subset.size={SIZE}", f"subset.nmi={target}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stats: reusing" in proc.stderr and "select: reusing the cached subset" in proc.stderr
    assert "reshard: reusing" in proc.stderr and "labelling" not in proc.stderr


def test_a_changed_target_recomputes_only_the_selection(first_run, world, pool, target):
    root, _ = first_run
    proc = _fit(root, world, pool, f"subset.size={SIZE}", f"subset.nmi={target + 0.01:.3f}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stats: reusing" in proc.stderr and "select: selecting" in proc.stderr


def _no_training(root: Path, proc) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Trainer.fit" not in proc.stderr
    assert not list(root.glob("runs/*/checkpoints"))


def test_missing_pool_key_names_it(world, tmp_path):
    proc = run_cli_here("fit", "recipe=low_nmi_cc12m", f"eval.benchmarks.imagenet_ao={world}/imagenet_ao/unseen",
                        *_tiny(world), root=tmp_path)
    _no_training(tmp_path, proc)
    assert "set data.pool=" in proc.stderr


def test_wrong_pool_path_is_an_error_before_training(world, tmp_path):
    proc = _fit(tmp_path, world, tmp_path / "no-such-pool", run=run_cli_here)
    _no_training(tmp_path, proc)
    assert "data.pool: pool folder not found" in proc.stderr


def test_pool_without_parseable_captions_is_an_error_before_training(world, tmp_path):
    unparseable = tmp_path / "pool"
    write_pool(world, unparseable, samples_per_shard=300, captions=lambda rng, a, o: "Untitled photo")
    proc = _fit(tmp_path, world, unparseable, run=run_cli_here)
    _no_training(tmp_path, proc)
    assert "no caption with exactly one attribute-object pair" in proc.stderr


def test_missing_benchmark_folder_is_an_error_before_selection(world, pool, tmp_path):
    proc = run_cli_here("fit", "recipe=low_nmi_cc12m", f"data.pool={pool}",
                        f"eval.benchmarks.imagenet_ao={tmp_path}/ImageNet-AO", *_tiny(world), root=tmp_path)
    _no_training(tmp_path, proc)
    assert "eval.benchmarks.imagenet_ao: no folder" in proc.stderr and "stats:" not in proc.stderr


def test_datacomp_style_pool_with_uids(datacomp_pool, tmp_path):
    """DataComp's download keeps a uid column (parquet and json): the stages join on it."""
    world = toy_world_of(datacomp_pool)
    proc = _fit(tmp_path, world, datacomp_pool["out_dir"], f"subset.size={SIZE}", "subset.nmi=null",
                "subset.pairs=60")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(next((tmp_path / "cache").glob("labels-*/stats.json")).read_text())
    assert stats["uid_field"] == "uid" and stats["pool_kind"] == "datacomp"
    (subset,) = (tmp_path / "cache").glob("subsets/*/subset/subset.npy")
    assert set(np.load(subset).tolist()) <= {r["uid"] for r in datacomp_pool["rows"] if r["success"]}


def test_the_subset_marks_held_out_benchmark_pairs_unseen(first_run, world):
    """Without eval.seen_from the run's own subset says which benchmark pairs were seen: the world's
    held-out pairs are in no caption of the pool, so all of them are unseen."""
    root, proc = first_run
    held_out = len([p for p in (world / "imagenet_ao" / "unseen").iterdir() if p.is_dir()])
    assert f"eval: 0 of {held_out} benchmark pairs seen in training, {held_out} unseen" in proc.stderr
    summary = json.loads(next((root / "runs").glob("low_nmi_cc12m-*/summary.json")).read_text())
    metrics = MlflowClient(tracking_uri=summary["tracking_uri"]).get_run(summary["run_id"]).data.metrics
    assert metrics["eval/unseen/n_pairs"] == held_out and metrics["eval/contamination/pairs_in_training"] == 0
    assert "eval/seen/pair_top1" not in metrics
