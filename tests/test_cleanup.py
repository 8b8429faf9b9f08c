"""Nothing left behind: a kill -9 takes a command's workers with it, the next start deletes the killed
run's temporaries, and a failed start leaves no empty cache folder (issue 14, item 5).

    python -m pytest tests/test_cleanup.py
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from data_filters.files import _host, atomic_path, no_empty_folders_on_error, sweep_stale, temp_dir_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

ORPHAN_DEADLINE_S = 5.0


def _processes() -> dict[int, tuple[str, int, int]]:
    """{pid: (state, parent pid, process group)} of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # ended while we looked
        state, ppid, pgrp = text[text.rfind(")") + 2:].split()[:3]
        found[int(entry.name)] = (state, int(ppid), int(pgrp))
    return found


def _living(pids) -> list[int]:
    now = _processes()
    return [p for p in pids if p in now and now[p][0] not in "ZX"]  # a zombie has stopped running


def _group(pgid: int) -> list[int]:
    return [p for p, (state, _, group) in _processes().items() if group == pgid and state not in "ZX"]


def _start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """`aotrain ARGS` in a session of its own: its process group holds it and every worker it forks."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID")}
    full_env.update(env)
    # stderr to a file: a full pipe would stall the progress bar, and the command with it.
    with open(cwd / f"{args[0]}-{time.time_ns()}.stderr", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "aotrain.cli", *args], cwd=cwd, env=full_env,
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    proc.log = Path(log.name)
    return proc


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 90.0, log=None):
    """SIGKILL `proc` as soon as ready() returns something truthy, and return that; fail if `proc`
    ends or `timeout` passes first. Either way nothing of its process group is left running."""
    log = log or (lambda: proc.log.read_text()[-2000:])
    deadline = time.time() + timeout
    try:
        while not (found := ready()):
            assert proc.poll() is None, f"finished before it could be killed: {log()}"
            assert time.time() < deadline, f"not ready within {timeout:.0f} s: {log()}"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return found
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _children(proc: subprocess.Popen) -> list[int]:
    return [p for p, (state, ppid, _) in _processes().items() if ppid == proc.pid and state not in "ZX"]


def _kill_while(proc: subprocess.Popen, ready, timeout: float = 90.0) -> list[int]:
    """SIGKILL `proc` once ready() and it has >= 2 children; returns those children's pids."""
    def workers_up():
        children = _children(proc)
        return children if len(children) >= 2 and ready() else None
    return _kill_when(proc, workers_up, timeout)


def _gone_within(pids, pgid: int, deadline_s: float = ORPHAN_DEADLINE_S) -> float:
    """Seconds until neither `pids` nor anything in process group `pgid` runs (fails past the deadline)."""
    start = time.time()
    while _living(pids) or _group(pgid):
        if time.time() - start > deadline_s:
            left = sorted(set(_living(pids)) | set(_group(pgid)))
            for pid in left:  # do not leave them to the rest of the suite
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"orphaned workers still running {deadline_s:.0f} s after kill -9: {left}")
        time.sleep(0.02)
    return time.time() - start


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".tmp-", ".old-"))]


