"""Writing outputs so that nothing is ever half-written, and tar members whose bytes depend only on content.

    >>> tmp = temp_dir_for(Path("subsets/nmi-0.1")); ...; publish_dir(tmp, Path("subsets/nmi-0.1"), overwrite=False)
    >>> write_text_atomic(Path("stats/stats.json"), "{}")

Temporaries are named after their owner, `.tmp-<name>-<pid>@<host>` (files: plus a random tail), so
that the next process to write into the same folder deletes those whose owner died without cleaning
up (kill -9, a node lost): see sweep_stale. A live owner's temporaries, and those of other hosts
sharing the folder, are never touched.
"""
from __future__ import annotations

import functools
import io
import os
import re
import shutil
import socket
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """Yield a temporary path beside `path`; on success rename it to `path`, on error delete it.

        with atomic_path(out, ".parquet") as tmp: pq.write_table(table, tmp)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-{_owner()}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result should read like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` as UTF-8 (tables and reports hold "±", names may not be ASCII) to a temporary file
    beside `path`, then rename it into place; returns `path`."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def temp_dir_for(final: Path) -> Path:
    """A fresh temporary folder next to `final` (same filesystem, so the final rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final.parent)
    tmp = final.parent / f".tmp-{final.name}-{_owner()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename a finished temporary folder into place (replacing `final` only when overwrite)."""
    old = None
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp)
            raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
        old = final.parent / f".old-{final.name}-{_owner()}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old)


# ------------------------------------------------------------ temporaries of dead processes
# .tmp-<name>-<pid>[@<host>][.<random tail>] and .old-<name>-<pid>[@<host>]; no host: written
# before hosts were recorded, by this host's processes.
_TEMP = re.compile(r"^\.(?:tmp|old)-[^@]+-(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9_-]+))?(?:\..*)?$")
# A process that started this long after a temporary was last written cannot be its owner (the pid
# was reused). Generous: clocks of a shared filesystem's server and this host may disagree.
REUSE_MARGIN_S = 600.0


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "localhost"


def _owner() -> str:
    return f"{os.getpid()}@{_host()}"


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _started_at(fields: list[str]) -> float | None:
    """Wall-clock start time of a process from its /proc stat fields (Linux)."""
    try:
        boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def owner_alive(pid: int, entry: Path) -> bool:
    """Whether process `pid` of this host may still be writing `entry` (when unsure: yes)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists (another user's process: PermissionError)
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    started = _started_at(fields)
    try:
        written = entry.lstat().st_mtime
    except OSError:
        return True
    return started is None or started < written + REUSE_MARGIN_S


def sweep_stale(folder: Path) -> list[Path]:
    """Delete the temporaries in `folder` left by dead processes of this host; returns what went.

        python -c "from data_filters.files import sweep_stale; print(sweep_stale('outputs/toyworld'))"
    """
    removed, host = [], _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or m["host"] not in (None, host) or owner_alive(int(m["pid"]), Path(entry.path)):
            continue
        # Another process sweeping the same folder may get there first: ignore what is already gone.
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
        removed.append(Path(entry.path))
    return removed


@contextmanager
def no_empty_folders_on_error(*folders: Path):
    """On an error inside, remove those of `folders` that this block created and left empty.

        with no_empty_folders_on_error(cache, cache / "subsets", folder): ...
    """
    new = [Path(f) for f in folders if not Path(f).exists()]
    try:
        yield
    except BaseException:
        for folder in sorted(new, key=lambda f: len(f.parts), reverse=True):  # children first
            try:
                folder.rmdir()  # only succeeds when empty: a concurrent writer's files stay
            except OSError:
                pass
        raise


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    """The header fields of every member we write: fixed time, owner and mode."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = "aotrain"
    return info


@functools.cache
def _ustar_template() -> tuple[bytes, int]:
    """tarfile's own ustar header of a member named "" of size 0, and its byte sum without the
    name, size and checksum fields: every header we write differs from it in those three only."""
    header = _member_info("", 0).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    return header, sum(header[100:124]) + sum(header[136:148]) + sum(header[156:])


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a file with fixed header fields (time, owner, mode): shard bytes depend only on the inputs.

    The header is tarfile's (a template it made, with this member's name, size and checksum filled
    in): the same bytes as tar.addfile, ~7x faster, which counts for the toy world's 230,000 members
    (tests/test_reshard.py compares the two). Names over 100 bytes or not ASCII, and tars not in
    ustar format, go through tar.addfile.
    """
    raw = name.encode("ascii") if name.isascii() else None
    if tar.format != tarfile.USTAR_FORMAT or raw is None or len(raw) > 100 or len(data) >= 8**11:
        tar.addfile(_member_info(name, len(data)), io.BytesIO(data))
        return
    template, fixed = _ustar_template()
    size = b"%011o\0" % len(data)
    checksum = fixed + sum(raw) + sum(size) + 8 * ord(" ")  # the checksum field counts as 8 spaces
    header = (raw.ljust(100, tarfile.NUL) + template[100:124] + size + template[136:148]
              + b"%06o\0 " % checksum + template[156:])
    padding = -len(data) % tarfile.BLOCKSIZE
    tar.fileobj.write(header + data + tarfile.NUL * padding)
    tar.offset += len(header) + len(data) + padding  # what tar.close() pads the archive from


class OutputError(ValueError):
    """An output that cannot be written, or that exists and may not be replaced; the message names it."""


def check_writable(path) -> None:
    """Raise OutputError unless `path` (a folder or file, existing or not) can be written now, before any work.

        check_writable(Path("outputs"))   # OutputError: cannot write outputs: /data/x is a file, not a folder

    A missing path is judged by its nearest existing parent, which must be a writable folder.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        if not os.access(path, os.W_OK):
            raise OutputError(f"cannot write {path}: the file is read-only")
        path = path.parent
    folder = path
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        # A real attempt, not os.access alone: root passes os.access everywhere, and read-only
        # mounts or /proc only refuse an actual write. The file has no name and vanishes on close.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"cannot write {path}: {folder} is not writable ({e.strerror or e})") from None


def check_output(path, overwrite: bool, kind: str = "folder", flag: str = "--overwrite") -> None:
    """The one rule of every `aotrain filter` command for its outputs, applied before any work.

        check_output(Path(args.out), args.overwrite)                  # a folder output
        check_output(Path(args.report), args.overwrite, kind="file")  # a file output

    An output that exists is refused unless `overwrite` (the command's --overwrite); an empty folder
    counts as absent. A folder where a file is wanted (or the reverse), or a place that cannot be
    written, is refused either way. Raises OutputError.
    """
    path = Path(path)
    if path.exists():
        if kind == "file" and path.is_dir():
            raise OutputError(f"{path} is a folder; name a file to write")
        if kind == "folder" and not path.is_dir():
            raise OutputError(f"{path} exists and is a file, not a folder")
        if not overwrite and not (path.is_dir() and not any(path.iterdir())):
            raise OutputError(f"{path} already exists (pass {flag} to replace it)")
    check_writable(path)
