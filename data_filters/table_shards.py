"""Turn a caption table whose rows point to image files into webdataset shards (img2dataset layout).

    from data_filters.table_shards import table_to_shards
    table_to_shards("captions.parquet", "shards", image_root="images/", uids=np.load("subset/subset.npy"))

Command line: `python -m data_filters.table_shards captions.parquet shards --image-root images/ --subset subset/`.

Input `table`: a .parquet/.arrow/.csv/.tsv file or a folder of them (data_filters.sources rules), or
a folder written by `datasets.Dataset.save_to_disk`. The image column holds a path (absolute, or
relative to `image_root`, default the current directory), a Hugging Face `Image()` value
({"bytes", "path"}: embedded bytes win, else the path is read) or raw image bytes.
uid: `uid_column`, else a "uid" column when present, else "<file name>:<row>", exactly as
`data_filters.sources.iter_captions` numbers rows, so uids from `aotrain filter label` on the same
table select the same rows. With `uids`, only those rows are written (table order; repeats collapse).

Output: out_dir/shard-000000.tar ... with {key}.{jpg|png|...}, {key}.txt, {key}.json ({"uid",
"caption", "source_path", "key"}) and out_dir/sizes.json ({shard file: samples}); keys are 9-digit
running indices. Rows with an empty caption, a missing image or unknown image bytes are counted and
skipped. Written to a temporary folder, then renamed into place.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from data_filters.command import run_command
from data_filters.files import add_tar_member, check_output, publish_dir, temp_dir_for
from data_filters.pools import file_format
from data_filters.sources import CaptionStream, expand_paths

PROG = "aotrain filter table-shards"
HF_MARKERS = ("state.json", "dataset_info.json")
SLICE_ROWS = 256  # rows turned into Python objects at a time: a batch may hold embedded image bytes
MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
         (b"BM", "bmp"))


# ------------------------------------------------------------ reading the table
def table_files(table) -> tuple[list[Path], int | None]:
    """(table files in row order, total rows when cheaply known); a save_to_disk folder gives its .arrow files.

        files, n = table_files("hf_dataset/")
    """
    if isinstance(table, (str, Path)) and Path(table).is_dir():
        folder = Path(table)
        if (folder / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in folder.iterdir() if p.is_dir())
            raise ValueError(f"{folder} holds a DatasetDict; pass one split folder ({', '.join(splits)})")
        if any((folder / m).is_file() for m in HF_MARKERS):
            return _hf_files(folder)
    files = expand_paths(table)
    shards = [f for f in files if file_format(f) == "shard"]
    if shards:
        raise ValueError(f"{shards[0]} is a tar shard, not a table; use `aotrain filter reshard` for shards")
    known = [pq.ParquetFile(f).metadata.num_rows if file_format(f) == "parquet" else None for f in files]
    return files, (None if None in known else sum(known))


def _hf_files(folder: Path) -> tuple[list[Path], int]:
    """The data files of a save_to_disk folder, in the order load_from_disk reads them."""
    import datasets  # heavy import, needed only for this input kind

    ds = datasets.load_from_disk(str(folder))
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(f"{folder}: expected a datasets.Dataset, got {type(ds).__name__}")
    # save_to_disk flattens any index mapping, so the files' rows are the dataset's rows in order
    return [Path(f["filename"]) for f in ds.cache_files], len(ds)


def iter_rows(stream: CaptionStream, path: Path, image_column: str, uid_column: str | None):
    """(uid or None, raw caption, raw image value) per row of one table file.

    Reads through sources' own batch reader so that row numbers (hence "<file>:<row>" uids, even for
    CSV rows it drops as malformed) are exactly those of iter_captions.
    """
    fmt = file_format(path)
    try:
        names, batches = stream.table_batches(path, fmt)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: cannot read as {fmt}: {e}") from None
    cap = stream.caption_column
    uid = uid_column or ("uid" if "uid" in names else None)
    for col in (cap, image_column, uid):
        if col is not None and col not in names:
            raise ValueError(f"{path}: no column {col!r}; available columns: {', '.join(names)}")
    cols = list(dict.fromkeys(c for c in (cap, image_column, uid) if c is not None))
    row = 0
    for batch in batches(cols):
        for start in range(0, batch.num_rows, SLICE_ROWS):
            part = batch.slice(start, SLICE_ROWS)
            values = {c: part.column(cols.index(c)).to_pylist() for c in cols}
            for i in range(part.num_rows):
                u = (None if values[uid][i] is None else str(values[uid][i])) if uid else f"{path.name}:{row + i}"
                yield u, values[cap][i], values[image_column][i]
            row += part.num_rows


def caption_text(value) -> str | None:
    """The caption, or None for null / empty / undecodable values (sources' malformed rule)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and value.strip() else None


# ------------------------------------------------------------ images
def load_image(value, image_root: Path | None) -> tuple[bytes, str | None] | None:
    """(image bytes, source path or None) for a path / {"bytes", "path"} / bytes value; None if missing.

        load_image("cats/1.jpg", Path("images"))  ->  (b"\\xff\\xd8...", "images/cats/1.jpg")
    """
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), value.get("path")
        value = value.get("path")
        if value is None:
            return None
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value), None) if value else None
    if not isinstance(value, str):
        raise ValueError(f"image column holds {type(value).__name__} values; expected a path, "
                         "an Image() {bytes, path} value or bytes")
    path = Path(value)
    if image_root is not None and not path.is_absolute():
        path = image_root / path
    try:
        data = path.read_bytes()
    except OSError:  # missing, a folder, unreadable: all mean this row has no image
        return None
    return (data, str(path)) if data else None


