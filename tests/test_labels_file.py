"""Selection from a labels file in bounded memory (data_filters/labels_file.py) gives what the in-memory reader gave.

    .venv/bin/python -m pytest tests/test_labels_file.py -q

The reference below is the reader `select` used before (whole columns as Python lists, numpy unicode
uids, image hashes as Python strings); the same subsets must come out, byte for byte, from realistic
labelled captions with duplicate images, unsorted uids of several widths (some not ASCII) and
integer uids. The bounded reader reads in batches of a few rows here, so every batch boundary is crossed.
"""
import hashlib
import random
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_filters import labels_file
from data_filters.dedupe import load_selection_pool, string_keys
from data_filters.label import label_captions, load_caption_keys, load_labels
from data_filters.select import select_many
from data_filters.select_cli import select_main
from data_filters.subset_files import write_subset
from test_select_captions import realistic_captions


# ---------------------------------------------------------------- the reader before (reference)
def reference_pool(path, dedupe: bool):
    """(uids, attr_idx, obj_idx, attributes, objects), caption keys and duplicates dropped, as before."""
    table = pq.read_table(path)
    cols = {c: table.column(c).to_pylist() for c in ("uid", "attribute", "object")}
    uids = np.asarray(cols["uid"])
    attributes, attr_idx = np.unique(np.asarray(cols["attribute"], dtype=str), return_inverse=True)
    objects, obj_idx = np.unique(np.asarray(cols["object"], dtype=str), return_inverse=True)
    keys = tuple(table.column(c).to_numpy().astype(np.int64) for c in ("caption_hash", "template_hash"))
    if not dedupe:
        return (uids, attr_idx, obj_idx, attributes.tolist(), objects.tolist()), keys, 0
    hashes = np.asarray(table.column("image_hash").to_pylist(), dtype=object)
    keep = np.array([h is None for h in hashes], dtype=bool)
    rows = np.flatnonzero(~keep)
    order = rows[np.lexsort((uids[rows], hashes[rows].astype(str)))]
    sorted_h = hashes[order].astype(str)
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_h[1:] != sorted_h[:-1]
    keep[order[first]] = True
    attributes, attr_idx = np.unique(attributes[attr_idx[keep]], return_inverse=True)
    objects, obj_idx = np.unique(objects[obj_idx[keep]], return_inverse=True)
    pool = (uids[keep], attr_idx, obj_idx, attributes.tolist(), objects.tolist())
    return pool, tuple(k[keep] for k in keys), int((~keep).sum())


# ---------------------------------------------------------------- fixtures
def _captions_table(n: int, int_uids: bool, seed: int = 0) -> pa.Table:
    """Realistic captions, unsorted uids, ~15% duplicate images and some rows without an image hash."""
    rng = random.Random(seed)
    raw = rng.sample(range(10**9), n)
    if int_uids:
        uids = pa.array(raw, pa.int64())
    else:  # widths differ, so the numpy dtype is set by the longest; some are not ASCII
        uids = pa.array([f"k{u}é" if i % 7 == 0 else f"{u:x}" if i % 3 == 0 else f"{u:012d}" for i, u in enumerate(raw)])
    images = [rng.randrange(int(n * 0.85)) for _ in range(n)]
    sha = [None if i % 13 == 0 else hashlib.sha256(str(m).encode()).hexdigest() for i, m in enumerate(images)]
    return pa.table({"key": uids, "caption": realistic_captions(n, seed), "sha256": pa.array(sha, pa.string())})


