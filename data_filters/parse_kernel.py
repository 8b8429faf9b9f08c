"""The compiled loop of the batch parser (data_filters/batch_parse.py): CaptionParser's rules over a
batch's UTF-8 bytes, one caption after another, in numba.

    python -c "from data_filters.parse_kernel import token_hash; print(token_hash(b'fox'))"

Only BatchParser imports this module, so importing data_filters does not import numba (~0.2 CPU-s).
The functions compile on first use and are cached on disk (cache=True: in __pycache__ next to this
file, or in numba's per-user cache directory where that is read-only): the compile (a few seconds)
is paid once per machine, and each later process only loads the machine code (~0.4 CPU-s).

parse_batch follows CaptionParser.pairs (data_filters/parse.py) step by step, with words replaced by
vocabulary token ids and the words outside the vocabulary left out: only their count matters to the
rules, and skipping them is what makes the loop fast. tests/test_batch_parse.py compares the two
caption by caption.
"""
from __future__ import annotations

import warnings

import numba
import numpy as np

from .parse import BOUNDARY_CHARS

# Byte classes: letters and digits make words; the boundary characters are tokens of their own;
# any other ASCII byte only separates words; a byte >= 128 (non-ASCII) sends the caption to the
# reference parser (Unicode lowercasing and word characters).
SEPARATOR, WORD, PUNCT, WIDE = 0, 1, 2, 3
BYTE_CLASS = np.full(256, SEPARATOR, np.uint8)
BYTE_CLASS[128:] = WIDE
for _lo, _hi in (b"az", b"AZ", b"09"):
    BYTE_CLASS[_lo:_hi + 1] = WORD
BYTE_CLASS[[ord(ch) for ch in BOUNDARY_CHARS]] = PUNCT
LOWER = np.arange(256, dtype=np.uint8)  # ASCII lowercasing, as str.lower() does for ASCII
LOWER[ord("A"):ord("Z") + 1] += 32


