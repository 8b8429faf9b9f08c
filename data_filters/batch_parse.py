"""CaptionParser's rules applied to a whole batch of captions at once, in NumPy and Arrow.

    python -c "from data_filters.batch_parse import BatchParser; from data_filters.parse import CaptionParser; from data_filters.vocab import load_vocabulary as L; print(BatchParser(CaptionParser(L('builtin'))).labels(['a red fox', 'a dog']))"

data_filters/parse.py's CaptionParser is the reference: its docstring states the rules, and this
module gives the same pairs for every caption (tests/test_batch_parse.py compares them caption by
caption). The reference walks each caption in Python; here every step is a few array operations over
the batch's bytes or tokens (4-5x less CPU per caption, benchmarks/parse_throughput.py):

  1. bytes: Arrow lowercases the batch; letters/digits and boundary characters are found by
     comparisons, and a token starts or ends where that changes (or where a caption starts);
  2. tokens -> vocabulary token ids: a token's first 8 bytes are read as one integer (the token
     itself when it is no longer) and looked up with one Arrow hash lookup; longer tokens as strings;
  3. multi-word names: the token ids of k consecutive tokens packed into one int64 and looked up
     among the vocabulary's k-word names; the words inside a name are then dropped, and the rest
     numbered as the reference counts words (a multi-word name counts as one);
  4. the rules, over vocabulary tokens only: each attribute's next object and next boundary by
     binary search; it pairs when the object comes first and at most `window` words lie between;
     a word that is both an attribute and an object looks ahead the same way.

Captions the arrays would get wrong go to the reference parser instead: any non-ASCII byte (Unicode
lowercasing and word characters), and multi-word names overlapping each other (the reference's
left-to-right choice). In English web captions both are a few percent at most.
"""
from __future__ import annotations

import weakref

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .parse import BOUNDARY_CHARS, BOUNDARY_WORDS, CaptionParser

_PUNCT_BYTE = np.zeros(256, bool)  # the boundary characters: tokens of their own
_PUNCT_BYTE[[ord(ch) for ch in BOUNDARY_CHARS]] = True
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], np.uint64)  # keep k bytes
BATCH = 65536  # captions parsed at once (count_captions, labelling): large for array operations, small next to memory
_NONE = np.iinfo(np.int64).max  # "no such entry" in _first_after


