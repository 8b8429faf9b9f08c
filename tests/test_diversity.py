"""Diversity measures (data_filters.diversity) and selection by distinct pairs (select_subset(distinct_pairs=K)).

    .venv/bin/python -m pytest tests/test_diversity.py -q
"""
import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_filters.band_cli import band_main
from data_filters.counts import count_captions, count_files
from data_filters.diversity import DistinctCounter, TemplateMasker, caption_key, pair_diversity
from data_filters.kept_pairs import pair_order
from data_filters.label import label_captions, load_caption_keys, load_labels
from data_filters.nmi import joint_stats
from data_filters.parse import CaptionParser
from data_filters.select import InfeasibleTarget, feasible_nmi_range, feasible_pairs_range, pair_counts, select_subset
from data_filters.select_cli import select_main
from data_filters.stats_cli import main as stats_main
from data_filters.subset_files import write_subset
from data_filters.transport import largest_remainder, transport_on_cells
from data_filters.vocab import Vocabulary


def tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def pool_rows(counts: np.ndarray, seed: int = 0):
    """(uids, attr_idx, obj_idx, attributes, objects) with counts[a, o] rows of each pair, shuffled."""
    rng = np.random.default_rng(seed)
    flat = np.repeat(np.arange(counts.size), counts.ravel())
    flat = flat[rng.permutation(len(flat))]
    uids = rng.choice(10**12, size=len(flat), replace=False).astype(np.int64)
    n_o = counts.shape[1]
    return uids, flat // n_o, flat % n_o, [f"attr{i}" for i in range(counts.shape[0])], [f"obj{i}" for i in range(n_o)]


def toy_like_counts(n: int = 6000, seed: int = 0) -> np.ndarray:
    """12 attributes x 10 objects like aotrain's toy world: 2 held-out attributes per object (100 seen pairs),
    and the mixture joint: half uniform over seen pairs, half a preferred attribute per object at 0.9."""
    n_a, n_o = 12, 10
    rng = np.random.default_rng(seed)
    held = np.zeros((n_a, n_o), dtype=bool)
    attr_order = rng.permutation(n_a)
    for j, o in enumerate(rng.permutation(n_o)):  # cyclic, so each attribute is held out for 1-2 objects
        held[attr_order[[(2 * j) % n_a, (2 * j + 1) % n_a]], o] = True
    seen = ~held
    skewed = np.zeros((n_a, n_o))
    for o in range(n_o):
        cands = np.flatnonzero(seen[:, o])
        skewed[cands, o] = 0.1 / (len(cands) - 1)
        skewed[cands[o % len(cands)], o] = 0.9
    p = (seen / seen.sum() + skewed / n_o) / 2
    return largest_remainder(p.ravel(), n).reshape(n_a, n_o)


def realistic_counts(n: int = 40000, n_a: int = 400, n_o: int = 300, seed: int = 0) -> np.ndarray:
    """Zipf-like attribute and object frequencies, 3% of pairs possible, lognormal pair strengths; names with
    fewer than 10 samples dropped (as a vocabulary's minimum count would): about 200 x 180 names, 950 pairs."""
    rng = np.random.default_rng(seed)
    zipf_a, zipf_o = 1 / np.arange(1, n_a + 1), 1 / np.arange(1, n_o + 1)
    weight = np.outer(zipf_a, zipf_o) * (rng.random((n_a, n_o)) < 0.03) * rng.lognormal(0, 1, (n_a, n_o))
    flat = rng.choice(weight.size, size=n, p=(weight / weight.sum()).ravel())
    counts = np.bincount(flat, minlength=weight.size).reshape(n_a, n_o)
    while not ((counts.sum(1) >= 10).all() and (counts.sum(0) >= 10).all()):
        counts = counts[counts.sum(1) >= 10][:, counts.sum(0) >= 10]
    return counts


@pytest.fixture(scope="module")
def toy():
    return pool_rows(toy_like_counts())


