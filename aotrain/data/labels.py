"""Labels from captions, for both twins: data_filters' parser names the one (attribute, object) pair
of a caption, and a fixed class order turns it into indices.

    classes = label_classes("world:outputs/toyworld/toyworld-<hash>")   # {"attribute": [...], "object": [...]}
    label = CaptionLabeller("world:...")()                            # caption -> (attribute, object) | (None, object) | (attribute, None) | None
"""
from __future__ import annotations

import functools

from data_filters.parse import CaptionParser
from data_filters.vocab import load_vocabulary


@functools.lru_cache(maxsize=4)
def _vocabulary(spec: str):
    return load_vocabulary(spec)


def label_classes(spec: str) -> dict[str, list[str]]:
    """Class names of the label heads: the vocabulary's canonical attributes and objects, sorted."""
    vocab = _vocabulary(spec)
    return {"attribute": sorted(vocab.attributes), "object": sorted(vocab.objects)}


class CaptionLabeller:
    """A picklable factory (DataLoader workers build the parser themselves): () -> CaptionParser.label."""

    def __init__(self, spec: str, window: int = 2):
        self.spec = spec
        self.window = window

    def __call__(self):
        return CaptionParser(_vocabulary(self.spec), self.window).label
