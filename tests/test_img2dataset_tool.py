"""What the real img2dataset (1.47.0) writes, as the rest of the suite relies on it (fixtures in conftest.py).

    .venv/bin/python -m pytest tests/test_img2dataset_tool.py -q

Checked here: NNNNN.tar / NNNNN.parquet / NNNNN_stats.json per shard; one parquet row per input row,
failed downloads included (status "failed_to_download"); samples in the tar for successes only;
one key in the parquet, the sample's json and its tar member names; sha256 of the downloaded bytes,
equal for duplicates; DataComp's uid carried into the parquet and the jsons. Rows and samples come
in completion order (img2dataset downloads with a thread pool), not input order: sort by key.
"""
import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

STATS_FIELDS = {"count", "successes", "failed_to_download", "failed_to_resize", "duration", "start_time",
                "end_time", "status_dict"}
JSON_FIELDS = {"key", "caption", "url", "status", "error_message", "width", "height", "original_width",
               "original_height", "exif", "sha256"}


def _parquet_rows(pool) -> dict:
    rows = [r for p in sorted(pool["out_dir"].glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    by_key = {r["key"]: r for r in rows}
    assert len(by_key) == len(rows), "a key appears twice"
    return by_key


def _samples(pool) -> dict:
    """{key: {extension: bytes}} of every tar member, and the shard each key is in."""
    samples = {}
    for shard in sorted(pool["out_dir"].glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {"shard": shard.stem})[ext] = tar.extractfile(member).read()
    return samples


def test_layout_one_tar_parquet_and_stats_per_shard(img2dataset_pool):
    pool = img2dataset_pool
    shards = [f"{i:05d}" for i in range(pool["n_shards"])]
    expected = {f"{s}{suffix}" for s in shards for suffix in (".tar", ".parquet", "_stats.json")}
    assert {p.name for p in pool["out_dir"].iterdir()} == expected  # no _tmp/ or other leftovers
    total = {"count": 0, "successes": 0, "failed_to_download": 0}
    for s in shards:
        stats = json.loads((pool["out_dir"] / f"{s}_stats.json").read_text())
        assert set(stats) == STATS_FIELDS
        assert stats["failed_to_resize"] == 0
        assert stats["status_dict"]["success"] == stats["successes"]
        for name in total:
            total[name] += stats[name]
    assert total == {"count": pool["n_rows"], "successes": pool["n_success"], "failed_to_download": pool["n_failed"]}
    assert pool["n_shards"] > 1 and pool["n_failed"] > 0


def test_parquet_has_a_row_per_input_failures_included(img2dataset_pool):
    rows = _parquet_rows(img2dataset_pool)
    assert set(rows) == {r["key"] for r in img2dataset_pool["rows"]}
    for given in img2dataset_pool["rows"]:
        row = rows[given["key"]]
        assert (row["url"], row["caption"]) == (given["url"], given["caption"])
        if given["success"]:
            assert (row["status"], row["error_message"]) == ("success", None)
            assert (row["width"], row["height"]) == (32, 32)
            assert row["sha256"] == given["sha256"]  # of the downloaded file, not of the re-encoded jpg
        else:
            assert row["status"] == "failed_to_download"
            assert "No such file or directory" in row["error_message"]
            assert row["sha256"] is None and row["width"] is None


def test_tar_holds_successes_only_under_the_parquet_key(img2dataset_pool):
    pool = img2dataset_pool
    rows, samples = _parquet_rows(pool), _samples(pool)
    assert set(samples) == {r["key"] for r in pool["rows"] if r["success"]}
    # key = shard * 10**ceil(log10(number_sample_per_shard)) + row in shard: 7 digits at 100 per shard
    assert {len(k) for k in rows} == {7}
    for key, sample in samples.items():
        assert set(sample) == {"shard", "jpg", "txt", "json"}
        assert sample["shard"] == key[:5]  # the shard's name starts the key
        meta = json.loads(sample["json"])
        assert set(meta) == JSON_FIELDS
        assert meta == rows[key]  # the json is the sample's parquet row
        assert sample["txt"].decode() == rows[key]["caption"]
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert (image.format, image.size) == ("JPEG", (32, 32))  # --resize_mode no keeps the size


def test_duplicates_are_separate_samples_with_one_sha256(img2dataset_pool):
    pool = img2dataset_pool
    rows, samples = _parquet_rows(pool), _samples(pool)
    assert pool["same_url"] and len(pool["same_bytes"]) > len(pool["same_url"])
    for keys in pool["same_url"]:  # one URL listed twice: two samples, two captions, one image
        assert len({rows[k]["url"] for k in keys}) == 1
        assert len({rows[k]["caption"] for k in keys}) == len(keys)
        assert len({samples[k]["jpg"] for k in keys}) == 1
    for keys in pool["same_bytes"]:  # the same bytes (also under another file name): one sha256
        assert len({rows[k]["sha256"] for k in keys}) == 1 and all(k in samples for k in keys)
    distinct = {rows[k]["sha256"] for k in samples}
    assert len(distinct) == len(samples) - sum(len(keys) - 1 for keys in pool["same_bytes"])


def test_datacomp_uid_lands_in_parquet_and_json(datacomp_pool):
    rows, samples = _parquet_rows(datacomp_pool), _samples(datacomp_pool)
    uids = {r["key"]: r["uid"] for r in datacomp_pool["rows"]}
    assert {k: r["uid"] for k, r in rows.items()} == uids  # failed rows keep their uid too
    for key, sample in samples.items():
        assert json.loads(sample["json"])["uid"] == uids[key]


@pytest.mark.parametrize("kind", ["img2dataset", "datacomp"])
def test_filter_stats_counts_each_downloaded_caption_once(kind, img2dataset_pool, datacomp_pool, tmp_path):
    """`aotrain filter stats` on the real tool's folder: captions of successes only, each once."""
    from conftest import run_cli

    pool = {"img2dataset": img2dataset_pool, "datacomp": datacomp_pool}[kind]
    proc = run_cli("filter", "stats", str(pool["out_dir"]), "--vocab", "builtin", "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert (stats["n_captions"], stats["n_not_downloaded"]) == (pool["n_success"], pool["n_failed"]), stats