@pytest.fixture(scope="module")
def realistic():
    return pool_rows(realistic_counts(), seed=1)


def kept(sub) -> set:
    return set(zip(*np.nonzero(sub.table)))


def check_subset(sub, pool, size: int, k: int, attribute_marginal: dict, object_marginal: dict):
    uids, attr_idx, obj_idx, attributes, objects = pool
    assert len(sub.uids) == size == len(np.unique(sub.uids))
    assert sub.manifest["distinct_pairs"] == k == (sub.table > 0).sum() == sub.manifest["diversity"]["distinct_pairs"]
    assert (sub.table <= pair_counts(attr_idx, obj_idx, len(attributes), len(objects))).all()
    assert np.array_equal(pair_counts(sub.attr_idx, sub.obj_idx, len(attributes), len(objects)), sub.table)
    assert tv(sub.manifest["attribute_marginal"], attribute_marginal) <= 0.01
    assert tv(sub.manifest["object_marginal"], object_marginal) <= 0.01


# ---------------------------------------------------------------- measures
def test_pair_measures_by_hand():
    table = [[3, 1, 0], [0, 2, 0]]
    d = pair_diversity(table, pool=[[5, 1, 1], [1, 2, 0]])
    h = -(0.5 * math.log(0.5) + math.log(1 / 6) / 6 + math.log(1 / 3) / 3)
    assert d["distinct_pairs"] == 3 and d["grid_pairs"] == 6 and d["grid_coverage"] == 0.5
    assert d["pool_pairs"] == 5 and d["pool_coverage"] == pytest.approx(0.6)
    assert d["attributes_per_object"] == {"mean": 1.5, "min": 1, "max": 2}  # object 2 is absent, not a zero
    assert d["objects_per_attribute"] == {"mean": 1.5, "min": 1, "max": 2}
    assert d["joint_entropy"] == pytest.approx(h) and d["effective_pairs"] == pytest.approx(math.exp(h))
    assert pair_diversity(np.full((2, 2), 7))["effective_pairs"] == pytest.approx(4)  # uniform: all pairs count
    empty = pair_diversity(np.zeros((2, 3)))
    assert empty["distinct_pairs"] == 0 and empty["joint_entropy"] is None and "pool_pairs" not in empty


VOCAB = Vocabulary.build({"red": ["scarlet"], "blue": []}, {"fox": [], "sea lion": []},
                         {"red": "colour", "blue": "colour"})


def test_templates_mask_the_pair_forms():
    masker = TemplateMasker(VOCAB)
    assert masker.template("Two red foxes, asleep.", "red", "fox") == "two {a} {o}, asleep."
    assert masker.template("a scarlet sea-lion", "red", "sea lion") == "a {a} {o}"  # synonym, multi-word, hyphen
    assert masker.template("a blue fox", "red", "fox") == "a blue {o}"  # only the labelled pair's words
    assert masker.template("tired foxes in a redwood", "red", "fox") == "tired {o} in a redwood"  # whole words
    assert caption_key("a red fox") == caption_key("a red fox") != caption_key("a red fox.")
    assert -2**63 <= caption_key("x") < 2**63


def test_caption_diversity_counted_by_hand():
    captions = ["a red fox", "a red fox", "a blue fox", "a photo of a red fox", "A scarlet sea lion", "no pair here"]
    stats = count_captions(captions, CaptionParser(VOCAB), caption_diversity=True).stats()
    # labelled: 5; distinct strings: 4; templates: "a {a} {o}" (x4: red/blue fox, scarlet sea lion) + "a photo of ..."
    assert stats["caption_diversity"] == {"distinct_captions": 4, "distinct_templates": 2, "exact": True}
    assert stats["diversity"]["distinct_pairs"] == 3


