"""Caption tables pointing to images -> webdataset shards (data_filters.table_shards): contents, uids, errors.

    .venv/bin/python -m pytest tests/test_table_shards.py -q
"""
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from data_filters.sources import iter_captions
from data_filters.table_shards import table_shards_main, table_to_shards

N = 30
MISSING, EMPTY, NONE = 5, 7, 9  # rows with no image file, an empty caption, a null caption
SUFFIXES = ("png", "jpg", "JPEG")


def caption(i):
    return "" if i == EMPTY else None if i == NONE else f"a photo number {i}"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """N small distinct images under root/imgs (png, jpg, JPEG in turn); row MISSING's file is not written."""
    root = tmp_path_factory.mktemp("images")
    (root / "imgs").mkdir()
    rel = []
    for i in range(N):
        name = f"imgs/img{i:02d}.{SUFFIXES[i % 3]}"
        if i != MISSING:
            fmt = "PNG" if i % 3 == 0 else "JPEG"
            Image.new("RGB", (8, 8), (i * 8, 255 - i * 8, 7)).save(root / name, format=fmt)
        rel.append(name)
    return root, rel


def columns(images, absolute=False, uid=True):
    root, rel = images
    cols = {"image_path": [str(root / r) if absolute else r for r in rel], "caption": [caption(i) for i in range(N)]}
    if uid:
        cols["uid"] = [f"u{i:03d}" for i in range(N)]
    return cols


def shard_samples(out: Path) -> list[dict]:
    """{key, ext: bytes ...} per sample over the out folder's shards, read with the plain tarfile module."""
    samples = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(info).read()
    return [samples[k] for k in sorted(samples)]


def uids_of(samples):
    return [json.loads(s["json"])["uid"] for s in samples]


def good_rows(rows=range(N)):
    return [i for i in rows if i not in (MISSING, EMPTY, NONE)]


def test_parquet_relative_paths(images, tmp_path):
    root, rel = images
    pq.write_table(pa.table(columns(images)), tmp_path / "t.parquet")
    info = table_to_shards(tmp_path / "t.parquet", tmp_path / "out", image_root=root, samples_per_shard=7)
    expected = good_rows()
    assert (info["written"], info["missing_image"], info["empty_caption"]) == (len(expected), 1, 2)
    assert info["uids_not_found"] == 0 and info["rows"] == N
    samples = shard_samples(tmp_path / "out")
    assert uids_of(samples) == [f"u{i:03d}" for i in expected]
    for s, i in zip(samples, expected):
        ext = {"png": "png", "jpg": "jpg", "JPEG": "jpg"}[SUFFIXES[i % 3]]
        assert set(s) == {"__key__", ext, "txt", "json"}
        assert s[ext] == (root / rel[i]).read_bytes()
        assert s["txt"].decode() == caption(i)
        meta = json.loads(s["json"])
        assert meta["caption"] == caption(i) and meta["source_path"] == str(root / rel[i])
        assert meta["key"] == s["__key__"]
    assert [s["__key__"] for s in samples] == [f"{n:09d}" for n in range(len(expected))]
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert sum(sizes.values()) == info["written"] and info["shards"] == len(sizes) == 4
    assert sorted(sizes) == sorted(p.name for p in (tmp_path / "out").glob("*.tar"))
    assert sizes["shard-000000.tar"] == 7


def test_webdataset_reads_the_shards(images, tmp_path):
    pq.write_table(pa.table(columns(images)), tmp_path / "t.parquet")
    table_to_shards(tmp_path / "t.parquet", tmp_path / "out", image_root=images[0], samples_per_shard=10)
    urls = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["txt"].decode() for s in samples] == [caption(i) for i in good_rows()]
    assert all(("png" in s) != ("jpg" in s) for s in samples)


