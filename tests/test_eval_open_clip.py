"""`aotrain eval` of a model trained with open_clip_train: its model config .json and its epoch_N.pt.

The checkpoint is made by open_clip_train itself (synthetic data, CPU, two steps), once for the module.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli
from test_eval_cli import _assert_user_error, _bench_with

# The JSON format of open_clip's model_configs/*.json: a 2-layer width-64 ViT on 32x32 images.
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}

# What an open_clip_train user runs, with their config registered beside open_clip's own.
TRAIN = ("import sys, open_clip, open_clip_train.main as m; "
         "open_clip.add_model_config(sys.argv[1]); m.main(sys.argv[2:])")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """open_clip_train run for real: {"root", "config", "checkpoint", "bench", "eval_root" (an output root
    with an MLflow store)}."""
    root = tmp_path_factory.mktemp("open_clip_train")
    config = root / "configs" / "octest-vit.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY, indent=2))
    args = ["--model", "octest-vit", "--dataset-type", "synthetic", "--train-num-samples", "16",
            "--batch-size", "8", "--epochs", "1", "--workers", "0", "--precision", "fp32", "--seed", "0",
            "--logs", str(root / "logs"), "--name", "tiny", "--save-frequency", "1", "--report-to", "",
            "--zeroshot-frequency", "0", "--val-frequency", "0", "--warmup", "1"]
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, str(config), *args], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:  # meanwhile, the MLflow store the evaluation logs to: creating its tables takes seconds
        eval_root = root / "eval_root"
        eval_root.mkdir()
        MlflowClient(f"sqlite:///{eval_root}/mlflow.db").search_experiments()
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-4000:]
    checkpoint = root / "logs" / "tiny" / "checkpoints" / "epoch_1.pt"
    bench = _bench_with(root, {"seen/red circle": True, "seen/blue square": True,
                               "unseen/red square": True, "unseen/blue circle": True})
    return {"root": root, "config": config, "checkpoint": checkpoint, "bench": bench, "eval_root": eval_root}


@pytest.fixture(scope="module")
def evaluated(trained):
    """Three `aotrain eval` runs side by side (each a process): {name: (results folder, CompletedProcess)}.
    epoch_1: model_name=CONFIG.json weights=epoch_1.pt log_to=new; plain: the same weights saved as a plain
    state dict; wrong_config: those weights with a wider model's config."""
    root = trained["eval_root"]
    plain = root / "plain.pt"
    state = torch.load(trained["checkpoint"], weights_only=True)["state_dict"]
    torch.save(state, plain)  # what torch.save(model.state_dict()) writes
    wide = json.loads(json.dumps(TINY))
    wide["vision_cfg"]["width"] = 96
    wrong_config = root / "octest-wide.json"
    wrong_config.write_text(json.dumps(wide))
    common = (f"benchmark={trained['bench']}", "templates=simple", "num_workers=0")
    runs = {"epoch_1": (f"model_name={trained['config']}", f"weights={trained['checkpoint']}", "log_to=new"),
            "plain": (f"model_name={trained['config']}", f"weights={plain}", f"out={root / 'plain'}"),
            "wrong_config": (f"model_name={wrong_config}", f"weights={trained['checkpoint']}",
                             f"out={root / 'wrong'}")}
    with ThreadPoolExecutor(len(runs)) as pool:
        procs = pool.map(lambda args: run_cli("eval", *args, *common, root=root), runs.values())
    folders = {"epoch_1": root / "eval" / "octest-vit-epoch_1-bench", "plain": root / "plain",
               "wrong_config": root / "wrong"}
    return {name: (folders[name], proc) for name, proc in zip(runs, procs)} | {"root": root, "wrong": wrong_config}


def test_the_checkpoint_is_open_clip_trains_own(trained):
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    assert {"epoch", "name", "state_dict", "optimizer"} <= set(ckpt) and ckpt["epoch"] == 1


def test_eval_of_an_open_clip_train_checkpoint(trained, evaluated):
    out, proc = evaluated["epoch_1"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "model         octest-vit" in proc.stdout and "czsl/auc" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"seen/pair_top1", "unseen/pair_open_top1", "czsl/auc"} <= set(metrics)
    assert metrics["seen/n_images"] == metrics["unseen/n_images"] == 2

    client = MlflowClient(f"sqlite:///{evaluated['root']}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("aotrain").experiment_id],
                              filter_string="tags.`aotrain.kind` = 'eval'")
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["model"] == "octest-vit" and params["model_config"] == str(trained["config"].resolve())
    assert params["weights"] == str(trained["checkpoint"].resolve())
    assert runs[0].data.metrics["eval/seen/pair_top1"] == pytest.approx(metrics["seen/pair_top1"])
    assert runs[0].data.metrics["eval/czsl/auc"] == pytest.approx(metrics["czsl/auc"])


def test_a_plain_state_dict_gives_the_same_numbers(evaluated):
    out, proc = evaluated["plain"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    first = json.loads((evaluated["epoch_1"][0] / "metrics.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(first)


def test_wrong_config_for_the_weights_fails_in_one_line(evaluated):
    out, proc = evaluated["wrong_config"]
    _assert_user_error(proc, "do not fit model octest-wide", "differ in shape", f"built from {evaluated['wrong']}")
    assert not out.exists()  # nothing written


def test_other_wrong_inputs_get_one_clear_error(trained, tmp_path, monkeypatch, capsys):
    from aotrain.cli import main  # in this process: one start-up for several cases

    monkeypatch.setenv("AOTRAIN_OUTPUT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    not_a_config = tmp_path / "params.json"
    not_a_config.write_text(json.dumps({"model": "octest-vit", "lr": 5e-4}))
    not_weights = tmp_path / "stats.pt"
    torch.save({"epoch": 1, "name": "tiny"}, not_weights)
    config, checkpoint = trained["config"], trained["checkpoint"]
    cases = [  # (model_name, weights, fragments of the one error line)
        (tmp_path / "nope.json", checkpoint, ("model config not found", "nope.json")),
        (not_a_config, checkpoint, ("not an open_clip model config", "embed_dim, vision_cfg, text_cfg")),
        (config, not_weights, ("holds a dict with keys 'epoch', 'name'", "expected an open_clip_train checkpoint",
                               "a state dict")),
        (config, tmp_path / "nope.pt", ("weights file not found", "nope.pt")),
    ]
    for model_name, weights, fragments in cases:
        rc = main(["eval", f"model_name={model_name}", f"weights={weights}", f"benchmark={trained['bench']}"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("aotrain eval: error:")]
        assert rc == 2 and len(lines) == 1, err[-2000:]
        assert all(f in lines[0] for f in fragments), lines[0]
    assert not (tmp_path / "eval").exists()  # nothing written


def test_a_config_file_resolves_in_one_place(trained):
    from aotrain import towers

    name = towers.resolve_model_name(str(trained["config"]))
    assert name == "octest-vit" and towers.model_config(str(trained["config"])) == TINY
    model = towers.build_clip(str(trained["config"]))  # the same factory training uses
    model.load_state_dict(torch.load(trained["checkpoint"], weights_only=True)["state_dict"])
    assert towers.tokenizer(str(trained["config"]))(["a red circle"]).shape == (1, 16)
    assert towers.resolve_model_name("toy-vit-tiny") == "toy-vit-tiny"  # registered names as before
