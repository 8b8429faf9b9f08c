"""Bad inputs to every command: exit 2, one short line on stderr, no traceback, nothing written.

    python -m pytest tests/test_bad_inputs.py -q

Each case runs the CLI's main() in this process (conftest.run_cli_here: the same code and exit code as
the console script, without a new interpreter per case) with AOTRAIN_OUTPUT set to an empty output root, then checks that the root is still empty (no run folder, no mlflow.db, no toy world,
no cache folder) and that the folder of prepared inputs is unchanged (no output file beside them).
Every case fails before any training or world generation, so the whole table takes about 15 seconds.
"""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import run_cli, run_cli_here
from data_filters.files import add_tar_member

FIT_RUN = "runs/toy_low_nmi-20260101-000000"   # a run folder whose only checkpoint is empty
VOCAB = "attributes: {colour: [red, blue]}\nobjects: [fox, ball]\n"
CAPTIONS = ["a red fox", "a blue ball", "a red ball", "a blue fox"]

# (id, command line, what stderr must say). {in}: the prepared inputs; {new}: a path nothing may
# create; {cache}: a cache folder outside the output root (the one case that labels a pool first).
CASES = [
    # aotrain fit: values checked when the config is composed
    ("fit-max-steps-negative", "fit trainer.max_steps=-5", "trainer.max_steps=-5: must be an integer > 0"),
    ("fit-max-steps-zero", "fit trainer.max_steps=0", "trainer.max_steps=0: must be an integer > 0"),
    ("fit-max-steps-text", "fit trainer.max_steps=abc", "trainer.max_steps=abc: must be an integer > 0"),
    ("fit-max-steps-float", "fit trainer.max_steps=2.5", "trainer.max_steps=2.5: must be an integer > 0"),
    ("fit-devices-zero", "fit trainer.devices=0", "trainer.devices=0: must be an integer > 0, -1 (all), 'auto'"),
    ("fit-devices-text", "fit trainer.devices=many", "trainer.devices=many: must be"),
    ("fit-num-nodes-zero", "fit trainer=ddp trainer.num_nodes=0", "trainer.num_nodes=0: must be an integer > 0"),
    ("fit-precision", "fit trainer.precision=17", "trainer.precision=17: must be one of 16, 32, 64, bf16"),
    ("fit-fsdp2-mixed-precision", "fit trainer=fsdp2 trainer.strategy.mixed_precision=fp16",
     "trainer.strategy.mixed_precision=fp16: must be one of auto, bf16, fp32"),
    ("fit-fsdp-offload-text", "fit trainer=fsdp trainer.strategy.cpu_offload=yes",
     "trainer.strategy.cpu_offload=yes: must be true or false"),
    ("fit-batch-size-zero", "fit data.batch_size=0", "data.batch_size=0: must be an integer > 0"),
    ("fit-num-workers-negative", "fit data.num_workers=-1", "data.num_workers=-1: must be an integer >= 0"),
    ("fit-lr-negative", "fit optim.lr=-1", "optim.lr=-1: must be a number > 0"),
    ("fit-lr-zero", "fit optim.lr=0", "optim.lr=0: must be a number > 0"),
    ("fit-lr-text", "fit optim.lr=fast", "optim.lr=fast: must be a number > 0"),
    ("fit-weight-decay-negative", "fit optim.weight_decay=-0.1", "optim.weight_decay=-0.1: must be a number >= 0"),
    ("fit-warmup-negative", "fit optim.warmup_steps=-1", "optim.warmup_steps=-1: must be an integer >= 0"),
    ("fit-betas", "fit optim.betas=[0.9,1.5]", "optim.betas=[0.9,1.5]: must be two numbers in [0, 1)"),
    ("fit-nmi-text", "fit subset.nmi=abc", "subset.nmi=abc: must be a number in [0, 1] or null"),
    ("fit-nmi-above-one", "fit subset.nmi=1.5", "subset.nmi=1.5: must be a number in [0, 1] or null"),
    ("fit-size-zero", "fit subset.size=0", "subset.size=0: must be an integer > 0 or null"),
    ("fit-pairs-negative", "fit subset.pairs=-2", "subset.pairs=-2: must be an integer > 0 or null"),
    ("fit-seed-text", "fit seed=abc", "seed=abc: must be an integer"),
    ("fit-seed-float", "fit seed=1.5", "seed=1.5: must be an integer"),
    ("fit-eval-every-negative", "fit eval.every_n_steps=-1", "eval.every_n_steps=-1: must be an integer >= 0"),
    ("fit-unknown-option", "fit --max-steps 5", "unknown option --max-steps"),
    # aotrain fit: paths, checkpoints and pools checked before the world, cache or run folder
    ("fit-root-under-file", "fit paths.root={in}/afile/out", "afile is a file, not a folder"),
    ("fit-world-root-under-file", "fit paths.world_root={in}/afile/worlds",
     "paths.world_root: cannot write"),
    ("fit-resume-empty-ckpt", f"fit resume={{in}}/{FIT_RUN}/checkpoints/last.ckpt", "the file is empty"),
    ("fit-pool-is-file", "fit recipe=null ~world data.pool={in}/afile eval=imagenet_ao "
                         "eval.benchmarks.imagenet_ao={in}/bench", "is a file, not a folder"),
    ("fit-subset-over-pool", "fit recipe=null ~world data.pool={in}/pool data.vocabulary={in}/vocab.yaml "
                             "eval=imagenet_ao eval.benchmarks.imagenet_ao={in}/bench paths.cache={cache} "
                             "subset.nmi=0.3 subset.size=100000",
     "subset.size=100000: the pool has 4 labelled samples, so subset.size can be at most 4"),
    ("fit-probe-without-labels", "fit recipe=null ~world data.pool={in}/pool eval=imagenet_ao "
                                 "eval.benchmarks.imagenet_ao={in}/bench_ok eval.probe_samples=100",
     "eval.probe_samples needs object labels of the training samples: set data.vocabulary"),
    ("fit-probe-samples-negative", "fit eval.probe_samples=-1", "eval.probe_samples=-1: must be an integer >= 0"),
    # aotrain world and aotrain sweep
    ("world-seed-text", "world seed=abc", "seed=abc: must be an integer"),
    ("world-pool-size-zero", "world world.pool.n_samples=0", "world.pool.n_samples=0: must be an integer > 0"),
    ("world-alt-images-negative", "world world.eval.alt_images_per_pair=-1",
     "eval.alt_images_per_pair must be >= 0, got -1"),
    ("sweep-extra-bad-value", "sweep recipe=tiny extra=['trainer.max_steps=-5']",
     "trainer.max_steps=-5: must be an integer > 0"),
    ("sweep-grid-bad-seed", "sweep recipe=tiny grid.seed=[0,abc]", "seed=abc: must be an integer"),
    ("sweep-parallel-zero", "sweep recipe=tiny launcher.parallel=0", "launcher.parallel=0: must be an integer > 0"),
    # aotrain eval
    ("eval-empty-ckpt", "eval checkpoint={in}/empty.ckpt", "the file is empty"),
    ("eval-text-ckpt", "eval checkpoint={in}/text.ckpt", "not a torch checkpoint"),
    ("eval-out-under-file", "eval checkpoint={in}/empty.ckpt out={in}/afile/results", "out="),
    # aotrain export
    ("export-empty-ckpt", "export {in}/empty.ckpt {new}/out.ckpt", "the file is empty"),
    ("export-truncated-ckpt", "export {in}/trunc.ckpt {new}/out.ckpt", "the file is cut short"),
    ("export-dst-under-file", "export {in}/trunc.ckpt {in}/afile/out.ckpt", "cannot write"),
    # aotrain report and aotrain robustness
    ("report-unknown-key", "report sweeps=tiny", "unknown config key 'sweeps'"),
    ("robustness-not-json", "robustness {in}/afile", "afile"),
    # aotrain filter: one rule for existing outputs, writable outputs, readable inputs
    ("stats-out-exists", "filter stats {in}/captions.csv --vocab {in}/vocab.yaml --out {in}/existing",
     "already exists (pass --overwrite to replace it)"),
    ("stats-out-under-file", "filter stats {in}/captions.csv --vocab {in}/vocab.yaml --out {in}/afile/stats",
     "cannot write"),
    ("stats-workers-zero", "filter stats {in}/captions.csv --workers 0 --out {new}", "--workers must be >= 1"),
    ("label-out-exists", "filter label {in}/captions.csv --vocab {in}/vocab.yaml --out {in}/afile",
     "already exists (pass --overwrite to replace it)"),
    ("label-out-under-file", "filter label {in}/captions.csv --vocab {in}/vocab.yaml --out {in}/afile/l.parquet",
     "cannot write"),
    ("select-over-pool", "filter select {in}/labels.parquet --size 100000 --nmi 0.3 --out {new}",
     "the largest size without repeats is 8; --allow-repeats upsamples"),
    ("select-out-exists", "filter select {in}/labels.parquet --size 4 --nmi 0.3 --out {in}/existing",
     "already exists (pass --overwrite to replace it)"),
    ("reshard-out-exists", "filter reshard {in}/subset.npy --shards {in}/pool --out {in}/existing",
     "already exists (pass --overwrite to replace it)"),
    ("reshard-bad-subset", "filter reshard {in}/afile --shards {in}/pool --out {new}", "cannot read"),
    ("contamination-report-exists", "filter contamination {in}/captions.csv --benchmark {in}/bench "
                                    "--report {in}/afile", "already exists (pass --overwrite to replace it)"),
    ("table-shards-out-exists", "filter table-shards {in}/captions.csv {in}/existing",
     "already exists (pass --overwrite to replace it)"),
    ("table-shards-out-under-file", "filter table-shards {in}/captions.csv {in}/afile/shards", "cannot write"),
    ("filter-unknown-command", "filter statz {in}/captions.csv", "unknown command 'statz'"),
    ("select-missing-size", "filter select {in}/labels.parquet --out {new}", "the following arguments are required"),
]


