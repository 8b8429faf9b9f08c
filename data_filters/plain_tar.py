"""The common tar shard, read without tarfile: uncompressed, plain headers, intact to the end.

    >>> with open("pool/shard-000000.tar", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    ...     members = plain_members(data)           # [(name, offset, size)], or None: use tarfile
    ...     name, offset, size = members[0]; first = data[offset:offset + size]

img2dataset's and webdataset's shards are such archives: ustar headers, each member after a pax
header that only sets its modification time. tarfile parses each header in Python through several
layers (~75 us a member); this walks the 512-byte headers directly (~10 us), a tenth of a toy
training batch's data time and most of a caption scan's. Anything else (gzip, a pax header that
sets a name or a size, GNU long names, links, a bad checksum, a member cut short, a partial block)
returns None, and read_shard (data_filters/samples.py) reads that shard with tarfile as before, so
damaged shards are reported exactly as they always were.
"""
from __future__ import annotations

import tarfile

BLOCK = tarfile.BLOCKSIZE  # 512
REGULAR = (b"0", b"\0")     # a regular file
DIRECTORY = b"5"            # passed over (tarfile's isfile() is false for it too)
PAX = b"x"                  # extended header of the next member: read when it only holds times and owners
# Pax keys that change nothing read_shard returns (webdataset's TarWriter writes a float mtime per member).
HARMLESS_PAX = {b"mtime", b"atime", b"ctime", b"uid", b"gid", b"uname", b"gname"}


def plain_members(data) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of each regular file of the archive `data` (bytes or an mmap) in
    archive order, or None when it is not plain (see the module docstring) and tarfile should read it."""
    members, offset, end = [], 0, len(data)
    after_pax = False  # a pax header must be followed by its member's header
    while offset < end:
        if offset + BLOCK > end:
            return None  # a partial header block
        header = data[offset:offset + BLOCK]
        if not any(header):
            break  # the end-of-archive block
        entry = _header(header)
        if entry is None:
            return None
        name, size, kind = entry
        start = offset + BLOCK
        offset = start + -(-size // BLOCK) * BLOCK
        if offset > end:
            return None  # the file ends inside this member or its padding
        if kind == PAX and (after_pax or not _harmless_pax(data[start:start + size])):
            return None
        after_pax = kind == PAX
        if kind in REGULAR:
            members.append((name, start, size))
    if after_pax or offset == 0:
        return None  # a pax header with no member after it; an empty file or zeros from the start
    return members


def _header(header: bytes) -> tuple[str, int, bytes] | None:
    """(name, size, type flag) of a plain header block, or None (checksum, type, prefix, encodings)."""
    kind = header[156:157]
    if kind not in REGULAR and kind not in (DIRECTORY, PAX):
        return None  # global pax headers, GNU long names, links, sparse files...
    if any(header[345:500]):
        return None  # a ustar name prefix (names over 100 bytes), which tarfile joins, or GNU fields
    try:
        checksum = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None  # base-256 sizes or damage
    if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):  # the field counts as 8 spaces
        return None
    name = header[:100].split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")
    if kind in REGULAR and name.endswith("/"):
        return None  # a v7 directory: tarfile calls it one
    return name, size, kind


def _harmless_pax(records: bytes) -> bool:
    """Whether a pax header's records ("<length> <key>=<value>\\n" each) only set times and owners."""
    position = 0
    while position < len(records):
        space = records.find(b" ", position)
        if space < 0:
            return False
        try:
            length = int(records[position:space])
        except ValueError:
            return False
        record = records[space + 1:position + length]
        if length <= 0 or not record.endswith(b"\n") or record.split(b"=", 1)[0] not in HARMLESS_PAX:
            return False
        position += length
    return True
