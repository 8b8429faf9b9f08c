"""What a pool holds and where its captions, uids and shards are: the one reader every command uses.

    python -m data_filters.pools /data/cc12m      # prints what it found, e.g.
    img2dataset output: 1,243 shards; captions from their .parquet (status "success" rows); uid = key

Kinds of pool folder (a list of files is read file by file, each by its format):

    img2dataset   NNNNN.tar + NNNNN.parquet (+ NNNNN_stats.json) per shard. Captions are read once,
                  from the parquet (one row per URL: only "success" rows are samples; the rest are
                  counted as not downloaded); uid = img2dataset's `key`, which is also the sample's
                  name in the tar and its json "key".
    datacomp      the same layout whose parquet has a `uid` column (DataComp's pools): uid = `uid`,
                  found in each sample's json as well.
    webdataset    .tar shards only: captions from each sample's .txt; uid = the json's "uid", else the key.
    tables        parquet / arrow / CSV / TSV caption files: uid = a `uid` column, else `key`, else
                  "<file name>:<row>" (no shards: `filter table-shards` writes them).
    huggingface   a `datasets` save_to_disk folder (state.json + data-*.arrow; a DatasetDict's splits too).

A shard without a same-named .parquet beside it has its captions read from the tar, so a half-
described folder is still read once and whole; a table beside shards named like none of them (a URL
list, another tool's metadata) is not read, and the description names it. --uid-column /
--uid-field override the uid.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from data_filters.samples import check_shard_file, read_shard

TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow",
                  ".ipc": "arrow", ".csv": "csv", ".tsv": "tsv"}
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# The uid a table names, in order of preference: DataComp's uid, then img2dataset's key.
UID_COLUMNS = ("uid", "key")
# Written beside resharded shards (data_filters/reshard.py): a map of keys, not captions.
NOT_CAPTIONS = {"key_map.parquet"}


def file_format(path: Path) -> str | None:
    """'shard', 'parquet', 'arrow', 'csv', 'tsv', or None for a file no command reads."""
    name = path.name.lower()
    if name.endswith(SHARD_SUFFIXES):
        return "shard"
    return TABLE_SUFFIXES.get(path.suffix.lower())


def _stem(path: Path) -> Path:
    name = path.name
    for suffix in SHARD_SUFFIXES:
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    return path.with_suffix("")


@dataclass(frozen=True)
class Pool:
    """A pool's files. `caption_files`: where captions are read (each caption once); `shards`: the
    webdataset tars that hold the samples; `shard_uid_field`: how a uid is found in a shard sample
    (a json field, or "__key__" for the sample's name)."""
    kind: str
    root: str
    caption_files: tuple[Path, ...]
    shards: tuple[Path, ...]
    shard_uid_field: str
    uid_column: str | None = None  # an override (--uid-column); None: each file's default
    ignored: tuple[Path, ...] = ()  # tables beside the shards named like none of them (not read)

    def describe(self) -> str:
        """One line saying what was found, e.g. for the commands to print."""
        found = self._found()
        if self.ignored:
            names = ", ".join(f.name for f in self.ignored[:3]) + (", ..." if len(self.ignored) > 3 else "")
            found += f"; not read: {len(self.ignored)} table(s) named like no shard ({names})"
        return found

    def _found(self) -> str:
        tables = [f for f in self.caption_files if file_format(f) != "shard"]
        from_tars = len(self.caption_files) - len(tables)
        n = f"{len(self.shards):,} shard{'s' if len(self.shards) != 1 else ''}"
        uid = self.uid_column or {"img2dataset": "key", "datacomp": "uid"}.get(self.kind)
        uid_words = f"; uid = {uid}" if uid else ""
        if self.kind in ("img2dataset", "datacomp"):
            what = f"{self.kind} output: {n}; captions from their .parquet (status \"success\" rows)"
            if from_tars:
                what += f", and from the .txt of {from_tars} shard(s) without one"
            return what + uid_words
        if self.kind == "webdataset":
            uid_words = uid_words or ('; uid = json "uid"' if self.shard_uid_field == "uid" else "; uid = sample key")
            return f"webdataset shards: {n}; captions from each sample's .txt" + uid_words
        if self.kind == "huggingface":
            return f"Hugging Face dataset (save_to_disk): {len(tables)} .arrow file(s)" + uid_words
        parts = [f"{len(tables)} caption table(s)"] if tables else []
        if from_tars:
            parts.append(f"{from_tars} webdataset shard(s)")
        return f"{' and '.join(parts)}" + uid_words


def _tables_and_shards(folder: Path) -> tuple[list[Path], list[Path]]:
    """The folder's own files; only when it has none, those of its subfolders (a dataset kept in
    split folders). Not both: DataComp's metadata/ next to shards/ would be read twice."""
    def readable(f: Path) -> bool:
        return f.is_file() and file_format(f) is not None and f.name not in NOT_CAPTIONS

    files = sorted(f for f in folder.iterdir() if readable(f))
    if not files:
        files = sorted(f for f in folder.rglob("*") if readable(f))
    return ([f for f in files if file_format(f) != "shard"], [f for f in files if file_format(f) == "shard"])


def _huggingface_files(folder: Path) -> list[Path] | None:
    """The .arrow files of a `datasets` save_to_disk folder (a Dataset or a DatasetDict), else None."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        return [f for split in splits for f in (_huggingface_files(folder / split) or [])]
    state = folder / "state.json"
    if not state.is_file():
        return None
    names = [d["filename"] for d in json.loads(state.read_text()).get("_data_files", [])]
    return [folder / n for n in names]


def _has_column(table: Path, column: str) -> bool:
    import pyarrow.parquet as pq

    try:
        return column in pq.read_schema(table).names
    except Exception:  # unreadable: the caption reader reports it with the file's name
        return False


def _shard_uid_field(shards: list[Path], tables: list[Path]) -> str:
    """"uid" when the samples carry one (DataComp, the toy world), else the sample key."""
    if tables:
        return "uid" if _has_column(tables[0], "uid") else "__key__"
    for shard in shards[:1]:
        try:
            for _, members in read_shard(shard, images=False):
                return "uid" if "uid" in json.loads(members.get("json", b"{}") or b"{}") else "__key__"
        except ValueError:
            return "__key__"
    return "__key__"


def _open_folder(folder: Path, uid_column: str | None) -> Pool:
    hf = _huggingface_files(folder)
    if hf is not None:
        return Pool("huggingface", str(folder), tuple(hf), (), "__key__", uid_column)
    tables, shards = _tables_and_shards(folder)
    if not tables and not shards:
        raise ValueError(f"no caption files (.parquet, .arrow, .csv, .tsv, .tar) under {folder}")
    if not shards:
        return Pool("tables", str(folder), tuple(tables), (), "__key__", uid_column)
    # img2dataset/DataComp: each shard's captions are in the table of the same name; read them from
    # there only (no image bytes to skip), and a shard without a table from its .txt members.
    by_stem = {_stem(t): t for t in tables if file_format(t) == "parquet"}
    described = [by_stem[_stem(s)] for s in shards if _stem(s) in by_stem]
    captions = sorted(described + [s for s in shards if _stem(s) not in by_stem])
    # A table beside shards but named like none of them (a URL list, a metadata dump) would count
    # captions the shards already hold: it is left out, and describe() names it.
    ignored = tuple(t for t in tables if t not in set(described))
    field = uid_column or _shard_uid_field(shards, described)
    kind = ("datacomp" if _has_column(described[0], "uid") else "img2dataset") if described else "webdataset"
    return Pool(kind, str(folder), tuple(captions), tuple(shards), field, uid_column, ignored)


def open_pool(sources, uid_column: str | None = None) -> Pool:
    """The pool in `sources`: one folder (recognised as above) or files/folders read each by its format.

    FileNotFoundError for a missing path; ValueError for an unsupported file or a folder with nothing to read.
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    if not paths:
        raise ValueError("no caption source given")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"caption source not found: {p}")
    if len(paths) == 1 and paths[0].is_dir():
        return _open_folder(paths[0], uid_column)
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(_open_folder(p, uid_column).caption_files)
        elif not file_format(p):
            raise ValueError(f"{p}: unsupported file type; use .parquet, .arrow, .csv, .tsv or .tar")
        else:
            files.append(p)
    shards = [f for f in files if file_format(f) == "shard"]
    tables = [f for f in files if file_format(f) != "shard"]
    kind = "webdataset" if shards and not tables else "tables"
    return Pool(kind, ", ".join(map(str, paths)), tuple(files), tuple(shards),
                uid_column or _shard_uid_field(shards, []), uid_column)


