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
import mmap
import tarfile
import zlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data_filters.plain_tar import plain_members

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
    A plain, intact shard (data_filters/plain_tar.py) is read without tarfile, with the same result.
    """
    key, members = None, {}
    try:
        for name, content in _plain_files(path, images) or _tarfile_files(path, images):
            k, ext = _key_and_extension(name)
            if ext is None:
                continue
            if k != key and members:
                yield key, members
                members = {}
            key = k
            members[ext] = content
    except _Truncated as e:
        if members and e.member is not None and _key_and_extension(e.member)[0] != key:
            yield key, members  # the damage is in the next sample: this one was whole
        if on_truncated is not None:
            on_truncated(str(path), str(e))
        return  # the last, possibly partial, sample is dropped with the damaged tail
    if members:
        yield key, members


def _key_and_extension(name: str) -> tuple[str, str | None]:
    """(sample key, extension) of a member name; extension None for a name without a dot (no sample's)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else None)


class _Truncated(Exception):
    """The shard cannot be read past here (the message says why), within `member` when it is known."""

    def __init__(self, why: str, member: str | None = None):
        super().__init__(why)
        self.member = member


def _unread(name: str, images: bool) -> bool:
    """A member whose bytes read_shard does not use: no sample's (no dot in its name), or an image
    when images=False."""
    ext = _key_and_extension(name)[1]
    return ext is None or (not images and ext in IMAGE_KEYS)


def _plain_files(path, images: bool):
    """(name, bytes) of each file of a plain shard, from a memory map; None for any other shard."""
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # unreadable, or empty (no map of 0 bytes): tarfile says why
        return None
    found = plain_members(data)
    if found is None:
        data.close()
        return None

    def files():
        with data:
            for name, offset, size in found:
                yield name, b"" if _unread(name, images) else data[offset:offset + size]
    return files()


def _tarfile_files(path, images: bool):
    """(name, bytes) of each regular file, through tarfile (any compression, any header); raises
    _Truncated where the archive cannot be read further, ValueError when it cannot be opened."""
    try:
        tar = tarfile.open(path, "r|*")
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as e:
        raise ValueError(f"{path}: not a readable tar shard: {e}") from None
    try:
        with tar:
            for info in tar:
                if not info.isfile():
                    continue
                if _unread(info.name, images):
                    yield info.name, b""
                    continue
                try:
                    content = tar.extractfile(info).read()
                except (tarfile.ReadError, EOFError, zlib.error, OSError) as e:
                    raise _Truncated(str(e) or type(e).__name__, info.name) from None
                if len(content) != info.size:  # the file ends inside this member
                    raise _Truncated(f"member {info.name} cut short", info.name)
                yield info.name, content
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as e:
        raise _Truncated(str(e) or type(e).__name__) from None


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
