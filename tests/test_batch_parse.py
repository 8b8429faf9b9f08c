"""The batch parser (data_filters/batch_parse.py) against the reference CaptionParser, caption by caption.

    .venv/bin/python -m pytest tests/test_batch_parse.py -q

The reference walks each caption in Python; the batch parser applies the same rules to a whole
batch's bytes in one compiled loop (data_filters/parse_kernel.py). Every test here compares the two
on the same captions: the pairs of each caption (order included), the labels, and what
count_captions counts from them.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from data_filters.batch_parse import BatchParser
from data_filters.counts import PairCounts, count_captions
from data_filters.parse import BOUNDARY_CHARS, BOUNDARY_WORDS, CaptionParser
from data_filters.sources import iter_captions
from data_filters.vocab import Vocabulary, load_vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from parse_throughput import generate, make_words  # noqa: E402

VOCAB_YAML = """
attributes:
  colour: [red, blue, orange, {grey: [gray]}, dark red]
  size: [small, extra large]
  pattern: [{polka dot: [polka-dotted]}]
  material: [wool, and]
objects: [fox, box, wolf, goose, ball, car, orange, wool, {sea lion: [sealion]}, lion, golden retriever, square,
          retriever puppy, cup of tea, red panda, panda, new york taxi, big apple, apple]
