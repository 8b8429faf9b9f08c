"""Evaluation split across ranks (evaluation/distributed.py): which batches each rank encodes, and on
two gloo processes the very result of one process (metrics, tables, CZSL curve), each rank having
encoded only its slice; in lockstep (sharded weights) every rank makes the same number of forward
calls. The DDP training callback end to end: tests/test_distributed.py."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evaluation import HeadModel, ZeroShotModel, evaluate
from evaluation.distributed import RankSlice, one_process_batches
from test_evaluation import SEEN, UNSEEN, _splits, _tiny_clip, _write_root

TEMPLATES = ["a photo of a {}.", "{}"]


@pytest.mark.parametrize("sizes,batch_size,world", [([200, 400], 256, 2), ([7, 5], 3, 2), ([7, 5], 3, 3),
                                                      ([10], 100, 2), ([64] * 5, 64, 4)])
def test_ranks_share_the_one_process_batches_in_order(sizes, batch_size, world):
    alone = one_process_batches(sizes, batch_size)
    parts = [RankSlice(r, world).batches(sizes, batch_size) for r in range(world)]
    assert sum(parts, []) == alone  # every batch once, rank 0's first: concatenating gives one process's order
    images = [sum(stop - start for _, start, stop in p) for p in parts]
    assert max(images) <= sum(sizes) / world + batch_size  # a batch more than an equal share at most
    # In lockstep every rank ends with as many forward calls as the busiest one.
    calls = [len(p) + RankSlice(r, world, lockstep=True).idle_calls(sizes, batch_size) for r, p in enumerate(parts)]
    assert calls == [max(map(len, parts))] * world
    assert all(RankSlice(r, world).idle_calls(sizes, batch_size) == 0 for r in range(world))


def test_a_ranks_images_are_one_range_per_split_starting_at_a_batch_boundary():
    # Batches (0,0,3) (0,3,6) (0,6,7) (1,0,3) (1,3,5); their middle images 1.5 4.5 6.5 8.5 11 of 12.
    assert RankSlice(0, 2).ranges([7, 5], 3) == [(0, 0, 6)]
    assert RankSlice(1, 2).ranges([7, 5], 3) == [(0, 6, 7), (1, 0, 5)]
    assert RankSlice(1, 3).ranges([7, 5], 3) == [(0, 3, 7)]
    assert RankSlice(0, 2).ranges([10], 100) == []  # more ranks than batches: nothing to encode
    assert RankSlice(1, 2).ranges([10], 100) == [(0, 0, 10)]


def _models():
    """The same seeded tiny CLIP in every process, as a zero-shot model (text in batches of 4 prompts,
    so that the text side is split too) and as a two-headed classifier; `calls` counts forward calls."""
    model, tokenizer = _tiny_clip()
    calls = {"image": 0, "text": 0, "prompts": 0}

    def encode_image(images):
        calls["image"] += 1
        return model.encode_image(images)

    def encode_text(tokens):
        calls["text"] += 1
        calls["prompts"] += len(tokens)
        return model.encode_text(tokens)

    def classify(images):  # [B, 32] features read as logits of 3 objects and 3 attributes
        feats = encode_image(images)
        return {"object": feats[:, :3], "attribute": feats[:, 3:6]}

    heads = {"object": ["circle", "square", "sea lion"], "attribute": ["red", "green", "blue"]}
    return ZeroShotModel(encode_image, encode_text, tokenizer, text_batch_size=4), HeadModel(classify, heads), calls


# (name, model kind, splits kept, batch size, lockstep): with batch 100 each split is one batch; with one
# split, one rank has none.
CASES = [("clip", "clip", ("unseen", "seen"), 3, False), ("clip-lockstep", "clip", ("unseen", "seen"), 3, True),
         ("clip-big-batch", "clip", ("unseen", "seen"), 100, True), ("unseen-only", "clip", ("unseen",), 100, True),
         ("heads", "heads", ("unseen", "seen"), 4, False)]
LOCKSTEP = {case[0]: case[4] for case in CASES}


def _evaluate(case, world, rank_slice=RankSlice()):
    _, kind, kept, batch_size, _ = case
    clip, heads, calls = _models()
    splits = {name: ds for name, ds in _splits(world).items() if name in kept}
    result = evaluate(clip if kind == "clip" else heads, splits, TEMPLATES, batch_size=batch_size,
                      rank_slice=rank_slice)
    return result, calls


def _probe(world, rank_slice=RankSlice()):
    """The linear probe on the tiny CLIP's image tower; each rank passes its half of the training batches
    (rank 0 the first: gathered in rank order they are one process's)."""
    from test_linear_probe import TRAIN, _train_batches

    from evaluation.probe_eval import probe_benchmark

    model, _ = _tiny_clip()
    batches = _train_batches(TRAIN, batch_size=3)  # 4 batches
    half = len(batches) // rank_slice.world_size
    mine = batches[rank_slice.rank * half:(rank_slice.rank + 1) * half]
    return probe_benchmark(model.encode_image, mine, _splits(world), ["circle", "square", "sea lion"], batch_size=3,
                           rank_slice=rank_slice)


def _rank_main(rank: int, world: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    torch.set_num_threads(1)  # two processes on a shared machine
    results = {}
    for case in CASES:
        result, calls = _evaluate(case, world, RankSlice.of_process_group(lockstep=case[4]))
        results[case[0]] = (result, calls)
    results["probe"] = _probe(world, RankSlice.of_process_group(lockstep=True))
    with open(f"{out}/rank{rank}.pkl", "wb") as f:
        pickle.dump(results, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every case evaluated alone and on two gloo processes: {case: (alone, [rank 0, rank 1])}, each
    (EvalResult, forward calls and prompts encoded)."""
    tmp = tmp_path_factory.mktemp("ranks")
    world = {"unseen": _write_root(tmp / "unseen", UNSEEN), "seen": _write_root(tmp / "seen", SEEN)}
    mp.start_processes(_rank_main, args=(world, str(tmp)), nprocs=2, start_method="spawn")
    ranks = [pickle.loads((tmp / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    alone = {case[0]: (_evaluate(case, world), [r[case[0]] for r in ranks]) for case in CASES}
    alone["probe"] = (_probe(world), [r["probe"] for r in ranks])
    return alone


def test_two_ranks_fit_the_one_process_linear_probe(two_ranks):
    alone, ranks = two_ranks["probe"]
    assert ranks[0] == ranks[1] == alone and alone["probe/n_train"] == 12


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_two_ranks_give_the_one_process_result(two_ranks, name):
    (alone, alone_calls), ranks = two_ranks[name]
    for result, _ in ranks:  # both ranks: bitwise the same numbers as one process
        # json: NaN (a table column a model lacks) compares equal to itself.
        assert json.dumps(result.metrics) == json.dumps(alone.metrics) and len(alone.metrics) >= 20
        assert json.dumps(result.table) == json.dumps(alone.table)
        if alone.czsl is None:
            assert result.czsl is None and name in ("heads", "unseen-only")  # no seen/unseen pair of groups
        else:
            for field in ("biases", "seen_acc", "unseen_acc", "harmonic_mean"):
                np.testing.assert_array_equal(getattr(result.czsl, field), getattr(alone.czsl, field))
    # Each rank encoded its slice only, and the slices make up the benchmark.
    scored = [result.images_scored for result, _ in ranks]
    assert sum(scored) == alone.images_scored == int(sum(v for k, v in alone.metrics.items()
                                                         if k in ("unseen/n_images", "seen/n_images")))
    if name == "unseen-only":
        assert 0 in scored  # a rank without a batch still joins the gather
    else:
        assert 0 < min(scored)
    calls = [c for _, c in ranks]
    if LOCKSTEP[name]:  # as many forward calls on both ranks
        assert calls[0]["image"] == calls[1]["image"] and calls[0]["text"] == calls[1]["text"]
    if name != "heads":  # the text classifiers' prompts are split too
        assert max(c["prompts"] for c in calls) < alone_calls["prompts"]
    if name == "clip":  # without lockstep no dummy call: each prompt encoded once in all
        assert calls[0]["prompts"] + calls[1]["prompts"] == alone_calls["prompts"]