def test_caption_diversity_merges_across_files_and_processes(tmp_path):
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("attributes: {colour: [red, blue]}\nobjects: [fox, ball]\n")
    files = []
    for i, captions in enumerate((["a red fox", "a blue ball"], ["a red fox", "the red fox", "a red ball"])):
        files.append(tmp_path / f"{i}.parquet")
        pq.write_table(pa.table({"caption": captions}), files[-1])
    one = count_files(files, str(vocab), workers=1, caption_diversity=True)
    two = count_files(files, str(vocab), workers=2, caption_diversity=True)
    assert one == two and one.caption_diversity() == {"distinct_captions": 4, "distinct_templates": 2, "exact": True}
    assert count_files(files, str(vocab), workers=2).caption_diversity() is None  # the library default: off


def test_distinct_counter_exact_then_estimated_and_mergeable():
    texts = [f"caption {i}" for i in range(6000)]
    small = DistinctCounter(k=4096)
    for text in texts[:3000] * 2:  # repeats do not count
        small.add(text)
    assert small.exact and small.count() == 3000
    restored = DistinctCounter.from_state(small.state()).merge(small)  # keys meet the same strings
    assert restored.exact and restored.count() == 3000 and restored.state() == small.state()
    whole, left, right = DistinctCounter(k=1024), DistinctCounter(k=1024), DistinctCounter(k=1024)
    for text in texts:
        whole.add(text)
    for text in texts[:2500]:
        left.add(text)
    for text in texts[2000:]:
        right.add(text)
    merged = left.merge(right)
    assert not whole.exact and abs(whole.count() - 6000) < 0.1 * 6000  # k-minimum values, ~3% error at k=1024
    assert merged.state() == whole.state() and merged.count() == whole.count()
    assert DistinctCounter.from_state(whole.state()).count() == whole.count()


def test_labels_carry_caption_keys_and_old_files_still_load(tmp_path):
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("attributes: {colour: [red, blue]}\nobjects: [fox, ball]\n")
    captions = ["a red fox", "a red fox", "the blue ball", "a red ball", "nothing"]
    pq.write_table(pa.table({"uid": [f"u{i}" for i in range(5)], "caption": captions}), tmp_path / "c.parquet")
    labels = tmp_path / "labels.parquet"
    label_captions([tmp_path / "c.parquet"], str(vocab), labels)
    caption_hash, template_hash = load_caption_keys(labels)
    assert len(caption_hash) == len(load_labels(labels)[0]) == 4
    assert len(set(caption_hash)) == 3 and len(set(template_hash)) == 2  # "a {a} {o}" and "the {a} {o}"
    old = tmp_path / "old.parquet"
    pq.write_table(pq.read_table(labels, columns=["uid", "attribute", "object"]), old)
    assert load_caption_keys(old) is None and len(load_labels(old)[0]) == 4


# ---------------------------------------------------------------- selection by distinct pairs
def test_toy_pool_pair_levels_are_exact_nested_and_keep_the_marginals(toy):
    size = 2000
    reference = select_subset(*toy, size=size, nmi_target=0.3, seed=0).manifest  # the NMI selection's marginals
    k_min, k_max = feasible_pairs_range(pair_counts(*toy[1:3], 12, 10), size, seed=0)
    assert 12 <= k_min < 40 < 60 < 80 <= k_max == 100
    subs = [select_subset(*toy, size=size, distinct_pairs=k, seed=0) for k in (40, 60, 80)]
    for k, sub in zip((40, 60, 80), subs):
        check_subset(sub, toy, size, k, reference["attribute_marginal"], reference["object_marginal"])
        assert sub.manifest["distinct_pairs_target"] == k and sub.manifest["feasible_pairs_range"] == [k_min, k_max]
    assert kept(subs[0]) < kept(subs[1]) < kept(subs[2])
    # fewer pairs, higher NMI: the lowest NMI a pair count allows falls as pairs are added
    assert subs[0].manifest["nmi"] > subs[1].manifest["nmi"] > subs[2].manifest["nmi"]
    edges = [select_subset(*toy, size=size, distinct_pairs=k, seed=0) for k in (k_min, k_max)]
    assert [(e.table > 0).sum() for e in edges] == [k_min, k_max]