def _png(shade: int = 0) -> bytes:
    """A 4x4 image; a different `shade` makes different bytes (the pool's samples are distinct images)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, shade)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Inputs for the cases: broken checkpoints, a file where a folder is wanted, a tiny pool, ..."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "afile").write_text("not a folder\n")
    (d / "empty.ckpt").write_bytes(b"")
    (d / "text.ckpt").write_text("this is not a checkpoint\n")
    # A zip archive (the format torch.save writes) cut in half, as an interrupted copy leaves it.
    with zipfile.ZipFile(d / "whole.zip", "w") as z:
        z.writestr("archive/data.pkl", bytes(range(256)) * 64)
    whole = (d / "whole.zip").read_bytes()
    (d / "trunc.ckpt").write_bytes(whole[: len(whole) // 2])
    (d / "whole.zip").unlink()
    ckpt = d / FIT_RUN / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    (d / "existing").mkdir()
    (d / "existing" / "stats.json").write_text("{}\n")
    (d / "vocab.yaml").write_text(VOCAB)
    (d / "captions.csv").write_text("uid,caption,image_path\n" +
                                    "".join(f"u{i},{c},img{i}.png\n" for i, c in enumerate(CAPTIONS)))
    pq.write_table(pa.table({"uid": [f"u{i}" for i in range(8)], "attribute": ["red", "blue"] * 4,
                             "object": ["fox", "fox", "ball", "ball"] * 2}), d / "labels.parquet")
    np.save(d / "subset.npy", np.array(["u0", "u1"]))
    (d / "pool").mkdir()
    with tarfile.open(d / "pool" / "shard-000000.tar", "w") as tar:
        for i, caption in enumerate(CAPTIONS):
            for ext, data in (("png", _png(i)), ("txt", caption.encode()), ("json", json.dumps({"uid": f"u{i}"}).encode())):
                add_tar_member(tar, f"{i:04d}.{ext}", data)
    (d / "bench" / "red fox").mkdir(parents=True)
    (d / "bench_ok" / "red fox").mkdir(parents=True)  # a benchmark that loads: one image
    (d / "bench_ok" / "red fox" / "0.png").write_bytes(_png(0))
    return d


def _snapshot(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.is_dir(), p.stat().st_size if p.is_file() else 0,
                   p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _error_lines(stderr: str, progress=()) -> list[str]:
    """stderr's lines without argparse's usage lines and the stage lines a case allows (`progress`)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(progress)]
    if lines and lines[0].startswith("usage:"):  # argparse: a usage line (wrapped when long), then the error
        lines = [line for line in lines[1:] if not line.startswith(" ")]
    return lines