def image_extension(path: str | None, data: bytes) -> str | None:
    """Member extension: the file's suffix lowercased (jpeg -> jpg); by magic bytes when there is none."""
    ext = Path(path).suffix.lower().lstrip(".") if path else ""
    if ext and ext not in ("txt", "json"):  # those names belong to the caption and metadata members
        return "jpg" if ext == "jpeg" else ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((e for magic, e in MAGIC if data.startswith(magic)), None)


# ------------------------------------------------------------ writing
class ShardWriter:
    """Appends samples to shard-NNNNNN.tar files in `folder`, starting a new one every `per_shard` samples."""

    def __init__(self, folder: Path, per_shard: int):
        self.folder, self.per_shard = folder, per_shard
        self.sizes: dict[str, int] = {}
        self.written = 0
        self._tar = None

    def add(self, uid: str, caption: str, data: bytes, ext: str, source: str | None) -> None:
        if self.written % self.per_shard == 0:
            self._next_shard()
        key = f"{self.written:09d}"  # img2dataset's key width; dot-free, sorts in write order
        meta = {"uid": uid, "caption": caption, "source_path": source, "key": key}
        add_tar_member(self._tar, f"{key}.{ext}", data)
        add_tar_member(self._tar, f"{key}.txt", caption.encode("utf-8"))
        add_tar_member(self._tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        self.sizes[Path(self._tar.name).name] += 1
        self.written += 1

    def _next_shard(self) -> None:
        self.close()
        name = f"shard-{len(self.sizes):06d}.tar"
        self._tar = tarfile.open(self.folder / name, "w", format=tarfile.USTAR_FORMAT)
        self.sizes[name] = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def check_out_dir(final: Path, overwrite: bool) -> None:
    """Refuse, before any work, an out_dir that is a file or (without overwrite) a non-empty folder."""
    if not final.exists():
        return
    if not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder")
    if not overwrite and any(final.iterdir()):
        raise FileExistsError(f"{final} already exists and is not empty (pass overwrite=True to replace it)")


def publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an empty existing out_dir counts as absent."""
    if final.is_dir() and not overwrite and not any(final.iterdir()):
        final.rmdir()
    publish_dir(tmp, final, overwrite)


# ------------------------------------------------------------ the conversion
def table_to_shards(table, out_dir, image_column: str = "image_path", caption_column: str = "caption",
                    uid_column: str | None = None, image_root=None, uids=None, samples_per_shard: int = 5000,
                    overwrite: bool = False, progress: bool = True) -> dict:
    """Write the table's rows (or those whose uid is in `uids`) as shards; returns the counts.

    Counts: written, missing_image, empty_caption, unknown_format (image bytes of no known type),
    missing_uid (null in the uid column), uids_not_found (requested, not in the table), malformed_rows
    (CSV/TSV lines with a wrong field count: not rows at all, as in sources), rows (read),
    shards, sizes ({file: samples}), out_dir. Skips are counted among the selected rows only. The
    progress bar shows on a terminal only (progress=False: never). Raises
    ValueError (nothing written) for a missing column, an empty `uids`, or when no row can be written.

        table_to_shards("hf_dataset/", "shards", image_column="image", samples_per_shard=1000)
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    wanted = None if uids is None else {str(u) for u in np.asarray(list(uids)).ravel().tolist()}
    if wanted is not None and not wanted:
        raise ValueError("the uid subset is empty")
    final = Path(out_dir)
    check_out_dir(final, overwrite)
    files, total = table_files(table)
    root = None if image_root is None else Path(image_root)
    stream = CaptionStream(files, caption_column=caption_column)
    counts = dict.fromkeys(("written", "missing_image", "empty_caption", "unknown_format", "missing_uid", "rows"), 0)
    found: set[str] = set()
    tmp = temp_dir_for(final)
    writer = ShardWriter(tmp, samples_per_shard)
    # disable=None: a bar on a terminal only, so logs and captured stderr hold just results and errors
    bar = tqdm(total=total, unit="row", desc="table-shards", disable=None if progress else True)
    try:
        for path in files:
            for uid, caption, image in iter_rows(stream, path, image_column, uid_column):
                bar.update()
                counts["rows"] += 1
                if wanted is not None:
                    if uid not in wanted:
                        continue
                    found.add(uid)
                _convert_row(writer, counts, uid, caption, image, root)
        writer.close()
        if not writer.written:
            raise ValueError(f"no row could be written from {table}: {_describe(counts, wanted, found)}")
        (tmp / "sizes.json").write_text(json.dumps(writer.sizes, indent=1) + "\n")
        bar.close()
    except BaseException:
        bar.leave = False  # wipe the half bar so an error is the one line left
        bar.close()
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, final, overwrite)
    counts["written"] = writer.written
    counts["uids_not_found"] = 0 if wanted is None else len(wanted - found)
    counts["malformed_rows"] = stream.malformed  # CSV/TSV lines with the wrong field count, dropped by the reader
    counts.update(shards=len(writer.sizes), sizes=writer.sizes, out_dir=str(final))
    return counts


