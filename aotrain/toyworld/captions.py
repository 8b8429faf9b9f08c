"""Captions for toy-world images: varied templates, correct a/an, plurals, capitalisation.

    >>> import numpy as np
    >>> from aotrain.toyworld.captions import make_caption
    >>> make_caption("orange", "colour", "star", np.random.default_rng(3))  # e.g. 'An orange star'

A pair caption names one attribute and one object, the attribute before the object with at most
one word between them ("a small red circle", "a red-coloured square"), never post-nominal. A
single-side caption names the object alone ("a photo of a small circle") or the attribute alone
("something striped"), as web captions often do; the image still shows both (world.py decides which
samples get one: pool.object_only, pool.attribute_only).

    >>> make_caption("orange", "colour", "star", np.random.default_rng(3), names="object")  # e.g. 'A star'
"""
from __future__ import annotations

import numpy as np

PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "heart": "hearts",
    "cross": "crosses",
    "diamond": "diamonds",
    "crescent": "crescents",
    "arrow": "arrows",
    "hexagon": "hexagons",
}

SIZES = ["small", "tiny", "little", "big", "large"]

# {a}: article for the next word, {size}: a size word, {attr}: the attribute phrase, {obj}/{objs}: noun.
TEMPLATES = [
    "{a} {attr} {obj}",
    "{a} {size} {attr} {obj}",
    "a photo of {a} {attr} {obj}",
    "a photo of {a} {size} {attr} {obj} on a dark background",
    "an image showing {a} {size} {attr} {obj}",
    "an image of {a} {attr} {obj}",
    "a picture of {a} {attr} {obj}",
    "a drawing of {a} {attr} {obj} on black",
    "clip art of {attr} {objs}",
    "{attr} {objs}",
    "a rendering of {size} {attr} {objs}",
    "there is {a} {attr} {obj} in this picture",
    "{a} {attr} {obj} icon",
    "simple {attr} {obj} shape",
]
# Object-only captions: the pair templates without the attribute. Attribute-only: no object word at all.
OBJECT_TEMPLATES = sorted({" ".join(t.replace("{attr}", "").split()) for t in TEMPLATES})
ATTRIBUTE_TEMPLATES = [
    "something {attr}",
    "a photo of something {attr}",
    "{attr} shapes",
    "{a} {attr} shape on a dark background",
    "{attr} clip art",
    "a {size} {attr} thing",
    "it is {attr}",
]
NAMES = ("pair", "object", "attribute")
COLOUR_PHRASES = ["{}", "{}", "{}", "{}-coloured", "{}-colored", "{} coloured"]  # colour kind only


def plural(noun: str) -> str:
    """Plural from PLURALS, else the English -s/-es rule (for shapes added to the registry later)."""
    if noun in PLURALS:
        return PLURALS[noun]
    return noun + ("es" if noun.endswith(("s", "x", "z", "ch", "sh")) else "s")


def article(word: str) -> str:
    """'a' or 'an' for the word that follows (vowel letter rule; fine for this vocabulary)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _fill(template: str, attr: str, obj: str, size: str) -> str:
    words = template.format(a="{a}", size=size, attr=attr, obj=obj, objs=plural(obj)).split(" ")
    # resolve each article against the word right after it ("an orange star", "a tiny ...")
    return " ".join(article(words[i + 1]) if w == "{a}" else w for i, w in enumerate(words))


def make_caption(attr: str, kind: str, obj: str, rng: np.random.Generator, names: str = "pair") -> str:
    """One caption for an image of `attr obj` naming both ("pair"), the object or the attribute alone;
    all choices come from `rng`."""
    templates = {"pair": TEMPLATES, "object": OBJECT_TEMPLATES, "attribute": ATTRIBUTE_TEMPLATES}[names]
    template = templates[rng.integers(len(templates))]
    size = SIZES[rng.integers(len(SIZES))]
    phrase = attr
    if kind == "colour":
        phrase = COLOUR_PHRASES[rng.integers(len(COLOUR_PHRASES))].format(attr)
    text = _fill(template, phrase, obj, size)
    style = rng.random()
    if style < 0.45:
        text = text[0].upper() + text[1:]
    elif style < 0.55:
        text = text.title()
    if rng.random() < 0.3:
        text += "."
    return text