def feasible_with_one_each(pairs, counts, r, c, least: int = 1) -> bool:
    """Is there a table on `pairs` with margins r, c, at most the pool counts and at least `least` on each pair?"""
    cells = np.array(sorted(pairs))
    return transport_on_cells(cells, np.zeros(len(cells)), r, c, np.full(len(cells), least), counts.ravel()[cells],
                              counts.shape[1]) is not None


@pytest.mark.parametrize("size", [150, 2000])
def test_keep_order_prefixes_are_feasible_and_maximal(size):
    """The augmenting-cycle test agrees with an LP: every prefix from K_min on is feasible, nothing more fits."""
    counts = toy_like_counts()
    r, c = largest_remainder(counts.sum(1), size), largest_remainder(counts.sum(0), size)
    order = pair_order(counts, r, c, counts.astype(float), seed=1)
    for k in range(order.n_min, order.n_max + 1):
        assert feasible_with_one_each(order.order[:k], counts, r, c), k
    rest = set(np.flatnonzero(counts.ravel())) - set(order.order.tolist())
    assert (len(rest) > 0) == (size == 150)  # 150 samples cannot give one to each of the 100 pairs
    for cell in rest:
        assert not feasible_with_one_each([*order.order, cell], counts, r, c)
    spine = order.order[:order.n_min]
    for i in range(order.n_min):  # K_min is inclusion-minimal: no spine pair can go, even with zeros allowed
        assert not feasible_with_one_each(np.delete(spine, i), counts, r, c, least=0)


def test_fewer_pairs_force_higher_nmi_as_in_the_docs(toy):
    """docs/design_space.md: NMI >= 2 - 2 log K / (H(A) + H(O)) at fixed marginals, and its table's numbers."""
    counts = pair_counts(*toy[1:3], 12, 10)
    r, c = largest_remainder(counts.sum(1), 2000), largest_remainder(counts.sum(0), 2000)
    h = joint_stats(np.diag(r))["h_attribute"] + joint_stats(np.diag(c))["h_object"]
    lows = []
    for k, low, high in ((32, 0.662, 0.667), (40, 0.561, 0.652), (60, 0.341, 0.702), (100, 0.084, 0.669)):
        lo, hi = feasible_nmi_range(counts, 2000, distinct_pairs=k, seed=0)
        assert (lo, hi) == (pytest.approx(low, abs=0.001), pytest.approx(high, abs=0.001))
        assert lo >= 2 - 2 * math.log(k) / h
        lows.append(lo)
    assert lows == sorted(lows, reverse=True)
    sub = select_subset(*toy, size=2000, nmi_target=0.3, seed=0)
    assert sub.manifest["distinct_pairs"] == 100  # the NMI selection alone spreads over every pair


def test_same_seed_same_uids_other_seed_other_pairs(toy):
    a = select_subset(*toy, size=2000, distinct_pairs=50, seed=3)
    b = select_subset(*toy, size=2000, distinct_pairs=50, seed=3)
    c = select_subset(*toy, size=2000, distinct_pairs=50, seed=4)
    assert np.array_equal(a.uids, b.uids) and a.manifest["uid_checksum"] == b.manifest["uid_checksum"]
    assert kept(a) != kept(c) and (c.table > 0).sum() == 50


def test_pairs_together_with_nmi_target(toy):
    size, k = 2000, 70
    lo, hi = feasible_nmi_range(pair_counts(*toy[1:3], 12, 10), size, distinct_pairs=k, seed=0)
    plain = select_subset(*toy, size=size, distinct_pairs=k, seed=0)
    for target in (round(lo + 0.3 * (hi - lo), 3), round(lo + 0.7 * (hi - lo), 3)):
        sub = select_subset(*toy, size=size, nmi_target=target, distinct_pairs=k, seed=0)
        check_subset(sub, toy, size, k, plain.manifest["attribute_marginal"], plain.manifest["object_marginal"])
        assert abs(sub.manifest["nmi"] - target) <= 0.005 and kept(sub) == kept(plain)
        assert joint_stats(sub.table)["nmi"] == pytest.approx(sub.manifest["nmi"])


