"""Stream (uid, caption) rows from parquet, arrow, CSV/TSV files and webdataset tar shards.

    python -c "from data_filters.sources import iter_captions; s = iter_captions('pool/'); print(sum(1 for _ in s), s.malformed)"

Formats by file name: .parquet/.pq, .arrow/.feather/.ipc, .csv, .tsv, .tar/.tar.gz/.tgz.
A folder is read as data_filters/pools.py recognises it (an img2dataset or DataComp folder's
captions from its .parquet files only, so each caption is read once).
uid: `uid_column` if given; otherwise a "uid" column/json field when present, then (tables) a "key"
column (img2dataset's), else "<file name>:<row>" (tables) or the sample key (shards;
uid_column="__key__" forces the key). With `with_hashes=True` the stream yields (uid, caption,
image hash): a table's "sha256" column (img2dataset's, of the downloaded image) or the sha256 of a
shard sample's image bytes; None when the table has no such column.
caption: `caption_column` (tables, default "caption"); shards use the .txt member only, by the
sample rule the training stream applies (data_filters/samples.py: a sample without a readable image
or caption is counted in `.skipped` by kind). Null, empty or undecodable captions are counted in
`.malformed`, not yielded; truncated shards are listed in `.truncated` after the samples before the damage.
A table with a "status" column (img2dataset's metadata: one row per URL) yields only its "success"
rows; the rest are counted in `.not_downloaded`. CSV/TSV files are read one row per line: a line
whose quote is left open is one `.malformed` row, never merged with the lines after it.
"""
from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from data_filters.pools import UID_COLUMNS, Pool, file_format, open_pool
from data_filters.samples import image_key, read_caption, read_shard, sample_problem

BATCH_ROWS = 65536


def expand_paths(path_or_paths, uid_column: str | None = None) -> list[Path]:
    """The files to read captions from (data_filters/pools.py decides: a pool folder's captions once);
    missing paths -> FileNotFoundError, unknown suffix or nothing to read -> ValueError."""
    return list(open_pool(path_or_paths, uid_column).caption_files)


