"""Find (attribute, object) pairs in captions with a vocabulary: whole words, plurals, multi-word names.

    python -c "from data_filters.parse import CaptionParser; from data_filters.vocab import load_vocabulary as L; print(CaptionParser(L('builtin')).pairs('Two red-coloured foxes and a small dog'))"

Rules (each is a deliberate, documented choice):
  * The caption is lowercased and split once into words (runs of letters/digits) and the
    punctuation in BOUNDARY_CHARS; hyphens, apostrophes and other symbols only separate words.
    So "red-coloured square" reads "red coloured square" and "dark-red car" reads "dark red car"
    (-> red car, plus dark car if "dark" is an attribute). Whole words only: "red" never
    matches "tired" or "redwood".
  * Vocabulary names may span several words; at each position the longest name wins, so
    "a golden retriever" is the object "golden retriever", not golden + retriever.
  * An attribute modifies the FIRST object after it, with at most `window` other words between
    them and no clause boundary (BOUNDARY_CHARS or BOUNDARY_WORDS) in between. Attributes after
    their object ("a ball that is red") are not found. "a red and blue ball" gives only blue ball.
  * A word that is both an attribute and an object ("orange") is an attribute when an object
    follows within the window (no boundary between), otherwise an object.
  * Negation ("not red") is out of scope: "not" is a boundary word, so "a not red ball" gives nothing.
  * label(): the pair if exactly one distinct pair was found; for a caption with no pair, one side
    alone: (None, object) when it names one distinct object and no attribute ("a photo of a fox"),
    (attribute, None) when it names one distinct attribute and no object ("something red"); else
    None (nothing, or ambiguous). Web captions often name an object alone; `select` keeps such
    single-side captions apart from the pairs, so they never enter a subset's pair NMI.
"""
from __future__ import annotations

import re

from .vocab import Vocabulary

BOUNDARY_CHARS = frozenset(",;.:!?()[]{}\"|/&")
# Function words that end a noun phrase: conjunctions, relative pronouns, copulas, prepositions.
BOUNDARY_WORDS = frozenset("""
and or but nor with without while whereas which that who whom whose where when is are was were be
been being am has have had not no of on in at by for from to into onto under over near behind beside
above below between against than as
""".split())
_TOKEN = re.compile(r"[^\W_]+|[,;.:!?()\[\]{}\"|/&]")
_BOUNDARY = object()  # code of a clause-boundary token


class CaptionParser:
    """Parse captions into canonical (attribute, object) pairs; see the module docstring for rules."""

    def __init__(self, vocab: Vocabulary, window: int = 2):
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.vocab, self.window = vocab, window
        # surface token tuple -> (attribute or None, object or None), grouped by first token.
        forms: dict[tuple, list] = {}
        for table, slot in ((vocab.attribute_forms, 0), (vocab.object_forms, 1)):
            for form, name in table.items():
                entry = forms.setdefault(tuple(form.split(" ")), [None, None])
                entry[slot] = name
        # first token -> candidates [(token tuple, attribute, object)], longest first; boundary
        # tokens map to _BOUNDARY, so one C-level map(dict.get) classifies a whole caption.
        self._code: dict = dict.fromkeys(BOUNDARY_WORDS | BOUNDARY_CHARS, _BOUNDARY)
        for toks, (a, o) in forms.items():
            cands = self._code.get(toks[0])
            if not isinstance(cands, list):  # vocabulary words win over boundary words
                cands = self._code[toks[0]] = []
            cands.append((toks, a, o))
        for tok, cands in self._code.items():
            if isinstance(cands, list):
                cands.sort(key=lambda c: -len(c[0]))  # longest match first
                if len(cands) == 1 and len(cands[0][0]) == 1:  # the common case: store the match itself
                    self._code[tok] = (1, cands[0][1], cands[0][2])
        # Fast reject: a caption with none of these words cannot contain an object (or an attribute).
        self._object_starts = frozenset(f.split(" ", 1)[0] for f in vocab.object_forms)
        self._name_starts = self._object_starts | frozenset(f.split(" ", 1)[0] for f in vocab.attribute_forms)

    @staticmethod
    def _match(tokens: list[str], cands, i: int):
        """(length, attribute, object) of the longest name starting at token i, or None."""
        if cands.__class__ is tuple:
            return cands
        for toks, attr, obj in cands:
            k = len(toks)
            if k == 1 or tuple(tokens[i:i + k]) == toks:
                return k, attr, obj
        return None

    def _object_ahead(self, tokens: list[str], codes: list, i: int) -> bool:
        """Is an object name among the next window+1 words from token i, before any boundary?"""
        units = 0
        while i < len(tokens) and units <= self.window:
            c = codes[i]
            if c is _BOUNDARY:
                return False
            m = self._match(tokens, c, i) if c is not None else None
            if m is not None and m[2] is not None:
                return True
            i += m[0] if m else 1
            units += 1
        return False

    def pairs(self, caption: str) -> list[tuple[str, str]]:
        """Canonical (attribute, object) pairs in the order found (repeats kept)."""
        return self.read(caption, need_object=True)[0]

    def read(self, caption: str, need_object: bool = False) -> tuple[list, set, set]:
        """(pairs in the order found, attributes named, objects named); need_object: stop at once
        (nothing named) when no object word is in the caption, as pairs() may."""
        text = caption.lower()
        tokens = text.split()
        if not all(map(str.isalnum, tokens)):  # punctuation/hyphens present: the (slower) regex
            tokens = _TOKEN.findall(text)
        if (self._object_starts if need_object else self._name_starts).isdisjoint(tokens):
            return [], set(), set()
        codes = list(map(self._code.get, tokens))
        found, pending, window = [], [], self.window
        named_attrs, named_objs = set(), set()
        i, n, shift = 0, len(tokens), 0  # shift: extra tokens eaten by multi-word names so far
        while i < n:
            c = codes[i]
            if c is None:
                i += 1
                continue
            if c is _BOUNDARY:
                pending = []
                i += 1
                continue
            m = c if c.__class__ is tuple else self._match(tokens, c, i)
            if m is None:  # first word of a multi-word name that is not there
                i += 1
                continue
            k, attr, obj = m
            unit = i - shift  # position counted in words, a multi-word name being one word
            i += k
            shift += k - 1
            if attr is not None and obj is not None:  # e.g. "orange": decide from what follows
                if self._object_ahead(tokens, codes, i):
                    obj = None
                else:
                    attr = None
            if obj is not None:
                named_objs.add(obj)
                if pending:
                    found.extend((a, obj) for a, at in pending if unit - at - 1 <= window)
                    pending = []
            else:
                named_attrs.add(attr)
                pending.append((attr, unit))
        return found, named_attrs, named_objs

    def label(self, caption: str) -> tuple[str | None, str | None] | None:
        """The caption's pair if exactly one distinct pair is found; without a pair, (None, object) or
        (attribute, None) when it names one side only, once (distinct); else None."""
        found, attrs, objs = self.read(caption)
        if found:
            distinct = set(found)
            return distinct.pop() if len(distinct) == 1 else None
        return single_side(attrs, objs)


def single_side(attrs, objs):
    """(None, object) or (attribute, None) for a caption without a pair that names one side only
    (one distinct name), else None: CaptionParser.label's rule, shared with the batch parser."""
    if len(objs) == 1 and not attrs:
        return None, next(iter(objs))
    if len(attrs) == 1 and not objs:
        return next(iter(attrs)), None
    return None
