"""The stages between a caption pool and training: stats (label) -> select -> reshard, each cached.

    pool (webdataset shards, + img2dataset/DataComp parquet) -> labels.parquet + stats.json
      -> subset (size, NMI target, fixed marginals) -> shards holding exactly the subset

All of it is data_filters' code (`aotrain filter label|select|reshard` run the same functions). Each
stage's output sits in a folder named by a hash of its inputs, so a second run with the same settings
reuses it (and says so) and a changed setting recomputes only what depends on it:

    <cache>/labels-<pool files + vocabulary>/{labels.parquet, stats.json}
    <cache>/subsets/nmi<target>[-k<pairs>]-n<size>-<labels key + spec>/subset/{subset.npy, manifest.json, ...}
    <cache>/subsets/.../shards/{shard-*.tar, sizes.json}

The cache is the toy world's folder for the toy pool and `paths.cache` for a real one.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from data_filters.files import no_empty_folders_on_error, write_text_atomic
from data_filters.label import label_captions, load_labels, skipped_line
from data_filters.nmi import joint_stats
from data_filters.reshard import reshard
from data_filters.samples import check_shard_file, read_shard
from data_filters.select import pair_counts, select_subset, write_subset
from data_filters.vocab import vocabulary_checksum


def _say(stage: str, message: str) -> None:
    print(f"{stage}: {message}", file=sys.stderr, flush=True)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def pool_shards(pool: Path) -> list[Path]:
    """The pool's webdataset shards (sorted); ValueError when there are none."""
    pool = Path(pool)
    if pool.exists() and not pool.is_dir():
        raise ValueError(f"{pool} is a file, not a folder: give the folder that holds the pool's .tar shards")
    if not pool.is_dir():
        raise FileNotFoundError(f"pool folder not found: {pool} (a folder of webdataset .tar shards)")
    shards = sorted(pool.glob("*.tar"))
    if not shards:
        raise ValueError(f"no .tar shards in {pool}: give an img2dataset or DataComp output folder")
    broken = [(s.name, why) for s in shards if (why := check_shard_file(s))]
    if broken:  # cheap (first block only): a shard damaged further in is counted while it is read
        named = "; ".join(f"{name}: {why}" for name, why in broken[:5])
        more = f" (and {len(broken) - 5} more)" if len(broken) > 5 else ""
        raise ValueError(f"{len(broken)} of {len(shards)} shards in {pool} cannot be used: {named}{more}; "
                         "remove or re-download them")
    return shards


def caption_files(pool: Path) -> list[Path]:
    """Where the pool's captions are read from: the per-shard parquet files img2dataset and DataComp
    write next to the shards (no image bytes to skip), else the shards themselves."""
    tables = sorted(Path(pool).glob("*.parquet"))
    return tables or pool_shards(pool)


def uid_field(pool: Path) -> str:
    """The per-sample id that joins captions to shard samples: "uid" (DataComp, the toy world) when the
    metadata has it, else img2dataset's "key" (parquet column, json field and sample name alike)."""
    import pyarrow.parquet as pq

    tables = sorted(Path(pool).glob("*.parquet"))
    if tables:
        return "uid" if "uid" in pq.ParquetFile(tables[0]).schema_arrow.names else "key"
    for _, members in read_shard(pool_shards(pool)[0], images=False):
        return "uid" if "uid" in json.loads(members.get("json", b"{}")) else "__key__"
    return "__key__"