class CaptionStream:
    """Iterable of (uid, caption) — or (uid, caption, image hash) with `with_hashes` — over a pool or
    files; `.malformed`, `.not_downloaded` and `.rows` count what was read so far."""

    def __init__(self, path_or_paths, uid_column: str | None = None, caption_column: str = "caption",
                 with_hashes: bool = False, row_groups: tuple[int, ...] | None = None):
        pool = path_or_paths if isinstance(path_or_paths, Pool) else open_pool(path_or_paths, uid_column)
        self.pool, self.files = pool, list(pool.caption_files)
        # Only these row groups of a single parquet file (a part, see caption_parts); uids stay the file's.
        self.row_groups = row_groups
        self.uid_column, self.caption_column = uid_column, caption_column
        self.with_hashes = with_hashes
        self.malformed = 0
        self.skipped = Counter()  # shards: samples that break the sample rule, by kind (samples.KINDS)
        self.truncated: list[str] = []  # shards that ended inside a member (their samples before it are read)
        self.not_downloaded = 0
        self.rows = 0

    def __iter__(self):
        for f in self.files:
            fmt = file_format(f)
            yield from self._shard(f) if fmt == "shard" else self._table(f, fmt)

    def _clean(self, value):
        """Caption text, or None (counted as malformed) for null / empty / undecodable values."""
        self.rows += 1
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                value = None
        if not isinstance(value, str) or not value.strip():
            self.malformed += 1
            return None
        return value

    # ------------------------------------------------------------ tables
    def table_batches(self, path: Path, fmt: str):
        """(column names, iterator of record batches) for one table file."""
        if fmt == "parquet":
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            return names, lambda cols: pf.iter_batches(batch_size=BATCH_ROWS, columns=cols, row_groups=self.row_groups)
        if fmt == "arrow":
            source = pa.memory_map(str(path))
            try:
                reader = pa.ipc.open_file(source)
                batches = lambda cols: (reader.get_batch(i).select(cols) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:  # HF datasets write the streaming IPC format
                source.seek(0)
                reader = pa.ipc.open_stream(source)
                batches = lambda cols: (b.select(cols) for b in reader)
            return reader.schema.names, batches
        # CSV/TSV: one row per line (csv_rows), caption kept as bytes so one undecodable row is
        # counted, not fatal; lines that do not parse are skipped and counted as malformed.
        delimiter = "\t" if fmt == "tsv" else ","
        names = csv_header(path, delimiter)
        def bad_line():
            self.malformed += 1
        def batches(cols):
            return csv_batches(path, delimiter, names, cols, self.caption_column, bad_line)
        return names, batches

    def _table(self, path: Path, fmt: str):
        try:
            names, batches = self.table_batches(path, fmt)
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{path}: cannot read as {fmt}: {e}") from None
        cap = self.caption_column
        uid = self.uid_column or next((c for c in UID_COLUMNS if c in names), None)
        for col in (cap, uid):
            if col is not None and col not in names:
                raise ValueError(f"{path}: no column {col!r}; available columns: {', '.join(names)}")
        cols = [cap] if uid is None or uid == cap else [cap, uid]
        digest = "sha256" if self.with_hashes and "sha256" in names else None
        if digest:
            cols.append(digest)
        # img2dataset writes a row per URL with its download "status"; only "success" rows have an
        # image in the shards, so the others are not samples (counted in `.not_downloaded`).
        status = "status" if "status" in names else None
        if status:
            cols.append(status)
        row = 0  # row number in the file: the uid of a table without a uid column
        if self.row_groups:
            meta = pq.ParquetFile(path).metadata
            row = sum(meta.row_group(g).num_rows for g in range(self.row_groups[0]))
        for batch in batches(cols):
            captions = batch.column(0).to_pylist()
            uids = batch.column(cols.index(uid)).to_pylist() if uid else range(row, row + len(captions))
            ok = batch.column(cols.index(status)).to_pylist() if status else [True] * len(captions)
            hashes = batch.column(cols.index(digest)).to_pylist() if digest else [None] * len(captions)
            for u, c, fetched, h in zip(uids, captions, ok, hashes):
                if fetched is not True and fetched != "success":
                    self.not_downloaded += 1
                    continue
                c = self._clean(c)
                if c is None:
                    continue
                if u is None:  # a null uid cannot be joined back to its sample
                    self.malformed += 1
                    continue
                u = str(u) if uid else f"{path.name}:{u}"
                yield (u, c, h or None) if self.with_hashes else (u, c)
            row += len(captions)

    # ------------------------------------------------------------ webdataset shards
    def _shard(self, path: Path):
        """Usable samples only, by data_filters/samples.py's rule (the training stream's): caption from
        the .txt, an image whose header PIL reads; the rest counted in `.skipped` (and `.malformed`)."""
        first = True
        for key, members in read_shard(path, on_truncated=lambda shard, _why: self.truncated.append(shard)):
            self.rows += 1
            problem = sample_problem(members)
            if problem is not None:
                self.skipped[problem] += 1
                self.malformed += 1
                continue
            meta = {}
            if "json" in members:
                try:
                    meta = json.loads(members["json"])
                except (ValueError, UnicodeDecodeError):
                    meta = {}
            if first and self.uid_column not in (None, "__key__") and self.uid_column not in meta:
                raise ValueError(f"{path}: no json field {self.uid_column!r}; available: {', '.join(meta) or 'none (no .json)'}")
            first = False
            if self.uid_column == "__key__":
                uid = key
            elif self.uid_column:
                uid = meta.get(self.uid_column)
                if uid is None:
                    self.malformed += 1
                    continue
            else:
                uid = meta.get("uid", key)
            if self.with_hashes:
                yield str(uid), read_caption(members), hashlib.sha256(members[image_key(members)]).hexdigest()
            else:
                yield str(uid), read_caption(members)


# ------------------------------------------------------------ CSV / TSV, one row per line
# Caption tables hold one caption per line. A quote left open (`1,"a red fox`) would otherwise make a
# CSV parser read on, across lines, to the next quote and glue the rows between into one caption
# (pyarrow does so whatever newlines_in_values says). So each line is parsed on its own: a line
# whose quotes do not close, or whose field count differs from the header's, is one malformed row,
# and the next line is a row again. A quoted caption spanning lines is counted as malformed too.

def _parse_line(text: str, delimiter: str) -> list[str] | None:
    if '"' not in text:  # the common case, and exactly what the csv module would return
        return text.split(delimiter)
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error:  # an unterminated quote, or text after a closing quote
        return None


def _lines(path: Path):
    """(line number, text) of each non-empty line; bytes that are not UTF-8 kept as surrogates."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            text = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            if text.strip():
                yield number, text


def csv_header(path: Path, delimiter: str) -> list[str]:
    """The column names of a CSV/TSV file (its first non-empty line); ValueError for an unreadable one."""
    for number, text in _lines(path):
        fields = _parse_line(text.lstrip("\ufeff"), delimiter)
        if fields is None or not all(fields):
            raise ValueError(f"{path}: cannot read the header (line {number}): {text[:200]!r}")
        return [_text(f) for f in fields]
    raise ValueError(f"{path}: empty file (no header line)")


def _text(field: str) -> str:
    return field.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def csv_batches(path: Path, delimiter: str, names: list[str], cols: list[str], caption_column: str,
                on_malformed) -> Iterator[pa.RecordBatch]:
    """Record batches of `cols` (caption as binary, the rest as strings), one row per parsed line
    after the header; `on_malformed()` is called once per line that is not a row."""
    where = [names.index(c) for c in cols]
    types = [pa.binary() if c == caption_column else pa.string() for c in cols]
    columns: list[list] = [[] for _ in cols]
    lines = _lines(path)
    next(lines, None)  # the header
    for _, text in lines:
        fields = _parse_line(text, delimiter)
        if fields is None or len(fields) != len(names):
            on_malformed()
            continue
        for column, i, kind in zip(columns, where, types):
            value = fields[i]
            column.append(value.encode("utf-8", "surrogateescape") if kind == pa.binary() else _text(value))
        if len(columns[0]) == BATCH_ROWS:
            yield pa.record_batch([pa.array(c, t) for c, t in zip(columns, types)], names=cols)
            columns = [[] for _ in cols]
    if columns[0]:
        yield pa.record_batch([pa.array(c, t) for c, t in zip(columns, types)], names=cols)


def caption_parts(pool: Pool, rows_per_part: int = 1 << 18) -> list[tuple[Path, tuple[int, ...] | None]]:
    """The pool's caption files cut into parts that processes can read on their own, in reading order:
    (file, None) for a whole file, (parquet file, row groups) for runs of about `rows_per_part` rows."""
    parts: list[tuple[Path, tuple[int, ...] | None]] = []
    for path in pool.caption_files:
        try:
            meta = pq.ParquetFile(path).metadata if file_format(path) == "parquet" else None
        except (pa.ArrowInvalid, OSError):
            meta = None  # unreadable: a whole-file part, whose reading says what is wrong
        if meta is None or meta.num_row_groups < 2 or meta.num_rows <= rows_per_part:
            parts.append((path, None))
            continue
        run, rows = [], 0
        for g in range(meta.num_row_groups):
            run.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= rows_per_part or g == meta.num_row_groups - 1:
                parts.append((path, tuple(run)))
                run, rows = [], 0
    return parts


def iter_captions(path_or_paths, uid_column: str | None = None, caption_column: str = "caption",
                  with_hashes: bool = False) -> CaptionStream:
    """(uid, caption) pairs from a pool, files or directories; the stream counts `.malformed` rows."""
    return CaptionStream(path_or_paths, uid_column=uid_column, caption_column=caption_column,
                         with_hashes=with_hashes)


def add_caption_arguments(parser) -> None:
    """The argparse arguments every caption-reading command shares: SOURCE..., uid/caption columns, window."""
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="a pool folder (img2dataset, DataComp, webdataset, Hugging Face save_to_disk) "
                             "or caption files (.parquet .arrow .csv .tsv .tar)")
    parser.add_argument("--uid-column", default=None, metavar="C",
                        help="uid column / shard json field (default: 'uid' if present, then a table's 'key' "
                             "(img2dataset), else row or sample key)")
    parser.add_argument("--caption-column", default="caption", metavar="C",
                        help="caption column (default: caption; shards use their .txt)")
    parser.add_argument("--window", type=int, default=2, metavar="K",
                        help="max words between attribute and object (default: 2)")