def test_realistic_pool_pair_levels(realistic):
    uids, attr_idx, obj_idx, attributes, objects = realistic
    counts = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    assert len(attributes) > 150 and len(objects) > 150 and (counts > 0).mean() < 0.05  # hundreds, sparse
    size = int(counts.sum()) // 2
    target_a = dict(zip(attributes, largest_remainder(counts.sum(1), size) / size))
    target_o = dict(zip(objects, largest_remainder(counts.sum(0), size) / size))
    levels, subs = None, []
    for k in (500, 650, 800):
        sub = select_subset(*realistic, size=size, distinct_pairs=k, seed=0)
        check_subset(sub, realistic, size, k, target_a, target_o)
        levels = levels or sub.manifest["feasible_pairs_range"]
        subs.append(sub)
    assert levels[0] < 500 and levels[1] > 800
    assert kept(subs[0]) < kept(subs[1]) < kept(subs[2])


# ---------------------------------------------------------------- infeasible combinations
def test_infeasible_pairs_name_the_feasible_range(toy):
    with pytest.raises(InfeasibleTarget, match=r"distinct_pairs 500 > the 100 pairs the pool holds"):
        select_subset(*toy, size=2000, distinct_pairs=500)
    with pytest.raises(InfeasibleTarget, match=r"feasible pairs \[\d+, 100\]"):
        select_subset(*toy, size=2000, distinct_pairs=5)  # fewer than the marginals can be carried on
    with pytest.raises(InfeasibleTarget, match=r"> size 50: every kept pair needs"):
        select_subset(*toy, size=50, distinct_pairs=60)
    with pytest.raises(ValueError, match="free marginals"):
        select_subset(*toy, size=2000, distinct_pairs=50, fixed_marginals=False)


def test_infeasible_pairs_and_nmi_name_both_ranges(toy):
    # below every pair count's band (even all 100 pairs cannot spread the mass that far)
    with pytest.raises(InfeasibleTarget, match=r"at size 2000 with 40 pairs, NMI 0.05 is outside "
                                               r"\[0\.\d+, 0\.\d+\].*no pair count reaches it .*lowest NMI"):
        select_subset(*toy, size=2000, nmi_target=0.05, distinct_pairs=40)
    # below this count's band: more pairs reach it
    with pytest.raises(InfeasibleTarget, match=r"with 40 pairs, NMI 0.3 is outside .* needs at least \d+ pairs") as err:
        select_subset(*toy, size=2000, nmi_target=0.3, distinct_pairs=40)
    need = int(str(err.value).split("needs at least ")[1].split()[0])
    assert select_subset(*toy, size=2000, nmi_target=0.3, distinct_pairs=need).manifest["distinct_pairs"] == need
    with pytest.raises(InfeasibleTarget, match=r"NMI 0.99 is outside .*(within reach|no scanned pair count)"):
        select_subset(*toy, size=2000, nmi_target=0.99, distinct_pairs=60)