@pytest.fixture(scope="module", params=["string_uids", "int_uids"])
def labels(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    pq.write_table(_captions_table(6000, request.param == "int_uids"), folder / "captions.parquet")
    label_captions([folder / "captions.parquet"], "builtin", folder / "labels.parquet", uid_column="key")
    return folder / "labels.parquet"


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr(labels_file, "BATCH_ROWS", 700)  # every read crosses many batch boundaries


CASES = {  # (select_many options, dedupe)
    "nmi-sweep-dedupe": ({"size": 1500, "nmi_targets": [0.1, 0.25]}, True),
    "nmi-no-dedupe": ({"size": 1500, "nmi_targets": [0.2], "seed": 3}, False),
    "pairs": ({"size": 1200, "nmi_targets": None, "distinct_pairs": 60}, True),
    "repeats": ({"size": 9000, "nmi_targets": [0.2], "allow_repeats": True}, False),
    "free-marginals": ({"size": 1500, "nmi_targets": [0.3], "fixed_marginals": False}, True),
}


@pytest.mark.parametrize("case", CASES)
def test_bounded_reader_writes_the_same_subsets_as_the_reference(labels, case, tmp_path):
    options, dedupe = CASES[case]
    pool, keys, dropped = reference_pool(labels, dedupe)
    if dedupe:
        assert dropped > 0  # the fixture has duplicate images
    before = _write(select_many(*pool, caption_keys=keys, **options), tmp_path / "before")
    pool, keys, info = load_selection_pool(labels, dedupe)
    assert info["duplicates_dropped"] == dropped
    assert isinstance(pool[0], labels_file.LabelUids) and pool[1].dtype == np.int32  # no uid held as a string
    after = _write(select_many(*pool, caption_keys=keys, **options), tmp_path / "after")
    assert len(before) == len(after) == len(options["nmi_targets"] or [None])
    for one, other in zip(before, after):
        for name in ("subset.npy", "subset.parquet", "manifest.json"):
            assert (one / name).read_bytes() == (other / name).read_bytes(), (one, name)


def _write(subs, folder) -> list:
    return [write_subset(sub, folder / str(i), source="labels")["npy"].parent for i, sub in enumerate(subs)]


def test_lazy_columns_read_the_rows_asked_for(labels):
    table = pq.read_table(labels)
    uids, attr_idx, obj_idx, attributes, objects = load_labels(labels)
    rows = np.array([5, 0, 5, len(uids) - 1, 1234])
    reference = np.asarray(table.column("uid").to_pylist())
    taken = uids.take(rows)
    assert taken.dtype == reference.dtype and np.array_equal(taken, reference[rows])
    assert np.array_equal(np.argsort(uids.order, kind="stable"), np.argsort(reference, kind="stable"))
    assert [attributes[i] for i in attr_idx[rows]] == [table.column("attribute")[int(r)].as_py() for r in rows]
    caption_hash, _ = load_caption_keys(labels)
    assert np.array_equal(caption_hash.take(rows), table.column("caption_hash").to_numpy()[rows])
    kept = np.array([3, 1, 4])
    assert np.array_equal(uids.select(kept).take([2, 0]), reference[[4, 3]])


def test_string_keys_are_equal_for_equal_strings_whatever_the_batch():
    values = ["", None, "a", "ab", "ba", "ab", "é", "a" * 70, "a" * 70] + [hashlib.sha256(b"x").hexdigest()] * 2
    keys = string_keys(pa.array(values))
    assert keys.shape == (2, len(values))
    assert (keys[:, 3] == keys[:, 5]).all() and (keys[:, 7] == keys[:, 8]).all() and (keys[:, 9] == keys[:, 10]).all()
    distinct = {v: tuple(keys[:, i].tolist()) for i, v in enumerate(values) if v}
    assert len(set(distinct.values())) == len(distinct)
    fixed = pa.array([hashlib.sha256(str(i).encode()).hexdigest() for i in range(50)])  # one width: 8 bytes at a time
    assert np.array_equal(string_keys(fixed.slice(7)), string_keys(fixed)[:, 7:])
    assert len({tuple(k) for k in string_keys(fixed).T.tolist()}) == 50


@pytest.mark.parametrize("case", ["null", "not-parquet"])
def test_unreadable_labels_keep_their_messages(case, tmp_path, capsys):
    labels = tmp_path / "labels.parquet"
    if case == "null":
        pq.write_table(pa.table({"uid": ["a", "b"], "attribute": ["red", None], "object": ["fox", "fox"]}), labels)
    else:
        labels.write_text("uid,attribute,object\na,red,fox\n")
    assert select_main([str(labels), "--size", "1", "--nmi", "0.1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    message = {"null": f"{labels} has empty (null) uid, attribute or object values",
               "not-parquet": f"cannot read {labels} as parquet: "}[case]
    assert err.count("\n") == 1 and message in err


MEASURE = """
import sys
from pathlib import Path
import pandas  # noqa: F401  (pyarrow imports it on first to_numpy: an import, part of the baseline)
from data_filters.dedupe import load_selection_pool
from data_filters.select import pair_counts
from data_filters.subset_files import pick_rows

def rss(field):
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))

base = rss("VmRSS:")
(uids, a, o, attributes, objects), keys, info = load_selection_pool(sys.argv[1])
counts = pair_counts(a, o, len(attributes), len(objects))
pick_rows(uids, a, o, counts // 2, seed=0)
print(rss("VmHWM:") - base)
"""


def _labels_file(path, n: int) -> None:
    """n labelled captions as `aotrain filter label` writes them: 12-digit keys (unsorted), 100 x 200 names,
    sha256 hex image hashes of which about 40% repeat another row's."""
    rng = np.random.default_rng(0)
    uids = pa.array(np.char.zfill(rng.permutation(n).astype("U12"), 12))
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in rng.integers(0, int(n * 0.9), size=n)]
    words = np.array([f"word{i}" for i in range(300)])
    pq.write_table(pa.table({"uid": uids, "attribute": pa.array(words[rng.integers(0, 100, n)]),
                             "object": pa.array(words[rng.integers(100, 300, n)]),
                             "caption_hash": rng.integers(0, 2**62, n), "template_hash": rng.integers(0, 2**62, n),
                             "image_hash": pa.array(hashes)}), path, row_group_size=65536)


def test_a_labelled_caption_costs_under_64_bytes_of_peak_memory(tmp_path):
    """Read, rank, encode, dedupe and pick rows in a fresh process, at two pool sizes: the growth of its
    peak RSS per added labelled caption (what a 160M-caption pool pays per caption; fixed costs cancel)."""
    peaks = {}
    for n in (250_000, 1_000_000):
        _labels_file(tmp_path / f"{n}.parquet", n)
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(MEASURE), str(tmp_path / f"{n}.parquet")],
                             capture_output=True, text=True, check=True)
        peaks[n] = int(out.stdout.split()[-1])
    per_caption = (peaks[1_000_000] - peaks[250_000]) / 750_000
    print(f"peak RSS per labelled caption: {per_caption:.1f} bytes ({peaks})")
    assert per_caption < 64