def test_uid_subset_keeps_table_order(images, tmp_path):
    pq.write_table(pa.table(columns(images)), tmp_path / "t.parquet")
    asked = ["u020", "u003", "u011", "nope", "u005", "u007", "u003"]  # 5: missing image, 7: empty caption
    info = table_to_shards(tmp_path / "t.parquet", tmp_path / "out", image_root=images[0], uids=np.array(asked))
    assert uids_of(shard_samples(tmp_path / "out")) == ["u003", "u011", "u020"]
    assert (info["written"], info["missing_image"], info["empty_caption"], info["uids_not_found"]) == (3, 1, 1, 1)


def test_csv_absolute_paths_and_row_uids(images, tmp_path):
    pacsv.write_csv(pa.table(columns(images, absolute=True, uid=False)), tmp_path / "t.csv")
    info = table_to_shards(tmp_path / "t.csv", tmp_path / "out")
    assert info["written"] == len(good_rows()) and info["missing_image"] == 1 and info["empty_caption"] == 2
    assert uids_of(shard_samples(tmp_path / "out")) == [f"t.csv:{i}" for i in good_rows()]


@pytest.mark.parametrize("kind", ["parquet", "csv", "hf"])
def test_uids_from_sources_select_the_same_rows(images, tmp_path, kind):
    """A uid that data_filters.sources yields for the table (what `filter label` stores) picks that row."""
    cols = columns(images, absolute=True, uid=False)
    if kind == "parquet":
        table = tmp_path / "t.parquet"
        pq.write_table(pa.table(cols), table)
    elif kind == "csv":
        table = tmp_path / "t.csv"
        pacsv.write_csv(pa.table(cols), table)
    else:
        import datasets
        table = tmp_path / "hf"
        datasets.Dataset.from_dict(cols).save_to_disk(str(table))
    pairs = list(iter_captions(table))
    picked = dict(pairs[i] for i in (0, 4, 5, 17))  # pair 4 is row 5: its image is missing
    info = table_to_shards(table, tmp_path / "out", uids=list(picked))
    samples = shard_samples(tmp_path / "out")
    assert info["uids_not_found"] == 0 and info["missing_image"] == 1
    assert {u: s["txt"].decode() for u, s in zip(uids_of(samples), samples)} == \
        {u: c for u, c in picked.items() if not u.endswith(f":{MISSING}")}


def test_csv_row_numbers_match_sources_after_a_bad_line(images, tmp_path):
    """sources drops a CSV line with the wrong field count and numbers rows without it; so must we."""
    root, rel = images
    lines = ["image_path,caption", f"{rel[0]},zero", "oops,too,many,fields", f"{rel[1]},one", f"{rel[2]},two"]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    pairs = list(iter_captions(tmp_path / "t.csv"))
    assert pairs == [("t.csv:0", "zero"), ("t.csv:1", "one"), ("t.csv:2", "two")]
    info = table_to_shards(tmp_path / "t.csv", tmp_path / "out", image_root=root, uids=["t.csv:2"])
    assert info["malformed_rows"] == 1
    assert [s["txt"] for s in shard_samples(tmp_path / "out")] == [b"two"]


def test_hf_dataset_with_string_paths(images, tmp_path):
    import datasets
    datasets.Dataset.from_dict(columns(images)).save_to_disk(str(tmp_path / "hf"))
    info = table_to_shards(tmp_path / "hf", tmp_path / "out", image_root=images[0], samples_per_shard=100)
    assert info["written"] == len(good_rows()) and info["shards"] == 1
    assert uids_of(shard_samples(tmp_path / "out")) == [f"u{i:03d}" for i in good_rows()]


def test_hf_dataset_with_image_feature_uses_embedded_bytes(images, tmp_path):
    import datasets
    root, rel = images
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    paths = [str(copy / r) if (copy / r).exists() else None for r in rel]  # row MISSING: a null image
    ds = datasets.Dataset.from_dict({"image": paths, "caption": [caption(i) for i in range(N)]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "hf"))
    shutil.rmtree(copy)  # the shards must come from the bytes save_to_disk embedded
    info = table_to_shards(tmp_path / "hf", tmp_path / "out", image_column="image")
    assert (info["written"], info["missing_image"], info["empty_caption"]) == (len(good_rows()), 1, 2)
    samples = shard_samples(tmp_path / "out")
    for s, i in zip(samples, good_rows()):
        ext = "png" if i % 3 == 0 else "jpg"
        assert s[ext] == (root / rel[i]).read_bytes()
        assert json.loads(s["json"])["uid"] == f"data-00000-of-00001.arrow:{i}"


