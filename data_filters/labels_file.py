"""Reading a labels parquet (data_filters/label.py) in bounded memory: `select` holds numbers, not strings.

    from data_filters.label import load_labels
    uids, attr_idx, obj_idx, attributes, objects = load_labels("labels.parquet")
    uids.order          # int32 [N]: sorts like the uids (their rank); no uid string stays in memory
    uids.take(rows)     # the uids of those pool rows as numpy, read from the file (at write time)

What selection keeps per labelled caption: the uid's rank (4 bytes) and the attribute and object as
int32 codes into the sorted names (8 bytes). Columns are read batch by batch; the largest moments
are ranking the uids (the uid column itself, ~16 bytes for a 12-character uid, plus 16 bytes of
Arrow's sort) and dedupe (data_filters/dedupe.py: a 17-byte image key, plus 16 bytes of sort).
Caption keys stay in the file as LabelColumn: their values are read only for the rows asked for.

The numbers are those of the old in-memory reader, byte for byte: uids sort the same (UTF-8 byte
order is code point order), take() gives the numpy dtype a whole-column read gave ("<U<longest uid>",
or int64), and names are sorted and hold only values that occur.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

LABEL_COLUMNS = ("uid", "attribute", "object")
BATCH_ROWS = 1 << 16  # rows per read: a few MB of any column (image hashes: 4 MB)


@contextmanager
def reading(path):
    """Turn pyarrow's errors on a damaged file (several types) into the one user-facing ValueError."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"cannot read {path} as parquet: {e}") from None


def check_labels(path) -> int:
    """The labels file's row count, once it is checked: present, parquet, columns uid/attribute/object,
    rows; else ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file not found: {path}")
    with reading(path):
        names = pq.read_schema(path).names
    missing = [c for c in LABEL_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(names)})")
    with reading(path):
        rows = pq.read_metadata(path).num_rows
    if rows == 0:
        raise ValueError(f"{path} has no rows: the pool is empty")
    return rows


def batches(path, columns, dictionaries=()):
    """The file's `columns` in record batches of BATCH_ROWS rows (pyarrow errors as ValueError);
    `dictionaries`: columns to read as dictionary arrays (codes per row, each name once per row group)."""
    with reading(path):
        # pre_buffer off: with it, the reader keeps every compressed page it read until it is closed
        labels = pq.ParquetFile(path, read_dictionary=list(dictionaries), pre_buffer=False)
        yield from labels.iter_batches(batch_size=BATCH_ROWS, columns=list(columns))


def _null_error(path) -> ValueError:
    return ValueError(f"{path} has empty (null) uid, attribute or object values")


def index_dtype(n: int):
    """The narrowest integer type for positions or ranks among n rows (int32 up to 2**31 rows)."""
    return np.int32 if n < 2**31 else np.int64


def read_labels(path, single_side: bool = False):
    """(uids, attr_idx, obj_idx, attributes, objects): LabelUids, int32 codes, sorted names; ValueError if unusable.
    single_side: a file of single-side rows (data_filters/singles.py): one of attribute and object
    may be null, its code -1."""
    n = check_labels(path)
    uids = _read_uids(path, n)  # first: its peak (the uid column) then meets no other column
    attr_idx, obj_idx = (np.empty(n, dtype=np.int32) for _ in range(2))
    attributes, objects = _Names(), _Names()
    start = 0
    for batch in batches(path, ("attribute", "object"), dictionaries=("attribute", "object")):
        a, o = batch.column(0), batch.column(1)
        if (a.null_count or o.null_count) and not (single_side and not pc.any(pc.and_(a.is_null(), o.is_null())).as_py()):
            raise _null_error(path)
        end = start + batch.num_rows
        attr_idx[start:end], obj_idx[start:end] = attributes.codes(a), objects.codes(o)
        start = end
    attr_idx, attributes = attributes.sorted(attr_idx)
    obj_idx, objects = objects.sorted(obj_idx)
    return uids, attr_idx, obj_idx, attributes, objects


class _Names:
    """Codes for the names of one column, batch by batch (first seen, first numbered), sorted at the end."""

    def __init__(self):
        self.code: dict[str, int] = {}

    def codes(self, column: pa.Array) -> np.ndarray:
        if not pa.types.is_dictionary(column.type):  # a column parquet could not hand over as a dictionary
            column = pc.dictionary_encode(column)
        names = column.dictionary.cast(pa.string()).to_pylist()  # a row group's distinct names, not its rows
        lookup = np.array([self.code.setdefault(name, len(self.code)) for name in names] + [-1], dtype=np.int32)
        return lookup[pc.fill_null(column.indices, len(names)).to_numpy(zero_copy_only=False)]  # null: -1

    def sorted(self, codes: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(codes into the sorted names, sorted names), keeping only names some row uses; -1 stays -1."""
        names = np.array(list(self.code), dtype=object)
        named = codes if not len(codes) or codes.min() >= 0 else codes[codes >= 0]  # a copy only with nulls
        used = np.bincount(named, minlength=len(names)) > 0  # a dictionary page may list unused names
        kept = sorted(names[used].tolist())
        new = np.full(len(names) + 1, -1, dtype=np.int32)  # the last: null stays -1
        new[[self.code[name] for name in kept]] = np.arange(len(kept), dtype=np.int32)
        return new[codes], kept


