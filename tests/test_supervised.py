"""The supervised twin: same tower weights, same samples in the same order, a parity check that names
what differs, and one evaluation table with the CLIP run."""
import io
import json
import shutil
import tarfile
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from aotrain.data.datamodule import ShardDataModule
from aotrain.data.shard_stream import SKIP_COLUMNS
from aotrain.modules.clip import CLIPModule
from aotrain.modules.supervised import SupervisedModule
from aotrain.parity import ITEMS, differences
from conftest import run_cli, run_cli_here

OPTIM = {"lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 1}
CAPTIONS = ["a red circle", "two blue squares", "a photo of something",  # no pair: dropped
            "a red circle and a blue square",  # two pairs: ambiguous, dropped
            "Blue circle.", "red square on a table"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vocab") / "vocab.yaml"
    path.write_text("attributes: {colour: [red, blue]}\nobjects: [circle, square]\n")
    return str(path)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """Two img2dataset-style shards of 60 samples; the caption cycles through CAPTIONS."""
    folder = tmp_path_factory.mktemp("pool")
    for shard in range(2):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i in range(30):
                key, n = f"{shard:05d}{i:04d}", shard * 30 + i
                buf = io.BytesIO()
                Image.new("RGB", (32, 32), (n * 4 % 256, 0, 0)).save(buf, format="PNG")
                for suffix, data in (("png", buf.getvalue()), ("txt", CAPTIONS[n % len(CAPTIONS)].encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": 30, "00001.tar": 30}))
    return folder


def _twins(pool, vocab, **kw):
    common = dict(batch_size=8, num_workers=0, shuffle_buffer=16, seed=3, vocabulary=vocab, require_label=True)
    return (ShardDataModule(str(pool), "toy-vit-micro", targets="captions", **common, **kw),
            ShardDataModule(str(pool), "toy-vit-micro", targets="labels", **common, **kw))


def test_twins_see_the_same_samples_in_the_same_order(pool, vocab):
    clip, sup = _twins(pool, vocab)
    keys = [s["__key__"] for s in clip.stream().labelled_samples()]
    assert keys == [s["__key__"] for s in sup.stream().labelled_samples()]
    assert len(keys) == 40  # 2 of every 6 captions name no single pair
    batches = {}
    for name, dm in (("clip", clip), ("sup", sup)):
        torch.manual_seed(0)  # the train transform's random crop draws from it
        batches[name] = list(dm.train_dataloader())
    assert len(batches["clip"]) == len(batches["sup"]) == 40 // 8
    for (img_c, tokens, drop_c), (img_s, labels, drop_s) in zip(batches["clip"], batches["sup"]):
        assert torch.equal(img_c, img_s) and torch.equal(drop_c, drop_s)
        assert tokens.shape == (8, 32) and labels.shape == (8, 2)  # micro config: 32-token context
    # Every unlabelled sample is counted once, with the next labelled one (so a trailing run is not).
    stream = sup.stream()
    stream.epoch = 1  # the loader's first epoch
    everything = [s["caption"] for s in stream.samples()]
    unlabelled = [c in (CAPTIONS[2], CAPTIONS[3]) for c in everything]
    trailing = len(unlabelled) - 1 - max(i for i, u in enumerate(unlabelled) if not u)
    unlabelled_column = SKIP_COLUMNS.index("unlabelled")
    assert sum(int(b[2][:, unlabelled_column].sum()) for b in batches["sup"]) == sum(unlabelled) - trailing == 20 - trailing
    # Labels are (attribute, object) indices in the vocabulary's sorted names.
    by_key = {s["__key__"]: s["label"] for s in sup.stream().labelled_samples()}
    assert set(by_key.values()) == {("red", "circle"), ("blue", "square"), ("blue", "circle"), ("red", "square")}


def test_label_targets_need_a_vocabulary_and_the_label_rule(pool, vocab):
    with pytest.raises(ValueError, match="need a vocabulary"):
        ShardDataModule(str(pool), "toy-vit-micro", targets="labels", require_label=True)
    with pytest.raises(ValueError, match="require_label=true"):
        ShardDataModule(str(pool), "toy-vit-micro", targets="labels", vocabulary=vocab)


def test_twins_start_from_the_same_tower_weights(vocab):
    L.seed_everything(7, verbose=False)
    clip = CLIPModule("toy-vit-micro", OPTIM, total_steps=10)
    L.seed_everything(7, verbose=False)
    sup = SupervisedModule("toy-vit-micro", OPTIM, total_steps=10, vocabulary=vocab, heads=["object", "attribute"])
    a, b = clip.vision_tower().state_dict(), sup.vision_tower().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert clip.vision_parameter_count() == sup.vision_parameter_count()
    out = sup.classify_image(torch.zeros(3, 3, 32, 32))
    assert out["object"].shape == (3, 2) and out["attribute"].shape == (3, 2)
    with pytest.raises(ValueError, match="heads"):
        SupervisedModule("toy-vit-micro", OPTIM, total_steps=10, vocabulary=vocab, heads=["pair"])


def test_parity_names_every_item_that_differs():
    record = {"vision_tower": {"width": 64, "layers": 2}, "vision_parameters": 1000,
              "image_transforms": {"train": "A", "eval": "B"}, "data": {"checksum": "abc", "seed": 0},
              "global_batch": 32, "max_steps": 4, "schedule": {"lr": 0.001}, "precision": "32-true"}
    assert differences(record, json.loads(json.dumps(record))) == []
    changed = {"vision_tower": {"width": 128, "layers": 2}, "vision_parameters": 2000,
               "image_transforms": {"train": "A", "eval": "C"}, "data": {"checksum": "abd", "seed": 0},
               "global_batch": 64, "max_steps": 8, "schedule": {"lr": 0.002}, "precision": "bf16-mixed"}
    assert set(changed) == set(ITEMS)
    for item, value in changed.items():
        lines = differences({**record, item: value}, record)
        assert len(lines) == 1 and lines[0].startswith(item), lines


@pytest.fixture(scope="module")
def twin_root(smoke_fit, tmp_path_factory):
    """The smoke output root copied (the CLIP twin's run), so the tests may add runs to its store."""
    root = tmp_path_factory.mktemp("twins") / "root"
    shutil.copytree(smoke_fit[0], root)
    return root


def _clip_run(root: Path) -> Path:
    return next((root / "runs").glob("toy_low_nmi-*"))


def test_supervised_twin_through_the_cli_shares_the_table(twin_root):
    clip_run = _clip_run(twin_root)
    proc = run_cli("fit", "recipe=toy_low_nmi_supervised", "debug=smoke", f"parity.twin={clip_run}", root=twin_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sup_run = next((twin_root / "runs").glob("toy_low_nmi_supervised-*"))
    assert json.loads((sup_run / "parity.json").read_text()) == json.loads((clip_run / "parity.json").read_text())

    client = MlflowClient(f"sqlite:///{twin_root}/mlflow.db")
    runs = {}
    for run_dir in (clip_run, sup_run):
        run = client.get_run(json.loads((run_dir / "mlflow.json").read_text())["run_id"])
        runs[run.data.params["supervision"]] = run
    clip, sup = runs["clip"].data, runs["supervised"].data
    assert {k: v for k, v in clip.params.items() if k.startswith("parity_")} == \
        {k: v for k, v in sup.params.items() if k.startswith("parity_")}
    assert clip.params["vision_params"] == sup.params["vision_params"]
    for key in ("eval/unseen/object_top1", "eval/seen/object_top1", "eval/chance/object_top1"):
        assert key in clip.metrics and key in sup.metrics
    assert sup.metrics["eval/chance/object_top1"] == clip.metrics["eval/chance/object_top1"]
    assert "eval/unseen/pair_top1" not in sup.metrics

    # aotrain eval reads the supervised checkpoint and gives the callback's numbers.
    proc = run_cli("eval", f"checkpoint={sup_run / 'checkpoints' / 'last.ckpt'}", root=twin_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    callback = json.loads((sup_run / "eval" / "metrics.json").read_text())
    command = json.loads((sup_run / "eval-last-run" / "metrics.json").read_text())
    assert command.keys() == callback.keys()
    assert all(command[k] == pytest.approx(v, abs=1e-6) for k, v in callback.items())


def test_a_run_that_is_not_a_twin_stops_before_training(twin_root):
    before = sorted(p.name for p in (twin_root / "runs").iterdir())
    proc = run_cli_here("fit", "recipe=toy_low_nmi_supervised", "debug=smoke", "data.batch_size=16",
                        "trainer.max_steps=8", f"parity.twin={_clip_run(twin_root)}", root=twin_root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("aotrain fit: error:"))
    assert "global_batch: this run 16, twin 32" in line and "max_steps: this run 8, twin 4" in line
    assert sorted(p.name for p in (twin_root / "runs").iterdir()) == before