class Pairs:
    """The pairs found in a batch: parallel int arrays, sorted by caption then position.

    caption[i] is the caption's index in the batch; attribute[i], obj[i] index vocab.attributes and
    vocab.objects. `labels()` turns them into one (attribute, object) per caption or -1.
    """

    def __init__(self, n_captions: int, caption: np.ndarray, attribute: np.ndarray, obj: np.ndarray):
        self.n_captions, self.caption, self.attribute, self.obj = n_captions, caption, attribute, obj

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(attribute, object) id per caption: the pair when exactly one distinct pair was found, else -1."""
        attr = np.full(self.n_captions, -1, np.int64)
        obj = np.full(self.n_captions, -1, np.int64)
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
        self.reference, self.window = parser, parser.window
        vocab = parser.vocab
        self._attr_id = {name: i for i, name in enumerate(vocab.attributes)}
        self._obj_id = {name: i for i, name in enumerate(vocab.objects)}
        names: dict[tuple, list] = {}  # token tuple -> [attribute id, object id]
        for table, slot, ids in ((vocab.attribute_forms, 0, self._attr_id), (vocab.object_forms, 1, self._obj_id)):
            for form, name in table.items():
                names.setdefault(tuple(form.split(" ")), [-1, -1])[slot] = ids[name]
        tokens = sorted({t for toks in names for t in toks} | BOUNDARY_WORDS | BOUNDARY_CHARS)
        token_id = {t: i for i, t in enumerate(tokens)}
        # Lookup tables (see _lookup). A non-ASCII token can only occur in a caption the reference parses.
        ascii_ids = [i for i, t in enumerate(tokens) if t.isascii()]
        short = [i for i in ascii_ids if len(tokens[i]) <= 8]
        long = [i for i in ascii_ids if len(tokens[i]) > 8]
        self._short_keys = pa.array([int.from_bytes(tokens[i].encode(), "little") for i in short], pa.uint64())
        self._short_ids = np.array(short + [-1], np.int64)  # [-1]: where index_in found nothing
        self._long_tokens = pa.array([tokens[i] for i in long], pa.string())
        self._long_ids = np.array(long + [-1], np.int64)
        self._longest = max((len(tokens[i]) for i in long), default=8)
        self._bits = max(1, (len(tokens) - 1).bit_length())
        self._max_len = max(map(len, names))
        if self._bits * self._max_len > 62:
            raise ValueError("vocabulary too large for packed multi-word keys")  # ~2**12 tokens x 5 words
        n = len(tokens)
        starts = {toks[0] for toks in names}
        # Per token id: is it a clause boundary (vocabulary words win over boundary words, as in
        # CaptionParser), its one-word name (attribute id, object id), does a longer name start with it.
        self._boundary = np.array([t in BOUNDARY_WORDS | BOUNDARY_CHARS and t not in starts for t in tokens])
        self._boundary_id = token_id[","]  # what every run of boundary characters reads as
        self._single_attr = np.full(n, -1, np.int64)
        self._single_obj = np.full(n, -1, np.int64)
        self._starts_long = np.zeros(n, bool)
        # k -> (does a k-word name start with this token id [n], sorted packed keys of the k-word
        # names, their [attribute, object] ids)
        self._long: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        by_len: dict[int, list] = {}
        for toks, ids in names.items():
            if len(toks) == 1:
                self._single_attr[token_id[toks[0]]], self._single_obj[token_id[toks[0]]] = ids
            else:
                self._starts_long[token_id[toks[0]]] = True
                by_len.setdefault(len(toks), []).append((self._pack([token_id[t] for t in toks]), ids))
        for k, rows in by_len.items():
            rows.sort()
            first = np.zeros(n, bool)
            first[[row[0] >> (self._bits * (k - 1)) for row in rows]] = True
            self._long[k] = (first, np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64))

    def _pack(self, ids) -> int:
        key = 0
        for i in ids:
            key = (key << self._bits) | i
        return key

    # ------------------------------------------------------------ the batch
    def pairs(self, captions) -> Pairs:
        """Pairs of every caption in `captions` (a list of str or an Arrow string array)."""
        array = _string_array(captions)
        n = len(array)
        lowered = pc.ascii_lower(array)
        offsets = np.frombuffer(lowered.buffers()[1], np.int32, n + 1, lowered.offset * 4).astype(np.int64)
        data = np.frombuffer(lowered.buffers()[2], np.uint8, offsets[-1] - offsets[0], offsets[0]) \
            if n and offsets[-1] > offsets[0] else np.zeros(0, np.uint8)
        offsets -= offsets[0]
        # Non-ASCII captions go to the reference (Unicode lowercasing and word characters).
        wide = np.flatnonzero(data >= 128)
        fallback = set((np.unique(np.searchsorted(offsets, wide, "right")) - 1).tolist())
        starts, ends, punct = _token_bounds(data, offsets)
        ids = self._lookup(data, starts, ends, punct)
        tok_caption = np.repeat(np.arange(n), np.diff(np.searchsorted(starts, offsets)))
        known = np.flatnonzero(ids >= 0)  # the rules only look at vocabulary words and boundaries
        attr, obj, unit, overlapping = self._names(ids, known, tok_caption)
        fallback.update(overlapping)
        caption, a, o = self._rules(tok_caption[known], unit, self._boundary[ids[known]], attr, obj)
        return self._with_reference(n, caption, a, o, fallback, array)

    def labels(self, captions) -> tuple[np.ndarray, np.ndarray]:
        """(attribute id, object id) per caption, -1 where it has no pair or several distinct pairs."""
        return self.pairs(captions).labels()

    def _lookup(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, punct: np.ndarray) -> np.ndarray:
        """Vocabulary token id of every token (lowercased bytes data[starts:ends]), -1 outside it;
        every run of punctuation is a boundary.

        A token of up to 8 bytes is one little-endian integer (its bytes, zero-padded: tokens hold no
        zero byte, so the integer is the token), looked up among the vocabulary's with one Arrow hash
        lookup. Longer tokens (a few percent) are gathered into an Arrow string array and looked up as
        strings. (An open-addressing table in NumPy was tried: twice as slow as Arrow's one C++ pass.)
        """
        lengths = ends - starts
        words = _eight_bytes(data, starts) & _LOW_BYTES[np.minimum(lengths, 8)]
        found = pc.index_in(words, value_set=self._short_keys).fill_null(-1).to_numpy()
        ids = np.where(lengths <= 8, self._short_ids[found], -1)  # index -1 reads the table's -1
        ids[punct] = self._boundary_id
        long = np.flatnonzero((lengths > 8) & (lengths <= self._longest))
        if len(long):
            size = lengths[long]
            at = np.repeat(starts[long], size) + _ramp(size)  # every byte of every long token
            offsets = np.zeros(len(long) + 1, np.int32)
            np.cumsum(size, out=offsets[1:])
            text = pa.StringArray.from_buffers(len(long), pa.py_buffer(offsets), pa.py_buffer(data[at]))
            ids[long] = self._long_ids[pc.index_in(text, value_set=self._long_tokens).fill_null(-1).to_numpy()]
        return ids

    def _names(self, ids: np.ndarray, known: np.ndarray, tok_caption: np.ndarray):
        """Longest name at every vocabulary token: (attribute id, object id, unit) per entry of `known`
        that is not inside a multi-word name, and the captions to hand over to the reference.

        unit: the token's position counted with a multi-word name as one word (the reference's
        units). A multi-word name starting inside another is left to the reference parser, which
        picks left to right.
        """
        token = ids[known]
        attr, obj = self._single_attr[token], self._single_obj[token]
        candidates = np.flatnonzero(self._starts_long[token])  # indices into known
        length = np.ones(len(candidates), np.int64)  # longest match so far at each candidate
        for k in sorted(self._long, reverse=True):
            first, keys, names = self._long[k]
            which = candidates[(length == 1) & first[token[candidates]] & (known[candidates] + k <= len(ids))]
            if not len(which):
                continue
            pos = known[which]
            window = pos[:, None] + np.arange(k)  # [P, k] token positions
            toks = ids[window]
            ok = (toks >= 0).all(1) & (tok_caption[window[:, -1]] == tok_caption[pos])
            packed = np.zeros(len(pos), np.int64)
            for j in range(k):
                packed = (packed << self._bits) | np.maximum(toks[:, j], 0)
            at = np.minimum(np.searchsorted(keys, packed), len(keys) - 1)
            hit = ok & (keys[at] == packed)
            which, at = which[hit], at[hit]
            attr[which], obj[which] = names[at, 0], names[at, 1]
            length[np.searchsorted(candidates, which)] = k
        long = length > 1
        starts, lengths = known[candidates[long]], length[long]
        if not len(starts):
            return attr, obj, known, set()
        inside = np.zeros(len(ids) + 1, bool)  # tokens inside a multi-word name, after its first
        inside[np.repeat(starts, lengths - 1) + _ramp(lengths - 1) + 1] = True
        nested = starts[inside[starts]]  # a name starting inside another name
        unit = known - np.cumsum(inside, dtype=np.int32)[known]  # a name's later words do not count as words
        keep = ~inside[known]  # their entries become -1, so the rules skip them
        attr, obj = np.where(keep, attr, -1), np.where(keep, obj, -1)
        return attr, obj, unit, set(tok_caption[nested].tolist())

    def _rules(self, caption: np.ndarray, unit: np.ndarray, boundary: np.ndarray, attr: np.ndarray,
               obj: np.ndarray):
        """(caption, attribute id, object id) of every pair, in the reference's order.

        Inputs: one entry per vocabulary token in text order; unit: its position in words.
        """
        # A caption's first entry acts as a barrier too, so nothing reaches across captions.
        barrier = boundary.copy()
        barrier[:1] = True
        barrier[1:] |= caption[1:] != caption[:-1]
        barriers = np.flatnonzero(barrier)
        # A word that is both: an attribute when some object-capable word follows within the window
        # and before any boundary (CaptionParser._object_ahead), otherwise an object.
        both = np.flatnonzero((attr >= 0) & (obj >= 0))
        if len(both):
            ahead = _first_after(np.flatnonzero(obj >= 0), both)
            as_attr = self._reaches(both, ahead, barriers, unit)
            attr, obj = attr.copy(), obj.copy()
            attr[both[~as_attr]] = -1
            obj[both[as_attr]] = -1
        attrs = np.flatnonzero(attr >= 0)
        target = _first_after(np.flatnonzero(obj >= 0), attrs)  # each attribute's first object after it
        pair = self._reaches(attrs, target, barriers, unit)
        at, target = attrs[pair], target[pair]
        return caption[at], attr[at], obj[target]

    def _reaches(self, source: np.ndarray, target: np.ndarray, barriers: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """Does each source entry reach its target: one exists, no barrier comes first, and at most
        `window` words lie between them?"""
        barrier = _first_after(barriers, source)
        found = target < len(unit)
        gap = unit[np.where(found, target, 0)] - unit[source] - 1
        return found & (target < barrier) & (gap <= self.window)

    def _with_reference(self, n, caption, attr, obj, fallback: set, array) -> Pairs:
        """Replace the pairs of the `fallback` captions by the reference parser's."""
        if not fallback:
            return Pairs(n, caption, attr, obj)
        rows = np.array(sorted(fallback), np.int64)
        mine = ~np.isin(caption, rows)
        extra = [(i, self._attr_id[a], self._obj_id[o])
                 for i in rows.tolist() for a, o in self.reference.pairs(array[i].as_py())]
        if extra:
            more = np.array(extra, np.int64)
            caption = np.concatenate([caption[mine], more[:, 0]])
            attr = np.concatenate([attr[mine], more[:, 1]])
            obj = np.concatenate([obj[mine], more[:, 2]])
            order = np.argsort(caption, kind="stable")
            return Pairs(n, caption[order], attr[order], obj[order])
        return Pairs(n, caption[mine], attr[mine], obj[mine])


