"""benchmarks/data_throughput.py compares like with like: both sides read the same img2dataset-layout
JPEG shards and yield the same number of samples, as the tensors a training step consumes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import data_throughput as bench  # noqa: E402


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return bench.make_pool(tmp_path_factory.mktemp("bench-data"), samples=120, image_size=64, per_shard=50)


def test_pool_is_in_img2dataset_layout(pool):
    assert sorted(p.name for p in pool.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert (pool / "00000.parquet").exists() and (pool / "00000_stats.json").exists()


def test_both_sides_yield_the_same_samples_as_training_tensors(pool):
    urls = sorted(str(p) for p in pool.glob("*.tar"))
    plain = list(bench.plain(urls, "toy-vit-tiny"))
    ours = list(bench.aotrain(pool, "toy-vit-tiny"))
    assert len(plain) == len(ours) == 120
    for (p_image, p_tokens), (o_image, o_tokens, _skipped) in zip(plain[:3], ours[:3]):
        assert p_image.shape == o_image.shape == (3, 32, 32)  # toy-vit-tiny's image size
        assert p_tokens.shape == o_tokens.shape


def test_main_prints_the_ratio_and_workers_per_gpu(pool, capsys):
    root = pool.parent
    assert bench.main(["--samples", "120", "--repeats", "1", "--model", "toy-vit-tiny", "--root", str(root),
                       "--image-size", "64", "--per-shard", "50"]) == 0
    out = capsys.readouterr().out
    assert "aotrain / plain throughput" in out and "workers/GPU" in out
