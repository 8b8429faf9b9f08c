"""`aotrain fit` end to end (smoke config): the run, its metrics and artifacts in a real MLflow store."""
import json
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import run_cli, run_cli_here

EVAL_METRICS = [f"eval/{split}/{m}" for split in ("unseen", "seen")
                for m in ("pair_top1", "pair_top5", "object_top1", "attribute_top1")]


def _client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")


def test_fit_prints_where_everything_is(smoke_fit):
    root, proc = smoke_fit
    for label in ("tracking URI", "MLflow run", "checkpoint", "eval/unseen/pair_top1".split("/", 1)[1]):
        assert label in proc.stdout
    summary = json.loads(next((root / "runs").glob("*/summary.json")).read_text())
    assert Path(summary["last_checkpoint"]).is_file()
    assert summary["tracking_uri"] == f"sqlite:///{root}/mlflow.db"


def test_fit_writes_one_mlflow_run_with_params_metrics_artifacts(smoke_fit):
    root, _ = smoke_fit
    client = _client(root)
    summary = json.loads(next((root / "runs").glob("toy_low_nmi-*/summary.json")).read_text())
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["recipe"] == "toy_low_nmi" and params["model"] == "toy-vit-micro"
    # trained on a subset of the mixture pool selected at the recipe's NMI target
    assert params["world_joint"] == "mixture" and params["data_nmi_target"] == "0.09"
    assert abs(float(params["data_nmi"]) - 0.09) <= 0.005 and params["subset_size"] == "300"
    assert float(params["world_pool_nmi"]) > float(params["data_nmi"])
    for name in EVAL_METRICS:
        assert 0.0 <= run.data.metrics[name] <= 1.0, name
    # evaluated every 2 steps of 4: the history has both points
    history = client.get_metric_history(run.info.run_id, "eval/unseen/pair_top1")
    assert sorted(m.step for m in history) == [2, 4]
    assert "train/loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "eval", "manifest.json"} <= artifacts
    eval_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"metrics.json", "eval_table.csv"} <= eval_files


def test_same_config_and_seed_give_the_same_numbers_and_reuse_the_world(smoke_fit, tmp_path):
    root = tmp_path / "root"  # a copy: other tests (other workers) read the smoke root while this fit runs
    shutil.copytree(smoke_fit[0], root)  # modification times kept: the cached stages still match
    worlds = sorted((root / "toyworld").rglob("*"))
    client = _client(root)
    experiment = client.get_experiment_by_name("aotrain")
    before = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    proc = run_cli("fit", "debug=smoke", root=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted((root / "toyworld").rglob("*")) == worlds  # world, labels, subset, shards reused
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == len(before) + 1
    first, again = runs[0], runs[-1]
    for name in ["train/loss", *EVAL_METRICS]:
        a = [m.value for m in client.get_metric_history(first.info.run_id, name)]
        b = [m.value for m in client.get_metric_history(again.info.run_id, name)]
        assert a == b, name


def test_real_data_path_trains_on_given_shards_and_benchmark(smoke_fit, tmp_path):
    """No toy world: a pool folder and an ImageNet-AO folder given by path, as for CC12M."""
    world = next((smoke_fit[0] / "toyworld").iterdir())
    # In this process: the CLI path of a fit is the smoke fit's; here what counts is what it trained on.
    proc = run_cli_here("fit", "recipe=null", "~world", f"data.pool={world}/pool", "eval=imagenet_ao",
                        f"eval.benchmarks.imagenet_ao={world}/imagenet_ao/unseen", "model.name=toy-vit-micro",
                        "data.batch_size=32", "data.num_workers=0", "trainer.max_steps=2", "eval.num_workers=0",
                        "trainer.enable_progress_bar=false", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "toyworld").exists()
    summary = json.loads(next((tmp_path / "runs").glob("run-*/summary.json")).read_text())
    assert 0 <= summary["metrics"]["imagenet_ao/pair_top1"] <= 1
    run = _client(tmp_path).get_run(summary["run_id"])
    assert run.data.params["data_pool"] == f"{world}/pool" and "data_nmi" not in run.data.params


def test_subset_pairs_sets_the_number_of_distinct_pairs(tmp_path):
    """Diversity as a knob: subset.pairs=K trains on exactly K distinct attribute-object pairs."""
    proc = run_cli_here("fit", "debug=smoke", "subset.nmi=null", "subset.pairs=40", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at 40 distinct pairs" in proc.stderr
    summary = json.loads(next((tmp_path / "runs").glob("toy_low_nmi-*/summary.json")).read_text())
    params = _client(tmp_path).get_run(summary["run_id"]).data.params
    assert params["data_distinct_pairs"] == "40" and params["subset_size"] == "300"
