"""Resharding a uid subset (data_filters.reshard / select_cli reshard): exact contents, repeats, determinism.

    .venv/bin/python -m pytest tests/test_reshard.py -q
"""
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_filters.files import add_tar_member
from data_filters.reshard import reshard
from data_filters.select_cli import reshard_main



@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """3 img2dataset-style shards of 20 samples: {key}.png, .txt, .json (uid "u<index*7>")."""
    folder = tmp_path_factory.mktemp("pool")
    for s in range(3):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(20):
                index, key = s * 20 + i, f"{s:05d}{i:04d}"
                add_tar_member(tar, f"{key}.png", f"image-{index}".encode())
                add_tar_member(tar, f"{key}.txt", f"caption {index}".encode())
                add_tar_member(tar, f"{key}.json", json.dumps({"uid": f"u{index * 7:04d}", "key": key}).encode())
    return sorted(str(p) for p in folder.glob("*.tar"))


def read(out):
    urls = sorted(str(p) for p in out.glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False))


def test_keeps_exactly_the_subset_with_repeats(pool, tmp_path):
    subset = np.array(["u0000", "u0014", "u0014", "u0413", "u0203", "u0014", "u0070"])
    info = reshard(pool, subset, tmp_path / "out", samples_per_shard=3)
    samples = read(tmp_path / "out")
    uids = [json.loads(s["json"])["uid"] for s in samples]
    assert uids == sorted(subset.tolist())  # uid order, repeats adjacent
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys) == 7
    for s in samples:
        meta = json.loads(s["json"])
        index = int(meta["uid"][1:]) // 7
        assert s["png"] == f"image-{index}".encode() and s["txt"] == f"caption {index}".encode()
        assert meta["key"] == s["__key__"]
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert sizes == {"shard-000000.tar": 3, "shard-000001.tar": 3, "shard-000002.tar": 1}
    assert info["n_samples"] == 7 and info["n_unique"] == 5 and info["shards"] == list(sizes)


def test_byte_identical_on_rerun(pool, tmp_path):
    subset = np.array([f"u{i * 7:04d}" for i in range(0, 60, 3)])
    reshard(pool, subset, tmp_path / "a", samples_per_shard=8)
    reshard(pool, subset[::-1], tmp_path / "b", samples_per_shard=8)  # input order does not matter
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folders left


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT])
def test_add_tar_member_writes_tarfiles_bytes(tmp_path, fmt):
    """add_tar_member's own ustar header is byte for byte what tarfile.addfile writes (shards stay identical)."""
    import io

    from data_filters.files import _member_info

    members = [("000000000.png", b""), ("a.txt", b"x"), ("k.json", b"y" * 511), ("n" * 100, b"z" * 512),
               ("d" * 20 + "/" + "p" * 90, b"q" * 513), ("ünï.txt", b"caption")]  # the last two: tarfile's way
    ours, theirs = io.BytesIO(), io.BytesIO()
    with tarfile.open(fileobj=ours, mode="w", format=fmt) as a, tarfile.open(fileobj=theirs, mode="w", format=fmt) as b:
        for name, data in members:
            add_tar_member(a, name, data)
            b.addfile(_member_info(name, len(data)), io.BytesIO(data))
    assert ours.getvalue() == theirs.getvalue()


def test_parallel_index_is_the_serial_one(pool, tmp_path, monkeypatch):
    import data_filters.reshard as reshard_module

    subset = np.array([f"u{i * 7:04d}" for i in range(0, 60, 2)])
    reshard(pool, subset, tmp_path / "serial", samples_per_shard=8)
    monkeypatch.setattr(reshard_module, "PARALLEL_FROM_BYTES", 0)  # this small pool on every core
    reshard(pool, subset, tmp_path / "parallel", samples_per_shard=8)
    for path in sorted((tmp_path / "serial").iterdir()):
        assert path.read_bytes() == (tmp_path / "parallel" / path.name).read_bytes(), path.name


def test_uid_from_key(pool, tmp_path):
    reshard(pool, np.array(["000010005", "000000001"]), tmp_path / "out", uid_field="__key__")
    assert [s["txt"] for s in read(tmp_path / "out")] == [b"caption 1", b"caption 25"]


def test_missing_uids_error_and_nothing_written(pool, tmp_path):
    with pytest.raises(ValueError, match="2 of 3 subset uids not found"):
        reshard(pool, np.array(["u0000", "nope", "nada"]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli(pool, tmp_path, capsys):
    np.save(tmp_path / "subset.npy", np.array(["u0007", "u0007", "u0021"]))
    shards = str(Path(pool[0]).parent)  # a folder of shards
    args = [str(tmp_path / "subset.npy"), "--shards", shards, "--out", str(tmp_path / "out"), "--samples-per-shard", "2"]
    assert reshard_main(args) == 0
    assert "3 samples (2 unique) in 2 shards" in capsys.readouterr().out
    assert reshard_main(args) == 2  # output exists: refuse, one line
    assert "already exists" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.array(["zzz"]))
    assert reshard_main([str(tmp_path / "bad.npy"), "--shards", shards, "--out", str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "o2").exists()
