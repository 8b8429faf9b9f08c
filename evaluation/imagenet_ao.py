"""Read one ImageNet-AO-format root: ``root/<attribute object>/<images>``.

One folder per (attribute, object) pair; the folder name separates words with
spaces or underscores (``"red circle"``, ``"red_sea_lion"``).  Each pair becomes
one class; items are ``(image_tensor [3, H, W], class_index)``.

Usage::

    from evaluation.imagenet_ao import AOFolder
    ds = AOFolder("world/imagenet_ao/unseen", transform=preprocess,
                  objects=["sea lion", "circle"])       # vocab resolves multi-word names
    ds.pairs[0]          # ("red", "circle")   (sorted by (attribute, object))
    ds.classnames[0]     # "red circle"
    ds.skipped           # {"empty_folders": 1, "unreadable_images": 0, "unparsed_folders": 0}
    image, label = ds[0]

Folder name -> (attribute, object):
  * words are split on spaces and underscores; the result always uses spaces.
  * with ``attributes`` and/or ``objects`` vocabularies, every split point is
    tried and the first (shortest attribute) whose attribute is in
    ``attributes`` and object in ``objects`` wins (matching ignores case and
    ``_``/space; the vocabulary's spelling is kept).  A vocabulary that is not
    given does not constrain its side.  Folders that do not resolve are skipped
    and counted in ``skipped["unparsed_folders"]``.
  * without vocabularies: split at the first separator (single-word attribute,
    the rest is the object).  A name with a single word is unparsed.
  * two folders that name the same pair (``"red circle"`` and ``"red_circle"``)
    are merged into one class.

Unreadable images: with ``verify=True`` (the default) every file is checked once
at construction with ``PIL.Image.verify()``; failures are dropped and counted in
``skipped["unreadable_images"]`` (cheap for small images; for JPEGs verify only
parses headers, so a truncated file can still fail later).  Any file that fails
to decode in ``__getitem__`` raises :class:`UnreadableImageError` naming the
file, rather than a bare PIL error deep inside a DataLoader worker.  Pair
folders left with no usable image count as ``empty_folders``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import functional as TF

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_SEP = re.compile(r"[\s_]+")


class UnreadableImageError(RuntimeError):
    """An image file in an AOFolder could not be decoded by PIL."""


def _norm(name: str) -> str:
    """Matching key: lower case, '_' and runs of whitespace -> one space."""
    return " ".join(_SEP.split(name.strip())).lower()


def _vocab_index(words: Sequence[str] | None) -> dict[str, str] | None:
    """Matching key -> display spelling ('_' -> ' '), or None if no vocabulary."""
    if words is None:
        return None
    return {_norm(w): " ".join(_SEP.split(w.strip())) for w in words}


def parse_pair_name(
    name: str,
    attributes: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
) -> tuple[str, str] | None:
    """Split a folder name into (attribute, object); None if it does not resolve.

    >>> parse_pair_name("red_sea_lion", objects=["sea lion"])
    ('red', 'sea lion')
    >>> parse_pair_name("red sea_lion")
    ('red', 'sea lion')
    """
    words = [w for w in _SEP.split(name.strip()) if w]
    if len(words) < 2:
        return None
    attr_vocab, obj_vocab = _vocab_index(attributes), _vocab_index(objects)
    if attr_vocab is None and obj_vocab is None:
        return words[0], " ".join(words[1:])
    for cut in range(1, len(words)):
        attr, obj = " ".join(words[:cut]), " ".join(words[cut:])
        if attr_vocab is not None and attr.lower() not in attr_vocab:
            continue
        if obj_vocab is not None and obj.lower() not in obj_vocab:
            continue
        # Keep the vocabulary's spelling so prompts match the training captions.
        attr = attr_vocab[attr.lower()] if attr_vocab is not None else attr
        obj = obj_vocab[obj.lower()] if obj_vocab is not None else obj
        return attr, obj
    return None


def _is_readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        return False


class AOFolder(torch.utils.data.Dataset):
    """One ImageNet-AO-format root. Items: ``(image_tensor, class_index)``.

    Attributes:
        root: the root folder.
        pairs: ``(attribute, object)`` per class index, sorted.
        samples: ``(image path, class index)``, sorted by class then file name.
        skipped: ``{"empty_folders", "unreadable_images", "unparsed_folders"}`` counts.

    ``transform`` receives an RGB ``PIL.Image``; without one, images become
    float tensors in [0, 1] (``to_tensor``).  Missing root -> FileNotFoundError;
    no usable pair folder -> ValueError.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable | None = None,
        attributes: Sequence[str] | None = None,
        objects: Sequence[str] | None = None,
        verify: bool = True,
    ):
        self.root = Path(root)
        self.transform = transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageNet-AO root not found or not a directory: {self.root}")
        self.skipped = {"empty_folders": 0, "unreadable_images": 0, "unparsed_folders": 0}

        # pair -> image paths; several folders may name the same pair.
        by_pair: dict[tuple[str, str], list[Path]] = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            pair = parse_pair_name(folder.name, attributes, objects)
            if pair is None:
                self.skipped["unparsed_folders"] += 1
                continue
            files = sorted(
                f for f in folder.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            if verify:
                good = [f for f in files if _is_readable(f)]
                self.skipped["unreadable_images"] += len(files) - len(good)
                files = good
            if not files:
                self.skipped["empty_folders"] += 1
                continue
            by_pair.setdefault(pair, []).extend(files)

        if not by_pair:
            raise ValueError(
                f"no usable <attribute object> image folder under {self.root} (skipped: {self.skipped})"
            )
        self.pairs: list[tuple[str, str]] = sorted(by_pair)
        self.samples: list[tuple[Path, int]] = [
            (path, idx) for idx, pair in enumerate(self.pairs) for path in sorted(by_pair[pair])
        ]

    @property
    def classnames(self) -> list[str]:
        """``"attribute object"`` per class index."""
        return [f"{a} {o}" for a, o in self.pairs]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as e:
            raise UnreadableImageError(f"cannot read image {path}: {e}") from e
        image = self.transform(image) if self.transform is not None else TF.to_tensor(image)
        return image, label

    def __repr__(self) -> str:
        return f"AOFolder({str(self.root)!r}, pairs={len(self.pairs)}, images={len(self)}, skipped={self.skipped})"
