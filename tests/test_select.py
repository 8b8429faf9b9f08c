"""Subset selection at a target NMI (data_filters.select / select_cli): accuracy, fixed marginals, determinism.

    .venv/bin/python -m pytest tests/test_select.py -q
"""
import hashlib
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from aotrain.config import RECIPES_DIR
from aotrain.toyworld import generate_world, load_world
from data_filters.nmi import joint_stats
from data_filters.select import InfeasibleTarget, feasible_nmi_range, pair_counts, select_many, select_subset
from data_filters.subset_files import write_subset, write_subsets
from data_filters.select_cli import select_main

SYNTH_TARGETS = [0.1, 0.2, 0.3, 0.45, 0.6, 0.75]
TOY_TARGETS = [0.08, 0.1, 0.2, 0.3, 0.4, 0.45]


def tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p[k] - q[k]) for k in p)


@pytest.fixture(scope="module")
def synth():
    """12 attributes x 10 objects, 50k rows, a skewed (Dirichlet) joint; uids are int64."""
    rng = np.random.default_rng(0)
    n_a, n_o, n = 12, 10, 50_000
    p = rng.dirichlet(np.full(n_a * n_o, 0.7))
    flat = rng.choice(n_a * n_o, size=n, p=p)
    uids = rng.choice(10**12, size=n, replace=False).astype(np.int64)  # unique, unsorted
    return uids, flat // n_o, flat % n_o, [f"attr{i}" for i in range(n_a)], [f"obj{i}" for i in range(n_o)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Labels (uid, attribute, object) of a 6000-sample default toy world, read from its shards."""
    cfg = yaml.safe_load((RECIPES_DIR / "world" / "default.yaml").read_text())
    cfg["pool"].update(n_samples=6000, samples_per_shard=2000)
    cfg["eval"].update(images_per_unseen_pair=1, images_per_seen_pair=1, alt_images_per_pair=0)
    world = generate_world(cfg, tmp_path_factory.mktemp("worlds"), progress=False)
    rows = []
    for shard in load_world(world)["shards"]:
        with tarfile.open(world / shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    rows.append((meta["uid"], meta["attribute"], meta["object"]))
    uids = np.array([r[0] for r in rows])
    attributes, attr_idx = np.unique([r[1] for r in rows], return_inverse=True)
    objects, obj_idx = np.unique([r[2] for r in rows], return_inverse=True)
    return uids, attr_idx, obj_idx, attributes.tolist(), objects.tolist()


def check_sweep(pool, size, targets):
    uids, attr_idx, obj_idx, attributes, objects = pool
    capacity = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    subs = select_many(*pool, size=size, nmi_targets=targets, seed=3)
    first = subs[0].manifest
    for target, sub in zip(targets, subs):
        m = sub.manifest
        assert abs(m["nmi"] - target) <= 0.01, (target, m["nmi"])
        assert m["size"] == len(sub.uids) == size and m["unique_uids"] == size  # no repeats asked for
        assert (sub.table <= capacity).all()
        assert tv(m["attribute_marginal"], first["attribute_marginal"]) <= 0.01
        assert tv(m["object_marginal"], first["object_marginal"]) <= 0.01
        # the table, the chosen rows and the NMI agree
        assert np.all(np.diff(sub.uids) >= 0) if sub.uids.dtype.kind != "U" else list(sub.uids) == sorted(sub.uids)
        pos = {u: i for i, u in enumerate(uids.tolist())}
        rows = np.array([pos[u] for u in sub.uids.tolist()])
        assert np.array_equal(attr_idx[rows], sub.attr_idx) and np.array_equal(obj_idx[rows], sub.obj_idx)
        recount = pair_counts(sub.attr_idx, sub.obj_idx, len(attributes), len(objects))
        assert np.array_equal(recount, sub.table)
        assert joint_stats(recount)["nmi"] == pytest.approx(m["nmi"])
    return subs


def test_synthetic_sweep_hits_targets_with_fixed_marginals(synth):
    check_sweep(synth, 10_000, SYNTH_TARGETS)


def test_toy_pool_sweep_hits_targets_with_fixed_marginals(toy):
    subs = check_sweep(toy, 2000, TOY_TARGETS)
    print("toy sweep NMI:", [round(s.manifest["nmi"], 4) for s in subs])


def test_feasible_range_brackets_the_pool(synth):
    uids, attr_idx, obj_idx, attributes, objects = synth
    counts = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    lo, hi = feasible_nmi_range(counts, 10_000)
    assert 0 <= lo < joint_stats(counts)["nmi"] < hi <= 1
    free_lo, free_hi = feasible_nmi_range(counts, 10_000, fixed_marginals=False)
    assert free_hi >= hi


def test_same_seed_byte_identical_and_seed_changes_uids(synth, tmp_path):
    a = write_subset(select_subset(*synth, size=5000, nmi_target=0.3, seed=1), tmp_path / "a", source="synth")
    b = write_subset(select_subset(*synth, size=5000, nmi_target=0.3, seed=1), tmp_path / "b", source="synth")
    for key in ("npy", "parquet", "manifest"):
        assert a[key].read_bytes() == b[key].read_bytes(), key
    c = write_subset(select_subset(*synth, size=5000, nmi_target=0.3, seed=2), tmp_path / "c", source="synth")
    assert a["npy"].read_bytes() != c["npy"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


def test_written_files_agree_with_manifest(toy, tmp_path):
    sub = select_subset(*toy, size=1500, nmi_target=0.2)
    paths = write_subset(sub, tmp_path / "out", source="toy-labels")
    uids = np.load(paths["npy"], allow_pickle=False)
    assert np.array_equal(uids, np.sort(uids)) and np.array_equal(uids, sub.uids)
    table = pq.read_table(paths["parquet"])
    assert table.column_names == ["uid", "attribute", "object"] and table.num_rows == 1500
    assert table.column("uid").to_pylist() == uids.tolist()
    m = json.loads(paths["manifest"].read_text())
    assert m["uid_checksum"] == hashlib.sha256(uids.tobytes()).hexdigest()
    assert m["source"] == "toy-labels" and m["seed"] == 0 and m["normaliser"] == "arithmetic"
    assert m["nmi_target"] == 0.2 and abs(m["nmi"] - 0.2) <= 0.005
    assert sum(m["attribute_marginal"].values()) == pytest.approx(1) and len(m["object_marginal"]) == 10
    assert np.array(m["pair_counts"]["counts"]).sum() == 1500 and m["distinct_pairs"] > 0
    lo, hi = m["feasible_nmi_range"]
    assert lo <= 0.2 <= hi
    with pytest.raises(FileExistsError):
        write_subset(sub, tmp_path / "out")


def test_infeasible_target_names_range_and_writes_nothing(synth, tmp_path):
    with pytest.raises(InfeasibleTarget, match=r"feasible NMI range \[0\.\d+, 0\.\d+\]") as err:
        select_many(*synth, size=10_000, nmi_targets=[0.3, 0.99])
    assert isinstance(err.value, ValueError) and "attribute counts" in str(err.value)
    with pytest.raises(InfeasibleTarget, match="exceeds the pool"):
        select_subset(*synth, size=60_000, nmi_target=0.3)
    # the CLI: exit 2, one line, nothing written
    labels = tmp_path / "labels.parquet"
    uids, attr_idx, obj_idx, attributes, objects = synth
    pq.write_table(pa.table({"uid": uids, "attribute": [attributes[i] for i in attr_idx],
                             "object": [objects[i] for i in obj_idx]}), labels)
    out = tmp_path / "out"
    assert select_main([str(labels), "--size", "10000", "--nmi", "0.3", "0.99", "--out", str(out)]) == 2
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["labels.parquet"]


def test_repeats_upsample_beyond_capacity(synth):
    uids, attr_idx, obj_idx, attributes, objects = synth
    sub = select_subset(*synth, size=80_000, nmi_target=0.4, allow_repeats=True)
    assert len(sub.uids) == 80_000 and len(np.unique(sub.uids)) < 80_000
    counts = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    assert (sub.table[counts == 0] == 0).all()  # repeats only of pairs the pool has
    assert abs(sub.manifest["nmi"] - 0.4) <= 0.005


def test_free_marginals_reach_target(synth):
    sub = select_subset(*synth, size=10_000, nmi_target=0.5, fixed_marginals=False)
    assert abs(sub.manifest["nmi"] - 0.5) <= 0.005 and not sub.manifest["fixed_marginals"]


def test_cli_sweep_writes_one_folder_per_target(toy, tmp_path, capsys):
    uids, attr_idx, obj_idx, attributes, objects = toy
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"uid": uids, "attribute": [attributes[i] for i in attr_idx],
                             "object": [objects[i] for i in obj_idx]}), labels)
    out = tmp_path / "subsets"
    assert select_main([str(labels), "--size", "2000", "--nmi", "0.1", "0.3", "--out", str(out), "--seed", "4"]) == 0
    text = capsys.readouterr().out
    assert "feasible NMI range" in text and "target 0.3" in text
    assert sorted(p.name for p in out.iterdir()) == ["nmi-0.1", "nmi-0.3"]
    for name in ("nmi-0.1", "nmi-0.3"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["manifest.json", "subset.npy", "subset.parquet"]
        assert json.loads((out / name / "manifest.json").read_text())["source"] == str(labels)


@pytest.mark.parametrize("case", ["missing", "columns", "empty"])
def test_cli_bad_inputs_exit_2_without_output(case, tmp_path, capsys):
    labels = tmp_path / "labels.parquet"
    if case == "columns":
        pq.write_table(pa.table({"uid": ["a"], "attr": ["red"], "object": ["circle"]}), labels)
    elif case == "empty":
        pq.write_table(pa.table({"uid": pa.array([], pa.string()), "attribute": pa.array([], pa.string()),
                                 "object": pa.array([], pa.string())}), labels)
    out = tmp_path / "out"
    assert select_main([str(labels), "--size", "10", "--nmi", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert {"missing": "not found", "columns": "lacks column", "empty": "empty"}[case] in err
    assert not out.exists()


def test_write_subsets_rejects_duplicate_targets(synth, tmp_path):
    subs = select_many(*synth, size=2000, nmi_targets=[0.3, 0.3])
    with pytest.raises(ValueError, match="distinct"):
        write_subsets(subs, tmp_path / "x")
    assert not (tmp_path / "x").exists()
