"""PairCounts statistics, merging, caption sources and the `filter stats` CLI.

    .venv/bin/python -m pytest tests/test_counts.py -q
"""
from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.metrics import normalized_mutual_info_score

from data_filters.counts import PairCounts, count_captions, count_files
from data_filters.files import add_tar_member
from data_filters.parse import CaptionParser
from data_filters.sources import iter_captions
from data_filters.stats_cli import main
from data_filters.vocab import Vocabulary

ATTRS, OBJS = ["red", "blue", "green", "small"], ["fox", "ball", "car"]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "vocab.yaml"
    path.write_text(f"attributes: {{colour: [red, blue, green], size: [small]}}\nobjects: {OBJS}\n")
    return path


def random_captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        a = ATTRS[rng.integers(4)]
        o = OBJS[rng.integers(3) if rng.random() < 0.5 else ATTRS.index(a) % 3]  # half coupled to a
        if kind < 0.6:
            out.append(f"a photo of a {a} {o} outside")
        elif kind < 0.8:
            out.append(f"a {a} {o} and a blue car")
        else:
            out.append("nothing to see here")
    return out


def test_nmi_matches_sklearn(vocab_file):
    vocab = Vocabulary.from_file(vocab_file)
    parser = CaptionParser(vocab)
    captions = random_captions(2000)
    counts = count_captions(captions, parser)
    labels = [parser.label(c) for c in captions]
    labels = [lab for lab in labels if lab is not None]
    assert counts.n_labelled == len(labels) > 0 and counts.n_multi_pair > 0
    for norm in ("arithmetic", "geometric", "min", "max"):
        expected = normalized_mutual_info_score([a for a, _ in labels], [o for _, o in labels], average_method=norm)
        assert abs(counts.stats(norm)["nmi"] - expected) < 1e-6
    s = counts.stats()
    assert s["n_captions"] == 2000 and s["distinct_pairs"] == len(set(labels))
    per = s["attributes_per_object"]["per_object"]
    assert per == {o: len({a for a, oo in set(labels) if oo == o}) for o in per}


def test_merge_and_json_roundtrip(vocab_file):
    parser = CaptionParser(Vocabulary.from_file(vocab_file))
    captions = random_captions(500, seed=1)
    whole = count_captions(captions, parser)
    merged = count_captions(captions[:200], parser).merge(count_captions(captions[200:], parser))
    assert merged == whole
    assert PairCounts.from_json(whole.to_json()) == whole
    a, o, table = whole.table()
    assert table.sum() == whole.n_labelled and a == [x for x in ATTRS if x in a]


def test_no_labelled_captions_gives_none():
    s = PairCounts().stats()
    assert s["nmi"] is None and s["n_captions"] == 0


ROWS = [("u0", "a red fox"), ("u1", None), ("u2", ""), ("u3", "a small blue ball"), ("u4", "plain text")]


def write_sources(folder):
    """The same rows as parquet, arrow, csv, tsv and a webdataset shard; returns the paths."""
    table = pa.table({"key": [u for u, _ in ROWS], "text": [c for _, c in ROWS]})
    paths = {fmt: folder / f"rows.{fmt}" for fmt in ("parquet", "arrow", "csv", "tsv", "tar")}
    paths["arrow-stream"] = folder / "stream.arrow"  # the IPC stream format HF datasets write
    with pa.ipc.new_stream(paths["arrow-stream"], table.schema) as writer:
        writer.write_table(table)
    pq.write_table(table, paths["parquet"])
    feather.write_feather(table, paths["arrow"])
    pacsv.write_csv(table, paths["csv"])
    pacsv.write_csv(table, paths["tsv"], pacsv.WriteOptions(delimiter="\t"))
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, format="PNG")
    with tarfile.open(paths["tar"], "w") as tar:
        for i, (uid, cap) in enumerate(ROWS):
            # a training shard's sample: an image and its caption (data_filters/samples.py's rule)
            members = {"png": png.getvalue(), "json": json.dumps({"key": uid}).encode()}
            if cap is not None:
                members["txt"] = cap.encode()
            for ext, data in members.items():
                add_tar_member(tar, f"{i:04d}.{ext}", data)
    return paths


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "arrow-stream", "csv", "tsv", "tar"])
def test_sources(tmp_path, fmt):
    path = write_sources(tmp_path)[fmt]
    stream = iter_captions(path, uid_column="key", caption_column="text")
    assert list(stream) == [("u0", "a red fox"), ("u3", "a small blue ball"), ("u4", "plain text")]
    assert stream.malformed == 2
    if fmt != "tar":
        with pytest.raises(ValueError, match="available columns: key, text"):
            list(iter_captions(path, caption_column="caption"))


def test_csv_bad_rows_counted(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"uid,caption\na,a red fox\nb,\xff\xfe\nc,too,many\nd,\"quoted, comma\"\n")
    stream = iter_captions(path)
    assert list(stream) == [("a", "a red fox"), ("d", "quoted, comma")] and stream.malformed == 2


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        iter_captions("/no/such/file.parquet")


def test_count_files_parallel(tmp_path, vocab_file):
    paths = write_sources(tmp_path)
    files = [paths["parquet"], paths["csv"], paths["tar"]]
    one = count_files(files, str(vocab_file), workers=1, uid_column="key", caption_column="text")
    two = count_files(files, str(vocab_file), workers=2, uid_column="key", caption_column="text")
    assert one == two and one.n_captions == 9 and one.n_malformed == 6 and one.joint[("red", "fox")] == 3


def test_cli_writes_outputs(tmp_path, vocab_file, capsys):
    paths = write_sources(tmp_path)
    out = tmp_path / "out"
    rc = main([str(paths["parquet"]), str(paths["tar"]), "--vocab", str(vocab_file),
               "--caption-column", "text", "--uid-column", "key", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "NMI (arithmetic)" in text and "red" in text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_captions"] == 6 and stats["n_malformed"] == 4 and stats["n_labelled"] == 2 and stats["n_multi_pair"] == 2
    rows = list(csv.reader((out / "joint_counts.csv").open()))
    assert rows[0] == ["attribute", "object", "count"] and ["red", "fox", "2"] in rows
    assert sorted(p.name for p in out.iterdir()) == ["joint_counts.csv", "stats.json"]


@pytest.mark.parametrize("args, message", [
    (["/no/such.parquet"], "not found"),
    (["{parquet}", "--caption-column", "nope"], "available columns"),
    (["{empty}"], "no captions found"),
    (["{parquet}", "--vocab", "nonsense"], "unknown vocabulary"),
])
def test_cli_bad_inputs(tmp_path, capsys, args, message):
    paths = write_sources(tmp_path)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"caption": pa.array([], pa.string())}), empty)
    out = tmp_path / "out"
    args = [a.format(parquet=paths["parquet"], empty=empty) for a in args]
    rc = main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_help(capsys):
    assert main(["--help"]) == 0
    assert "--vocab" in capsys.readouterr().out


def test_module_entry_point():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "data_filters.stats_cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "aotrain filter stats" in proc.stdout