def test_image_dicts_with_path_only_and_raw_bytes(images, tmp_path):
    root, rel = images
    values = [{"bytes": None, "path": rel[0]}, {"bytes": None, "path": rel[1]},
              {"bytes": (root / rel[2]).read_bytes(), "path": None}]
    pq.write_table(pa.table({"img": values, "caption": ["a", "b", "c"]}), tmp_path / "d.parquet")
    pq.write_table(pa.table({"img": [(root / rel[3]).read_bytes(), b"not an image"], "caption": ["x", "y"]}),
                   tmp_path / "b.parquet")
    info = table_to_shards(tmp_path / "d.parquet", tmp_path / "out1", image_column="img", image_root=root)
    exts = [next(k for k in s if k in ("png", "jpg")) for s in shard_samples(tmp_path / "out1")]
    assert info["written"] == 3 and exts == ["png", "jpg", "jpg"]
    info = table_to_shards(tmp_path / "b.parquet", tmp_path / "out2", image_column="img")
    assert info["written"] == 1 and info["unknown_format"] == 1
    assert "png" in shard_samples(tmp_path / "out2")[0]


def test_missing_column_lists_the_columns(images, tmp_path):
    pq.write_table(pa.table(columns(images)), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"no column 'image'.*image_path, caption, uid"):
        table_to_shards(tmp_path / "t.parquet", tmp_path / "out", image_column="image")
    with pytest.raises(ValueError, match=r"no column 'id'.*available columns"):
        table_to_shards(tmp_path / "t.parquet", tmp_path / "out", uid_column="id")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_existing_out_dir(images, tmp_path):
    pq.write_table(pa.table(columns(images)), tmp_path / "t.parquet")
    out = tmp_path / "out"
    out.mkdir()  # empty: fine
    table_to_shards(tmp_path / "t.parquet", out, image_root=images[0], uids=["u000"])
    with pytest.raises(FileExistsError, match="not empty"):
        table_to_shards(tmp_path / "t.parquet", out, image_root=images[0])
    assert len(shard_samples(out)) == 1
    info = table_to_shards(tmp_path / "t.parquet", out, image_root=images[0], overwrite=True)
    assert len(shard_samples(out)) == info["written"] == len(good_rows())


def test_nothing_to_write_is_an_error(images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the current folder, which has no imgs/
    pq.write_table(pa.table(columns(images)), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="no row could be written"):
        table_to_shards(tmp_path / "t.parquet", tmp_path / "out", uids=["u001"])  # no image_root: not found
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_cli(images, tmp_path, capsys):
    root = images[0]
    pq.write_table(pa.table(columns(images)), tmp_path / "t.parquet")
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "subset.npy", np.array(["u004", "u002"]))
    (tmp_path / "uids.txt").write_text("u010\n\nu001\n")
    for name, subset in (("a", "sub"), ("b", "sub/subset.npy"), ("c", "uids.txt")):
        code = table_shards_main([str(tmp_path / "t.parquet"), str(tmp_path / name), "--image-root", str(root),
                                  "--subset", str(tmp_path / subset), "--samples-per-shard", "1"])
        assert code == 0
    assert uids_of(shard_samples(tmp_path / "a")) == uids_of(shard_samples(tmp_path / "b")) == ["u002", "u004"]
    assert uids_of(shard_samples(tmp_path / "c")) == ["u001", "u010"]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and out[0].startswith("wrote 2 samples in 2 shards")
    code = table_shards_main([str(tmp_path / "t.parquet"), str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already exists" in err[0]
    code = table_shards_main([str(tmp_path / "t.parquet"), str(tmp_path / "d"), "--caption-column", "text"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no column 'text'" in err[0]
