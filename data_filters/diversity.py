"""Diversity of a labelled pool or subset beyond its NMI: how many pairs, how evenly used, how varied the captions.

    python -c "from data_filters.diversity import pair_diversity; print(pair_diversity([[3, 1], [0, 2]]))"

NMI alone is not diversity: two subsets can share an NMI while one covers three times as many
distinct pairs. These measures tell such subsets apart.

Pair measures, pair_diversity(table[A, O], pool=None):
  distinct_pairs          cells with a count
  grid_coverage           distinct_pairs / (A * O); A and O are the table's rows and columns, i.e. the
                          names it is indexed by (the pool's names for select, the seen names for stats)
  pool_coverage           distinct_pairs / the distinct pairs of `pool` (only when a pool table is given)
  attributes_per_object   {mean, min, max} distinct attributes over the objects present (non-empty columns)
  objects_per_attribute   the same over the attributes present (non-empty rows)
  joint_entropy           H(attribute, object) of the pair distribution, in nats
  effective_pairs         exp(joint_entropy): how many equally used pairs have that entropy

Caption measures: distinct_captions (distinct caption strings, exactly as written) and
distinct_templates (distinct captions once the labelled pair's words are masked). The parser
(parse.py) does not report where in a caption it found the pair, so TemplateMasker masks every
surface form of the labelled attribute and of the labelled object (synonyms and plurals included)
in the lowercased caption, matched as the parser matches words: "Two red foxes, asleep."
labelled (red, fox) -> "two {a} {o}, asleep.". A form of the pair's words elsewhere in the
caption is masked too, which only merges templates.

Caption keys are 64-bit blake2b hashes of the text (caption_key), the same in every process and run.
  - `aotrain filter stats` counts both over labelled captions with DistinctCounter: exact up to
    2 * 65,536 distinct strings, then a k-minimum-values estimate from their keys (relative error
    about 0.4%), flagged by "exact": false in stats.json; --no-caption-diversity skips the
    masking (about a third of the counting throughput).
  - `aotrain filter select` puts them in manifest.json only when the labels file has the
    caption_hash and template_hash columns that `aotrain filter label` writes (label.py); older
    labels files lack them, still load, and give manifests with the pair measures only.
"""
from __future__ import annotations

import hashlib
import math
import re

import numpy as np

ATTRIBUTE_MASK, OBJECT_MASK = "{a}", "{o}"


# ---------------------------------------------------------------- pair measures
def _spread(per_line: np.ndarray) -> dict:
    """{mean, min, max} of the positive entries (lines with no pair are not "present"); None when none."""
    present = per_line[per_line > 0]
    if present.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(present.mean()), "min": int(present.min()), "max": int(present.max())}


def joint_entropy(table) -> float:
    """Entropy (nats) of the pair distribution of a count table; 0.0 for an empty table."""
    counts = np.asarray(table, dtype=np.float64).ravel()
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def pair_diversity(table, pool=None) -> dict:
    """Pair measures (module docstring) of a count table [A, O]; `pool` (same shape) adds pool_coverage."""
    counts = np.asarray(table)
    if counts.ndim != 2 or (counts < 0).any():
        raise ValueError("a pair table must be 2-D with non-negative counts")
    present = counts > 0
    distinct = int(present.sum())
    grid = counts.shape[0] * counts.shape[1]
    empty = distinct == 0
    h = joint_entropy(counts)
    out = {
        "distinct_pairs": distinct,
        "grid_pairs": int(grid),
        "grid_coverage": distinct / grid if grid else 0.0,
        "attributes_per_object": _spread(present.sum(axis=0)),
        "objects_per_attribute": _spread(present.sum(axis=1)),
        "joint_entropy": None if empty else h,
        "effective_pairs": None if empty else math.exp(h),
    }
    if pool is not None:
        pool_pairs = int((np.asarray(pool) > 0).sum())
        out["pool_pairs"] = pool_pairs
        out["pool_coverage"] = distinct / pool_pairs if pool_pairs else 0.0
    return out


