"""Corrupt data never costs a run: each bad sample is skipped, counted per kind and shard, logged to
MLflow; the stats stage and the training stream agree on what a sample is; too much bad data stops
the run with one line naming the worst shards.

The pool is the smoke world's, copied and damaged the four ways users meet: a garbage image, a
non-UTF-8 caption, a sample without its .txt, and a shard cut short in the middle of a member.
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from aotrain.data.datamodule import ShardDataModule
from aotrain.data.shard_stream import SKIP_COLUMNS, read_error_log
from aotrain.pool_stages import pool_shards
from conftest import run_cli, run_cli_here

EXPECTED = {"bad_image": 1, "bad_caption": 1, "no_caption": 1, "truncated_shard": 1}


def rewrite_shard(src: Path, dst: Path, edit) -> None:
    """Copy a tar shard member by member; edit(name, bytes) returns new bytes, or None to leave it out."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for info in tin:
            data = edit(info.name, tin.extractfile(info).read())
            if data is not None:
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))


def member_names(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return tar.getnames()


@pytest.fixture(scope="module")
def world(smoke_fit):
    return next((smoke_fit[0] / "toyworld").iterdir())


@pytest.fixture(scope="module")
def corrupt_pool(world, tmp_path_factory):
    """(pool folder, {kind: sample key}) with one damage of each kind; sizes.json kept as it was."""
    pool = tmp_path_factory.mktemp("corrupt") / "pool"
    shutil.copytree(world / "pool", pool)
    s0, s1, s2 = pool_shards(pool)[:3]  # the third is cut short; any after it stay whole
    names0 = member_names(s0)
    image_key = next(n for n in names0 if n.endswith((".png", ".jpg"))).split(".")[0]
    caption_key = [n for n in names0 if n.endswith(".txt")][5].split(".")[0]
    missing_key = [n for n in member_names(s1) if n.endswith(".txt")][7].split(".")[0]

    def damage0(name, data):
        if name.startswith(image_key + ".") and not name.endswith((".txt", ".json")):
            return b"this is not an image" * 8
        if name == f"{caption_key}.txt":
            return b"a red \xff\xfe circle"
        return data

    for shard, edit in ((s0, damage0), (s1, lambda n, d: None if n == f"{missing_key}.txt" else d)):
        rewrite_shard(shard, shard.with_suffix(".new"), edit)
        shard.with_suffix(".new").replace(shard)
    data = s2.read_bytes()
    s2.write_bytes(data[: len(data) // 2 + 100])  # ends inside a member
    return pool, {"bad_image": image_key, "bad_caption": caption_key, "no_caption": missing_key}


def _stream(pool, tmp_path, **kw):
    dm = ShardDataModule(str(pool), "toy-vit-micro", batch_size=32, num_workers=0, shuffle_buffer=64,
                         seed=0, error_log=str(tmp_path / "errors"), **kw)
    return dm.stream()


def _totals(samples) -> dict:
    return {c: sum(s["skipped"][i] for s in samples) for i, c in enumerate(SKIP_COLUMNS)}


def test_the_stream_skips_and_counts_each_kind_of_damage(corrupt_pool, tmp_path):
    pool, keys = corrupt_pool
    stream = _stream(pool, tmp_path)
    stream.epoch = 1
    samples = list(stream.labelled_samples())
    got = [s["__key__"] for s in samples]
    assert len(got) == len(set(got)) and not set(keys.values()) & set(got)
    totals = _totals(samples)
    assert {k: totals[k] for k in EXPECTED} == EXPECTED
    assert totals["no_image"] == totals["refilled"] == 0  # one process: nothing to equalise
    # the cut shard loses its second half; the three damaged samples are not trained on.
    sizes = json.loads((pool / "sizes.json").read_text())
    total, cut = sum(sizes.values()), sizes["shard-000002.tar"]
    assert total - cut + 50 < len(got) < total - 3
    records = read_error_log(tmp_path / "errors")
    assert {(r["kind"], r["shard"]) for r in records} == {
        ("bad_image", "shard-000000.tar"), ("bad_caption", "shard-000000.tar"),
        ("no_caption", "shard-000001.tar"), ("truncated_shard", "shard-000002.tar")}


def test_a_resumed_epoch_skips_exactly_what_was_trained_past_bad_samples(corrupt_pool, tmp_path):
    pool, _ = corrupt_pool
    whole = _stream(pool, tmp_path)
    whole.epoch = 1
    everything = list(whole.labelled_samples())
    resumed = _stream(pool, tmp_path)
    resumed.epoch, resumed.skip_batches = 1, 5  # 5 batches of 32 were trained before the interruption
    rest = list(resumed.labelled_samples())
    assert [s["__key__"] for s in rest] == [s["__key__"] for s in everything[5 * 32:]]
    # what was skipped before the resume point is not counted twice
    assert _totals(rest) == _totals(everything[5 * 32:])


def test_two_ranks_stay_equal_when_one_meets_bad_samples(corrupt_pool, tmp_path, monkeypatch):
    """A rank whose shards lost samples reads them again so both ranks train the same steps."""
    pool, _ = corrupt_pool
    lengths = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = _stream(pool, tmp_path, )
        stream.epoch = 1
        quota = stream.quota(2, 1)
        samples = list(stream.labelled_samples())
        lengths.append(len(samples))
        assert len(samples) == quota, f"rank {rank}"
    assert lengths[0] == lengths[1]


def test_the_stats_stage_counts_what_training_reads(corrupt_pool, tmp_path, world):
    """Labelling the damaged pool applies the same rule: the subset and its shards hold only usable
    samples, so the manifest's size is what an epoch of its shards yields."""
    pool, keys = corrupt_pool
    proc = run_cli("world", "recipe=null", "~world", f"data.pool={pool}", f"data.vocabulary=world:{world}",
                   "subset.size=200", "subset.nmi=null", "subset.pairs=40", "eval=imagenet_ao",
                   f"eval.benchmarks.imagenet_ao={world}/imagenet_ao/unseen", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped samples: 1 bad_caption, 1 bad_image, 1 no_caption" in proc.stderr
    assert "truncated shards (samples before the damage kept): shard-000002.tar" in proc.stderr
    stats = json.loads(next((tmp_path / "cache").glob("labels-*/stats.json")).read_text())
    assert stats["skipped"] == {"bad_image": 1, "bad_caption": 1, "no_caption": 1}
    assert stats["truncated_shards"] == [str(pool / "shard-000002.tar")]
    subset = next((tmp_path / "cache" / "subsets").iterdir())
    manifest = json.loads((subset / "subset" / "manifest.json").read_text())
    sizes = json.loads((subset / "shards" / "sizes.json").read_text())
    stream = _stream(subset / "shards", tmp_path)
    stream.epoch = 1
    yielded = list(stream.labelled_samples())
    assert manifest["size"] == sum(sizes.values()) == len(yielded) == 200
    assert sum(sum(s["skipped"]) for s in yielded) == 0


def test_a_fit_on_the_damaged_pool_trains_to_the_end_and_logs_the_counts(corrupt_pool, world, tmp_path):
    pool, _ = corrupt_pool
    proc = run_cli("fit", "recipe=null", "~world", f"data.pool={pool}", "eval=imagenet_ao",
                   f"eval.benchmarks.imagenet_ao={world}/imagenet_ao/unseen", "model.name=toy-vit-micro",
                   "data.batch_size=32", "data.num_workers=0", "trainer.max_steps=20", "eval.num_workers=0",
                   "eval.every_n_steps=0", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
                   root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next((tmp_path / "runs").glob("run-*/summary.json")).read_text())
    assert summary["steps"] == 20
    # 20 steps of 32 = 640 samples, more than one epoch: what was met is counted as often as it was met,
    # and every count in MLflow is a line of the run's error log.
    logged = Counter(r["kind"] for r in read_error_log(Path(summary["run_dir"]) / "data_errors"))
    assert set(logged) == set(EXPECTED) and all(logged[k] >= 1 for k in EXPECTED)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    metrics = client.get_run(summary["run_id"]).data.metrics
    assert {k: int(metrics[f"data/skipped_{k}"]) for k in ("bad_image", "bad_caption", "no_caption")} == \
        {k: logged[k] for k in ("bad_image", "bad_caption", "no_caption")}
    assert metrics["data/truncated_shards"] == logged["truncated_shard"] and metrics["data/skipped_no_image"] == 0
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("data: skipped"))
    assert f"{logged['no_caption']} no_caption" in line and "trained on 640 samples" in line
    assert summary["data_skipped"] == line.removeprefix("data: ")


def test_too_many_bad_samples_stop_the_run_naming_the_worst_shard(world, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(world / "pool", pool)
    shard = pool_shards(pool)[1]
    rewrite_shard(shard, shard.with_suffix(".new"),
                  lambda name, data: b"garbage" if name.endswith((".png", ".jpg")) else data)
    shard.with_suffix(".new").replace(shard)
    (tmp_path / "out").mkdir()
    proc = run_cli("fit", "recipe=null", "~world", f"data.pool={pool}", "eval=imagenet_ao",
                   f"eval.benchmarks.imagenet_ao={world}/imagenet_ao/unseen", "model.name=toy-vit-micro",
                   "data.batch_size=32", "data.num_workers=0", "trainer.max_steps=20", "eval.num_workers=0",
                   "eval.every_n_steps=0", "trainer.enable_progress_bar=false", root=tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("aotrain fit: error:")]
    assert len(error) == 1 and "data.max_bad_fraction=0.001" in error[0]
    assert "worst shards: shard-000001.tar" in error[0] and "bad_image" in error[0]


def test_unusable_shards_are_named_before_any_work(world, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(world / "pool", pool)
    (pool / "shard-000001.tar").write_bytes(b"")
    (pool / "shard-000002.tar").write_bytes(b"<html>404 not found</html>" * 40)  # a failed download saved as is
    (tmp_path / "out").mkdir()
    proc = run_cli_here("fit", "recipe=null", "~world", f"data.pool={pool}", "eval=imagenet_ao",
                        f"eval.benchmarks.imagenet_ao={world}/imagenet_ao/unseen", root=tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"2 of {len(pool_shards(world / 'pool'))} shards" in proc.stderr
    assert "shard-000001.tar: empty file (0 bytes)" in proc.stderr
    assert "shard-000002.tar: not a tar archive" in proc.stderr
    assert not (tmp_path / "out" / "runs").exists()