# ---------------------------------------------------------------- columns read only where asked
class LabelColumn:
    """One column of a labels file standing for some of its rows; values are read only for rows asked for.

        keys = LabelColumn("labels.parquet", "caption_hash", 12_000_000)
        keys.take(np.array([5, 2, 5]))       # int64 values of file rows 5, 2, 5
        keys.select(kept).take([0])          # after dedupe: pool row 0 is file row kept[0]
    """

    def __init__(self, path, name: str, rows):
        self.path, self.name = Path(path), name
        self.rows = rows  # file row of each pool row, or (an int) all rows of the file in order

    def __len__(self) -> int:
        return self.rows if isinstance(self.rows, int) else len(self.rows)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def select(self, rows: np.ndarray) -> "LabelColumn":
        """The column standing for pool rows `rows` of this one (dedupe shares one `rows` array among columns)."""
        return LabelColumn(self.path, self.name, self.composed(rows))

    def composed(self, rows: np.ndarray) -> np.ndarray:
        """File rows of pool rows `rows`; `rows` itself (not a copy) while this column stands for the whole file."""
        return rows if isinstance(self.rows, int) else self.rows[rows]

    def take_arrow(self, rows) -> pa.Array:
        """The values of pool rows `rows` (any order, repeats allowed) as an Arrow array, one pass over the column."""
        file_rows = self.composed(np.asarray(rows, dtype=np.int64))
        wanted, back = np.unique(file_rows, return_inverse=True)  # sorted, so one forward pass finds them
        pieces, start = [], 0
        for batch in batches(self.path, [self.name]):
            lo, hi = np.searchsorted(wanted, [start, start + batch.num_rows])
            if hi > lo:
                pieces.append(batch.column(0).take(pa.array(wanted[lo:hi] - start)))
            start += batch.num_rows
        values = pa.concat_arrays(pieces) if pieces else pa.array([], pq.read_schema(self.path).field(self.name).type)
        return values.take(pa.array(back.ravel()))

    def take(self, rows) -> np.ndarray:
        """The values of pool rows `rows` as numpy (numpy arrays have the same method)."""
        return self.take_arrow(rows).to_numpy(zero_copy_only=False).astype(np.int64)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self.take(np.arange(len(self)))  # the whole column: for small pools and tests
        return values if dtype is None else values.astype(dtype)

    def __iter__(self):
        return iter(np.asarray(self).tolist())


class LabelUids(LabelColumn):
    """The uid column: `order` (ranks, in memory) sorts like the uids; take() reads the uids themselves.

    `dtype` is that of the whole column as numpy ("<U<longest uid>" or int64), so subset.npy and the
    manifest's uid_checksum do not depend on how the pool was read. `unique`: no uid repeats.
    """

    def __init__(self, path, name: str, rows, order: np.ndarray, dtype: np.dtype, unique: bool):
        super().__init__(path, name, rows)
        self.order, self.dtype, self.unique = order, dtype, unique

    def select(self, rows: np.ndarray) -> "LabelUids":
        return LabelUids(self.path, self.name, self.composed(rows), self.order[rows], self.dtype, self.unique)

    def take(self, rows) -> np.ndarray:
        values = self.take_arrow(rows)
        if self.dtype.kind != "U":
            return values.to_numpy(zero_copy_only=False).astype(self.dtype)
        out = np.empty(len(values), dtype=self.dtype)
        for start in range(0, len(values), BATCH_ROWS):  # Python strings for one batch of rows at a time
            out[start:start + BATCH_ROWS] = values.slice(start, BATCH_ROWS).to_pylist()
        return out


def _read_uids(path, n: int) -> LabelUids:
    """Rank the uid column (Arrow sort, no Python object per row) and keep only the ranks."""
    column = pa.chunked_array([batch.column(0) for batch in batches(path, ["uid"])],
                              type=pq.read_schema(path).field("uid").type)
    if column.null_count:
        raise _null_error(path)
    column, dtype = _uid_values(column)
    # Dense rank: equal uids share a rank, so the largest rank counts the distinct uids.
    rank = pc.rank(column, sort_keys="ascending", tiebreaker="dense")
    unique = pc.max(rank).as_py() == len(column)
    order = rank.to_numpy().astype(index_dtype(n))
    del column, rank
    release_arrow_memory()
    return LabelUids(path, "uid", n, order, dtype, unique)


def release_arrow_memory() -> None:
    """Hand the pages Arrow's allocator kept from freed columns back to the system: numpy allocates
    elsewhere, so until then they count in the process's memory twice."""
    pa.default_memory_pool().release_unused()


def _uid_values(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.dtype]:
    """(the uids as Arrow integers or strings, their numpy dtype): integers stay int64 (uint64 past its
    range), strings are "<U<longest>", anything else is read as its Arrow string form."""
    kind = column.type
    if pa.types.is_integer(kind):
        big = pa.types.is_uint64(kind) and pc.max(column).as_py() >= 2**63
        return column, np.dtype(np.uint64 if big else np.int64)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        column = column.cast(pa.string())
    longest = pc.max(pc.utf8_length(column)).as_py() or 1  # numpy has no "<U0"
    return column, np.dtype(f"<U{longest}")


def null_count(path, columns) -> int:
    """Nulls in `columns` of a parquet file, read batch by batch."""
    return sum(batch.column(i).null_count for batch in batches(path, columns) for i in range(len(columns)))