# ---------------------------------------------------------------- caption keys and templates
def caption_key(text: str) -> int:
    """Signed 64-bit key of a string (blake2b): stable across processes and runs, fits an int64 column."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class TemplateMasker:
    """Caption templates: the lowercased caption with the labelled pair's surface forms masked.

        TemplateMasker(load_vocabulary("builtin")).template("Two red foxes.", "red", "fox")  # 'two {a} {o}.'
    Forms match as the parser matches them: whole words, any non-word characters between the words
    of a multi-word form ("sea-lion"), longest form first. One compiled pattern per name, cached.
    """

    def __init__(self, vocab):
        self._forms: tuple[dict, dict] = ({}, {})  # attribute, object: canonical name -> surface forms
        for slot, table in enumerate((vocab.attribute_forms, vocab.object_forms)):
            for form, name in table.items():
                self._forms[slot].setdefault(name, []).append(form)
        self._patterns: tuple[dict, dict] = ({}, {})

    def _pattern(self, slot: int, name: str) -> re.Pattern:
        pattern = self._patterns[slot].get(name)
        if pattern is None:
            forms = sorted(self._forms[slot].get(name, [name]), key=len, reverse=True)  # "sea lions" first
            words = [r"[\W_]+".join(map(re.escape, form.split(" "))) for form in forms]
            pattern = re.compile(r"(?<![^\W_])(?:" + "|".join(words) + r")(?![^\W_])")
            self._patterns[slot][name] = pattern
        return pattern

    def template(self, caption: str, attribute: str, obj: str) -> str:
        """`caption` lowercased, each form of `obj` replaced by {o}, then each form of `attribute` by {a}."""
        text = self._pattern(1, obj).sub(OBJECT_MASK, caption.lower())
        return self._pattern(0, attribute).sub(ATTRIBUTE_MASK, text)


def _unsigned_key(text: str) -> int:
    return caption_key(text) & 0xFFFFFFFFFFFFFFFF  # uniform on [0, 2**64), as k-minimum values needs


class DistinctCounter:
    """Distinct strings in bounded memory: exact up to 2k of them, beyond that a k-minimum-values estimate.

        counter = DistinctCounter(); counter.add("a red fox"); counter.add("a red fox"); counter.count()  # 1
    While exact it keeps the strings themselves (a set insert costs a fifth of a blake2b key, and
    `filter stats` adds one per labelled caption); past 2k it keeps only the k smallest caption_keys.
    Mergeable (merge) and canonical (state), as the per-file counts of `filter stats` need.
    """

    def __init__(self, k: int = 65536):
        self.k = k
        self._texts: set[str] = set()  # exact: strings added
        self._keys: set[int] = set()  # exact: keys restored by from_state; estimating: the smallest keys
        self._bound: int | None = None  # estimating: the k-th smallest key; larger keys are dropped

    def add(self, text: str) -> None:
        if self._bound is None:
            self._texts.add(text)
            if len(self._texts) > 2 * self.k:
                self._to_keys()
            return
        key = _unsigned_key(text)
        if key <= self._bound:
            self._keys.add(key)
            if len(self._keys) > 2 * self.k:  # prune at 2k, not k, so sorting is amortised over k additions
                self._prune()

    def _to_keys(self) -> None:
        """Replace the strings by their keys; start estimating when more than 2k distinct keys are held."""
        self._keys |= {_unsigned_key(t) for t in self._texts}
        self._texts = set()
        if len(self._keys) > 2 * self.k:
            self._prune()

    def _prune(self) -> None:
        smallest = sorted(self._keys)[: self.k]
        self._keys, self._bound = set(smallest), smallest[-1]

    def merge(self, other: "DistinctCounter") -> "DistinctCounter":
        """Add `other`'s strings or keys into self (returns self)."""
        bounds = [b for b in (self._bound, other._bound) if b is not None]
        self._texts |= other._texts
        self._keys |= other._keys
        if bounds:  # each side knows its keys only up to its bound, so the union is complete up to the lower
            self._to_keys()
            self._keys = {key for key in self._keys if key <= min(bounds)}
            self._prune()
        elif len(self._texts) + len(self._keys) > 2 * self.k:
            self._to_keys()
        return self

    @property
    def exact(self) -> bool:
        return self._bound is None

    def _exact_keys(self) -> set:
        return self._keys | {_unsigned_key(t) for t in self._texts}

    def count(self) -> int:
        """Distinct strings added: exact, or (k - 1) / (k-th smallest key as a fraction of 2**64)."""
        if self.exact:
            return len(self._texts) if not self._keys else len(self._exact_keys())
        kth = sorted(self._keys)[self.k - 1]
        return int(round((self.k - 1) / ((kth + 1) / 2.0 ** 64)))

    def state(self) -> dict:
        """JSON-able and canonical: the same strings added in any order and grouping give the same state."""
        if self.exact:
            return {"k": self.k, "exact": True, "keys": sorted(self._exact_keys())}
        return {"k": self.k, "exact": False, "keys": sorted(self._keys)[: self.k]}

    @classmethod
    def from_state(cls, state: dict) -> "DistinctCounter":
        counter = cls(state["k"])
        counter._keys = set(state["keys"])
        if not state["exact"]:
            counter._bound = max(counter._keys)
        return counter


def caption_diversity(caption_keys, template_keys) -> dict:
    """{distinct_captions, distinct_templates} of aligned key arrays (one entry per sample)."""
    return {"distinct_captions": int(np.unique(np.asarray(caption_keys)).size),
            "distinct_templates": int(np.unique(np.asarray(template_keys)).size)}
