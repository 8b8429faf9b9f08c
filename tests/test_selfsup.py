"""The self-supervised arm (supervision=self): its NT-Xent loss against NumPy and across two gloo ranks,
the CLIP tower's initial weights, two seeded views of the same samples in the same order, a real fit
evaluated by the linear probe, its parity check against a CLIP run, and sweep reports that include it."""
import itertools
import json
import math
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from aotrain.data.datamodule import ShardDataModule
from aotrain.modules.clip import CLIPModule
from aotrain.modules.nt_xent import nt_xent
from aotrain.modules.selfsup import SelfSupervisedModule
from aotrain.parity import ITEMS, differences
from aotrain.sweeps.grid import expand
from conftest import run_cli_here
from nt_xent_ranks import rank_loss, views
from evaluation.sweep_report import write_report

OPTIM = {"lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 1}
VIEWS = {"crop_scale": [0.4, 1.0], "crop_ratio": [0.75, 1.3333333], "flip": 0.5}


def numpy_nt_xent(a: np.ndarray, b: np.ndarray, temperature: float) -> float:
    """SimCLR's loss as its paper writes it: 2N unit vectors, z[k] and z[k + N] are one image's views;
    l(i) = -log(exp(sim(i, pos) / t) / sum over k != i of exp(sim(i, k) / t)), averaged over all 2N."""
    z = np.concatenate([a, b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(a)
    losses = []
    for i in range(2 * n):
        sims = np.array([z[i] @ z[k] / temperature for k in range(2 * n)])
        others = np.exp(np.delete(sims, i)).sum()
        losses.append(-math.log(math.exp(sims[(i + n) % (2 * n)]) / others))
    return float(np.mean(losses))


def test_nt_xent_is_simclrs_loss_as_numpy_computes_it():
    a, b = views()
    for temperature in (0.5, 0.1):
        assert nt_xent(a, b, temperature).item() == pytest.approx(numpy_nt_xent(a.numpy(), b.numpy(), temperature),
                                                                  rel=1e-5)
    # Views that agree score lower than views that do not.
    assert nt_xent(a, a + 0.01 * b, 0.5) < nt_xent(a, b, 0.5)


def test_two_gloo_ranks_optimise_the_global_batch_loss(tmp_path):
    mp.start_processes(rank_loss, args=(2, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    a, b = (v.clone().requires_grad_() for v in views())
    loss = nt_xent(a, b, 0.5)
    loss.backward()
    # DDP averages the ranks' gradients: the mean of their losses is the one-process loss, and each rank's
    # view gradient (summed back over ranks by the gather) over the world size is the one-process gradient.
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(loss.item(), abs=1e-6)
    for name, full in (("grad_a", a.grad), ("grad_b", b.grad)):
        torch.testing.assert_close(torch.cat([r[name] for r in ranks]) / 2, full, atol=1e-6, rtol=1e-5)


def test_the_self_arm_starts_from_the_clip_towers_weights():
    L.seed_everything(7, verbose=False)
    clip = CLIPModule("toy-vit-micro", OPTIM, total_steps=10)
    L.seed_everything(7, verbose=False)
    module = SelfSupervisedModule("toy-vit-micro", OPTIM, total_steps=10, projection={"dim": 16})
    a, b = clip.vision_tower().state_dict(), module.vision_tower().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert clip.vision_parameter_count() == module.vision_parameter_count()
    assert module.net(torch.zeros(3, 3, 32, 32)).shape == (3, 16)  # the projection the loss reads
    assert module.evaluation_model("cpu") is None and not module.classifies


def test_views_are_seeded_per_sample_and_come_from_the_clip_runs_samples(small_world):
    pool = small_world(n_samples=300, samples_per_shard=100) / "pool"
    common = dict(batch_size=8, num_workers=0, shuffle_buffer=16, seed=3)
    clip = ShardDataModule(str(pool), "toy-vit-micro", **common)
    views = ShardDataModule(str(pool), "toy-vit-micro", targets="views", views=VIEWS, **common)
    keys = [s["__key__"] for s in clip.stream().labelled_samples()]
    assert keys == [s["__key__"] for s in views.stream().labelled_samples()]
    first, again = (next(iter(views.train_dataloader())) for _ in range(2))
    view_a, view_b, skipped = first
    assert view_a.shape == view_b.shape == (8, 3, 32, 32) and skipped.shape[0] == 8
    assert torch.equal(view_a, again[0]) and torch.equal(view_b, again[1])  # same seed, same views
    assert not torch.equal(view_a, view_b)  # two draws of the augmentation
    with pytest.raises(ValueError, match="data.views"):
        ShardDataModule(str(pool), "toy-vit-micro", targets="views", **common)
    with pytest.raises(ValueError, match="crop_scale"):
        ShardDataModule(str(pool), "toy-vit-micro", targets="views", views={**VIEWS, "crop_scale": [0.5, 0.2]},
                        **common)


def test_parity_compares_the_view_augmentation_only_between_runs_that_have_one():
    clip = {item: {"x": 1} for item in ITEMS}
    mine = {**clip, "view_augmentation": "Compose(RandomResizedCrop(scale=(0.4, 1.0)))"}
    assert differences(mine, clip) == [] and differences(clip, mine) == []
    other = {**mine, "view_augmentation": "Compose(RandomResizedCrop(scale=(0.2, 1.0)))"}
    (line,) = differences(other, mine)
    assert line.startswith("view_augmentation: this run Compose(RandomResizedCrop(scale=(0.2")


@pytest.fixture(scope="module")
def self_root(smoke_fit, tmp_path_factory):
    """The smoke output root copied (its CLIP run is the twin), plus a self-supervised fit checked against it."""
    root = tmp_path_factory.mktemp("self") / "root"
    shutil.copytree(smoke_fit[0], root)
    clip_run = next((root / "runs").glob("toy_low_nmi-*"))
    proc = run_cli_here("fit", "recipe=toy_low_nmi", "debug=smoke", "supervision=self", f"parity.twin={clip_run}",
                        root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    self_run = next(p for p in (root / "runs").iterdir() if p != clip_run)
    return root, clip_run, self_run, proc


def test_a_self_fit_passes_parity_and_is_evaluated_by_the_probe(self_root):
    root, clip_run, self_run, proc = self_root
    assert f"parity: a twin of {clip_run}" in proc.stderr
    mine, theirs = (json.loads((run / "parity.json").read_text()) for run in (self_run, clip_run))
    assert {k: mine[k] for k in ITEMS} == {k: theirs[k] for k in ITEMS}
    assert "RandomResizedCrop" in mine["view_augmentation"] and "view_augmentation" not in theirs

    probe = json.loads((self_run / "eval" / "probe.json").read_text())
    assert 0 <= probe["probe/unseen/object_top1"] <= 1 and probe["probe/n_train"] > 0
    assert not (self_run / "eval" / "metrics.json").exists()  # no zero-shot or head metrics to write
    summary = json.loads((self_run / "summary.json").read_text())
    assert set(summary["metrics"]) == {"probe/unseen/object_top1", "probe/seen/object_top1",
                                       "probe/alt/unseen/object_top1", "probe/alt/seen/object_top1"}

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = client.get_run(json.loads((self_run / "mlflow.json").read_text())["run_id"]).data
    clip = client.get_run(json.loads((clip_run / "mlflow.json").read_text())["run_id"]).data
    assert run.params["supervision"] == "self" and run.params["vision_params"] == clip.params["vision_params"]
    assert {k: v for k, v in clip.params.items() if k.startswith("parity_")}.items() <= run.params.items()
    assert "parity_view_augmentation" in run.params
    assert run.metrics["eval/probe/unseen/object_top1"] == pytest.approx(probe["probe/unseen/object_top1"])
    assert "train/loss" in run.metrics and not any(k.startswith(("eval/unseen/", "eval/seen/")) for k in run.metrics)
    assert (self_run / "checkpoints" / "last.ckpt").is_file()


def test_aotrain_eval_of_a_self_checkpoint_says_why_in_one_line(self_root):
    root, _, self_run, _ = self_root
    proc = run_cli_here("eval", f"checkpoint={self_run / 'checkpoints' / 'last.ckpt'}", root=root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("aotrain eval: error:") and "supervision=self" in line and "probe" in line


@pytest.mark.parametrize("args, message", [
    (["trainer.max_steps=8"], "max_steps: this run 8, twin 4"),
    (["eval.probe_samples=0"], "evaluated by the linear probe only"),
])
def test_a_self_run_that_cannot_be_compared_stops_before_training(self_root, args, message):
    root, clip_run, _, _ = self_root
    before = sorted(p.name for p in (root / "runs").iterdir())
    proc = run_cli_here("fit", "recipe=toy_low_nmi", "debug=smoke", "supervision=self", f"parity.twin={clip_run}",
                        *args, root=root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("aotrain fit: error:"))
    assert message in line
    assert sorted(p.name for p in (root / "runs").iterdir()) == before


def test_a_sweep_grid_runs_each_self_cell_after_its_clip_cell():
    axes = {"nmi": "subset.nmi", "seed": "seed", "supervision": "supervision"}
    cells = expand({"nmi": [0.1, 0.5], "seed": [0], "supervision": ["language", "labels", "self"]}, axes)
    ids = [c.id for c in cells]
    for cell in cells:
        if cell.knobs["supervision"] == "self":
            assert cell.twin == cell.id.replace("self", "language") and ids.index(cell.twin) < ids.index(cell.id)
            assert "supervision=self" in cell.overrides


def _three_arm_runs() -> pd.DataFrame:
    """A synthetic sweep of three arms: the self arm has probe metrics only, as its fits log."""
    rng = np.random.default_rng(0)
    rows = []
    for nmi, size, seed, arm in itertools.product((0.1, 0.4, 0.75), (1600, 3200), (0, 1, 2),
                                                  ("language", "labels", "self")):
        probe = 0.6 - 0.3 * nmi + rng.normal(0, 0.01) - 0.1 * (arm == "self")
        row = {"nmi": nmi, "size": size, "seed": seed, "supervision": arm,
               "eval/probe/unseen/object_top1": probe, "eval/probe/seen/object_top1": probe + 0.2}
        if arm != "self":
            row.update({"eval/unseen/object_top1": probe - 0.05, "eval/seen/object_top1": probe + 0.1})
        if arm == "language":
            row.update({"eval/unseen/pair_top1": probe - 0.2, "eval/seen/pair_top1": probe, "eval/czsl/auc": 0.1})
        rows.append(row)
    return pd.DataFrame(rows)


def test_a_sweep_report_shows_the_self_arm_by_its_probe(tmp_path):
    runs = _three_arm_runs()
    paths = write_report(runs, tmp_path, ["nmi", "size", "seed", "supervision"], title="three arms")
    for name in ("acc_vs_nmi.png", "acc_vs_size.png", "robustness.png", "effective_robustness.png"):
        assert paths[name].stat().st_size > 10_000
    probe = pd.read_csv(paths["tables/eval_probe_unseen_object_top1.csv"])
    assert set(probe["supervision"]) == {"language", "labels", "self"}
    assert "self" not in set(pd.read_csv(paths["tables/eval_unseen_pair_top1.csv"])["supervision"])
    effects = pd.read_csv(paths["effects.csv"])
    self_slopes = effects[(effects["supervision"] == "self") & (effects["x"] == "nmi")]
    assert set(self_slopes["metric"]) == {"eval/probe/unseen/object_top1", "eval/probe/seen/object_top1"}
    assert (self_slopes["slope"] < 0).all()
    report = paths["report.md"].read_text()
    assert "(image-only arm, two views (self-supervised)), probe-unseen-object top-1 changes by -0." in report
    gaps = pd.read_csv(paths["supervision_gap.csv"])  # language − labels; the self arm takes no part
    assert len(gaps) and "self" not in " ".join(gaps.columns)