def _compiled(function):
    """numba.njit(cache=True), or without the disk cache where numba finds no writable cache
    directory (then every process compiles for a few seconds; NUMBA_CACHE_DIR names one)."""
    try:
        return numba.njit(cache=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        warnings.warn(f"numba has no writable cache directory for {__file__}: the batch parser compiles "
                      "in every process (set NUMBA_CACHE_DIR to cache it)")  # same text: shown once
        return numba.njit(function)


# The vocabulary's hash table: token_hash (Python, building it) and parse_batch (probing it) share
# these two functions; values stay below 2**63, so Python ints and numba's int64 agree.
@_compiled
def _hash_step(h, byte):
    return (h * 31 + byte) & 0x7FFFFFFF


@_compiled
def _slot(h, mask):
    return ((h * 2654435761) >> 24) & mask  # multiplicative hashing: all of h's bits reach the slot


def token_hash(token: bytes) -> int:
    """The hash parse_batch computes for a word with these (lowercased) bytes."""
    h = 0
    for byte in token:
        h = _hash_step.py_func(h, byte)
    return h


def token_table(tokens: list[bytes]) -> np.ndarray:
    """Open-addressing hash table of `tokens` (linear probing, a quarter full at most): the index
    of each token in `tokens` at or after its _slot, -1 in empty slots."""
    slots = np.full(1 << (4 * len(tokens)).bit_length(), -1, np.int32)
    mask = len(slots) - 1
    for i, token in enumerate(tokens):
        s = _slot.py_func(token_hash(token), mask)
        while slots[s] >= 0:
            s = (s + 1) & mask
        slots[s] = i
    return slots


@_compiled
def _find(data, lo, hi, h, slots, tokens, starts):
    """Index of the word data[lo:hi] (lowercased; hash h) among the table's tokens (the bytes
    tokens[starts[i]:starts[i + 1]]), -1 if it is not one."""
    mask = len(slots) - 1
    s = _slot(h, mask)
    while slots[s] >= 0:
        t = slots[s]
        if starts[t + 1] - starts[t] == hi - lo:
            j = 0
            while j < hi - lo and LOWER[data[lo + j]] == tokens[starts[t] + j]:
                j += 1
            if j == hi - lo:
                return t
        s = (s + 1) & mask
    return -1


@_compiled
def _match(tok, pos, m, j, cand_first, cand_tokens, cand_len):
    """The longest name (candidate index) whose words are the tokens from j on, -1 if none
    (CaptionParser._match): its words must be tok[j], tok[j + 1], ... at consecutive positions."""
    for c in range(cand_first[tok[j]], cand_first[tok[j] + 1]):  # longest first
        k = cand_len[c]
        if j + k <= m:
            q = 1
            while q < k and tok[j + q] == cand_tokens[c, q] and pos[j + q] == pos[j] + q:
                q += 1
            if q == k:
                return c
    return -1


@_compiled
def _object_ahead(tok, pos, m, j, i, window, boundary, cand_first, cand_tokens, cand_len, cand_obj):
    """Is an object name among the next window+1 words from word position i, before any boundary?
    (CaptionParser._object_ahead; tok[j] is the first vocabulary token at or after position i.)"""
    units = 0
    while j < m:
        units += pos[j] - i  # the words outside the vocabulary before it
        if units > window or boundary[tok[j]]:
            return False
        c = _match(tok, pos, m, j, cand_first, cand_tokens, cand_len)
        if c >= 0 and cand_obj[c] >= 0:
            return True
        k = cand_len[c] if c >= 0 else 1
        i, j, units = pos[j] + k, j + k, units + 1
    return False


@_compiled
def parse_batch(data, offsets, window, slots, tokens, starts, boundary, cand_first, cand_tokens, cand_len,
                cand_attr, cand_obj):
    """Pairs of the captions data[offsets[c]:offsets[c + 1]] (UTF-8 bytes): (caption, attribute id,
    object id) arrays in caption then text order; per caption the one attribute and the one object
    it names (-1: none, -2: several distinct; CaptionParser.label's single-side rule); and a mask of
    the captions left to the reference parser (those with a non-ASCII byte), which get nothing here.

    The vocabulary's tables (BatchParser builds them): token ids index `starts`, `boundary` and
    `cand_first`; a name (candidate) c is the tokens cand_tokens[c, :cand_len[c]], its attribute
    and object ids cand_attr[c], cand_obj[c] (-1: none).
    """
    n_captions = len(offsets) - 1
    longest = 0
    for c in range(n_captions):
        longest = max(longest, offsets[c + 1] - offsets[c])
    tok = np.empty(longest + 1, np.int32)  # a caption's vocabulary tokens (at most one per byte)
    pos = np.empty(longest + 1, np.int64)  # their positions in words
    pending_attr = np.empty(longest + 1, np.int64)  # attributes waiting for their object
    pending_unit = np.empty(longest + 1, np.int64)
    out_caption = np.empty(n_captions + 16, np.int64)
    out_attr, out_obj = np.empty_like(out_caption), np.empty_like(out_caption)
    n_out = 0
    fallback = np.zeros(n_captions, np.bool_)
    named_attr = np.full(n_captions, -1, np.int64)
    named_obj = np.full(n_captions, -1, np.int64)
    for c in range(n_captions):
        # 1. Tokens (runs of letters/digits, and boundary characters one by one) looked up in the
        #    table; only vocabulary tokens are kept (m of them), with their word positions.
        m, words, p, end = 0, 0, offsets[c], offsets[c + 1]
        while p < end:
            kind = BYTE_CLASS[data[p]]
            if kind == WORD:
                lo, h = p, 0
                while p < end and BYTE_CLASS[data[p]] == WORD:
                    h = _hash_step(h, LOWER[data[p]])
                    p += 1
                t = _find(data, lo, p, h, slots, tokens, starts)
            elif kind == PUNCT:
                t = _find(data, p, p + 1, _hash_step(0, data[p]), slots, tokens, starts)
                p += 1
            elif kind == WIDE:
                break
            else:
                p += 1
                continue
            tok[m], pos[m] = t, words
            m += t >= 0  # (no branch: whether a word is in the vocabulary is unpredictable)
            words += 1
        if p < end:  # stopped at a non-ASCII byte
            fallback[c] = True
            continue
        # 2. CaptionParser.pairs over the vocabulary tokens.
        j, shift, n_pending = 0, 0, 0
        while j < m:
            if boundary[tok[j]]:
                n_pending = 0
                j += 1
                continue
            name = _match(tok, pos, m, j, cand_first, cand_tokens, cand_len)
            if name < 0:  # a word that starts no name here (the first of a multi-word name, or a later one)
                j += 1
                continue
            attr, obj, k = cand_attr[name], cand_obj[name], cand_len[name]
            unit = pos[j] - shift  # position counted in words, a multi-word name being one word
            after = pos[j] + k  # the word position after the name
            j += k
            shift += k - 1
            if attr >= 0 and obj >= 0:  # e.g. "orange": decide from what follows the name
                if _object_ahead(tok, pos, m, j, after, window, boundary, cand_first, cand_tokens, cand_len,
                                 cand_obj):
                    obj = -1
                else:
                    attr = -1
            if obj >= 0:
                named_obj[c] = obj if named_obj[c] == -1 or named_obj[c] == obj else -2
                if n_out + n_pending > len(out_caption):
                    size = 2 * (n_out + n_pending)
                    out_caption, out_attr, out_obj = _grow(out_caption, size), _grow(out_attr, size), \
                        _grow(out_obj, size)
                for q in range(n_pending):
                    if unit - pending_unit[q] - 1 <= window:
                        out_caption[n_out], out_attr[n_out], out_obj[n_out] = c, pending_attr[q], obj
                        n_out += 1
                n_pending = 0
            else:
                named_attr[c] = attr if named_attr[c] == -1 or named_attr[c] == attr else -2
                pending_attr[n_pending], pending_unit[n_pending] = attr, unit
                n_pending += 1
    return out_caption[:n_out], out_attr[:n_out], out_obj[:n_out], named_attr, named_obj, fallback


@_compiled
def _grow(array, size):
    out = np.empty(size, array.dtype)
    out[:len(array)] = array
    return out