def _convert_row(writer: ShardWriter, counts: dict, uid, caption, image, root: Path | None) -> None:
    """Write one selected row, or count why it was skipped (caption checked first: no file read for it)."""
    if uid is None:
        counts["missing_uid"] += 1
        return
    text = caption_text(caption)
    if text is None:
        counts["empty_caption"] += 1
        return
    loaded = load_image(image, root)
    if loaded is None:
        counts["missing_image"] += 1
        return
    data, source = loaded
    ext = image_extension(source or (image if isinstance(image, str) else None), data)
    if ext is None:
        counts["unknown_format"] += 1
        return
    writer.add(uid, text, data, ext, source)


def _describe(counts: dict, wanted: set | None, found: set) -> str:
    """One line of the skip counts, for errors and the CLI summary."""
    parts = [f"{counts['rows']} rows read"] + [f"{counts[k]} {k.replace('_', ' ')}" for k in
                                                ("missing_image", "empty_caption", "unknown_format", "missing_uid")
                                                if counts[k]]
    if wanted is not None:
        parts.append(f"{len(wanted - found)} of {len(wanted)} requested uids not found")
    return ", ".join(parts)


# ------------------------------------------------------------ command line
def load_uids(spec: str) -> list[str]:
    """uids from a subset folder (its subset.npy), a .npy file, or a text file with one uid a line.

        load_uids("subsets/nmi-0.1")  ->  ["u001", "u017", ...]
    """
    path = Path(spec)
    if path.is_dir():
        path = path / "subset.npy"
    if not path.is_file():
        raise ValueError(f"subset not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            return [str(u) for u in np.load(path, allow_pickle=False).ravel().tolist()]
        except Exception as e:  # numpy raises several types for a bad file
            raise ValueError(f"cannot read {path} as a .npy uid array: {e}") from None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Write webdataset shards (img2dataset layout) from a "
                                                       "caption table whose rows point to image files.")
    p.add_argument("table", metavar="TABLE",
                   help=".parquet/.arrow/.csv/.tsv file or folder, or a datasets save_to_disk folder")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must not exist or be empty)")
    p.add_argument("--image-column", default="image_path", metavar="C",
                   help="image path / Image() column (default: image_path)")
    p.add_argument("--caption-column", default="caption", metavar="C", help="caption column (default: caption)")
    p.add_argument("--uid-column", default=None, metavar="C",
                   help="uid column (default: 'uid' if present, else <file name>:<row>)")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="folder that relative image paths start from (default: current folder)")
    p.add_argument("--subset", default=None, metavar="PATH",
                   help="only these uids: a subset folder (subset.npy), a .npy file or a text file, one uid a line")
    p.add_argument("--samples-per-shard", type=int, default=5000, metavar="N", help="samples per shard (default 5000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    return p


def table_shards_main(argv=None) -> int:
    """`aotrain filter table-shards TABLE OUT_DIR [...]`: returns the exit code."""
    return run_command(_parser(), _table_shards, argv)


def _table_shards(args) -> int:
    check_output(Path(args.out_dir), args.overwrite)  # the filter commands' one rule, before any work
    uids = None if args.subset is None else load_uids(args.subset)
    info = table_to_shards(args.table, args.out_dir, image_column=args.image_column,
                           caption_column=args.caption_column, uid_column=args.uid_column,
                           image_root=args.image_root, uids=uids, samples_per_shard=args.samples_per_shard,
                           overwrite=args.overwrite)
    print(f"wrote {info['written']} samples in {info['shards']} shards to {args.out_dir} ({_summary_tail(info)})")
    return 0


def _summary_tail(info: dict) -> str:
    """Rows read and the non-zero skip counts of a finished run, as `name count` pairs."""
    keys = ("missing_image", "empty_caption", "unknown_format", "missing_uid", "uids_not_found", "malformed_rows")
    return ", ".join([f"rows {info['rows']}"] + [f"{k.replace('_', ' ')} {info[k]}" for k in keys if info[k]])


if __name__ == "__main__":
    sys.exit(table_shards_main())
