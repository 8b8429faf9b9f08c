"""Tests for the `evaluation` package (ImageNet-AO zero-shot evaluation).

A tiny synthetic ImageNet-AO world: the top half of each image is the
attribute's colour, the bottom half a grey level that encodes the object.  A
hand-written "oracle" model reads those pixels (image side) and the concept
words (text side) into the same one-hot space, so its accuracies are known.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data_filters.vocab import Vocabulary
from evaluation import (
    SIMPLE_TEMPLATES,
    AOFolder,
    EvalResult,
    HeadModel,
    UnreadableImageError,
    ZeroShotModel,
    evaluate,
    load_benchmark,
    resolve_templates,
    text_classifier,
)
from evaluation.evaluate import object_marginal
from evaluation.metrics import class_mean_accuracy

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
OBJECTS = ["circle", "square", "sea lion"]  # grey level index: 0, 1, 2
ATTRS = ["red", "green", "blue"]  # channel index: 0, 1, 2
ATTR_VOCAB = ["red", "green", "blue", "yellow"]
VOCAB = Vocabulary.build({a: [] for a in ATTR_VOCAB}, {o: [] for o in OBJECTS}, {a: "colour" for a in ATTR_VOCAB})
UNSEEN = ["red circle", "green_circle", "blue_square", "red_sea_lion"]
SEEN = ["red square", "green square", "blue circle"]
ALL_PAIRS = sorted(
    [("red", "circle"), ("green", "circle"), ("blue", "square"), ("red", "sea lion"),
     ("red", "square"), ("green", "square"), ("blue", "circle")]
)


def _image(attr: str, obj: str) -> Image.Image:
    img = Image.new("RGB", (32, 32), COLOURS[attr])
    grey = 127 * OBJECTS.index(obj) if obj in OBJECTS else 0
    img.paste((grey, grey, grey), (0, 16, 32, 32))  # bottom half encodes the object
    return img


def _write_root(root: Path, folders: list[str], per_pair: int = 2) -> Path:
    for name in folders:
        d = root / name
        d.mkdir(parents=True)
        words = re.split(r"[ _]+", name)
        attr, obj = words[0], " ".join(words[1:])
        if attr not in COLOURS:  # e.g. "dark_red_circle": use the next word's colour
            attr = words[1]
        for i in range(per_pair):
            _image(attr, obj).save(d / f"img{i}.png")
    return root


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    unseen = _write_root(tmp_path / "unseen", UNSEEN + ["dark_red_circle"])
    (unseen / "yellow circle").mkdir()  # empty pair folder
    (unseen / "nosplit").mkdir()  # no separator: never parses
    (unseen / "nosplit" / "a.png").write_bytes(b"")
    (unseen / "blue_square" / "broken.png").write_bytes(b"not a png at all")
    (unseen / "red circle" / "notes.txt").write_text("ignored: not an image")
    seen = _write_root(tmp_path / "seen", SEEN)
    return {"unseen": unseen, "seen": seen}


def _splits(world, **kw) -> dict[str, AOFolder]:
    return {s: AOFolder(p, vocab=VOCAB, skip_unknown=True, **kw) for s, p in world.items()}


def _oracle(object_shift: int = 0, tokenizer=None) -> ZeroShotModel:
    return ZeroShotModel(make_encode_image(object_shift), oracle_encode_text, tokenizer or oracle_tokenizer)


# ---------------------------------------------------------------- fake model
# Concept space: D = 3 attributes + 3 objects.  Test scaffolding, not a mock.
CONCEPTS = ATTRS + OBJECTS


def oracle_tokenizer(texts: list[str]) -> torch.Tensor:
    """[B, 8] ids of the concept phrases found in each text (1-based, 0 = pad)."""
    out = torch.zeros(len(texts), 8, dtype=torch.long)
    for b, text in enumerate(texts):
        text, ids = text.lower(), []
        for i, phrase in sorted(enumerate(CONCEPTS), key=lambda x: -len(x[1])):  # longest first
            if re.search(rf"\b{phrase}\b", text):
                ids.append(i + 1)
                text = re.sub(rf"\b{phrase}\b", " ", text)
        out[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def oracle_encode_text(tokens: torch.Tensor) -> torch.Tensor:
    return F.one_hot(tokens, len(CONCEPTS) + 1)[:, :, 1:].sum(1).float()  # [B, D]


def make_encode_image(object_shift: int = 0):
    def encode_image(images: torch.Tensor) -> torch.Tensor:  # [B,3,32,32] in [0,1] -> [B, D]
        attr = images[:, :, 4, 16].argmax(dim=1)  # colour channel
        obj = (images[:, 0, 28, 16] * 255 / 127).round().long()  # grey level
        obj = (obj + object_shift) % len(OBJECTS)
        return F.one_hot(attr, len(CONCEPTS)).float() + F.one_hot(obj + len(ATTRS), len(CONCEPTS)).float()

    return encode_image


# ------------------------------------------------------------------ AOFolder
def test_aofolder_parses_with_vocab_and_counts_skips(world):
    ds = AOFolder(world["unseen"], vocab=VOCAB, skip_unknown=True)
    assert ds.pairs == [("blue", "square"), ("green", "circle"), ("red", "circle"), ("red", "sea lion")]
    assert ds.classnames[-1] == "red sea lion"
    # nosplit + dark_red_circle ("dark red" is no attribute); broken.png; yellow circle.
    assert ds.skipped == {"empty_folders": 1, "unreadable_images": 1, "unparsed_folders": 2}
    assert len(ds) == 8 and all(p.suffix == ".png" for p, _ in ds.samples)
    labels = [y for _, y in ds.samples]
    assert labels == sorted(labels)
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0


def test_aofolder_names_outside_the_vocabulary_are_an_error(world):
    with pytest.raises(ValueError, match=r"2 folder\(s\) .* 'dark_red_circle', 'nosplit'"):
        AOFolder(world["unseen"], vocab=VOCAB)


def test_aofolder_resolves_plurals_synonyms_and_multiword_names(tmp_path):
    vocab = Vocabulary.build({"grey": ["gray"], "red": []}, {"sea lion": [], "circle": []},
                             {"grey": "colour", "red": "colour"})
    root = _write_root(tmp_path / "r", ["red sea_lions", "red_circle"], per_pair=1)
    (root / "Gray Circle").mkdir()
    _image("red", "circle").save(root / "Gray Circle" / "a.png")
    ds = AOFolder(root, vocab=vocab)
    assert ds.pairs == [("grey", "circle"), ("red", "circle"), ("red", "sea lion")]


def test_load_benchmark_finds_splits_or_one_folder(world, tmp_path):
    splits = load_benchmark(world["unseen"].parent, vocab=VOCAB, skip_unknown=True)
    assert set(splits) == {"unseen", "seen"} and splits["seen"].pairs == _splits(world)["seen"].pairs
    assert set(load_benchmark(world["seen"], vocab=VOCAB)) == {"seen"}
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_benchmark(tmp_path / "empty")


def test_aofolder_without_vocab_splits_at_first_separator(world):
    ds = AOFolder(world["unseen"], skip_unknown=True)
    assert ("dark", "red circle") in ds.pairs and ("red", "sea lion") in ds.pairs
    assert ds.skipped == {"empty_folders": 1, "unreadable_images": 1, "unparsed_folders": 1}


def test_aofolder_deterministic_and_merges_spellings(tmp_path):
    root = _write_root(tmp_path / "r", ["red circle", "red_circle", "blue square"], per_pair=1)
    a, b = AOFolder(root), AOFolder(root)
    assert a.pairs == [("blue", "square"), ("red", "circle")]  # both spellings: one class
    assert a.samples == b.samples and len(a) == 3


def test_aofolder_unverified_bad_image_raises_naming_file(world):
    ds = AOFolder(world["unseen"], vocab=VOCAB, verify=False, skip_unknown=True)
    assert ds.skipped["unreadable_images"] == 0
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.name == "broken.png")
    with pytest.raises(UnreadableImageError, match="broken.png"):
        ds[bad]


def test_aofolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        AOFolder(tmp_path / "missing")
    (tmp_path / "only" / "red circle").mkdir(parents=True)
    with pytest.raises(ValueError, match="no <attribute object> folder with images"):
        AOFolder(tmp_path / "only")


# ---------------------------------------------------------- text classifier
def _hash_tokenizer(texts: list[str]) -> torch.Tensor:
    ids = [[1 + zlib.crc32(w.encode()) % 50 for w in t.lower().split()] for t in texts]
    out = torch.zeros(len(texts), 10, dtype=torch.long)
    for b, row in enumerate(ids):
        out[b, : len(row)] = torch.tensor(row)
    return out


def test_text_classifier_normalises_then_averages_then_renormalises():
    emb = torch.randn(51, 5, generator=torch.Generator().manual_seed(0))
    encode_text = lambda tok: emb[tok].sum(1)  # [B, L] -> [B, 5]; template words matter
    names, temps = ["red circle", "sea lion", "blue"], SIMPLE_TEMPLATES
    w = text_classifier(encode_text, _hash_tokenizer, names, temps, batch_size=5)
    assert w.shape == (3, 5)
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(3))
    for c, name in enumerate(names):
        per = F.normalize(encode_text(_hash_tokenizer([t.format(name) for t in temps])), dim=-1)
        torch.testing.assert_close(w[c], F.normalize(per.mean(0), dim=0))
    # Callable templates (open_clip's style) give the same classifier.
    lambdas = [lambda c, t=t: t.format(c) for t in temps]
    torch.testing.assert_close(text_classifier(encode_text, _hash_tokenizer, names, lambdas), w)
    with pytest.raises(ValueError, match="slot"):
        text_classifier(encode_text, _hash_tokenizer, names, ["no slot"])


def test_templates_by_name_and_class_mean():
    assert len(resolve_templates("openai")) == 80 and resolve_templates("simple") == list(SIMPLE_TEMPLATES)
    with pytest.raises(ValueError, match="unknown template set"):
        resolve_templates("fancy")
    with pytest.raises(ValueError, match="slot"):
        resolve_templates(["a photo"])
    correct = torch.tensor([True, True, False, False])
    assert class_mean_accuracy(correct, torch.tensor([0, 0, 0, 2]), 4) == pytest.approx(1 / 3)


# ------------------------------------------------------------ zero-shot eval
def test_oracle_model_is_perfect_and_text_side_is_encoded_once(world):
    calls = []
    tokenizer = lambda texts: (calls.append(len(texts)), oracle_tokenizer(texts))[1]
    model = _oracle(tokenizer=tokenizer)
    result = evaluate(model, _splits(world), SIMPLE_TEMPLATES, batch_size=1000)
    # open-world grid (its rows serve the closed world too), objects, attributes: once each, not per split
    assert calls == [4 * 9, 4 * 3, 4 * 3]
    m = result.metrics
    for s, n_pairs in (("unseen", 4), ("seen", 3)):
        for task in ("pair", "pair_open", "object", "attribute"):
            for key in ("top1", "top5", "top1_class_mean"):
                assert m[f"{s}/{task}_{key}"] == 1.0, (s, task, key)
        assert m[f"{s}/n_pairs"] == n_pairs and m[f"{s}/n_images"] == 2 * n_pairs
    assert result.candidate_pairs == ALL_PAIRS
    assert m["n_candidate_pairs"] == 7.0 and m["n_open_pairs"] == 9.0
    assert m["chance/pair_top1"] == pytest.approx(1 / 7) and m["chance/pair_open_top1"] == pytest.approx(1 / 9)
    assert m["chance/object_top1"] == pytest.approx(1 / 3)
    assert m["chance/attribute_top1"] == pytest.approx(1 / 3)
    assert m["czsl/best_hm"] == 1.0 and m["czsl/auc"] == 1.0  # a perfect model needs no calibration
    assert all(type(v) is float for v in m.values())
    assert len(result.table) == 7 and all(row["pair_top1"] == 1.0 for row in result.table)
    # A second call with the same weights reuses every text classifier.
    assert evaluate(model, _splits(world), SIMPLE_TEMPLATES).metrics == m and len(calls) == 3
    model.clear_cache()
    evaluate(model, _splits(world), SIMPLE_TEMPLATES)
    assert len(calls) == 6


def test_model_wrong_about_objects(world):
    m = evaluate(_oracle(object_shift=1), _splits(world), SIMPLE_TEMPLATES).metrics
    for s in ("unseen", "seen"):
        assert m[f"{s}/object_top1"] == 0.0
        assert m[f"{s}/attribute_top1"] == 1.0
        assert m[f"{s}/pair_open_top1"] == 0.0  # the open world holds the wrong pair it sees
        assert m[f"{s}/pair_top5"] >= m[f"{s}/pair_top1"]
        assert m[f"{s}/object_top5"] == 1.0  # top-5 capped at 3 objects


def test_seen_pairs_from_training_regroup_and_report_contamination(world):
    # Training data held one benchmark pair of the "unseen" folder: it is seen, and reported.
    trained = {("red", "square"): 5, ("green", "square"): 2, ("blue", "circle"): 1, ("red", "circle"): 7}
    result = evaluate(_oracle(), _splits(world), SIMPLE_TEMPLATES, seen_pairs=trained)
    m = result.metrics
    assert m["seen/n_pairs"] == 4 and m["unseen/n_pairs"] == 3 and m["seen/n_images"] == 8
    assert m["contamination/pairs_in_training"] == 4
    leaked = [p for p in result.contamination["pairs"] if p["splits"] == ["unseen"]]
    assert leaked == [{"attribute": "red", "object": "circle", "training_count": 7, "splits": ["unseen"]}]
    assert {r["seen"] for r in result.table if (r["attribute"], r["object"]) == ("red", "circle")} == {True}


def test_supervised_heads_share_the_table(world):
    # A "supervised" model: the oracle's readings as logits over head classes in another order, with an
    # extra object class the benchmark does not have and a synonym spelling.
    objects = ["square", "dog", "Sea_Lion", "circle"]
    attributes = ["yellow", "blue", "green", "red"]

    def classify(images):
        feats = make_encode_image()(images)  # [B, 6]: one-hot attribute (ATTRS) + one-hot object (OBJECTS)
        obj = torch.zeros(len(images), len(objects))
        obj[:, [3, 0, 2]] = feats[:, len(ATTRS):]  # OBJECTS order: circle, square, sea lion
        attr = torch.zeros(len(images), len(attributes))
        attr[:, [3, 2, 1]] = feats[:, :len(ATTRS)]  # ATTRS order: red, green, blue
        return {"object": obj, "attribute": attr}

    head = evaluate(HeadModel(classify, {"object": objects, "attribute": attributes}), _splits(world), vocab=VOCAB)
    clip = evaluate(_oracle(), _splits(world), SIMPLE_TEMPLATES)
    for s in ("unseen", "seen"):
        for task in ("object", "attribute"):
            assert head.metrics[f"{s}/{task}_top1"] == clip.metrics[f"{s}/{task}_top1"] == 1.0
        assert f"{s}/pair_top1" not in head.metrics
    assert head.metrics["chance/object_top1"] == clip.metrics["chance/object_top1"]
    assert [r["object_top1"] for r in head.table] == [r["object_top1"] for r in clip.table]
    with pytest.raises(ValueError, match="object head has no class for 1 benchmark object.*sea lion"):
        evaluate(HeadModel(classify, {"object": ["square", "dog", "seal", "circle"]}), _splits(world))


def test_import_does_not_pull_lightning_or_open_clip():
    code = "import sys, evaluation; assert 'lightning' not in sys.modules and 'open_clip' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ------------------------------------------- against a direct numpy computation
def _tiny_clip():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
        text_cfg=open_clip.CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=16)


def _numpy_classifier(model, tokenizer, names, templates) -> np.ndarray:
    """Encode each prompt alone, normalise, average per class, renormalise: [C, D]."""
    rows = []
    for name in names:
        with torch.no_grad():
            feats = np.stack([model.encode_text(tokenizer([t.format(name)]))[0].numpy() for t in templates])
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        mean = feats.mean(0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def test_accuracies_equal_a_direct_numpy_computation(world):
    model, tokenizer = _tiny_clip()
    splits = _splits(world)
    templates = ["a photo of a {}.", "{}"]
    result = evaluate(ZeroShotModel(model.encode_image, model.encode_text, tokenizer), splits, templates,
                      batch_size=3)

    pairs = sorted({p for ds in splits.values() for p in ds.pairs})
    attrs, objs = sorted({a for a, _ in pairs}), sorted({o for _, o in pairs})
    grid = [(a, o) for a in attrs for o in objs]
    classifiers = {
        "pair": (_numpy_classifier(model, tokenizer, [f"{a} {o}" for a, o in pairs], templates), pairs),
        "pair_open": (_numpy_classifier(model, tokenizer, [f"{a} {o}" for a, o in grid], templates), grid),
        "object": (_numpy_classifier(model, tokenizer, objs, templates), objs),
        "attribute": (_numpy_classifier(model, tokenizer, [f"{a} object" for a in attrs], templates), attrs),
    }
    for split, ds in splits.items():
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.no_grad():
            feats = model.encode_image(images).numpy()
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        truth = [ds.pairs[y] for _, y in ds.samples]
        for task, (w, labels) in classifiers.items():
            key = {"pair": lambda p: p, "pair_open": lambda p: p, "object": lambda p: p[1],
                   "attribute": lambda p: p[0]}[task]
            y = np.array([labels.index(key(p)) for p in truth])
            order = np.argsort(-(100.0 * feats @ w.T), axis=1)  # [N, C] best first
            top1, top5 = order[:, 0] == y, (order[:, :5] == y[:, None]).any(1)
            per_class = [top1[y == c].mean() for c in np.unique(y)]
            assert result.metrics[f"{split}/{task}_top1"] == pytest.approx(top1.mean(), abs=1e-12), (split, task)
            assert result.metrics[f"{split}/{task}_top5"] == pytest.approx(top5.mean(), abs=1e-12), (split, task)
            assert result.metrics[f"{split}/{task}_top1_class_mean"] == pytest.approx(np.mean(per_class), abs=1e-12)
        # object_marginal: softmax over the open-world pair prompts, summed per object
        logits = 100.0 * feats @ classifiers["pair_open"][0].T  # [N, A*O]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        scores = np.stack([probs[:, [i for i, (_, o) in enumerate(grid) if o == obj]].sum(1) for obj in objs], 1)
        y = np.array([objs.index(p[1]) for p in truth])
        top1 = scores.argmax(1) == y
        assert result.metrics[f"{split}/object_marginal_top1"] == pytest.approx(top1.mean(), abs=1e-12), split
    assert result.metrics["chance/object_marginal_top1"] == 1 / len(objs)


def test_object_marginal_sums_pair_probabilities_like_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 5, (64, 12))  # [B, C] pair prompts, 3 attributes x 4 objects
    pair_objects = np.tile(np.arange(4), 3)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    expected = np.stack([probs[:, pair_objects == o].sum(1) for o in range(4)], 1)  # [B, O]
    got = object_marginal(torch.from_numpy(logits), torch.from_numpy(pair_objects), 4).numpy()
    assert np.allclose(got, expected, atol=1e-6) and np.allclose(got.sum(1), 1, atol=1e-6)
    # one confident pair outweighs a spread of middling ones (a sum of logits would say the opposite)
    two = object_marginal(torch.tensor([[10.0, -10.0, 5.0, 5.0]]), torch.tensor([0, 0, 1, 1]), 2)
    assert two.argmax().item() == 0


def test_marginal_object_accuracy_credits_a_model_that_knows_objects_only_through_pairs(world):
    """A text tower that encodes a pair prompt but nothing for an object alone: object prompts are
    chance, summing the pair probabilities recovers the objects (closed and open world)."""

    def pairs_only(tokens):  # [B, 8] -> [B, D]: zero unless the prompt names an attribute
        feats = oracle_encode_text(tokens)
        return feats * (feats[:, : len(ATTRS)].sum(1, keepdim=True) > 0)

    model = ZeroShotModel(make_encode_image(), pairs_only, oracle_tokenizer)
    for open_world in (True, False):
        m = evaluate(model, _splits(world), ["{}"], open_world=open_world).metrics
        assert m["unseen/object_marginal_top1"] == 1.0 and m["seen/object_marginal_top1"] == 1.0
        # every object prompt encodes to the same (zero) feature: ties go to the first object
        assert m["unseen/object_top1"] < 1.0 and m["seen/object_top1"] < 0.5


def test_real_open_clip_model_end_to_end(world, tmp_path):
    model, tokenizer = _tiny_clip()
    from evaluation import OPENAI_IMAGENET_TEMPLATES

    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 and callable(OPENAI_IMAGENET_TEMPLATES[0])
    result = evaluate(
        ZeroShotModel(model.encode_image, model.encode_text, tokenizer), _splits(world), SIMPLE_TEMPLATES,
        batch_size=4, attribute_templates=OPENAI_IMAGENET_TEMPLATES[:3],
    )
    tasks = ("pair", "pair_open", "object", "attribute", "object_marginal")
    per_group = [f"{t}_{k}" for t in tasks for k in ("top1", "top5", "top1_class_mean")] + ["n_images", "n_pairs"]
    expected = {f"{s}/{k}" for s in ("unseen", "seen") for k in per_group}
    expected |= {"n_candidate_pairs", "n_open_pairs"} | {f"chance/{t}_top1" for t in tasks}
    assert set(result.metrics) - expected == {k for k in result.metrics if k.startswith("czsl/")}
    assert expected <= set(result.metrics)
    for s in ("unseen", "seen"):
        for k in per_group[:-2]:
            assert 0.0 <= result.metrics[f"{s}/{k}"] <= 1.0
        assert result.metrics[f"{s}/pair_top5"] >= result.metrics[f"{s}/pair_top1"]

    paths = result.write(tmp_path / "out")
    assert json.loads(paths["metrics"].read_text()) == result.metrics
    with paths["table_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and set(rows[0]) == {"split", "attribute", "object", "seen", "n", "pair_top1",
                                               "pair_top5", "pair_open_top1", "object_top1",
                                               "object_marginal_top1", "attribute_top1"}
    assert "unseen/pair_top1" in paths["table_md"].read_text()
    assert paths["czsl_png"].stat().st_size > 0 and paths["czsl_csv"].read_text().startswith("bias,")
    assert isinstance(result, EvalResult) and "| red | sea lion |" in result.to_markdown()