def pool_shards(pool) -> list[Path]:
    """The webdataset shards of a pool folder (sorted), each checked cheaply (first block only; a shard
    damaged further in is counted while it is read). ValueError/FileNotFoundError with what to do."""
    pool = Path(pool)
    if pool.exists() and not pool.is_dir():
        raise ValueError(f"{pool} is a file, not a folder: give the folder that holds the pool's .tar shards")
    if not pool.is_dir():
        raise FileNotFoundError(f"pool folder not found: {pool} (a folder of webdataset .tar shards)")
    try:
        found = open_pool(pool).shards
    except ValueError:  # nothing readable at all: the message below says what is wanted
        found = ()
    shards = [s for s in found if s.name.endswith(".tar")]  # training reads uncompressed tars
    if not shards:
        raise ValueError(f"no .tar shards in {pool}: give an img2dataset or DataComp output folder "
                         "(a table of captions with images: `aotrain filter table-shards` makes shards)")
    broken = [(s.name, why) for s in shards if (why := check_shard_file(s))]
    if broken:
        named = "; ".join(f"{name}: {why}" for name, why in broken[:5])
        more = f" (and {len(broken) - 5} more)" if len(broken) > 5 else ""
        raise ValueError(f"{len(broken)} of {len(shards)} shards in {pool} cannot be used: {named}{more}; "
                         "remove or re-download them")
    return shards


def say(pool: Pool) -> None:
    """Print what was found (the first line of a filter command's report)."""
    print(f"reading {pool.describe()}", flush=True)


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["."]:
        print(open_pool(arg).describe())