@pytest.mark.parametrize("case_id, command, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(inputs, tmp_path, case_id, command, expected):
    root, new, cache = tmp_path / "root", tmp_path / "new", tmp_path / "cache"
    root.mkdir()
    before = _snapshot(inputs)
    args = [a.format(**{"in": inputs, "new": new, "cache": cache}) for a in command.split()]
    proc = run_cli_here(*args, root=root)
    # Stage lines before the error: the sweep's plan, and the one case that labels a pool.
    progress = {"fit-subset-over-pool": ("stats:", "select:")}.get(case_id, ("sweep:",) if case_id.startswith("sweep") else ())
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr, progress)
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert list(root.iterdir()) == [], f"written under the output root: {list(root.rglob('*'))}"
    assert _snapshot(inputs) == before, "an input folder changed"
    assert not new.exists()


def test_bad_value_leaves_no_run_folder_and_no_mlflow_run(tmp_path):
    """A root that already holds runs: a bad value adds no run folder and creates no MLflow store."""
    root = tmp_path / "root"
    (root / "runs").mkdir(parents=True)
    proc = run_cli("fit", "trainer.max_steps=-5", "data.batch_size=0", root=root)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "aotrain fit: error: trainer.max_steps=-5: must be an integer > 0; "
        "data.batch_size=0: must be an integer > 0")
    assert list((root / "runs").iterdir()) == [] and not (root / "mlflow.db").exists()
    assert sorted(p.name for p in root.iterdir()) == ["runs"]


