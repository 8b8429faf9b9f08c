"""Labelling on several processes: the same labels file as one process and as the reference parser.

    .venv/bin/python -m pytest tests/test_labelling.py -q
"""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_filters import labelling
from data_filters.diversity import TemplateMasker, caption_key
from data_filters.label import label_captions, label_main
from data_filters.parse import CaptionParser
from data_filters.vocab import Vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from parse_throughput import generate, make_words  # noqa: E402


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two parquet files: one of 6 row groups without a uid column (uids are file:row), one with 'key'."""
    folder = tmp_path_factory.mktemp("captions")
    captions = generate(11, 24_000, *make_words(Vocabulary.builtin()))
    captions[5] = None  # a malformed row
    pq.write_table(pa.table({"caption": captions[:18_000]}), folder / "a.parquet", row_group_size=3_000)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(6_000)], "caption": captions[18_000:]}),
                   folder / "b.parquet")
    return folder, captions


def reference_rows(captions) -> list[tuple]:
    """(uid, attribute, object, caption key, template key) of every labelled caption, one by one."""
    vocab = Vocabulary.builtin()
    parser, template = CaptionParser(vocab), TemplateMasker(vocab).template
    rows, singles = [], []
    for i, caption in enumerate(captions):
        pair = parser.label(caption) if caption else None
        uid = f"a.parquet:{i}" if i < 18_000 else f"k{i - 18_000}"
        if pair and None not in pair:
            rows.append((uid, *pair, caption_key(caption), caption_key(template(caption, *pair))))
        elif pair:
            singles.append((uid, *pair))
    return rows, singles


def test_two_workers_write_what_one_process_and_the_reference_write(pool, tmp_path, monkeypatch):
    folder, captions = pool
    monkeypatch.setattr(labelling, "ROWS_PER_PART", 5_000)  # a.parquet in 3 parts of 2 row groups
    one = label_captions(folder, "builtin", tmp_path / "one.parquet", workers=1, progress=False)
    two = label_captions(folder, "builtin", tmp_path / "two.parquet", workers=2, progress=False)
    assert {k: v for k, v in one.items() if k != "out"} == {k: v for k, v in two.items() if k != "out"}
    assert one["captions"] == 23_999 and one["malformed"] == 1
    tables = [pq.read_table(tmp_path / f"{name}.parquet") for name in ("one", "two")]
    assert tables[0].equals(tables[1])
    columns = ["uid", "attribute", "object", "caption_hash", "template_hash"]
    got = list(zip(*(tables[0].column(c).to_pylist() for c in columns)))
    pairs, singles = reference_rows(captions)
    assert got == pairs
    assert one["labelled"] == len(got) > 5_000
    # single-side captions (one object or one attribute named, no pair) go to the file beside it
    side = [pq.read_table(tmp_path / f"{name}.singles.parquet") for name in ("one", "two")]
    assert side[0].equals(side[1])
    assert list(zip(*(side[0].column(c).to_pylist() for c in ("uid", "attribute", "object")))) == singles
    assert one["object_only"] == sum(a is None for _, a, _ in singles) > 500
    assert one["attribute_only"] == sum(o is None for _, _, o in singles) > 500


def test_cli_workers_option(pool, tmp_path, capsys):
    folder, _ = pool
    assert label_main([str(folder), "--out", str(tmp_path / "l.parquet"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "l.parquet").exists()
    assert label_main([str(folder), "--out", str(tmp_path / "l.parquet"), "--workers", "2"]) == 0
    assert "labelled" in capsys.readouterr().out