def _string_array(captions) -> pa.StringArray:
    """`captions` as one Arrow string array, nulls as empty strings."""
    array = captions if isinstance(captions, (pa.Array, pa.ChunkedArray)) else pa.array(captions, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_string(array.type):
        array = array.cast(pa.string())
    return array.fill_null("") if array.null_count else array


def _token_bounds(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, is punctuation) of every token in lowercased ASCII `data`: runs of letters/digits,
    and runs of boundary characters; `offsets` bound the captions, which no token crosses.

    A run of boundary characters ("?!") is one token where the reference sees two; both are clause
    boundaries, and nothing pairs across a boundary, so the pairs are the same.
    """
    kind = (((data - np.uint8(97)) < 26) | ((data - np.uint8(48)) < 10)).view(np.int8)  # 1: letter/digit
    # Boundary characters are tokens (kind 2); other symbols (hyphens, apostrophes) only separate.
    other = np.flatnonzero((kind == 0) & (data != 32))
    kind[other[_PUNCT_BYTE[data[other]]]] = 2
    # A token starts where the kind changes to non-zero, ends where it changes from non-zero; a
    # caption's first byte counts as a change, so no token runs on into the next caption.
    # (Boolean masks: np.flatnonzero is several times faster on bool than on int8.)
    padded = np.concatenate([[np.int8(0)], kind, [np.int8(0)]])
    change = padded[1:] != padded[:-1]  # [len(data) + 1]: between byte i-1 and byte i
    change[offsets[1:-1]] = True
    token = kind != 0
    starts = np.flatnonzero(change[:-1] & token)
    ends = np.flatnonzero(change[1:] & token) + 1
    return starts, ends, kind[starts] == 2


def _eight_bytes(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """uint64 of the 8 bytes from each start (little-endian; zeros past the end of data), unmasked."""
    body = len(data) - 7  # starts from which 8 bytes can be read in place
    words = np.empty(len(starts), np.uint64)
    inside = starts < body
    if body > 0:  # unaligned 8-byte reads straight from the buffer
        words[inside] = np.ndarray((body,), "<u8", data, 0, (1,))[starts[inside]]
    if not inside.all():  # the last few tokens: from a zero-padded copy of the tail
        tail = np.zeros(16, np.uint8)
        base = max(body, 0)
        tail[:len(data) - base] = data[base:]
        words[~inside] = np.ndarray((9,), "<u8", tail, 0, (1,))[starts[~inside] - base]
    return words


def _ramp(lengths: np.ndarray) -> np.ndarray:
    """0..len-1 for each length, concatenated: _ramp([2, 3]) -> [0, 1, 0, 1, 2]."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - starts


def _first_after(positions: np.ndarray, at: np.ndarray) -> np.ndarray:
    """For each of `at`, the first of the sorted `positions` after it (a huge number where none)."""
    following = np.searchsorted(positions, at, "right")
    return np.append(positions, _NONE)[following]
