"""Caption parsing: tricky captions with a small vocabulary, the builtin vocabulary, and a toy world.

    .venv/bin/python -m pytest tests/test_parse.py -q
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest

from data_filters.counts import count_captions
from data_filters.parse import CaptionParser
from data_filters.sources import iter_captions
from data_filters.vocab import Vocabulary, load_vocabulary, plural, split_pair_name

VOCAB_YAML = """
attributes:
  colour: [red, blue, orange, {grey: [gray]}]
  size: [small]
  pattern: [{polka dot: [polka-dotted]}]
objects: [fox, box, wolf, goose, ball, car, orange, {sea lion: [sealion]}, lion, golden retriever, square]
"""


@pytest.fixture(scope="module")
def parser(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.yaml"
    path.write_text(VOCAB_YAML)
    return CaptionParser(load_vocabulary(str(path)))


@pytest.mark.parametrize("caption, expected", [
    ("a red fox", [("red", "fox")]),
    ("A RED Fox.", [("red", "fox")]),                           # capitals, punctuation
    ("a tired fox near a redwood", []),                         # no substring matches
    ("two red foxes", [("red", "fox")]),                        # plurals: -es
    ("blue boxes", [("blue", "box")]),
    ("grey wolves", [("grey", "wolf")]),                        # irregular plural + synonym
    ("gray geese", [("grey", "goose")]),
    ("a red sea lion", [("red", "sea lion")]),                  # multi-word object, longest match
    ("blue sea-lions!", [("blue", "sea lion")]),                # hyphenated multi-word plural
    ("a red lion", [("red", "lion")]),
    ("a red golden retriever", [("red", "golden retriever")]),
    ("a red-coloured square", [("red", "square")]),             # hyphen splits; 1 word between
    ("a polka-dot ball", [("polka dot", "ball")]),              # multi-word attribute
    ("a small red ball", [("small", "ball"), ("red", "ball")]),
    ("a red very very shiny ball", []),                         # window=2 exceeded
    ("a red, shiny ball", []),                                  # punctuation is a clause boundary
    ("a red and blue ball", [("blue", "ball")]),                # "and" is a boundary (documented)
    ("the car is red", []),                                     # post-nominal: not found
    ("a red car and a blue fox", [("red", "car"), ("blue", "fox")]),
    ("an orange car", [("orange", "car")]),                     # attribute-and-object word
    ("a red orange", [("red", "orange")]),
    ("a red ball car", [("red", "ball")]),                      # first object only
    ("a red_fox", [("red", "fox")]),                            # underscores separate words
    ("the red fox’s tail", [("red", "fox")]),                   # apostrophes separate words
    ("Red\tfoxes\nand blue cars", [("red", "fox"), ("blue", "car")]),
    ("a photo of the sea", []),
    ("", []),
])
def test_pairs(parser, caption, expected):
    assert parser.pairs(caption) == expected


def test_label_rules(parser):
    assert parser.label("a red fox") == ("red", "fox")
    assert parser.label("a red fox and another red fox") == ("red", "fox")  # one distinct pair
    assert parser.label("a red fox and a blue fox") is None                 # ambiguous
    assert parser.label("no pair here") is None


@pytest.mark.parametrize("caption, expected", [
    ("a photo of a fox", (None, "fox")),                # object-only: names one object, no attribute
    ("two foxes, one more fox", (None, "fox")),         # one distinct object
    ("a fox and a ball", None),                         # two objects: which one?
    ("something red", ("red", None)),                   # attribute-only
    ("red and blue", None),                             # two attributes
    ("a fox that is red", None),                        # both sides but no pair (post-nominal): ambiguous
    ("a red fox and a ball", ("red", "fox")),           # a pair wins over a bare object
])
def test_single_side_labels(parser, caption, expected):
    """A caption without a pair names one side alone: labelled with the other side None."""
    assert parser.label(caption) == expected


def test_window_setting(tmp_path):
    v = Vocabulary.build({"red": []}, {"ball": []}, {"red": "colour"})
    assert CaptionParser(v, window=0).pairs("a red shiny ball") == []
    assert CaptionParser(v, window=1).pairs("a red shiny ball") == [("red", "ball")]


def test_plural_rules():
    assert [plural(w) for w in ["fox", "box", "cherry", "day", "wolf", "goose", "sea lion", "church"]] == [
        "foxes", "boxes", "cherries", "days", "wolves", "geese", "sea lions", "churches"]


def test_txt_vocabulary(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# comment\nattribute colour: grey, gray\nattribute: shiny\nobject: sea lion, sealion\n")
    v = load_vocabulary(str(path))
    assert v.attribute_kinds == {"grey": "colour", "shiny": "other"}
    assert CaptionParser(v).pairs("Gray sealions, shiny sea lion") == [("grey", "sea lion"), ("shiny", "sea lion")]
    path.write_text("colour red\n")
    with pytest.raises(ValueError, match="v.txt:1"):
        load_vocabulary(str(path))


def test_vocabulary_errors(tmp_path):
    with pytest.raises(ValueError, match="both"):
        Vocabulary.build({"grey": ["gray"], "silver": ["gray"]}, {}, {})
    with pytest.raises(ValueError, match="unknown vocabulary"):
        load_vocabulary("nonsense")
    with pytest.raises(FileNotFoundError):
        load_vocabulary(str(tmp_path / "missing.yaml"))
    # explicit names beat generated plurals: "glasses" stays its own object
    v = Vocabulary.build({}, {"glass": [], "glasses": []}, {})
    assert v.object_forms["glasses"] == "glasses"


def test_builtin_vocabulary():
    v = Vocabulary.builtin()
    assert len(v.objects) > 1000 and v.attribute_kinds["red"] == "colour"
    assert v.object_forms["handrail"] == "baluster" and v.object_forms["kite"] == "kite"
    p = CaptionParser(v)
    assert p.pairs("A golden retriever next to a small wooden box") == [("small", "box"), ("wooden", "box")]
    assert p.label("Two fluffy Golden Retrievers") == ("fluffy", "golden retriever")


def test_builtin_does_not_import_torch():
    code = ("import sys; import data_filters.stats_cli, data_filters.counts; from data_filters.vocab import Vocabulary; "
            "Vocabulary.builtin(); assert not {'torch', 'lightning', 'open_clip'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_benchmark_vocabulary(tmp_path):
    for name in ["unseen/red circle", "seen/blue_sea lion", "seen/light_blue_fox"]:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "0000.png").write_bytes(b"")
    v = load_vocabulary(f"benchmark:{tmp_path}")
    assert sorted(v.attributes) == ["blue", "light", "red"]
    assert sorted(v.objects) == ["blue fox", "circle", "sea lion"]
    known = Vocabulary.build({"light blue": []}, {}, {"light blue": "colour"})
    v = Vocabulary.from_benchmark(tmp_path, known=known)
    assert "light blue" in v.attributes and "fox" in v.objects and v.attribute_kinds["light blue"] == "colour"


# Benchmark folder names as ImageNet-AO copies spell them: underscores or spaces, plurals, capitals,
# multi-word attributes ("polka dot") and objects ("great white shark"), and two names of one pair.
BENCHMARK_NAMES = ["red sea_lions", "red_sea lion", "polka_dot tree frogs", "furry_great_white_sharks",
                   "wooden house finch", "Striped Tiger_Sharks", "polka dot dresses", "metallic_hammerhead_shark",
                   "fluffy_electric rays"]
BUILTIN_PAIRS = {("red", "sea lion"), ("polka dot", "tree frog"), ("furry", "great white shark"),
                 ("wooden", "house finch"), ("striped", "tiger shark"), ("polka dot", "dress"),
                 ("metallic", "hammerhead shark"), ("fluffy", "electric ray")}


def test_every_reader_of_benchmark_folders_splits_their_names_alike(tmp_path):
    """Evaluation, contamination, benchmark vocabularies and seen-pair marking all read folder names
    through data_filters.vocab.split_pair_name, with a vocabulary and without one."""
    from PIL import Image

    from data_filters.contamination import benchmark_pairs
    from evaluation.imagenet_ao import AOFolder

    for name in BENCHMARK_NAMES:
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "0.png")
    builtin = Vocabulary.builtin()
    assert {split_pair_name(n, builtin) for n in BENCHMARK_NAMES} == BUILTIN_PAIRS
    assert set(AOFolder(tmp_path, vocab=builtin).pairs) == BUILTIN_PAIRS              # aotrain eval
    assert benchmark_pairs(tmp_path, CaptionParser(builtin)) == BUILTIN_PAIRS          # filter contamination
    known = Vocabulary.from_benchmark(tmp_path, known=builtin)                         # vocabulary=benchmark:DIR
    assert set(known.attributes) == {a for a, _ in BUILTIN_PAIRS} and set(known.objects) == {o for _, o in BUILTIN_PAIRS}
    assert {known.split_pair(f"{a} {o}") for a, o in BUILTIN_PAIRS} == BUILTIN_PAIRS   # eval seen_from= marking

    plain = {split_pair_name(n) for n in BENCHMARK_NAMES}  # no vocabulary: the first word, then the rest
    assert ("polka", "dot tree frogs") in plain and ("red", "sea lions") in plain and ("red", "sea lion") in plain
    assert set(AOFolder(tmp_path).pairs) == plain
    bare = Vocabulary.from_benchmark(tmp_path)
    assert set(bare.attributes) == {a for a, _ in plain} and set(bare.objects) == {o for _, o in plain}


def test_toy_world_captions(small_world):
    """Every toy-world pool caption parses to the attribute/object in its json, or to the one side
    it names (its json's caption_names)."""
    world = small_world(n_samples=300, samples_per_shard=100)
    parser = CaptionParser(load_vocabulary(f"world:{world}"))
    truth = {}
    for shard in sorted((world / "pool").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.load(tar.extractfile(m))
                    names = meta["caption_names"]
                    truth[meta["uid"]] = (meta["attribute"] if names != "object" else None,
                                          meta["object"] if names != "attribute" else None)
    stream = iter_captions(world / "pool", uid_column="uid")
    seen = 0
    for uid, caption in stream:
        assert parser.label(caption) == truth[uid], caption
        seen += 1
    assert seen == len(truth) == 300 and stream.malformed == 0
    # the measured NMI is the one the world's pair captions were built with
    counts = count_captions(iter_captions(world / "pool"), parser)
    built = json.loads((world / "world.json").read_text())["pair_captions"]["nmi"]["nmi"]
    assert abs(counts.stats()["nmi"] - built) < 1e-9