def test_kill_9_world_leaves_no_writers_and_next_start_cleans(tmp_path):
    # A pool of 30 shards written by 2 worker processes (the smoke world has 3: done before the kill).
    env = {"AOTRAIN_OUTPUT": str(tmp_path), "AOTRAIN_WORLD_WORKERS": "2"}
    proc = _start(["world", "debug=smoke", "world.pool.n_samples=6000"], tmp_path, env)
    worlds = tmp_path / "toyworld"
    children = _kill_while(proc, lambda: any(worlds.glob(".tmp-*/pool/*.tar")))
    seconds = _gone_within(children, proc.pid)
    print(f"writers gone {seconds:.2f} s after kill -9")
    stale = list(worlds.glob(".tmp-*"))
    assert stale, "the killed run's temporary world should be there for the next start to clean"

    proc = run_cli("world", "debug=smoke", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _temporaries(tmp_path), _temporaries(tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_dir() and not any(p.iterdir())]


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    """4 CSV files of 60,000 captions: a few seconds of counting or labelling."""
    folder = tmp_path_factory.mktemp("captions")
    words = ["a red fox on a table", "two blue cars", "the striped cat sleeping", "an old chair by a green door"]
    for f in range(4):
        rows = "".join(f"{f}-{i},{words[i % 4]} {i}\n" for i in range(60_000))
        (folder / f"part-{f}.csv").write_text("uid,caption\n" + rows)
    return folder


def test_kill_9_filter_stats_leaves_no_workers(tmp_path, captions):
    out = tmp_path / "stats"
    args = ["filter", "stats", str(captions), "--workers", "2", "--out", str(out), "--no-caption-diversity"]
    proc = _start(args, tmp_path, {})
    children = _kill_while(proc, lambda: True)
    print(f"counting workers gone {_gone_within(children, proc.pid):.2f} s after kill -9")
    assert not out.exists()

    done = subprocess.run([sys.executable, "-m", "aotrain.cli", *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "stats.json").is_file() and not _temporaries(tmp_path)


def test_kill_9_filter_label_half_file_is_swept_by_the_next_start(tmp_path, captions):
    # Labelling runs in one process: what a kill leaves is the half-written labels file.
    out = tmp_path / "labels" / "labels.parquet"
    args = ["filter", "label", str(captions), "--out", str(out)]
    proc = _start(args, tmp_path, {})
    _kill_when(proc, lambda: list(out.parent.glob(".tmp-*")))
    assert list(out.parent.glob(".tmp-*")) and not out.exists()

    done = subprocess.run([sys.executable, "-m", "aotrain.cli", *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file() and not _temporaries(tmp_path)


def test_kill_9_local_sweep_stops_its_fits(tmp_path):
    # The local launcher's own code path, with `sleep` standing in for an `aotrain fit` child.
    script = ("import sys; from pathlib import Path; from aotrain.sweeps.local import Job, run_local; "
              "run_local([Job('cell', ['sleep', '60'], Path(sys.argv[1]))])")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cell.log")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    fits = _kill_when(proc, lambda: _children(proc), timeout=60, log=lambda: proc.stderr.read().decode()[-2000:])
    print(f"sweep's fit gone {_gone_within(fits, proc.pid):.2f} s after kill -9")



FORKED_FIT_SCRIPT = """
import sys
from pathlib import Path
from aotrain.sweeps.local import Job, fit_argv, run_local
root = Path(sys.argv[1])
run_local([Job('cell', fit_argv(['recipe=toy_low_nmi', 'debug=smoke', 'trainer.max_steps=100000',
                                 'eval.every_n_steps=0', f'paths.root={root}']),
               root / 'cell.log', forkable=True)], threads=1)
"""


def test_kill_9_local_sweep_stops_its_forked_fits(tmp_path):
    # A fit forked from the sweep's forkserver is the forkserver's child, not the sweep's: the
    # forkserver leaves when the sweep dies, and the fit follows it.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AOTRAIN_RUN_ID")}
    proc = subprocess.Popen([sys.executable, "-c", FORKED_FIT_SCRIPT, str(tmp_path)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    log = tmp_path / "cell.log"

    def training():
        return log.is_file() and "GPU available" in log.read_text() and _group(proc.pid)
    group = _kill_when(proc, training, timeout=120, log=lambda: proc.stderr.read().decode()[-2000:])
    # The fit is told (SIGTERM), as a fit started as a command is: it stops at a step boundary (with a
    # checkpoint once it has trained) and says how to continue.
    print(f"forkserver and fit gone {_gone_within(group, proc.pid, deadline_s=30):.2f} s after kill -9")
    assert "interrupted by SIGTERM" in log.read_text(), log.read_text()[-2000:]


POOL_SCRIPT = """
import multiprocessing, sys, time
import data_filters.workers as workers
if sys.argv[1] == "no-prctl":  # as on macOS: only the watching thread
    workers._ask_kernel = lambda sig: False
ctx = multiprocessing.get_context("forkserver" if sys.argv[1] == "forkserver" else "fork")
with ctx.Pool(2, **workers.tied_to_parent()) as pool:
    print(sum(pool.map(abs, [-1, -2])), flush=True)
    pool.map(time.sleep, [60, 60])
"""


@pytest.mark.parametrize("how", ["no-prctl", "forkserver"])
def test_pool_workers_die_with_their_creator_without_prctl(tmp_path, how):
    proc = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT, how], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"3", proc.stderr.read().decode()[-2000:]  # the workers work
        time.sleep(0.2)  # both sleeping
        workers = [p for p in _group(proc.pid) if p != proc.pid]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(workers) >= 2
    print(f"{how}: workers gone {_gone_within(workers, proc.pid):.2f} s after kill -9")


def test_sweep_stale_spares_live_owners_and_other_hosts(tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        names = {f".tmp-world-{ended.pid}": False,            # written before hosts were recorded
                 f".tmp-labels.parquet-{ended.pid}@{_host()}.k2x9.tmp": False,
                 f".old-subset-{ended.pid}@{_host()}": False,
                 f".tmp-world-{live.pid}@{_host()}": True,     # its owner is still writing
                 f".tmp-world-{ended.pid}@another-node": True,  # cannot tell from here
                 f".tmp-world-{live.pid}@{_host()}.reused": False,  # see below
                 "world": True, ".tmp-not-a-pid": True}
        for name in names:
            (tmp_path / name).mkdir()
        # A process that started long after a temporary was last written reuses a dead owner's pid.
        old = time.time() - 3600
        os.utime(tmp_path / f".tmp-world-{live.pid}@{_host()}.reused", (old, old))
        sweep_stale(tmp_path)
        assert {n: (tmp_path / n).exists() for n in names} == names
    finally:
        live.kill()
        live.wait()


def test_temporaries_name_their_owner_and_are_swept_beside_new_ones(tmp_path):
    tmp = temp_dir_for(tmp_path / "out")
    assert tmp.name == f".tmp-out-{os.getpid()}@{_host()}"
    ended = subprocess.Popen(["true"])
    ended.wait()
    (tmp_path / f".tmp-stats.json-{ended.pid}@{_host()}.abc").write_text("half")
    with atomic_path(tmp_path / "stats.json") as path:
        assert Path(path).name.startswith(f".tmp-stats.json-{os.getpid()}@{_host()}.")
        Path(path).write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [tmp.name, "stats.json"]


def test_failed_start_leaves_no_empty_folder(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError), no_empty_folders_on_error(cache, cache / "subsets", cache / "subsets" / "x"):
        (cache / "subsets" / "x").mkdir(parents=True)
        raise ValueError("infeasible")
    assert not cache.exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError), no_empty_folders_on_error(tmp_path / "kept", tmp_path / "full"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "a concurrent writer's file").write_text("")
        raise ValueError("failed")
    assert (tmp_path / "kept").is_dir() and (tmp_path / "full").is_dir()  # existed before / not empty


def test_failed_stages_leave_no_empty_cache_folders(tmp_path):
    """An unreachable NMI target and an unreadable pool stop the start and leave no empty folder."""
    from aotrain.pool_stages import prepare_subset
    from aotrain.toyworld import generate_world

    world = generate_world({"seed": 0, "pool": {"n_samples": 600, "samples_per_shard": 200},
                            "eval": {"images_per_unseen_pair": 0, "images_per_seen_pair": 0, "alt_images_per_pair": 0}},
                           tmp_path / "worlds", progress=False)
    spec = {"size": 100, "nmi": 0.99, "pairs": None, "seed": 0, "tol": 0.005}
    with pytest.raises(ValueError, match="not reachable"):
        prepare_subset(world / "pool", f"world:{world}", spec, tmp_path / "cache", 100)
    assert (tmp_path / "cache").is_dir() and not (tmp_path / "cache" / "subsets").exists()

    pool = tmp_path / "pool"  # a shard whose metadata table (img2dataset's layout) is not parquet
    pool.mkdir()
    shutil.copyfile(sorted((world / "pool").glob("*.tar"))[0], pool / "shard-000000.tar")
    (pool / "shard-000000.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="[Pp]arquet"):  # pyarrow's ArrowInvalid
        prepare_subset(pool, "builtin", spec, tmp_path / "cache2", 100)
    assert not (tmp_path / "cache2").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_dir() and not any(p.iterdir())]


def test_world_that_fails_validation_writes_nothing(tmp_path):
    proc = run_cli("world", "debug=smoke", "world.pool.n_samples=0", root=tmp_path)
    assert proc.returncode == 2 and "n_samples" in proc.stderr
    assert not any(tmp_path.iterdir())
