"""The real img2dataset (1.47.0) for tests: its executable, and caption pools it builds from toy-world images.

    from img2dataset_tool import img2dataset_executable, run_img2dataset
    info = run_img2dataset(tmp_path / "pool", n_images=300, failed=20, duplicates=8, uid=True)
    info["n_success"], info["rows"][0]  ->  328, {"key": "0000000", "url": "file:///...", ...}

img2dataset 1.47.0 pins webdataset<0.3 and the project needs webdataset>=1.0.2, so it lives in a venv
of its own. `img2dataset_executable()` finds it in this order:
    $AOTRAIN_IMG2DATASET                        path to an img2dataset executable (nothing installed)
    <repo>/.venv-img2dataset/bin/img2dataset    made by an earlier run
    else it makes that venv: `python -m venv` + `pip install img2dataset==1.47.0` (about a minute,
    once), under a file lock (two pytest processes install once), into a temporary folder renamed
    into place when complete (an interrupted install leaves nothing that looks finished).
    conftest.py calls `prestart()` when the session has tests that need the tool: the install then
    runs in a background thread while other tests run, instead of when the first pool is asked for.
If the install fails the calling test skips with pip's last lines, or fails when $CI is "true".

Tests run the tool as a user would: images on disk, a parquet of (url=file:///..., caption) rows, the
img2dataset command line (see IMG2DATASET_FLAGS), and whatever it writes. The hand-made imitation
(tests/img2dataset_pool.py) stays for pools the real tool cannot make.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_pool import _caption, _toy_samples

REPO = Path(__file__).resolve().parent.parent
VERSION = "1.47.0"
VENV = REPO / ".venv-img2dataset"
ENV_VAR = "AOTRAIN_IMG2DATASET"

# Everything after --url_list/--output_folder, as run_img2dataset passes it (1.47.0's flags):
#   --resize_mode no          keep the 32x32 toy images as they are (still re-encoded as JPEG q95);
#                             --image_size is then unused
#   --enable_wandb False      the default already; said explicitly so no run ever reaches for wandb
#   --number_sample_per_shard input rows per shard (failures included), so several shards
#   --compute_hash sha256     the default; the hash of the downloaded bytes (not of the re-encoded jpg)
IMG2DATASET_FLAGS = ["--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
                     "--output_format", "webdataset", "--processes_count", "1", "--thread_count", "4",
                     "--image_size", "32", "--resize_mode", "no", "--enable_wandb", "False",
                     "--compute_hash", "sha256"]


# ------------------------------------------------------------ the executable
_found: Path | None = None
_failure: str | None = None  # why the install failed: tried once per process, not once per fixture
_prestarted: threading.Thread | None = None


def prestart() -> None:
    """Find or install the executable in a background thread (img2dataset_executable() waits for it).
    Not a daemon thread: a process that ends first still finishes an install another one waits for."""
    global _prestarted
    if _prestarted is not None or _found is not None or _failure is not None or os.environ.get(ENV_VAR):
        return

    def locate() -> None:
        global _found, _failure
        _found, _failure = _locate()

    _prestarted = threading.Thread(target=locate, name="img2dataset-install")
    _prestarted.start()


def img2dataset_executable() -> Path:
    """Path of a working img2dataset executable; installs it on first use (see the module docstring).

    Skips the calling test when it cannot be installed (fails instead when $CI is "true")."""
    global _found, _failure
    if _prestarted is not None:
        _prestarted.join()  # an error in the thread leaves both None: looked for again below
    if _found is None:
        if _failure is None:
            _found, _failure = _locate()
        if _failure is not None:
            if os.environ.get("CI", "").strip().lower() in ("true", "1"):
                pytest.fail(_failure)
            pytest.skip(_failure)
    return _found


def _locate() -> tuple[Path | None, str | None]:
    """(executable, None), or (None, why not)."""
    given = os.environ.get(ENV_VAR)
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"${ENV_VAR}={given} is not an executable file")  # a user's mistake: never skipped
        return path, None
    exe = VENV / "bin" / "img2dataset"
    if _usable(exe):
        return exe, None
    with open(VENV.parent / (VENV.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing: wait for it, then look again
        if not _usable(exe):
            error = _install()
            if error:
                return None, f"could not install img2dataset=={VERSION} into {VENV}:\n{error}"
    return exe, None


def _usable(exe: Path) -> bool:
    """The venv's script and the interpreter it runs both exist (a deleted base python breaks a venv)."""
    return exe.is_file() and (exe.parent / "python").exists()