def _fingerprint(files: list[Path]) -> list:
    # Names, sizes and modification times: re-reading 12M captions to hash them would cost as much
    # as labelling them again.
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def label_stage(pool: Path, vocab_spec: str, cache: Path) -> tuple[Path, dict]:
    """(labels.parquet, stats) of the pool's captions under `vocab_spec`; cached by pool and vocabulary."""
    files = caption_files(pool)
    folder = Path(cache) / f"labels-{_key(_fingerprint(files), vocabulary_checksum(vocab_spec))}"
    labels, stats_path = folder / "labels.parquet", folder / "stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        _say("stats", f"reusing {folder} ({stats['labelled']:,} of {stats['captions']:,} captions labelled, "
                      f"pool NMI {stats['nmi']:.3f})")
        return labels, stats
    _say("stats", f"labelling the captions of {len(files)} file(s) in {pool} -> {labels}")
    with no_empty_folders_on_error(Path(cache), folder):  # a failed start leaves no empty cache folder
        folder.mkdir(parents=True, exist_ok=True)
        column = uid_field(pool)
        # Tables name their uid column; shards fall back from the json "uid" to the sample key by themselves.
        counts = label_captions(files, vocab_spec, labels,
                                uid_column=column if files[0].suffix == ".parquet" else None)
    uids, attr_idx, obj_idx, attributes, objects = load_labels(labels)
    table = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    stats = {**{k: counts[k] for k in ("captions", "labelled", "malformed", "skipped", "truncated_shards")},
             "uid_field": column,
             "vocabulary": vocab_spec, **joint_stats(table)}
    write_text_atomic(stats_path, json.dumps(stats, indent=1) + "\n")
    _say("stats", f"{stats['labelled']:,} of {stats['captions']:,} captions name one pair; pool NMI {stats['nmi']:.3f}")
    if counts["skipped"] or counts["truncated_shards"]:
        _say("stats", skipped_line(counts["skipped"], counts["truncated_shards"]))
    return labels, stats


def _describe(spec: dict) -> tuple[str, str]:
    """(folder name prefix, words) of a selection spec, e.g. ("nmi0.1-k40-n12800", "NMI 0.1, 40 pairs")."""
    name = [f"nmi{spec['nmi']:g}"] if spec.get("nmi") is not None else []
    words = [f"NMI {spec['nmi']:g}"] if spec.get("nmi") is not None else []
    if spec.get("pairs") is not None:
        name.append(f"k{spec['pairs']}")
        words.append(f"{spec['pairs']} distinct pairs")
    return "-".join(name + [f"n{spec['size']}"]), ", ".join(words)


def select_stage(labels: Path, spec: dict, cache: Path) -> Path:
    """The subset folder (subset.npy, manifest.json) for `spec` = {size, nmi, pairs, seed, tol}; cached."""
    name, words = _describe(spec)
    folder = Path(cache) / "subsets" / f"{name}-{_key(labels.parent.name, spec)}"
    manifest = folder / "subset" / "manifest.json"
    if manifest.is_file():
        _say("select", f"reusing the cached subset {folder / 'subset'}")
        return folder
    _say("select", f"selecting {spec['size']:,} samples at {words} -> {folder / 'subset'}")
    with no_empty_folders_on_error(folder.parent, folder):  # an infeasible target leaves no empty folder
        chosen = select_subset(*load_labels(labels), size=spec["size"], nmi_target=spec["nmi"],
                               distinct_pairs=spec.get("pairs"), seed=spec["seed"], tol=spec["tol"])
        write_subset(chosen, folder / "subset", source=str(labels))
    return folder


def reshard_stage(pool: Path, folder: Path, samples_per_shard: int, field: str) -> Path:
    """Shards holding exactly the subset's samples, in `folder`/shards; cached."""
    shards = folder / "shards"
    if (shards / "sizes.json").is_file():
        _say("reshard", f"reusing {shards}")
        return shards
    _say("reshard", f"writing the subset's samples -> {shards}")
    uids = np.load(folder / "subset" / "subset.npy")
    reshard([str(p) for p in pool_shards(pool)], uids, shards, samples_per_shard=samples_per_shard,
            uid_field=field)
    return shards


def prepare_subset(pool: Path, vocab_spec: str, spec: dict, cache: Path,
                   samples_per_shard: int = 5000) -> tuple[Path, dict]:
    """(shards folder, manifest) of the subset `spec` = {size, nmi, pairs, seed, tol} of `pool`.

    Raises data_filters.select.InfeasibleTarget (a ValueError) with the feasible NMI range, and
    ValueError/FileNotFoundError for a pool without shards or without one labelled caption.
    """
    labels, stats = label_stage(pool, vocab_spec, cache)
    folder = select_stage(labels, spec, cache)
    shards = reshard_stage(Path(pool), folder, samples_per_shard, stats["uid_field"])
    manifest = json.loads((folder / "subset" / "manifest.json").read_text())
    return shards, {**manifest, "pool": str(pool), "pool_nmi": stats["nmi"], "pool_labelled": stats["labelled"],
                    "pool_skipped": stats.get("skipped", {}), "pool_truncated_shards": stats.get("truncated_shards", [])}