"""


def by_caption(found, vocab, n) -> list[list[tuple[str, str]]]:
    out = [[] for _ in range(n)]
    for c, a, o in zip(found.caption.tolist(), found.attribute.tolist(), found.obj.tolist()):
        out[c].append((vocab.attributes[a], vocab.objects[o]))
    return out


def assert_same_pairs(parser: CaptionParser, captions: list[str]) -> None:
    got = by_caption(BatchParser(parser).pairs(captions), parser.vocab, len(captions))
    for caption, pairs in zip(captions, got):
        assert pairs == parser.pairs(caption), repr(caption)


def tricky_captions(vocab: Vocabulary, n: int, seed: int) -> list[str]:
    """Captions built to hit every rule: vocabulary words and names (whole, split, cut short),
    boundary words and characters, odd separators, capitals, non-ASCII, empty captions."""
    rng = random.Random(seed)
    forms = list(vocab.attribute_forms) + list(vocab.object_forms)
    pieces = forms * 3 + [f.split(" ")[0] for f in forms if " " in f] + sorted(BOUNDARY_WORDS)[:20] + \
        sorted(BOUNDARY_CHARS) + ["a", "the", "very", "photo", "x1", "7", "?!", "..."]
    separators = [" "] * 12 + ["-", "  ", "'", "_", "\t", "", ", ", "’", "/", " - "]
    out = []
    for _ in range(n):
        words = [rng.choice(pieces) for _ in range(rng.randint(0, 9))]
        text = "".join(w + rng.choice(separators) for w in words)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.3 else text.title()
        if rng.random() < 0.05:
            text = text.replace("o", "ö", 1)
        out.append(text)
    return out


@pytest.fixture(scope="module")
def parser(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.yaml"
    path.write_text(VOCAB_YAML)
    return CaptionParser(load_vocabulary(str(path)))


@pytest.mark.parametrize("window", [0, 1, 2, 4])
def test_tricky_captions_give_the_reference_pairs(parser, window):
    small = CaptionParser(parser.vocab, window)
    assert_same_pairs(small, tricky_captions(parser.vocab, 4000, seed=window))


def test_names_that_overlap_and_words_that_are_both(parser):
    assert_same_pairs(parser, [
        "a red golden retriever puppy",     # two names overlap: the reference takes the first
        "a dark red panda",                 # 'dark red' then 'panda', not 'red panda'
        "golden retriever puppy red fox",
        "an orange orange", "orange orange orange ball", "a wool wool sweater", "wool, orange",
        "a red panda and a red fox",        # 'red panda' is an object, 'red' an attribute
        "a dark red cup of tea",            # multi-word attribute and object, 'of' inside the name
        "a cup of red tea", "new york taxi", "a new york", "big apple apple",
        "a red fox", "a red fox", "", "   ", ",,,", "red", "fox", "red fox red fox",
        "and red fox", "red and fox",       # 'and' is an attribute here, so not a boundary
        "ÉCLAIR red fox", "a red fox\u00a0and a blue box",
    ])


def test_benchmark_and_builtin_vocabulary_captions():
    """The benchmark corpus (benchmarks/parse_throughput.py) with the builtin vocabulary: the
    figures README gives for the batch parser are for these exact labels."""
    vocab = Vocabulary.builtin()
    parser = CaptionParser(vocab)
    captions = generate(3, 30_000, *make_words(vocab)) + tricky_captions(vocab, 3000, seed=9)
    assert_same_pairs(parser, captions)
    attr, obj = BatchParser(parser).labels(pa.array(captions))  # Arrow input, as label_captions passes it
    kinds = set()
    for caption, a, o in zip(captions, attr.tolist(), obj.tolist()):
        expected = parser.label(caption)
        got = None if a < 0 and o < 0 else (vocab.attributes[a] if a >= 0 else None, vocab.objects[o] if o >= 0 else None)
        assert got == expected, caption
        kinds.add(None if got is None else (got[0] is None, got[1] is None))
    assert kinds == {None, (False, False), (True, False), (False, True)}  # pairs, object-only, attribute-only, none


def test_toy_world_captions(small_world):
    world = small_world(n_samples=300, samples_per_shard=100)
    parser = CaptionParser(load_vocabulary(f"world:{world}"))
    captions = [c for _, c in iter_captions(world / "pool")]
    assert_same_pairs(parser, captions)


def test_every_kind_of_batch(parser):
    """Lists and Arrow arrays (sliced, chunked, large, with nulls), empty batches and captions."""
    captions = ["a red fox", "", None, "a small box, a blue wolf", "Ünïcode red fox", "red fox"]
    expected = [parser.pairs(c or "") for c in captions]
    arrow = pa.array(captions)
    batches = {"list": (captions, expected), "slice": (arrow.slice(2), expected[2:]),
               "chunked": (pa.chunked_array([arrow[:3], arrow[3:]]), expected),
               "large_string": (arrow.cast(pa.large_string()), expected), "empty list": ([], []),
               "empty captions": (["", ""], [[], []]), "nulls": (pa.array([None, None], pa.string()), [[], []])}
    for kind, (batch, pairs) in batches.items():
        assert by_caption(BatchParser(parser).pairs(batch), parser.vocab, len(pairs)) == pairs, kind


def test_numba_is_imported_only_to_parse():
    """Importing the modules that parse (and `aotrain --help`'s) does not import numba; parsing does."""
    code = ("import sys; import aotrain.cli, data_filters.counts, data_filters.label, data_filters.labelling; "
            "assert 'numba' not in sys.modules; from data_filters.batch_parse import BatchParser; "
            "from data_filters.parse import CaptionParser; from data_filters.vocab import load_vocabulary; "
            "BatchParser(CaptionParser(load_vocabulary('builtin'))); assert 'numba' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def reference_counts(captions, parser) -> PairCounts:
    """PairCounts filled caption by caption through the reference parser (PairCounts.add)."""
    counts = PairCounts(parser.vocab.attributes, parser.vocab.objects)
    for caption in captions:
        counts.add(parser.pairs(caption))
    return counts


def test_count_captions_counts_what_the_reference_counts(parser):
    captions = tricky_captions(parser.vocab, 5000, seed=3)
    counts = count_captions(((f"u{i}", c) for i, c in enumerate(captions)), parser)  # a stream of tuples
    assert counts == reference_counts(captions, parser)
    assert counts.n_multi_pair > 0 and counts.n_labelled > 0  # the corpus has both kinds
    stats = json.loads(counts.to_json())
    assert Counter({(a, o): n for a, o, n in stats["joint"]}) == reference_counts(captions, parser).joint
