"""Mergeable streaming attribute x object counts over captions, and their NMI statistics.

    python -c "from data_filters.counts import count_files; print(count_files(['pool/'], 'builtin').stats()['nmi'])"

Counting policy: every caption adds 1 to n_captions. A caption whose pairs (data_filters.parse)
contain exactly one distinct (attribute, object) pair is *labelled* and adds 1 to the joint
table that the NMI is computed from. Captions with several distinct pairs are ambiguous: they
count in n_multi_pair and their pairs go to `all_pairs` (every distinct pair per caption, all
captions), but not into the joint table.

stats() adds the pair measures of data_filters.diversity (distinct pairs, coverage, effective
pairs). Caption diversity: count_captions(caption_diversity=True) also keeps the labelled captions
and their templates (pair words masked) in two DistinctCounters, and stats() reports distinct
captions and templates (None when not counted). Masking costs about a third of the counting
throughput, so the library leaves it off by default (benchmarks/parse_throughput.py times counting
alone); `aotrain filter stats` turns it on unless --no-caption-diversity.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
from collections import Counter
from collections.abc import Iterable

import numpy as np

from .batch_parse import BATCH, BatchParser
from .diversity import DistinctCounter, TemplateMasker, pair_diversity
from .nmi import joint_stats
from .parse import CaptionParser
from .workers import tied_to_parent


COUNTERS = ("n_captions", "n_with_pair", "n_multi_pair", "n_malformed", "n_not_downloaded")


class PairCounts:
    """Streaming counts; `attributes`/`objects` (optional) fix the row/column order of table()."""

    def __init__(self, attributes: list[str] | None = None, objects: list[str] | None = None,
                 caption_diversity: bool = False):
        self.attributes, self.objects = list(attributes or []), list(objects or [])
        self.n_captions = self.n_with_pair = self.n_multi_pair = self.n_malformed = 0
        self.n_not_downloaded = 0  # img2dataset rows whose download failed: no sample, not a caption
        self.joint: Counter = Counter()  # (attribute, object) -> labelled captions
        self.all_pairs: Counter = Counter()  # (attribute, object) -> captions containing it
        # labelled captions and their templates (count_captions fills them); None: not counted
        self.captions = DistinctCounter() if caption_diversity else None
        self.templates = DistinctCounter() if caption_diversity else None

    def add(self, pairs: list[tuple[str, str]]) -> None:
        """Count one caption from its parsed pairs."""
        self.n_captions += 1
        if not pairs:
            return
        self.n_with_pair += 1
        distinct = set(pairs)
        self.all_pairs.update(distinct)
        if len(distinct) == 1:
            self.joint[pairs[0]] += 1
        else:
            self.n_multi_pair += 1

    def merge(self, other: "PairCounts") -> "PairCounts":
        """Add `other` into self (returns self)."""
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.joint.update(other.joint)
        self.all_pairs.update(other.all_pairs)
        if self.captions is not None and other.captions is not None:
            self.captions.merge(other.captions)
            self.templates.merge(other.templates)
        else:  # one side did not count them, so the sum cannot say either
            self.captions = self.templates = None
        self.attributes = self.attributes or other.attributes
        self.objects = self.objects or other.objects
        return self

    @property
    def n_labelled(self) -> int:
        return sum(self.joint.values())

    def table(self) -> tuple[list[str], list[str], np.ndarray]:
        """(attributes, objects, counts[A, O]) over names seen in the joint, in vocabulary order."""
        seen_a = {a for a, _ in self.joint}
        seen_o = {o for _, o in self.joint}
        order_a = {n: i for i, n in enumerate(self.attributes)}
        order_o = {n: i for i, n in enumerate(self.objects)}
        attrs = sorted(seen_a, key=lambda n: (order_a.get(n, len(order_a)), n))
        objs = sorted(seen_o, key=lambda n: (order_o.get(n, len(order_o)), n))
        ia = {n: i for i, n in enumerate(attrs)}
        io = {n: i for i, n in enumerate(objs)}
        counts = np.zeros((len(attrs), len(objs)), dtype=np.int64)
        for (a, o), c in self.joint.items():
            counts[ia[a], io[o]] = c
        return attrs, objs, counts

    def stats(self, normaliser: str = "arithmetic") -> dict:
        """Summary dict; entropy/MI/NMI keys are None when no caption was labelled."""
        attrs, objs, counts = self.table()
        out = {
            "n_captions": self.n_captions,
            "n_with_pair": self.n_with_pair,
            "n_labelled": self.n_labelled,
            "n_multi_pair": self.n_multi_pair,
            "n_malformed": self.n_malformed,
            "n_not_downloaded": self.n_not_downloaded,
            "fraction_with_pair": self.n_with_pair / self.n_captions if self.n_captions else 0.0,
            "fraction_labelled": self.n_labelled / self.n_captions if self.n_captions else 0.0,
        }
        if counts.sum() > 0:
            js = joint_stats(counts, normaliser)
            per_object = {o: int(k) for o, k in zip(objs, (counts > 0).sum(axis=0))}
            k = np.array(list(per_object.values()))
            diversity = {"mean": float(k.mean()), "min": int(k.min()), "max": int(k.max()), "per_object": per_object}
        else:
            js = dict.fromkeys(("n", "h_attribute", "h_object", "h_joint", "mi", "nmi"))
            js.update(normaliser=normaliser, distinct_pairs=0)
            diversity = {"mean": None, "min": None, "max": None, "per_object": {}}
        out.update(js)
        out["attributes_per_object"] = diversity
        out["diversity"] = pair_diversity(counts)
        out["caption_diversity"] = self.caption_diversity()
        out["n_attributes_seen"], out["n_objects_seen"] = len(attrs), len(objs)
        return out

    def caption_diversity(self) -> dict | None:
        """Distinct labelled captions and templates (exact False: estimated); None when not counted."""
        if self.captions is None:
            return None
        return {"distinct_captions": self.captions.count(), "distinct_templates": self.templates.count(),
                "exact": self.captions.exact and self.templates.exact}

    # ------------------------------------------------------------ serialisation
    def to_json(self) -> str:
        pairs = lambda c: [[a, o, n] for (a, o), n in sorted(c.items())]
        return json.dumps({
            "attributes": self.attributes, "objects": self.objects,
            "n_captions": self.n_captions, "n_with_pair": self.n_with_pair,
            "n_multi_pair": self.n_multi_pair, "n_malformed": self.n_malformed,
            "n_not_downloaded": self.n_not_downloaded,
            "joint": pairs(self.joint), "all_pairs": pairs(self.all_pairs),
            "captions": self.captions and self.captions.state(),
            "templates": self.templates and self.templates.state(),
        })

    @classmethod
    def from_json(cls, text: str) -> "PairCounts":
        d = json.loads(text)
        pc = cls(d["attributes"], d["objects"])
        for name in COUNTERS:
            setattr(pc, name, d.get(name, 0))  # n_not_downloaded is absent from older counts
        pc.joint = Counter({(a, o): n for a, o, n in d["joint"]})
        pc.all_pairs = Counter({(a, o): n for a, o, n in d["all_pairs"]})
        if d.get("captions") is not None:  # absent from counts written before caption diversity
            pc.captions = DistinctCounter.from_state(d["captions"])
            pc.templates = DistinctCounter.from_state(d["templates"])
        return pc

    def __eq__(self, other) -> bool:
        return isinstance(other, PairCounts) and self.to_json() == other.to_json()


def count_captions(captions: Iterable, parser: CaptionParser, caption_diversity: bool = False) -> PairCounts:
    """Count an iterable of captions or (uid, caption) tuples; adds `.malformed` of a CaptionStream.

    Captions are parsed in batches (data_filters/batch_parse.py: the parser's rules as array operations).
    """
    vocab = parser.vocab
    counts = PairCounts(vocab.attributes, vocab.objects, caption_diversity)
    batch_parser = BatchParser.of(parser)
    n_objects = len(vocab.objects)
    joint = np.zeros(len(vocab.attributes) * n_objects, np.int64)  # flat [A * O] pair codes
    all_pairs = np.zeros_like(joint)
    template = TemplateMasker(vocab).template if caption_diversity else None
    for texts in _batches(captions, BATCH):
        found = batch_parser.pairs(texts)
        counts.n_captions += len(texts)
        # distinct (caption, pair) rows: how many pairs each caption holds decides labelled vs ambiguous
        code = found.attribute * n_objects + found.obj
        rows = np.unique(found.caption * len(joint) + code)
        caption, code = np.divmod(rows, len(joint))
        distinct = np.bincount(caption, minlength=len(texts))
        one = distinct[caption] == 1
        counts.n_with_pair += int((distinct > 0).sum())
        counts.n_multi_pair += int((distinct > 1).sum())
        joint += np.bincount(code[one], minlength=len(joint))
        all_pairs += np.bincount(code, minlength=len(joint))
        if caption_diversity:
            for i, c in zip(caption[one].tolist(), code[one].tolist()):
                counts.captions.add(texts[i])
                counts.templates.add(template(texts[i], vocab.attributes[c // n_objects], vocab.objects[c % n_objects]))
    for table, counter in ((joint, counts.joint), (all_pairs, counts.all_pairs)):
        seen = np.flatnonzero(table)
        names = zip(map(vocab.attributes.__getitem__, (seen // n_objects).tolist()),
                    map(vocab.objects.__getitem__, (seen % n_objects).tolist()))
        counter.update(dict(zip(names, table[seen].tolist())))
    counts.n_malformed += getattr(captions, "malformed", 0)
    counts.n_not_downloaded += getattr(captions, "not_downloaded", 0)
    return counts


def _batches(captions: Iterable, size: int):
    """Lists of up to `size` caption texts (the text of (uid, caption) tuples)."""
    if isinstance(captions, list) and (not captions or type(captions[0]) is str):
        for start in range(0, len(captions), size):  # a list of texts: slices, no per-item work
            yield captions[start:start + size]
        return
    items = iter(captions)
    while batch := [item[1] if item.__class__ is tuple else item for item in itertools.islice(items, size)]:
        yield batch


# ------------------------------------------------------------ parallel over files
_WORKER: dict = {}


def _init_worker(vocab_spec: str, window: int) -> None:
    from .vocab import load_vocabulary
    _WORKER["parser"] = CaptionParser(load_vocabulary(vocab_spec), window)


def _count_file(job) -> PairCounts:
    path, source_kwargs, caption_diversity = job
    from .sources import iter_captions
    return count_captions(iter_captions(path, **source_kwargs), _WORKER["parser"], caption_diversity)


def count_files(paths, vocab_spec: str, workers: int = 2, window: int = 2, caption_diversity: bool = False,
                **source_kwargs) -> PairCounts:
    """Count every caption in `paths` (files/dirs), one file per task over `workers` forked processes.

    source_kwargs go to sources.iter_captions (uid_column, caption_column). Missing paths raise
    FileNotFoundError here, before any process starts. caption_diversity: see count_captions.
    """
    from .sources import expand_paths
    from .vocab import load_vocabulary
    files = expand_paths(paths, source_kwargs.get("uid_column"))
    jobs = [(f, source_kwargs, caption_diversity) for f in files]
    workers = max(1, min(workers, len(files)))
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if workers == 1 or not can_fork:
        _init_worker(vocab_spec, window)
        parts = map(_count_file, jobs)
        total = PairCounts(_WORKER["parser"].vocab.attributes, _WORKER["parser"].vocab.objects, caption_diversity)
        for part in parts:
            total.merge(part)
        return total
    vocab = load_vocabulary(vocab_spec)  # fails fast on a bad spec, in the parent
    total = PairCounts(vocab.attributes, vocab.objects, caption_diversity)
    # fork: children inherit the imports; data_filters never loads torch, so forking is safe.
    # tied_to_parent: workers of a killed run would otherwise live on, blocked on the task queue.
    tie = tied_to_parent(_init_worker, (vocab_spec, window))
    with multiprocessing.get_context("fork").Pool(workers, **tie) as pool:
        for part in pool.imap(_count_file, jobs):
            total.merge(part)
    return total
