"""Selection on a pool of realistic captions: parse with the built-in vocabulary, then sweep NMI at one size."""
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_filters.label import label_captions, load_labels
from data_filters.select import feasible_nmi_range, pair_counts, select_many
from data_filters.vocab import plural

ATTRIBUTES = ["red", "blue", "green", "yellow", "black", "white", "wooden", "metal", "striped",
              "spotted", "fluffy", "shiny", "rusty", "old", "small", "plastic"]
OBJECTS = ["sea lion", "golden retriever", "sports car", "tabby cat", "teapot", "umbrella", "bicycle",
           "goose", "wolf", "bus", "chair", "box"]
TEMPLATES = ["a photo of a {a} {o}.", "{A} {os} on the beach", "two {a} {os} and a dog",
             "A close-up of the {a} lovely {o} in the garden", "my {a}-looking {o}, taken yesterday",
             "there is a {a} {o} next to the house", "{a} {o}"]
NOISE = ["a view of the city at night", "a fluffy white dog on a sofa", "sunset over the sea"]


def realistic_captions(n: int, seed: int = 0) -> list[str]:
    """Captions with a coupled joint: each object favours two attributes, half the time."""
    rng = random.Random(seed)
    favourite = {o: rng.sample(ATTRIBUTES, 2) for o in OBJECTS}
    out = []
    for _ in range(n):
        if rng.random() < 0.1:
            out.append(rng.choice(NOISE))  # no pair, or two attributes on one object: not labelled
            continue
        o = rng.choice(OBJECTS)
        a = rng.choice(favourite[o]) if rng.random() < 0.5 else rng.choice(ATTRIBUTES)
        text = rng.choice(TEMPLATES).format(a=a, A=a.capitalize(), o=o, os=plural(o))
        out.append(text)
    return out


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("captions")
    captions = realistic_captions(12000)
    pq.write_table(pa.table({"key": [f"c{i:06d}" for i in range(len(captions))], "caption": captions}),
                   folder / "captions.parquet")
    done = label_captions([folder / "captions.parquet"], "builtin", folder / "labels.parquet", uid_column="key")
    assert 0.85 * done["captions"] < done["labelled"] < done["captions"]  # noise captions left out
    return folder / "labels.parquet"


def test_parser_recovers_every_generated_pair(labels):
    table = pq.read_table(labels).to_pydict()
    assert set(table["object"]) == set(OBJECTS)
    assert set(table["attribute"]) == set(ATTRIBUTES)


def test_five_targets_at_one_size_hit_nmi_with_equal_marginals(labels):
    uids, a_idx, o_idx, attributes, objects = load_labels(labels)
    size = 3000
    lo, hi = feasible_nmi_range(pair_counts(a_idx, o_idx, len(attributes), len(objects)), size)
    targets = np.linspace(lo + 0.02, hi - 0.02, 5).round(3).tolist()
    subsets = select_many(uids, a_idx, o_idx, attributes, objects, size=size, nmi_targets=targets, seed=0)
    for target, sub in zip(targets, subsets):
        assert len(sub.uids) == size
        assert abs(sub.stats["nmi"] - target) <= 0.01
    first = subsets[0].manifest
    for sub in subsets[1:]:
        for key in ("attribute_marginal", "object_marginal"):
            p, q = first[key], sub.manifest[key]
            assert 0.5 * sum(abs(p[k] - q.get(k, 0.0)) for k in p) <= 0.01
