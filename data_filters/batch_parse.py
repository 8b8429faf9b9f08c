"""CaptionParser's rules applied to a whole batch of captions at once, in one compiled loop.

    python -c "from data_filters.batch_parse import BatchParser; from data_filters.parse import CaptionParser; from data_filters.vocab import load_vocabulary as L; print(BatchParser(CaptionParser(L('builtin'))).labels(['a red fox', 'a dog']))"

data_filters/parse.py's CaptionParser is the reference: its docstring states the rules, and this
module gives the same pairs for every caption (tests/test_batch_parse.py compares them caption by
caption). The reference walks each caption's words as Python strings; here the batch becomes one
Arrow string array, and a numba loop (data_filters/parse_kernel.py) walks its bytes, looks every word
up in a hash table of the vocabulary's words, and applies the reference's rules to the token ids
(about 10x less CPU per caption, benchmarks/parse_throughput.py).

Captions with a non-ASCII byte go to the reference parser instead (Unicode lowercasing and word
characters); in English web captions they are a few percent at most.
"""
from __future__ import annotations

import weakref

import numpy as np
import pyarrow as pa

from .parse import BOUNDARY_CHARS, BOUNDARY_WORDS, CaptionParser

BATCH = 65536  # captions parsed at once (count_captions, labelling): large next to per-call costs, small next to memory


