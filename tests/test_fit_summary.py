"""`aotrain fit` says what it trained on, and marks the benchmark's pairs seen or unseen by it.

One tiny real-data run (`recipe=low_nmi_cc12m` on the img2dataset-layout pool of test_real_recipes,
one step) on an ImageNet-AO-style folder that mixes pairs of the toy world's pool with its held-out
pairs, named as a real release names them (underscores, plural objects), read with no eval
vocabulary: the subset's own vocabulary must resolve them. The smoke fit shows the toy recipes' lines.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from data_filters.vocab import plural
# The pool and its NMI target come from test_real_recipes' fixtures (same world, same pool writer).
from test_real_recipes import SIZE, TOL, _tiny, pool, target, world  # noqa: F401

STEPS = 1


def _benchmark(world: Path, out: Path) -> set[tuple[str, str]]:
    """One ImageNet-AO-style folder holding the world's seen and held-out pairs, every other one named
    "<attribute>_<objects>"; returns the pairs in the world's canonical words."""
    pairs = set()
    for i, folder in enumerate(sorted((world / "imagenet_ao").glob("*/*"))):
        attribute, obj = folder.name.split(" ", 1)
        pairs.add((attribute, obj))
        name = f"{attribute}_{plural(obj)}" if i % 2 else folder.name
        shutil.copytree(folder, out / name)
    return pairs


def _subset_pairs(manifest: dict) -> set[tuple[str, str]]:
    table = manifest["pair_counts"]
    return {(a, o) for a, row in zip(table["attributes"], table["counts"])
            for o, n in zip(table["objects"], row) if n}