def test_csv_unterminated_quote_is_one_malformed_row(inputs, tmp_path):
    """A quote left open spoils its own line only: counted as malformed, the rows after it are read."""
    source = tmp_path / "quotes.csv"
    source.write_text('uid,caption\nu0,"a red fox\nu1,a blue ball\nu2,"a red ball"\nu3,a blue fox\n')
    out = tmp_path / "stats"
    proc = run_cli("filter", "stats", str(source), "--vocab", str(inputs / "vocab.yaml"), "--out", str(out),
                   "--workers", "1", root=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "captions            3 (malformed rows skipped: 1)" in proc.stdout
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_labelled"] == 3 and stats["n_malformed"] == 1


def test_filter_overwrite_replaces(inputs, tmp_path):
    """--overwrite is the way past the rule: stats and select replace what is there."""
    out = tmp_path / "stats"
    out.mkdir()
    (out / "stats.json").write_text("{}")
    args = ["filter", "stats", str(inputs / "captions.csv"), "--vocab", str(inputs / "vocab.yaml"), "--out", str(out),
            "--workers", "1"]
    assert run_cli(*args, root=tmp_path).returncode == 2
    proc = run_cli(*args, "--overwrite", root=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "stats.json").read_text())["n_captions"] == 4
    sub = tmp_path / "subset"
    select = ["filter", "select", str(inputs / "labels.parquet"), "--size", "4", "--pairs", "2", "--out", str(sub)]
    assert run_cli(*select, root=tmp_path).returncode == 0
    assert run_cli(*select, root=tmp_path).returncode == 2
    proc = run_cli(*select, "--overwrite", root=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (sub / "subset.npy").is_file() and not list(tmp_path.glob(".old-*")) and not list(tmp_path.glob(".tmp-*"))
