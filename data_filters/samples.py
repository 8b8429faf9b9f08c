"""What counts as a sample of a webdataset shard: the one rule that labelling, resharding and training share.

    >>> from data_filters.samples import read_shard, sample_problem
    >>> for key, members in read_shard("pool/shard-000000.tar", on_truncated=print):
    ...     print(key, sample_problem(members) or "ok")

A usable sample has an image member (png/jpg/jpeg/webp) that PIL can identify and a `.txt` caption
that is UTF-8 and not blank. The caption comes from the `.txt` member only (never from the .json), so
the stats stage counts exactly what the training stream reads. Anything else is skipped and counted
under one of these kinds (MLflow `data/skipped_<kind>`, stats.json `skipped`):

    no_image     no image member
    bad_image    image bytes PIL cannot identify (training also skips an image that fails to decode)
    no_caption   no .txt member
    bad_caption  a .txt that is not UTF-8, or blank

A shard that ends inside a member (truncated copy, interrupted download) yields the samples before
the damage; `on_truncated(shard, error)` is told once, and the shard counts in `truncated_shards`.
"""
from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
KINDS = ("no_image", "bad_image", "no_caption", "bad_caption")


def image_key(members: dict) -> str | None:
    return next((k for k in IMAGE_KEYS if k in members), None)


def read_caption(members: dict) -> str | None:
    """The sample's caption (.txt, UTF-8, not blank) or None."""
    try:
        text = members["txt"].decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None
    return text if text.strip() else None


def sample_problem(members: dict, check_image: bool = True) -> str | None:
    """The kind of problem that makes a sample unusable (one of KINDS), or None when it is usable.

    check_image: open the image header with PIL (cheap: no pixels are decoded)."""
    key = image_key(members)
    if key is None:
        return "no_image"
    if "txt" not in members:
        return "no_caption"
    if read_caption(members) is None:
        return "bad_caption"
    if check_image and not identifiable(members[key]):
        return "bad_image"
    return None


def identifiable(data: bytes) -> bool:
    """PIL recognises the format from the header (garbage bytes, empty or cut headers do not pass)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.size  # noqa: B018 - parsed with the header; a broken header raises before here
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def decode_image(data: bytes) -> Image.Image:
    """The RGB image; raises ValueError for bytes that do not decode (the training stream's full check)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"image does not decode: {e}") from None


def read_shard(path, on_truncated=None, images: bool = True):
    """(key, {extension: bytes}) per sample of one tar shard, in order; members of one sample are
    consecutive (webdataset's layout: the key ends at the first dot of the file name).

    images=False leaves image members unread (they appear as b"" so `sample_problem(check_image=False)`
    still sees them). A shard that cannot be read to the end stops there: `on_truncated(path, error)`
    is called and the samples read so far are kept; one that cannot be opened at all raises ValueError.
    """
    try:
        tar = tarfile.open(path, "r|*")
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as e:
        raise ValueError(f"{path}: not a readable tar shard: {e}") from None
    key, members = None, {}
    try:
        with tar:
            for info in tar:
                if not info.isfile():
                    continue
                folder, _, base = info.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                k = f"{folder}/{stem}" if folder else stem
                if k != key and members:
                    yield key, members
                    members = {}
                key = k
                if not images and ext in IMAGE_KEYS:
                    members[ext] = b""
                    continue
                members[ext] = tar.extractfile(info).read()
                if len(members[ext]) != info.size:  # the file ends inside this member
                    raise tarfile.ReadError(f"member {info.name} cut short")
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as e:
        if on_truncated is not None:
            on_truncated(str(path), str(e) or type(e).__name__)
        return  # the last, possibly partial, sample is dropped with the damaged tail
    if members:
        yield key, members


def check_shard_file(path: Path) -> str | None:
    """Why a shard cannot be used at all, read from its first block only, or None: an empty file or
    one that is not a tar archive. (A shard damaged further in is found while it is read.)"""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(tarfile.BLOCKSIZE)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if path.name.endswith((".tar.gz", ".tgz")) and head[:2] == b"\x1f\x8b":
        return None
    if len(head) < tarfile.BLOCKSIZE:
        return f"not a tar archive ({size} bytes, shorter than one tar header)"
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as e:
        return f"not a tar archive ({e})"
    return None