def write_labels(pool, path, caption_keys: bool):
    uids, attr_idx, obj_idx, attributes, objects = pool
    columns = {"uid": uids, "attribute": [attributes[i] for i in attr_idx], "object": [objects[i] for i in obj_idx]}
    if caption_keys:  # one caption per sample, ten templates
        columns["caption_hash"] = np.arange(len(uids), dtype=np.int64)
        columns["template_hash"] = np.arange(len(uids), dtype=np.int64) % 10
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--pairs", "500"], "distinct_pairs 500 > the 100 pairs the pool holds"),
    (["--pairs", "40", "--nmi", "0.05"], "with 40 pairs, NMI 0.05 is outside"),
    (["--size", "10"], "give --nmi, --pairs or both"),
])
def test_cli_infeasible_is_one_line_exit_2(toy, tmp_path, capsys, args, message):
    labels = write_labels(toy, tmp_path / "labels.parquet", caption_keys=False)
    out = tmp_path / "out"
    size = [] if "--size" in args else ["--size", "2000"]
    assert select_main([str(labels), *size, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------- where the measures are reported
def test_manifests_have_diversity(toy, tmp_path, capsys):
    sub = select_subset(*toy, size=1500, nmi_target=0.2)
    manifest = json.loads(write_subset(sub, tmp_path / "nmi")["manifest"].read_text())
    d = manifest["diversity"]
    assert d["distinct_pairs"] == manifest["distinct_pairs"] and d["pool_pairs"] == 100
    assert d["effective_pairs"] == pytest.approx(math.exp(manifest["h_joint"]))
    assert "distinct_captions" not in d and manifest["distinct_pairs_target"] is None

    with_keys = write_labels(toy, tmp_path / "labels.parquet", caption_keys=True)
    out = tmp_path / "pairs"
    assert select_main([str(with_keys), "--size", "1500", "--pairs", "45", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "feasible pairs at size 1500 (seed 0): [" in text and "with 45 pairs: [" in text
    manifest = json.loads((out / "manifest.json").read_text())
    d = manifest["diversity"]
    assert d["distinct_pairs"] == manifest["distinct_pairs_target"] == 45 and manifest["nmi_target"] is None
    assert d["distinct_captions"] == 1500 and d["distinct_templates"] == 10


def test_filter_stats_prints_the_measures(tmp_path, capsys):
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("attributes: {colour: [red, blue]}\nobjects: [fox, ball]\n")
    captions = ["a red fox", "a red fox", "the blue ball", "a red ball", "a blue fox and a red ball"]
    pq.write_table(pa.table({"caption": captions}), tmp_path / "c.parquet")
    out = tmp_path / "stats"
    assert stats_main([str(tmp_path / "c.parquet"), "--vocab", str(vocab), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pair diversity      3 of 4 grid cells (75.0%); effective pairs" in text
    assert "objects/attribute" in text and "distinct captions 3  templates 2" in text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["diversity"]["distinct_pairs"] == 3 and stats["caption_diversity"]["distinct_templates"] == 2
    fast = tmp_path / "fast"
    assert stats_main([str(tmp_path / "c.parquet"), "--vocab", str(vocab), "--out", str(fast), "--workers", "1",
                       "--no-caption-diversity"]) == 0
    assert "caption diversity   not counted" in capsys.readouterr().out
    fast_stats = json.loads((fast / "stats.json").read_text())
    assert fast_stats["caption_diversity"] is None and fast_stats["diversity"] == stats["diversity"]


def test_generated_toy_world_pool_pair_levels(smoke_fit):
    """The same guarantees on a pool aotrain generated (the smoke world's labelled captions)."""
    labels = next((smoke_fit[0] / "toyworld").glob("toyworld-*/labels-*/labels.parquet"))
    pool = load_labels(labels)
    size = 250
    reference = select_subset(*pool, size=size, nmi_target=0.3, seed=0).manifest
    k_min, k_max = feasible_pairs_range(pair_counts(pool[1], pool[2], len(pool[3]), len(pool[4])), size, seed=0)
    levels = [k for k in (25, 35, 50) if k_min <= k <= k_max]  # the smoke pool: 22 to 54
    assert len(levels) == 3, (k_min, k_max)
    subs = [select_subset(*pool, size=size, distinct_pairs=k, seed=0) for k in levels]
    for k, sub in zip(levels, subs):
        check_subset(sub, pool, size, k, reference["attribute_marginal"], reference["object_marginal"])
    assert kept(subs[0]) < kept(subs[1]) < kept(subs[2])


# ---------------------------------------------------------------- the feasible region, printed (filter band)
def band_rows(text: str, seeds: int) -> dict:
    """{K: [(low, high) or None per seed]} from the table `aotrain filter band` prints."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())  # a band "[0.1, 0.2]" holds one space
        if cells[0].isdigit():
            bands = [re.fullmatch(r"\[(\d\.\d+), (\d\.\d+)\]|—", cell) for cell in cells[1:1 + seeds]]
            rows[int(cells[0])] = [(float(b[1]), float(b[2])) if b[1] else None for b in bands]
    return rows


def test_band_names_the_pair_counts_that_reach_a_target_and_select_agrees(toy, tmp_path, capsys):
    labels = write_labels(toy, tmp_path / "labels.parquet", caption_keys=False)
    assert band_main([str(labels), "--size", "2000", "--nmi", "0.5", "--seed", "0", "1"]) == 0
    text = capsys.readouterr().out
    rows = band_rows(text, seeds=2)
    pool = load_labels(labels)
    counts = pair_counts(pool[1], pool[2], len(pool[3]), len(pool[4]))
    ends = set()
    for seed in (0, 1):
        k_min, k_max = feasible_pairs_range(counts, 2000, seed=seed)
        ends |= {k_min, k_max}
        assert f"[{k_min}, {k_max}] (seed {seed})" in text
        assert rows[60][seed] == pytest.approx(feasible_nmi_range(counts, 2000, distinct_pairs=60, seed=seed), abs=1e-4)
    assert ends <= set(rows) and all(k % 5 == 0 or k in ends for k in rows)  # every 5th K and each seed's ends
    line = next(x for x in text.splitlines() if x.startswith("NMI 0.5 (tol 0.005) is inside the band at every seed"))
    low_k, high_k = map(int, re.search(r"with K in (\d+)-(\d+) \(of the K listed\)", line).groups())
    assert high_k == 100 and 40 < low_k < 100
    for seed in (0, 1):  # inside the printed band: select reaches the target with exactly K pairs
        for k in (low_k, 100):
            sub = select_subset(*pool, size=2000, nmi_target=0.5, distinct_pairs=k, seed=seed)
            assert abs(sub.manifest["nmi"] - 0.5) <= 0.005 and sub.manifest["distinct_pairs"] == k
    below = max(k for k in rows if k < low_k)  # the listed K just short of it: some seed cannot
    seed = next(s for s, (lo, hi) in enumerate(rows[below]) if not lo - 0.005 < 0.5 < hi + 0.005)
    with pytest.raises(InfeasibleTarget, match=f"with {below} pairs, NMI 0.5 is outside"):
        select_subset(*pool, size=2000, nmi_target=0.5, distinct_pairs=below, seed=seed)


def test_band_with_given_pairs_and_an_unreachable_target(toy, tmp_path, capsys):
    labels = write_labels(toy, tmp_path / "labels.parquet", caption_keys=False)
    assert band_main([str(labels), "--size", "2000", "--pairs", "10", "60", "--nmi", "0.99"]) == 0
    text = capsys.readouterr().out
    assert band_rows(text, seeds=1)[10] == [None]  # below K_min: no band
    assert "NMI 0.99 (tol 0.005) is outside the band at some seed (0) for every K listed" in text
    assert re.search(r"^ *60 +\[0\.\d{4}, 0\.\d{4}\] +-0\.\d{4}$", text, re.M)  # a negative margin: outside


@pytest.mark.parametrize("args, message", [
    (["--size", "2000", "--nmi", "1.5"], "--nmi must be in [0, 1], got 1.5"),
    (["--size", "0"], "--size must be positive"),
    (["--size", "2000", "--pairs", "0"], "--pairs must be positive"),
    (["--size", "2000", "--seed", "1", "1"], "--seed repeats a value"),
    (["--size", "99999"], "size 99999 exceeds the pool"),
])
def test_band_bad_input_is_one_line_exit_2(toy, tmp_path, capsys, args, message):
    labels = write_labels(toy, tmp_path / "labels.parquet", caption_keys=False)
    assert band_main([str(labels), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert band_main([str(tmp_path / "missing.parquet"), "--size", "10"]) == 2
    assert "Traceback" not in capsys.readouterr().err
