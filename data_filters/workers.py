"""Child processes that die with the process that started them, whatever kills it (kill -9 included).

Every process pool and child command of aotrain and data_filters goes through this module:

    ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork"), **tied_to_parent(init, (spec,)))
    multiprocessing.get_context("fork").Pool(4, **tied_to_parent(init, (spec,)))
    subprocess.Popen(argv, preexec_fn=exit_with_parent(signal.SIGTERM))

On Linux the kernel delivers a signal to the child the moment its parent dies (prctl
PR_SET_PDEATHSIG); elsewhere, or when the pool's creator is not the worker's parent (a forkserver),
a pool worker runs a thread that checks on the creator twice a second.
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)
WATCH_INTERVAL_S = 0.5
# Below this many bytes of input a stage works in one process: starting a worker (~1 s) costs more than it saves.
PARALLEL_FROM_BYTES = 16 << 20


@functools.lru_cache(maxsize=1)
def _libc():
    # Loaded in the parent (tied_to_parent, exit_with_parent call this) so that a forked child never
    # runs the dynamic loader: another thread may have held the loader's lock at the fork.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _ask_kernel(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig); False where that does not exist."""
    libc = _libc()
    return libc is not None and libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, e.g. a Slurm allocation), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _gone(parent: int, direct: bool) -> bool:
    if direct:  # an orphan is handed to another parent at once
        return os.getppid() != parent
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # it exists
    return False


def _watch(parent: int, direct: bool) -> None:
    while not _gone(parent, direct):
        time.sleep(WATCH_INTERVAL_S)
    os._exit(1)  # no cleanup: the parent that would use our results is gone


def die_with_parent(parent: int, sig: int = _KILL, watch: bool = True, direct: bool | None = None) -> None:
    """Make this child process get `sig` when process `parent` dies; exit now if it already has.

    `parent` is usually this process's parent; when it is not (a forkserver started the worker), or
    where the kernel cannot do it (not Linux), a thread polls it instead. watch=False: no thread
    (before an exec, which drops threads).
    """
    if direct is None:
        direct = os.getppid() == parent
    elif direct and os.getppid() != parent:
        # A forked command's parent died before this ran (it may still be an unreaped zombie,
        # which os.kill(parent, 0) would take for alive).
        os._exit(1)
    if direct and _ask_kernel(sig):
        # The parent may have died between the fork and the prctl: the kernel signals nobody then.
        if _gone(parent, direct):
            os._exit(1)
        return
    if _gone(parent, direct):
        os._exit(1)
    if watch:
        threading.Thread(target=_watch, args=(parent, direct), name="die-with-parent", daemon=True).start()


def _tied_init(parent: int, initializer, initargs: tuple) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def tied_to_parent(initializer=None, initargs: tuple = ()) -> dict:
    """{initializer, initargs} for a process pool whose workers are killed (SIGKILL) when this process dies.

    Call it in the process that creates the pool (it records that process's pid); `initializer(*initargs)`
    still runs in each worker, after the tie.
    """
    _libc()
    return {"initializer": _tied_init, "initargs": (os.getpid(), initializer, tuple(initargs))}


def exit_with_parent(sig: int = signal.SIGTERM):
    """A subprocess preexec_fn: the command gets `sig` when this process dies (Linux; elsewhere nothing).

    SIGTERM by default, so that a child command can still save its state and say why it stopped.
    """
    _libc()
    return functools.partial(die_with_parent, os.getpid(), sig, False, True)