@pytest.fixture(scope="module")
def run(world, pool, target, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("fit_summary")
    bench = root / "ImageNet-AO"
    pairs = _benchmark(world, bench)
    tiny = [o for o in _tiny(world) if not o.startswith(("trainer.max_steps=", "eval.vocabulary="))]
    proc = run_cli("fit", "recipe=low_nmi_cc12m", f"data.pool={pool}", f"eval.benchmarks.imagenet_ao={bench}",
                   *tiny, f"trainer.max_steps={STEPS}", f"subset.size={SIZE}", f"subset.nmi={target}", root=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads(next((root / "runs").glob("low_nmi_cc12m-*/summary.json")).read_text())
    manifest = json.loads(Path(summary["seen_pairs"]["source"]).read_text())
    seen = pairs & _subset_pairs(manifest)
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    return {"root": root, "proc": proc, "summary": summary, "manifest": manifest, "pairs": pairs, "seen": seen,
            "client": client, "mlflow": client.get_run(summary["run_id"]), "world": world}


def test_the_printed_summary_says_size_nmi_target_pairs_and_what_was_dropped(run, target):
    out, manifest = run["proc"].stdout, run["manifest"]
    line = next(x for x in out.splitlines() if x.startswith("subset "))
    facts = run["summary"]["subset"]
    labelled, single = facts["pool_labelled"], facts["pool_single_side"]
    alone = sum(facts.get("single_side", {}).get(k, 0) for k in ("object_only", "attribute_only"))
    size = f"{SIZE:,} samples" + (f" ({alone:,} naming one side alone)" if alone else "")
    pool = f"{labelled:,} pair + {single:,} single-side captions" if single else f"{labelled:,} labelled"
    assert line.split(None, 1)[1] == (f"{size} of {pool}; NMI {manifest['nmi']:.3f} "
                                      f"(target {target:g}); {manifest['distinct_pairs']} distinct pairs")
    assert abs(manifest["nmi"] - target) <= TOL
    dropped = next(x for x in out.splitlines() if x.startswith("dropped "))
    # the pool writer gives some samples a caption with no pair or two: labelling drops them
    assert facts["pool_unlabelled"] > 0
    assert facts["pool_captions"] == labelled + single + facts["pool_unlabelled"]
    assert f"{facts['pool_unlabelled']:,} of {facts['pool_captions']:,} pool captions name no single pair or side" \
        in dropped
    if facts.get("not_downloaded"):  # counted by the pool reader (the pool's missing files)
        assert f"{facts['not_downloaded']:,} not downloaded" in dropped
    # the summary block is in order: where things are, then what it trained on, then the metrics
    order = [out.index(x) for x in ("run folder", "subset ", "dropped ", "unseen/pair_top1")]
    assert order == sorted(order)


def test_benchmark_pairs_are_marked_by_the_subset_in_its_own_vocabulary(run):
    pairs, seen = run["pairs"], run["seen"]
    assert 0 < len(seen) < len(pairs)  # the held-out pairs are never in the pool, most others are
    info = run["summary"]["seen_pairs"]
    assert (info["seen"], info["unseen"], info["unresolved"]) == (len(seen), len(pairs) - len(seen), 0)
    assert Path(info["source"]).name == "manifest.json" and info["vocabulary"] == f"world:{run['world']}"
    line = next(x for x in run["proc"].stderr.splitlines() if x.startswith("eval: "))
    assert f"{len(seen)} of {len(pairs)} benchmark pairs seen in training, {len(pairs) - len(seen)} unseen" in line
    assert run["proc"].stderr.index("eval: ") < run["proc"].stderr.index("`Trainer.fit` stopped")


def test_mlflow_has_the_seen_unseen_metrics_of_training_and_the_subset_params(run):
    metrics, params = run["mlflow"].data.metrics, run["mlflow"].data.params
    seen, pairs = run["seen"], run["pairs"]
    for name in ("eval/seen/pair_top1", "eval/unseen/pair_top1", "eval/seen/object_top1", "eval/unseen/object_top1",
                 "eval/czsl/auc", "eval/czsl/best_hm"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["eval/seen/n_pairs"] == len(seen) and metrics["eval/unseen/n_pairs"] == len(pairs) - len(seen)
    assert metrics["eval/contamination/pairs_in_training"] == len(seen)
    history = run["client"].get_metric_history(run["mlflow"].info.run_id, "eval/unseen/pair_top1")
    assert [m.step for m in history] == [STEPS]  # logged by the callback in training
    facts = run["summary"]["subset"]
    assert params["subset_size"] == str(SIZE) and params["data_distinct_pairs"] == str(facts["distinct_pairs"])
    assert params["data_nmi_target"] == str(facts["nmi_target"])
    assert params["subset_source_labelled"] == str(facts["pool_labelled"])
    assert params["subset_source_captions"] == str(facts["pool_captions"])
    assert params["subset_source_unlabelled"] == str(facts["pool_unlabelled"])
    for key in ("not_downloaded", "duplicates_dropped"):  # only when the pool stage counts them
        assert (f"subset_source_{key}" in params) == (key in facts)
    logged = Path(run["client"].download_artifacts(run["mlflow"].info.run_id, "summary.json"))
    assert json.loads(logged.read_text())["subset"] == facts


def test_an_explicit_seen_from_wins(run, world, pool, target):  # noqa: F811
    from aotrain.config import compose
    from aotrain.train import prepare

    tiny = [o for o in _tiny(world) if not o.startswith("eval.vocabulary=")]
    cfg = compose(["recipe=low_nmi_cc12m", f"data.pool={pool}", f"eval.benchmarks.imagenet_ao={world}/imagenet_ao/seen",
                   *tiny, f"subset.size={SIZE}", f"subset.nmi={target}", f"paths.root={run['root']}", "run_id=x",
                   f"eval.seen_from={pool}"])
    prepare(cfg)  # every stage cached by the run above
    assert cfg.eval.seen_from == str(pool) and cfg.eval.seen_vocabulary is None


def test_a_benchmark_outside_the_subsets_vocabulary_is_left_unmarked(run, tmp_path):
    from aotrain.ao_benchmark import Benchmark

    image = next((run["world"] / "imagenet_ao" / "seen").glob("*/*.png"))
    for name in ("furry frog", "red circle"):
        (tmp_path / "mixed" / name).mkdir(parents=True)
        shutil.copy(image, tmp_path / "mixed" / name)
    (tmp_path / "outside" / "furry frog").mkdir(parents=True)
    shutil.copy(image, tmp_path / "outside" / "furry frog")
    section = {"benchmarks": None, "templates": "simple", "vocabulary": None,
               "seen_from": run["summary"]["seen_pairs"]["source"], "seen_vocabulary": f"world:{run['world']}"}

    outside = Benchmark.from_config({**section, "benchmarks": str(tmp_path / "outside")}, "toy-vit-micro")
    assert outside.seen_pairs is None
    assert re.match(r"none of the benchmark's 1 pairs is a pair of vocabulary world:", outside.describe_seen())

    mixed = Benchmark.from_config({**section, "benchmarks": str(tmp_path / "mixed")}, "toy-vit-micro")
    red_circle_seen = ("red", "circle") in _subset_pairs(run["manifest"])
    assert set(mixed.seen_pairs) == ({("red", "circle")} if red_circle_seen else set())
    assert mixed.seen_info["unresolved"] == 1
    assert "1 of the unseen are not pairs of vocabulary world:" in mixed.describe_seen()


def test_the_toy_recipes_print_the_same_subset_lines(smoke_fit):
    root, proc = smoke_fit
    summary = json.loads(next((root / "runs").glob("toy_low_nmi-*/summary.json")).read_text())
    facts = summary["subset"]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("subset "))
    alone = facts["single_side"]["object_only"]  # the toy world names the object alone in 30% of captions
    assert 0.2 * 300 < alone < 0.4 * 300
    assert line.split(None, 1)[1].startswith(
        f"300 samples ({alone:,} naming one side alone) of {facts['pool_labelled']:,} pair + "
        f"{facts['pool_single_side']:,} single-side captions; NMI {facts['nmi']:.3f} (target 0.09); ")
    assert "dropped " in proc.stdout
    # the world's split names say which pairs were seen: no seen_from, no marking line
    assert summary["seen_pairs"] is None and "\neval: " not in proc.stderr
