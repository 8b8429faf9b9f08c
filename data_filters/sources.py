"""Stream (uid, caption) rows from parquet, arrow, CSV/TSV files and webdataset tar shards.

    python -c "from data_filters.sources import iter_captions; s = iter_captions('pool/'); print(sum(1 for _ in s), s.malformed)"

Formats by file name: .parquet/.pq, .arrow/.feather/.ipc, .csv, .tsv, .tar/.tar.gz/.tgz.
A directory stands for every supported file under it (sorted, recursive).
uid: `uid_column` if given; otherwise a "uid" column/json field when present, else
"<file name>:<row>" (tables) or the sample key (shards; uid_column="__key__" forces the key).
caption: `caption_column` (tables, default "caption"); shards use the .txt member, falling back
to that json field. Null, empty or undecodable captions are counted in `.malformed`, not yielded.
A table with a "status" column (img2dataset's metadata: one row per URL) yields only its "success"
rows; the rest are counted in `.not_downloaded`.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow",
                  ".ipc": "arrow", ".csv": "csv", ".tsv": "tsv"}
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
BATCH_ROWS = 65536


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(SHARD_SUFFIXES):
        return "shard"
    return TABLE_SUFFIXES.get(path.suffix.lower())


def expand_paths(path_or_paths) -> list[Path]:
    """Files to read: directories expanded, missing paths -> FileNotFoundError, unknown suffix -> ValueError."""
    paths = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and file_format(f))
            if not found:
                raise ValueError(f"no caption files (.parquet, .arrow, .csv, .tsv, .tar) under {p}")
            files.extend(found)
        elif p.is_file():
            if not file_format(p):
                raise ValueError(f"{p}: unsupported file type; use .parquet, .arrow, .csv, .tsv or .tar")
            files.append(p)
        else:
            raise FileNotFoundError(f"caption source not found: {p}")
    return files


class CaptionStream:
    """Iterable of (uid, caption) over files; `.malformed` and `.rows` count what was read so far."""

    def __init__(self, path_or_paths, uid_column: str | None = None, caption_column: str = "caption"):
        self.files = expand_paths(path_or_paths)
        self.uid_column, self.caption_column = uid_column, caption_column
        self.malformed = 0
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
            return names, lambda cols: pf.iter_batches(batch_size=BATCH_ROWS, columns=cols)
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
        # CSV/TSV: caption read as bytes so one undecodable row is counted, not fatal;
        # rows with the wrong number of fields are skipped and counted as malformed.
        def bad_row(_row):
            self.malformed += 1
            return "skip"
        parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", invalid_row_handler=bad_row,
                                   newlines_in_values=True)
        # the header read parses a first block too: skip bad rows there without counting them twice
        head_parse = pacsv.ParseOptions(delimiter=parse.delimiter, invalid_row_handler=lambda _r: "skip",
                                        newlines_in_values=True)
        names = pacsv.open_csv(path, parse_options=head_parse).schema.names
        def batches(cols):
            types = {c: pa.string() for c in cols}
            types[self.caption_column] = pa.binary()
            conv = pacsv.ConvertOptions(include_columns=cols, column_types=types)
            return pacsv.open_csv(path, parse_options=parse, convert_options=conv)
        return names, batches

    def _table(self, path: Path, fmt: str):
        try:
            names, batches = self.table_batches(path, fmt)
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{path}: cannot read as {fmt}: {e}") from None
        cap = self.caption_column
        uid = self.uid_column or ("uid" if "uid" in names else None)
        for col in (cap, uid):
            if col is not None and col not in names:
                raise ValueError(f"{path}: no column {col!r}; available columns: {', '.join(names)}")
        cols = [cap] if uid is None or uid == cap else [cap, uid]
        # img2dataset writes a row per URL with its download "status"; only "success" rows have an
        # image in the shards, so the others are not samples (counted in `.not_downloaded`).
        status = "status" if "status" in names else None
        if status:
            cols.append(status)
        row = 0
        for batch in batches(cols):
            captions = batch.column(0).to_pylist()
            uids = batch.column(cols.index(uid)).to_pylist() if uid else range(row, row + len(captions))
            ok = batch.column(cols.index(status)).to_pylist() if status else [True] * len(captions)
            for u, c, fetched in zip(uids, captions, ok):
                if fetched is not True and fetched != "success":
                    self.not_downloaded += 1
                    continue
                c = self._clean(c)
                if c is None:
                    continue
                if u is None:  # a null uid cannot be joined back to its sample
                    self.malformed += 1
                    continue
                yield (str(u) if uid else f"{path.name}:{u}"), c
            row += len(captions)

    # ------------------------------------------------------------ webdataset shards
    def _shard(self, path: Path):
        first = True
        for key, members in tar_samples(path):
            meta = {}
            if "json" in members:
                try:
                    meta = json.loads(members["json"])
                except (ValueError, UnicodeDecodeError):
                    meta = {}
            if first and self.uid_column not in (None, "__key__") and self.uid_column not in meta:
                raise ValueError(f"{path}: no json field {self.uid_column!r}; available: {', '.join(meta) or 'none (no .json)'}")
            first = False
            caption = members.get("txt", meta.get(self.caption_column))
            caption = self._clean(caption)
            if caption is None:
                continue
            if self.uid_column == "__key__":
                uid = key
            elif self.uid_column:
                uid = meta.get(self.uid_column)
                if uid is None:
                    self.malformed += 1
                    continue
            else:
                uid = meta.get("uid", key)
            yield str(uid), caption


def tar_samples(path: Path):
    """(key, {extension: bytes}) per webdataset sample; members of one sample are consecutive."""
    key, members = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                folder, _, base = info.name.rpartition("/")
                stem, dot, ext = base.partition(".")  # webdataset: key = up to the first dot
                if not dot:
                    continue
                k = f"{folder}/{stem}" if folder else stem
                if k != key and members:
                    yield key, members
                    members = {}
                key = k
                if ext in ("txt", "json"):  # images are skipped unread
                    members[ext] = tar.extractfile(info).read()
    except tarfile.ReadError as e:
        raise ValueError(f"{path}: not a readable tar shard: {e}") from None
    if members:
        yield key, members


def iter_captions(path_or_paths, uid_column: str | None = None, caption_column: str = "caption") -> CaptionStream:
    """(uid, caption) pairs from files or directories; the returned stream counts `.malformed` rows."""
    return CaptionStream(path_or_paths, uid_column=uid_column, caption_column=caption_column)


def add_caption_arguments(parser) -> None:
    """The argparse arguments every caption-reading command shares: SOURCE..., uid/caption columns, window."""
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="caption files or folders (.parquet .arrow .csv .tsv .tar)")
    parser.add_argument("--uid-column", default=None, metavar="C",
                        help="uid column / shard json field (default: 'uid' if present, else row or sample key)")
    parser.add_argument("--caption-column", default="caption", metavar="C",
                        help="caption column (default: caption; shards use their .txt)")
    parser.add_argument("--window", type=int, default=2, metavar="K",
                        help="max words between attribute and object (default: 2)")
