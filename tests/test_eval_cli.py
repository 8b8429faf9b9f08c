"""`aotrain eval` end to end on the smoke run's checkpoint: same numbers as the callback, MLflow, bad inputs."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import run_cli, run_cli_here
from data_filters.contamination import training_pairs
from data_filters.vocab import load_vocabulary


def _run_dir(root: Path) -> Path:
    return next((root / "runs").glob("toy_low_nmi-*"))


def _world(root: Path) -> Path:
    return next((root / "toyworld").glob("toyworld-*"))


@pytest.fixture
def smoke_copy(smoke_fit, tmp_path):
    """The smoke output root copied, its run pointing at the copied MLflow store (tests may write to it)."""
    root = tmp_path / "root"
    shutil.copytree(smoke_fit[0], root)
    pointer = _run_dir(root) / "mlflow.json"
    info = json.loads(pointer.read_text())
    info["tracking_uri"] = f"sqlite:///{root}/mlflow.db"
    pointer.write_text(json.dumps(info))
    return root


def _assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("aotrain eval: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_eval_reproduces_the_callback_numbers(smoke_copy):
    root = smoke_copy  # eval writes <run_dir>/eval-last-run/
    run_dir = _run_dir(root)
    proc = run_cli("eval", f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unseen/pair_top1" in proc.stdout and "czsl/auc" in proc.stdout
    callback = json.loads((run_dir / "eval" / "metrics.json").read_text())
    command = json.loads((run_dir / "eval-last-run" / "metrics.json").read_text())
    assert set(command) == set(callback) and "alt/unseen/pair_top1" in command  # both renderers, as the callback
    for key, value in callback.items():
        assert command[key] == pytest.approx(value, abs=1e-6), key
    assert (run_dir / "eval-last-run" / "czsl_curve.png").stat().st_size > 0


def test_eval_logs_into_the_checkpoints_own_run(smoke_copy):
    run_dir = _run_dir(smoke_copy)
    proc = run_cli("eval", f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", "log_to=checkpoint",
                   root=smoke_copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pointer = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(pointer["tracking_uri"])
    history = client.get_metric_history(pointer["run_id"], "eval/unseen/pair_top1")
    assert sorted(m.step for m in history) == [2, 4, 4]  # the callback's two points, then ours at the ckpt's step
    assert "eval/czsl/best_hm" in client.get_run(pointer["run_id"]).data.metrics
    assert "eval-last-run" in {a.path for a in client.list_artifacts(pointer["run_id"])}


def test_eval_open_clip_weights_into_a_new_run(smoke_copy, tmp_path):
    # open_clip_train's format: {"state_dict": ...} with DDP's "module." prefix.
    ckpt = torch.load(_run_dir(smoke_copy) / "checkpoints" / "last.ckpt", weights_only=True)
    state = {"module." + k[len("net."):]: v for k, v in ckpt["state_dict"].items()}
    weights = tmp_path / "micro.pt"
    torch.save({"epoch": 1, "state_dict": state}, weights)
    bench = _world(smoke_copy) / "imagenet_ao"
    proc = run_cli("eval", "model_name=toy-vit-micro", f"weights={weights}", f"benchmark={bench}",
                   "templates=simple", "log_to=new", root=smoke_copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = smoke_copy / "eval" / "toy-vit-micro-micro-imagenet_ao"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"seen/pair_top1", "unseen/pair_open_top1", "czsl/auc"} <= set(metrics)
    client = MlflowClient(f"sqlite:///{smoke_copy}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("aotrain").experiment_id],
                              filter_string="tags.`aotrain.kind` = 'eval'")
    assert len(runs) == 1 and runs[0].data.params["model"] == "toy-vit-micro"
    assert runs[0].data.metrics["eval/seen/pair_top1"] == pytest.approx(metrics["seen/pair_top1"])


def test_contamination_guard_reports_training_pairs(smoke_fit, tmp_path):
    root, _ = smoke_fit
    world = _world(root)
    manifest = next(world.glob("subsets/*/subset/manifest.json"))
    out = tmp_path / "guard"
    proc = run_cli("eval", f"checkpoint={_run_dir(root) / 'checkpoints' / 'last.ckpt'}", f"seen_from={manifest}",
                   f"out={out}", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "contamination.json").read_text())
    trained = {(p["attribute"], p["object"]) for p in report["pairs"]}
    assert report["pairs_in_training"] == len(trained) > 0
    assert all(p["splits"] == ["alt/seen", "seen"] for p in report["pairs"])  # held-out pairs never reached training
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seen/n_pairs"] == len(trained) and metrics["unseen/n_pairs"] == 120 - len(trained)

    # The same pairs whichever form the training data takes: manifest, subset parquet, captions.
    vocab = load_vocabulary(f"world:{world}")
    from_manifest = training_pairs(manifest, vocab)
    assert from_manifest == training_pairs(manifest.parent / "subset.parquet", vocab)
    held_out = {tuple(p) for p in json.loads((world / "world.json").read_text())["held_out_pairs"]}
    assert not held_out & set(training_pairs(world / "pool", vocab))


def _bench_with(tmp_path: Path, folders: dict[str, bool]) -> Path:
    bench = tmp_path / "bench"
    for name, with_image in folders.items():
        (bench / name).mkdir(parents=True)
        if with_image:
            Image.new("RGB", (32, 32), (200, 0, 0)).save(bench / name / "a.png")
    return bench


def test_eval_bad_inputs_get_one_clear_error(smoke_fit, tmp_path):
    root, _ = smoke_fit
    run_dir = _run_dir(root)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in run_dir.iterdir())
    _assert_user_error(run_cli_here("eval", root=root), "nothing to evaluate")
    _assert_user_error(run_cli_here("eval", f"checkpoint={tmp_path / 'nope.ckpt'}", root=root),
                       "checkpoint not found", "nope.ckpt")
    _assert_user_error(run_cli_here("eval", f"checkpoint={run_dir / 'config.yaml'}", root=root), "cannot read")
    _assert_user_error(run_cli_here("eval", f"checkpoint={last}", "model_name=toy-vit-tiny", root=root),
                       "do not fit model toy-vit-tiny", "differ in shape")
    _assert_user_error(run_cli_here("eval", f"checkpoint={last}", "model_name=no-such-model", root=root),
                       "unknown model")
    empty = _bench_with(tmp_path / "e", {"red circle": False, "blue square": False})
    _assert_user_error(run_cli_here("eval", f"checkpoint={last}", f"benchmark={empty}", root=root), "no images")
    odd = _bench_with(tmp_path / "o", {"red circle": True, "furry frog": True})
    _assert_user_error(run_cli_here("eval", f"checkpoint={last}", f"benchmark={odd}",
                               f"vocabulary=world:{_world(root)}", root=root),
                       "do not name a pair", "'furry frog'")
    _assert_user_error(run_cli_here("eval", f"checkpoint={last}", "log_to=somewhere", root=root), "log_to")
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing half-written


def test_eval_help_lists_its_options():
    proc = run_cli("eval", "--help")
    assert proc.returncode == 0
    for option in ("checkpoint=PATH", "benchmark=DIR", "seen_from=PATH", "log_to="):
        assert option in proc.stdout
