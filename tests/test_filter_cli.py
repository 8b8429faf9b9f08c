"""`aotrain filter` end to end on a toy pool: stats -> label -> select -> reshard, as a user runs it."""
import json

import numpy as np
import pytest
import webdataset as wds
import yaml

from aotrain.config import RECIPES_DIR
from aotrain.toyworld import generate_world, load_world
from conftest import run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = yaml.safe_load((RECIPES_DIR / "world" / "default.yaml").read_text())
    cfg["pool"].update(n_samples=3000, samples_per_shard=1000)
    cfg["eval"].update(images_per_unseen_pair=1, images_per_seen_pair=1, alt_images_per_pair=0)
    return generate_world(cfg, tmp_path_factory.mktemp("worlds"), progress=False)


def test_help_lists_the_filter_commands():
    proc = run_cli("filter", "--help")
    assert proc.returncode == 0
    for name in ("stats", "label", "select", "reshard"):
        assert name in proc.stdout


def test_stats_label_select_reshard(world, tmp_path):
    vocab = f"world:{world}"
    stats = run_cli("filter", "stats", f"{world}/pool", "--vocab", vocab, "--out", str(tmp_path / "stats"))
    assert stats.returncode == 0, stats.stderr
    measured = json.loads((tmp_path / "stats" / "stats.json").read_text())
    info = load_world(world)  # the pool's pair captions (30% name the object alone)
    assert measured["nmi"] == pytest.approx(info["pair_captions"]["nmi"]["nmi"], abs=1e-9)

    labels = tmp_path / "labels.parquet"
    proc = run_cli("filter", "label", f"{world}/pool", "--vocab", vocab, "--out", str(labels))
    assert proc.returncode == 0, proc.stderr
    singles = info["single_side"]
    assert f"labelled {3000 - singles['object_only'] - singles['attribute_only']:,}" in proc.stdout
    assert f"object-only {singles['object_only']:,}" in proc.stdout and singles["object_only"] > 700

    proc = run_cli("filter", "select", str(labels), "--size", "1500", "--nmi", "0.1", "0.2",
                   "--out", str(tmp_path / "subsets"))
    assert proc.returncode == 0, proc.stderr
    manifests = [json.loads((tmp_path / "subsets" / f"nmi-{t}" / "manifest.json").read_text())
                 for t in ("0.1", "0.2")]
    assert [round(m["nmi"], 2) for m in manifests] == pytest.approx([0.1, 0.2], abs=0.011)
    assert manifests[0]["attribute_marginal"] == manifests[1]["attribute_marginal"]

    subset = tmp_path / "subsets" / "nmi-0.2" / "subset.npy"
    proc = run_cli("filter", "reshard", str(subset), "--shards", f"{world}/pool", "--out", str(tmp_path / "shards"))
    assert proc.returncode == 0, proc.stderr
    urls = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    uids = sorted(json.loads(s["json"])["uid"] for s in wds.WebDataset(urls, shardshuffle=False))
    assert uids == sorted(np.load(subset).tolist())


def test_filter_mistakes_are_short_errors(world, tmp_path):
    for args in (("stats", str(tmp_path / "missing.parquet")),
                 ("label", f"{world}/pool", "--vocab", "nonsense", "--out", str(tmp_path / "x.parquet")),
                 ("select", str(tmp_path / "missing.parquet"), "--size", "10", "--nmi", "0.1",
                  "--out", str(tmp_path / "s")),
                 ("bogus",)):
        proc = run_cli("filter", *args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr and proc.stderr.strip(), args
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "s").exists()


def test_contamination_finds_benchmark_pairs_and_removes_them(world, tmp_path):
    info = load_world(world)
    unseen = run_cli("filter", "contamination", f"{world}/pool", "--benchmark", f"{world}/imagenet_ao/unseen")
    assert unseen.returncode == 0, unseen.stderr
    assert "contaminated 0;" in unseen.stdout  # held-out pairs never reach the pool

    bench = tmp_path / "bench"  # a benchmark of two seen pairs, one with the underscore spelling
    (a1, o1), (a2, o2) = info["seen_pairs"][:2]
    for name in (f"{a1} {o1}", f"{a2}_{o2}"):
        (bench / name).mkdir(parents=True)
        (bench / name / "0.png").write_bytes(b"")
    counts = {**info["joint_counts"], "counts": info["pair_captions"]["counts"]}  # captions naming the pair
    expected = sum(counts["counts"][counts["attributes"].index(a)][counts["objects"].index(o)]
                   for a, o in ((a1, o1), (a2, o2)))
    proc = run_cli("filter", "contamination", f"{world}/pool", "--benchmark", str(bench),
                   "--report", str(tmp_path / "report.json"), "--keep-uids", str(tmp_path / "clean.npy"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["contaminated"] == expected and report["benchmark_pairs_found"] == 2
    clean = np.load(tmp_path / "clean.npy")
    assert len(clean) == info["n_samples"] - expected

    proc = run_cli("filter", "reshard", str(tmp_path / "clean.npy"), "--shards", f"{world}/pool",
                   "--out", str(tmp_path / "clean-pool"))
    assert proc.returncode == 0, proc.stderr
    urls = sorted(str(p) for p in (tmp_path / "clean-pool").glob("*.tar"))
    left = {(m["attribute"], m["object"]) for m in
            (json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)) if m["caption_names"] == "pair"}
    assert (a1, o1) not in left and (a2, o2) not in left  # by caption: an image whose caption names the object
    # alone is not contamination a caption filter can see (and not a pair the model is told)


def test_stats_piped_into_a_reader_that_leaves_still_writes_its_files(world, tmp_path):
    """`aotrain filter stats ... | head`: the closed pipe is not an error, and stats.json is written."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "aotrain.cli", "filter", "stats", str(world / "pool"),
                             "--vocab", f"world:{world}", "--out", str(tmp_path / "stats")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["n_captions"] > 0
