"""The stages between a caption pool and training: stats (label) -> select -> reshard, each cached.

    pool (data_filters/pools.py: img2dataset, DataComp or webdataset shards) -> labels.parquet + stats.json
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

from data_filters.dedupe import dropped_line, load_selection_pool
from data_filters.files import no_empty_folders_on_error, write_text_atomic
from data_filters.label import label_captions, load_labels, skipped_line
from data_filters.nmi import joint_stats
from data_filters.pools import open_pool, pool_shards
from data_filters.reshard import reshard
from data_filters.select import InfeasibleTarget, pair_counts, select_subset
from data_filters.singles import with_singles
from data_filters.subset_files import write_subset
from data_filters.vocab import vocabulary_checksum


def _say(stage: str, message: str) -> None:
    print(f"{stage}: {message}", file=sys.stderr, flush=True)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _fingerprint(files: list[Path]) -> list:
    # Names, sizes and modification times: re-reading 12M captions to hash them would cost as much
    # as labelling them again.
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def label_stage(pool: Path, vocab_spec: str, cache: Path) -> tuple[Path, dict]:
    """(labels.parquet, stats) of the pool's captions under `vocab_spec`; cached by pool and vocabulary.
    The pool is read as data_filters/pools.py recognises it, like `aotrain filter label <pool>`."""
    found = open_pool(pool)
    files = list(found.caption_files)
    # "singles": labels made since single-side captions are kept (labels.singles.parquet); older ones are redone
    folder = Path(cache) / f"labels-{_key(_fingerprint(files), vocabulary_checksum(vocab_spec), 'singles')}"
    labels, stats_path = folder / "labels.parquet", folder / "stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        _say("stats", f"reusing {folder} ({stats['labelled']:,} of {stats['captions']:,} captions labelled, "
                      f"pool NMI {stats['nmi']:.3f})")
        return labels, stats
    _say("stats", f"{found.describe()}; labelling -> {labels}")
    with no_empty_folders_on_error(Path(cache), folder):  # a failed start leaves no empty cache folder
        folder.mkdir(parents=True, exist_ok=True)
        counts = label_captions(found, vocab_spec, labels)
    uids, attr_idx, obj_idx, attributes, objects = load_labels(labels)
    table = pair_counts(attr_idx, obj_idx, len(attributes), len(objects))
    stats = {**{k: counts[k] for k in ("captions", "labelled", "object_only", "attribute_only", "malformed",
                                       "not_downloaded", "skipped", "truncated_shards", "pool_kind")},
             "uid_field": found.shard_uid_field,
             "vocabulary": vocab_spec, **joint_stats(table)}
    write_text_atomic(stats_path, json.dumps(stats, indent=1) + "\n")
    _say("stats", f"{stats['labelled']:,} of {stats['captions']:,} captions name one pair"
                  + (f", {stats['object_only']:,} one object alone" if stats["object_only"] else "")
                  + (f", {stats['attribute_only']:,} one attribute alone" if stats["attribute_only"] else "")
                  + f"; pool NMI {stats['nmi']:.3f}"
                  + (f"; {stats['not_downloaded']:,} failed downloads (not samples)" if stats["not_downloaded"] else ""))
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
        # The same pool `aotrain filter select` draws from: duplicate images dropped (data_filters/dedupe.py).
        pool, caption_keys, dedupe = load_selection_pool(labels, spec.get("dedupe"))
        if dropped_line(dedupe):
            _say("select", dropped_line(dedupe))
        try:
            chosen, = with_singles(labels, spec["size"], spec.get("single_share", "pool"), spec["seed"], len(pool[0]),
                                   lambda pair_size: [select_subset(
                                       *pool, size=pair_size, nmi_target=spec["nmi"], distinct_pairs=spec.get("pairs"),
                                       seed=spec["seed"], tol=spec["tol"], caption_keys=caption_keys)])
        except InfeasibleTarget as e:
            raise InfeasibleTarget(f"{e}{_band_hint(labels, spec)}", e.largest_size) from None
        chosen.manifest.update(dedupe)
        write_subset(chosen, folder / "subset", source=str(labels))
    return folder


def _band_hint(labels: Path, spec: dict) -> str:
    """With both knobs set: the command printing which pair counts reach the NMI target (data_filters/band_cli.py)."""
    if spec.get("pairs") is None or spec.get("nmi") is None:
        return ""
    return (f"; the band at every pair count: aotrain filter band {labels} --size {spec['size']} "
            f"--nmi {spec['nmi']:g} --seed {spec['seed']}")


def reshard_stage(pool: Path, folder: Path, samples_per_shard: int, field: str) -> Path:
    """Shards holding exactly the subset's samples, in `folder`/shards; cached."""
    shards = folder / "shards"
    if (shards / "sizes.json").is_file():
        _say("reshard", f"reusing {shards}")
        return shards
    _say("reshard", f"writing the subset's samples -> {shards}")
    uids = np.load(folder / "subset" / "subset.npy")
    reshard([str(p) for p in pool_shards(pool)], uids, shards, samples_per_shard=samples_per_shard,
            uid_field=field)  # keys survive: each sample's json has source_key and uid; key_map.parquet
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
                    "pool_single_side": stats.get("object_only", 0) + stats.get("attribute_only", 0),
                    "pool_captions": stats["captions"], "pool_kind": stats.get("pool_kind"),
                    "not_downloaded": stats.get("not_downloaded", 0),
                    "pool_skipped": stats.get("skipped", {}), "pool_truncated_shards": stats.get("truncated_shards", [])}