class Pairs:
    """The pairs found in a batch: parallel int arrays, sorted by caption then position.

    caption[i] is the caption's index in the batch; attribute[i], obj[i] index vocab.attributes and
    vocab.objects. named_attr[c], named_obj[c]: the one attribute and the one object caption c names
    (-1: none, -2: several distinct). `labels()` turns them into one (attribute, object) per caption.
    """

    def __init__(self, n_captions: int, caption: np.ndarray, attribute: np.ndarray, obj: np.ndarray,
                 named_attr: np.ndarray, named_obj: np.ndarray):
        self.n_captions, self.caption, self.attribute, self.obj = n_captions, caption, attribute, obj
        self.named_attr, self.named_obj = named_attr, named_obj

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(attribute, object) id per caption, CaptionParser.label's rule: the pair when exactly one
        distinct pair was found; without a pair, one side (the other -1) when the caption names only
        that side, once; else both -1."""
        pairless = np.ones(self.n_captions, bool)
        pairless[self.caption] = False
        object_only = pairless & (self.named_attr == -1) & (self.named_obj >= 0)
        attribute_only = pairless & (self.named_obj == -1) & (self.named_attr >= 0)
        attr = np.where(attribute_only, self.named_attr, -1)
        obj = np.where(object_only, self.named_obj, -1)
        if len(self.caption):
            first = np.flatnonzero(np.r_[True, self.caption[1:] != self.caption[:-1]])
            code = self.attribute * (int(self.obj.max()) + 1) + self.obj
            one = np.minimum.reduceat(code, first) == np.maximum.reduceat(code, first)
            rows = first[one]
            attr[self.caption[rows]] = self.attribute[rows]
            obj[self.caption[rows]] = self.obj[rows]
        return attr, obj


class BatchParser:
    """Batch version of `parser` (same vocabulary, same window, same pairs); `BatchParser.of(parser)`
    builds it once per parser (its tables take a fraction of a second)."""

    _built: "weakref.WeakKeyDictionary[CaptionParser, BatchParser]" = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, parser: CaptionParser) -> "BatchParser":
        built = cls._built.get(parser)
        if built is None:
            built = cls._built[parser] = cls(parser)
        return built

    def __init__(self, parser: CaptionParser):
        from . import parse_kernel  # numba: imported only by those who parse
        self._kernel = parse_kernel.parse_batch
        self.reference, self.window = parser, parser.window
        vocab = parser.vocab
        self._attr_id = {name: i for i, name in enumerate(vocab.attributes)}
        self._obj_id = {name: i for i, name in enumerate(vocab.objects)}
        names: dict[tuple, list] = {}  # token tuple -> [attribute id, object id]
        for table, slot, ids in ((vocab.attribute_forms, 0, self._attr_id), (vocab.object_forms, 1, self._obj_id)):
            for form, name in table.items():
                names.setdefault(tuple(form.split(" ")), [-1, -1])[slot] = ids[name]
        # The kernel's token ids: every word of a name and every boundary word or character.
        tokens = sorted({t for toks in names for t in toks} | BOUNDARY_WORDS | BOUNDARY_CHARS)
        token_id = {t: i for i, t in enumerate(tokens)}
        encoded = [t.encode() for t in tokens]
        self._slots = parse_kernel.token_table(encoded)
        self._tokens = np.frombuffer(b"".join(encoded), np.uint8)  # token i: _tokens[_starts[i]:_starts[i + 1]]
        self._starts = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        # Names as candidates grouped by first token, longest first (CaptionParser._match's order):
        # token t's are cand_first[t]:cand_first[t + 1]; a name's token ids, length, attribute, object.
        order = sorted(names, key=lambda toks: (token_id[toks[0]], -len(toks)))
        self._cand_first = np.searchsorted([token_id[toks[0]] for toks in order], np.arange(len(tokens) + 1))
        self._cand_tokens = np.full((len(order), max(map(len, order))), -1, np.int32)
        for c, toks in enumerate(order):
            self._cand_tokens[c, :len(toks)] = [token_id[t] for t in toks]
        self._cand_len = np.array([len(toks) for toks in order], np.int64)
        self._cand_attr = np.array([names[toks][0] for toks in order], np.int64)
        self._cand_obj = np.array([names[toks][1] for toks in order], np.int64)
        # A clause boundary, unless a name starts with it (vocabulary words win, as in CaptionParser).
        firsts = {toks[0] for toks in names}
        self._boundary = np.array([t in BOUNDARY_WORDS | BOUNDARY_CHARS and t not in firsts for t in tokens])

    def pairs(self, captions) -> Pairs:
        """Pairs of every caption in `captions` (a list of str or an Arrow string array)."""
        array = _string_array(captions)
        n = len(array)
        if not n:
            return Pairs(0, *(np.zeros(0, np.int64),) * 5)
        offsets = np.frombuffer(array.buffers()[1], np.int32, n + 1, array.offset * 4)
        text = array.buffers()[2]
        data = np.frombuffer(text, np.uint8) if text is not None else np.zeros(0, np.uint8)
        data.flags.writeable = offsets.flags.writeable = False  # whatever Arrow's buffers: one numba signature
        caption, attr, obj, named_attr, named_obj, fallback = self._kernel(
            data, offsets, self.window, self._slots, self._tokens, self._starts, self._boundary,
            self._cand_first, self._cand_tokens, self._cand_len, self._cand_attr, self._cand_obj)
        # Captions with a non-ASCII byte: the reference parser's pairs, merged in caption order.
        extra = []
        for i in np.flatnonzero(fallback).tolist():
            found, attrs, objs = self.reference.read(array[i].as_py())
            extra += [(i, self._attr_id[a], self._obj_id[o]) for a, o in found]
            named_attr[i] = self._attr_id[next(iter(attrs))] if len(attrs) == 1 else -2 if attrs else -1
            named_obj[i] = self._obj_id[next(iter(objs))] if len(objs) == 1 else -2 if objs else -1
        if extra:
            more = np.array(extra, np.int64)
            order = np.argsort(np.concatenate([caption, more[:, 0]]), kind="stable")
            caption, attr, obj = (np.concatenate([mine, theirs])[order]
                                  for mine, theirs in ((caption, more[:, 0]), (attr, more[:, 1]), (obj, more[:, 2])))
        return Pairs(n, caption, attr, obj, named_attr, named_obj)

    def labels(self, captions) -> tuple[np.ndarray, np.ndarray]:
        """(attribute id, object id) per caption (Pairs.labels): both -1 where it has no label."""
        return self.pairs(captions).labels()


def _string_array(captions) -> pa.StringArray:
    """`captions` as one Arrow string array, nulls as empty strings."""
    array = captions if isinstance(captions, (pa.Array, pa.ChunkedArray)) else pa.array(captions, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_string(array.type):
        array = array.cast(pa.string())
    return array.fill_null("") if array.null_count else array