def _install() -> str | None:
    """Make VENV (holding the lock); returns None, or pip's / venv's last output lines on failure."""
    for stale in VENV.parent.glob(VENV.name + ".tmp-*"):  # a killed install's folder (only lock holders make them)
        shutil.rmtree(stale, ignore_errors=True)
    if VENV.exists():  # unusable (its python is gone): rebuild it
        shutil.rmtree(VENV)
    tmp = Path(tempfile.mkdtemp(prefix=VENV.name + ".tmp-", dir=VENV.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the venv after the rename
    try:
        # sys.executable may be the project venv's python: `-m venv` still bases the new venv on the
        # base interpreter (pyvenv.cfg home), and the new venv does not see the project's packages.
        for cmd in ([sys.executable, "-m", "venv", "--clear", str(tmp)],
                    [str(tmp / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                     f"img2dataset=={VERSION}"]):
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"{cmd[0]}: {e}"
            if proc.returncode != 0:
                return "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        _relocate(tmp, VENV)
        os.rename(tmp, VENV)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return None


def _relocate(tmp: Path, final: Path) -> None:
    """Point the venv's scripts (shebangs, activate) at `final` before it is renamed there."""
    old, new = str(tmp).encode(), str(final).encode()
    for script in (tmp / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if (data.startswith(b"#!") or script.name.startswith("activate")) and old in data:
            script.write_bytes(data.replace(old, new))


# ------------------------------------------------------------ a pool built by img2dataset
def run_img2dataset(out_dir, n_images: int = 300, failed: int = 20, duplicates: int = 8, seed: int = 0,
                    uid: bool = False, samples_per_shard: int = 100, world_dir=None) -> dict:
    """Build a caption pool in `out_dir` (absent or empty) by running the real img2dataset on toy images.

    Input rows, shuffled by `seed`: `n_images` toy-world images (PNG files) with a web alt-text caption
    naming the sample's attribute and object; `duplicates` rows repeating an earlier row's URL under
    another caption; `duplicates` byte-identical copies of images under another file name (own
    caption); `failed` URLs of files that do not exist. uid=True adds a DataComp-style `uid` column
    (md5 of the url and row) and passes --save_additional_columns '["uid"]'.
    The images and the input parquet stay in `<out_dir>.source/` (the url column points there).
    world_dir: a toy world to take images from (its pool needs >= n_images samples); default: a
    small world generated in that source folder.

    Returns {"out_dir", "source_dir", "url_list", "n_rows", "n_success", "n_failed", "n_shards",
    "rows": [{"key", "url", "caption", "success", "sha256" (of the file; None if missing), "uid"?}]
    in input order, "same_url": [[key, key], ...], "same_bytes": [[key, key, ...], ...] (keys of
    rows whose files hold identical bytes, the same-URL rows included), "flags": the command line}.
    Keys are what img2dataset assigns: shard * 10**ceil(log10(samples_per_shard)) + row in shard,
    zero-padded to 5 + ceil(log10(samples_per_shard)) digits.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    exe = img2dataset_executable()
    source = out_dir.with_name(out_dir.name + ".source")
    if source.exists():
        shutil.rmtree(source)
    (source / "images").mkdir(parents=True)
    samples = _images(source, n_images, world_dir)
    rng = random.Random(seed)
    rows = []
    for i, (png, attribute, obj) in enumerate(samples):
        path = source / "images" / f"{i:05d}.png"
        path.write_bytes(png)
        rows.append(_row(rng, samples, path, attribute, obj))
    for original in rng.sample(rows[:n_images], duplicates):  # the same URL, another caption
        caption = original["caption"]
        while caption == original["caption"]:
            caption = _caption(rng, *original["pair"], rng.choice(samples)[1:])
        rows.append({**original, "caption": caption})
    for i, original in enumerate(rng.sample(rows[:n_images], duplicates)):  # the same bytes, another name
        copy = source / "images" / f"copy-{i:05d}.png"
        shutil.copyfile(Path(original["url"][len("file://"):]), copy)
        rows.append(_row(rng, samples, copy, *original["pair"]))
    for i in range(failed):  # files that were never there: failed downloads
        png, attribute, obj = rng.choice(samples)
        rows.append(_row(rng, samples, source / "missing" / f"{i:05d}.png", attribute, obj))
    rng.shuffle(rows)

    digits = _oom(samples_per_shard)
    for n, row in enumerate(rows):
        shard, index = divmod(n, samples_per_shard)
        row["key"] = f"{shard * 10 ** digits + index:0{5 + digits}d}"
        row.pop("pair")
        if uid:
            row["uid"] = hashlib.md5(f"{row['url']}#{n}".encode()).hexdigest()
    columns = ["url", "caption"] + (["uid"] if uid else [])
    url_list = source / "urls.parquet"
    pq.write_table(pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows]), url_list)

    flags = IMG2DATASET_FLAGS + ["--number_sample_per_shard", str(samples_per_shard)]
    if uid:
        flags += ["--save_additional_columns", '["uid"]']
    cmd = [str(exe), "--url_list", str(url_list), "--output_folder", str(out_dir), *flags]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env["WANDB_MODE"] = "disabled"
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"  # else albumentations asks PyPI for a newer version at import
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=source, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"img2dataset exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")

    by_url, by_hash = {}, {}
    for row in rows:
        by_url.setdefault(row["url"], []).append(row["key"])
        if row["sha256"]:
            by_hash.setdefault(row["sha256"], []).append(row["key"])
    n_success = sum(r["success"] for r in rows)
    return {"out_dir": out_dir, "source_dir": source, "url_list": url_list, "n_rows": len(rows),
            "n_success": n_success, "n_failed": len(rows) - n_success,
            "n_shards": -(-len(rows) // samples_per_shard), "rows": rows,
            "same_url": [keys for keys in by_url.values() if len(keys) > 1],
            "same_bytes": [keys for keys in by_hash.values() if len(keys) > 1],
            "flags": flags}


def toy_world_of(info: dict) -> Path:
    """The toy world whose images run_img2dataset downloaded (its vocabulary and evaluation folders)."""
    return next(Path(info["source_dir"]).glob("world/**/world.json")).parent


def _oom(samples_per_shard: int) -> int:
    """img2dataset's digits for the row within a shard: ceil(log10(number_sample_per_shard)), in integers."""
    return len(str(samples_per_shard - 1)) if samples_per_shard > 1 else 0


def _images(source: Path, n_images: int, world_dir) -> list:
    """(png bytes, attribute, object) for n_images toy-world samples."""
    if world_dir is None:
        from aotrain.toyworld import DEFAULT_CONFIG, generate_world

        cfg = {**DEFAULT_CONFIG, "pool": {**DEFAULT_CONFIG["pool"], "n_samples": n_images,
                                          "samples_per_shard": n_images},
               "eval": {"images_per_unseen_pair": 1, "images_per_seen_pair": 1, "alt_images_per_pair": 0}}
        world_dir = generate_world(cfg, source / "world", progress=False, workers=1)
    samples = []
    for sample in _toy_samples(world_dir):
        samples.append(sample)
        if len(samples) == n_images:
            return samples
    raise ValueError(f"{world_dir} holds {len(samples)} pool samples, fewer than n_images={n_images}")


def _row(rng: random.Random, samples: list, path: Path, attribute: str, obj: str) -> dict:
    exists = path.is_file()
    return {"url": path.as_uri(), "caption": _caption(rng, attribute, obj, rng.choice(samples)[1:]),
            "success": exists, "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if exists else None,
            "pair": (attribute, obj)}
