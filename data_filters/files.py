"""Writing outputs so that nothing is ever half-written, and tar members whose bytes depend only on content.

    >>> tmp = temp_dir_for(Path("subsets/nmi-0.1")); ...; publish_dir(tmp, Path("subsets/nmi-0.1"), overwrite=False)
    >>> write_text_atomic(Path("stats/stats.json"), "{}")
"""
from __future__ import annotations

import io
import os
import shutil
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
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


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


def temp_dir_for(final: Path) -> Path:
    """A fresh temporary folder next to `final` (same filesystem, so the final rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
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
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old)


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a file with fixed header fields (time, owner, mode): shard bytes depend only on the inputs."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = "aotrain"
    tar.addfile(info, io.BytesIO(data))
