"""data_filters/pools.py: which files of a pool folder hold its captions (each caption read once).

The layouts come from img2dataset's and datasets' real output (tests/test_real_pools.py and
tests/test_hf_table_shards.py run the tools); these cases are the folder shapes around them.
"""
from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_filters.pools import open_pool, pool_shards


def _tar(path, samples: dict) -> None:
    """samples: key -> json dict (each sample gets a .txt and a .json)."""
    with tarfile.open(path, "w") as tar:
        for key, meta in samples.items():
            for ext, data in (("txt", b"a red fox"), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _table(path, **columns) -> None:
    pq.write_table(pa.table(columns), path)


def test_img2dataset_folder_reads_each_shards_parquet_not_its_tar(tmp_path):
    for n in range(2):
        _tar(tmp_path / f"0000{n}.tar", {f"0000{n}0001": {"key": f"0000{n}0001"}})
        _table(tmp_path / f"0000{n}.parquet", key=[f"0000{n}0001"], caption=["a red fox"], status=["success"])
    pool = open_pool(tmp_path)
    assert pool.kind == "img2dataset" and pool.shard_uid_field == "__key__"
    assert [f.name for f in pool.caption_files] == ["00000.parquet", "00001.parquet"]
    assert "uid = key" in pool.describe()


def test_a_uid_column_makes_it_a_datacomp_pool_keyed_by_uid(tmp_path):
    _tar(tmp_path / "00000.tar", {"000000001": {"uid": "ab12"}})
    _table(tmp_path / "00000.parquet", uid=["ab12"], key=["000000001"], caption=["a red fox"])
    pool = open_pool(tmp_path)
    assert (pool.kind, pool.shard_uid_field) == ("datacomp", "uid")


def test_a_shard_without_its_parquet_is_read_from_the_tar_and_a_stray_table_not_at_all(tmp_path):
    _tar(tmp_path / "00000.tar", {"000000001": {}})
    _table(tmp_path / "00000.parquet", key=["000000001"], caption=["a red fox"])
    _tar(tmp_path / "00001.tar", {"000010001": {}})  # its parquet never written
    _table(tmp_path / "urls.parquet", url=["http://x/1.jpg"], caption=["a red fox"])  # the input URL list
    pool = open_pool(tmp_path)
    assert [f.name for f in pool.caption_files] == ["00000.parquet", "00001.tar"]
    assert "not read: 1 table(s) named like no shard (urls.parquet)" in pool.describe()


def test_plain_shards_and_resharded_output(tmp_path):
    _tar(tmp_path / "shard-000000.tar", {"0000000000": {"uid": "u1"}})
    _table(tmp_path / "key_map.parquet", key=["0000000000"], uid=["u1"])  # reshard writes it: not captions
    pool = open_pool(tmp_path)
    assert pool.kind == "webdataset" and pool.shard_uid_field == "uid"
    assert [f.name for f in pool.caption_files] == ["shard-000000.tar"]
    assert pool_shards(tmp_path) == [tmp_path / "shard-000000.tar"]


def test_hugging_face_save_to_disk_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (tmp_path / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    pool = open_pool(tmp_path)
    assert pool.kind == "huggingface" and pool.caption_files == (tmp_path / "train" / "data-00000-of-00001.arrow",)


def test_subfolders_are_read_only_when_the_folder_has_no_files_of_its_own(tmp_path):
    (tmp_path / "a").mkdir()
    _table(tmp_path / "a" / "part-0.parquet", caption=["a red fox"])
    assert [f.name for f in open_pool(tmp_path).caption_files] == ["part-0.parquet"]
    _table(tmp_path / "top.parquet", caption=["a blue fox"])
    assert [f.name for f in open_pool(tmp_path).caption_files] == ["top.parquet"]


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no caption files"),
    (lambda p: (p / "notes.txt").write_text("x"), "no caption files"),
])
def test_a_folder_with_nothing_to_read_is_an_error(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(ValueError, match=message):
        open_pool(tmp_path)
    with pytest.raises(ValueError, match="no .tar shards"):
        pool_shards(tmp_path)
