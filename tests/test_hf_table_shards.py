"""A Hugging Face `datasets.Dataset` with an Image() column of PIL images -> `aotrain filter table-shards`.

    .venv/bin/python -m pytest tests/test_hf_table_shards.py -q

The two ways such a dataset reaches disk: `save_to_disk` (a folder of .arrow files, here two) and
`to_parquet` (the Image() column becomes a {bytes, path} struct). Both must give shards holding the
same pixels and captions in row order; `aotrain filter stats` must count each caption of the
save_to_disk folder once (state.json / dataset_info.json are not captions).
"""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

N = 12
WORDS = [("red", "circle"), ("blue", "square"), ("striped", "cat"), ("wooden", "chair")]


@pytest.fixture(scope="module")
def dataset():
    """N PIL images (random 16x12 RGB pixels, made in memory: no file behind them) with alt-text captions."""
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(N)]
    captions = [f"Photo of a {a} {o} #{i}" for i, (a, o) in enumerate(WORDS[i % len(WORDS)] for i in range(N))]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels], "caption": captions},
                                    features=features)
    return ds, pixels, captions


def _shards(out) -> list[dict]:
    """{ext: bytes} per sample of out/shard-*.tar, in key order."""
    samples = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [samples[k] for k in sorted(samples)]


def _check(out, pixels, captions):
    samples = _shards(out)
    assert len(samples) == N and len(list(out.glob("shard-*.tar"))) == 3  # --samples-per-shard 5
    for sample, want, text in zip(samples, pixels, captions):
        assert set(sample) == {"png", "txt", "json"}  # datasets stores in-memory PIL images as PNG
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))), want)
        assert sample["txt"].decode() == text == json.loads(sample["json"])["caption"]


def test_save_to_disk_folder(dataset, tmp_path):
    ds, pixels, captions = dataset
    ds.save_to_disk(str(tmp_path / "hf"), num_shards=2)  # two .arrow files: row order must hold across them
    proc = run_cli("filter", "table-shards", str(tmp_path / "hf"), str(tmp_path / "out"),
                   "--image-column", "image", "--samples-per-shard", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {N} samples in 3 shards")
    _check(tmp_path / "out", pixels, captions)


def test_to_parquet_file(dataset, tmp_path):
    ds, pixels, captions = dataset
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    proc = run_cli("filter", "table-shards", str(tmp_path / "hf.parquet"), str(tmp_path / "out"),
                   "--image-column", "image", "--samples-per-shard", "5")
    assert proc.returncode == 0, proc.stderr
    _check(tmp_path / "out", pixels, captions)


def test_filter_stats_counts_each_caption_of_the_folder_once(dataset, tmp_path):
    ds, _, _ = dataset
    ds.save_to_disk(str(tmp_path / "hf"), num_shards=2)
    proc = run_cli("filter", "stats", str(tmp_path / "hf"), "--vocab", "builtin", "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert stats["n_captions"] == N and stats["n_malformed"] == 0, stats
