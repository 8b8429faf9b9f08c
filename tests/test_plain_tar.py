"""read_shard's fast path for plain tar shards gives what tarfile gives, and steps aside for anything else."""
from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from data_filters.plain_tar import plain_members
from data_filters.samples import read_shard


def tarfile_samples(path: Path) -> list[tuple[str, dict]]:
    """The oracle: tarfile's members, grouped by key (the name up to the first dot of its base name;
    a member without a dot is no sample's)."""
    samples = []
    with tarfile.open(path) as tar:
        for info in tar:
            folder, _, base = info.name.rpartition("/")
            if not info.isfile() or "." not in base:
                continue
            key = f"{folder}/{base.split('.')[0]}" if folder else base.split(".")[0]
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][base.partition(".")[2]] = tar.extractfile(info).read()
    return samples


def is_plain(path: Path) -> bool:
    return plain_members(path.read_bytes()) is not None


def webdataset_shard(path: Path, n: int = 30) -> Path:
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            sink.write({"__key__": f"{i:09d}", "png": bytes([i % 256]) * (100 + 37 * i),
                        "txt": f"a red circle number {i}", "json": {"uid": f"u{i}"}})
    return path


def tarfile_shard(path: Path, fmt: int, names: list[str]) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = f"member {i} é".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_webdataset_shard_is_read_plainly_with_tarfiles_result(tmp_path):
    shard = webdataset_shard(tmp_path / "wds.tar")
    assert is_plain(shard)
    assert list(read_shard(shard)) == tarfile_samples(shard)
    unread = list(read_shard(shard, images=False))
    assert [m["png"] for _, m in unread] == [b""] * 30
    assert [m["txt"] for _, m in unread] == [m["txt"] for _, m in tarfile_samples(shard)]


NAMES = ["a/x.txt", "a/x.png", "b/y.txt", "no_dot_member", "é/ü.txt"]
LONG = ["d" * 120 + "/z.txt", "d" * 120 + "/z.png"]


@pytest.mark.parametrize("fmt, names, plain", [
    (tarfile.USTAR_FORMAT, NAMES, True),
    (tarfile.GNU_FORMAT, NAMES, True),
    (tarfile.PAX_FORMAT, NAMES, False),          # non-ASCII names get pax headers
    (tarfile.GNU_FORMAT, NAMES + LONG, False),   # GNU long-name members
    (tarfile.USTAR_FORMAT, NAMES + LONG, False),  # a ustar prefix field
], ids=["ustar", "gnu", "pax", "gnu-long", "ustar-prefix"])
def test_every_header_kind_reads_as_tarfile_reads_it(tmp_path, fmt, names, plain):
    shard = tarfile_shard(tmp_path / "s.tar", fmt, names)
    assert is_plain(shard) == plain
    assert list(read_shard(shard)) == tarfile_samples(shard)


def test_damage_leaves_the_shard_to_tarfile_which_reports_it(tmp_path):
    shard = webdataset_shard(tmp_path / "wds.tar")
    whole = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    name, offset, size = plain_members(whole)[30]  # sample 10's image
    cut.write_bytes(whole[:offset + size // 2])  # ends inside it
    bad_sum = tmp_path / "bad_sum.tar"
    bad_sum.write_bytes(whole[:1024] + b"X" + whole[1025:])  # the first member header (after its pax one)
    gz = tmp_path / "wds.tar.gz"
    gz.write_bytes(gzip.compress(whole))
    for damaged in (cut, bad_sum, gz):
        assert not is_plain(damaged), damaged.name
    told = []
    got = list(read_shard(cut, on_truncated=lambda shard, why: told.append(why)))
    assert told and got == tarfile_samples(shard)[:10]  # samples before the damaged one, all of them
    assert list(read_shard(gz)) == tarfile_samples(shard)
    with pytest.raises(ValueError, match="not a readable tar shard"):
        list(read_shard(tmp_path / "missing.tar"))
