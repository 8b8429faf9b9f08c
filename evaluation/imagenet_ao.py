"""Read ImageNet-AO-format folders: ``root/<attribute object>/<images>``.

One folder per (attribute, object) pair; the folder name separates words with
spaces or underscores (``"red circle"``, ``"red_sea_lion"``).  Each pair becomes
one class; items are ``(image_tensor [3, H, W], class_index)``.

Usage::

    from data_filters.vocab import load_vocabulary
    from evaluation.imagenet_ao import AOFolder, load_benchmark
    vocab = load_vocabulary("world:outputs/toyworld/<hash>")      # or builtin, benchmark:DIR, a file
    ds = AOFolder("world/imagenet_ao/unseen", transform=preprocess, vocab=vocab)
    ds.pairs[0]          # ("red", "circle")   (canonical names, sorted)
    ds.skipped           # {"empty_folders": 1, "unreadable_images": 0, "unparsed_folders": 0}
    splits = load_benchmark("world/imagenet_ao", transform=preprocess, vocab=vocab)  # {"seen": .., "unseen": ..}
    splits = load_benchmark({"unseen": "w/imagenet_ao/unseen", "alt": {"unseen": "w/imagenet_ao_alt/unseen"}})
    list(splits)         # ["unseen", "alt/unseen"]: a nested group is a style, its splits named "<style>/<split>"

Styles: the same pairs drawn another way (the toy world's second renderer) form one group of splits,
named ``<style>/<split>`` (``split_styles``); evaluate() marks their seen/unseen pairs and reports their
``<style>/seen``, ``<style>/unseen`` and ``<style>/czsl`` metrics apart from the other styles'.

Folder name -> (attribute, object):
  * with a vocabulary (data_filters' :class:`~data_filters.vocab.Vocabulary`, the one the
    caption parser uses), ``vocab.split_pair`` tries every cut and maps both sides to their
    canonical names, so multi-word objects ("sea lion"), plurals and synonyms resolve the same
    way they do in training captions;
  * without one: split at the first separator (single-word attribute, the rest is the object).
  * a folder that does not resolve is an error naming it (``skip_unknown=True`` counts it in
    ``skipped["unparsed_folders"]`` instead);
  * two folders that name the same pair (``"red circle"`` and ``"red_circle"``) are merged.

Unreadable images: with ``verify=True`` (the default) every file is checked once
at construction with ``PIL.Image.verify()``; failures are dropped and counted in
``skipped["unreadable_images"]`` (for JPEGs verify only parses headers, so a
truncated file can still fail later).  A file that fails to decode in
``__getitem__`` raises :class:`UnreadableImageError` naming the file.  Pair
folders left with no usable image count as ``empty_folders``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import torch
from PIL import Image
from torchvision.transforms import functional as TF

from data_filters.vocab import split_pair_name

if TYPE_CHECKING:
    from data_filters.vocab import Vocabulary

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class UnreadableImageError(RuntimeError):
    """An image file in an AOFolder could not be decoded by PIL."""


def parse_pair_name(name: str, vocab: "Vocabulary | None" = None) -> tuple[str, str] | None:
    """Split a folder name into (attribute, object); None if it does not resolve
    (data_filters.vocab.split_pair_name, the one parser of folder names).

    >>> parse_pair_name("red sea_lion")
    ('red', 'sea lion')
    """
    return split_pair_name(name, vocab)


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
        vocab: "Vocabulary | None" = None,
        verify: bool = True,
        skip_unknown: bool = False,
    ):
        self.root = Path(root)
        self.transform = transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageNet-AO folder not found or not a directory: {self.root}")
        self.skipped = {"empty_folders": 0, "unreadable_images": 0, "unparsed_folders": 0}

        # pair -> image paths; several folders may name the same pair.
        by_pair: dict[tuple[str, str], list[Path]] = {}
        unknown: list[str] = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            pair = parse_pair_name(folder.name, vocab)
            if pair is None:
                unknown.append(folder.name)
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

        if unknown and not skip_unknown:
            where = f"vocabulary {vocab.source or '(given)'}" if vocab is not None else "'<attribute> <object>' form"
            shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise ValueError(f"{len(unknown)} folder(s) under {self.root} do not name a pair of the {where}: {shown}")
        self.skipped["unparsed_folders"] = len(unknown)
        if not by_pair:
            raise ValueError(
                f"no <attribute object> folder with images under {self.root} (skipped: {self.skipped})"
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


def _holds_images(folder: Path) -> bool:
    return any(f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.iterdir())


def split_folders(benchmark: str | Path | Mapping[str, str | Path | Mapping]) -> dict[str, Path]:
    """Split name -> folder of ``<attribute object>/`` dirs.

    A mapping is taken as given, a nested one flattened into "<style>/<split>" names
    ({"alt": {"unseen": DIR}} -> {"alt/unseen": DIR}; see split_styles).  A folder whose
    sub-folders hold images is one split named after the folder ("ImageNet-AO-filtered"); a folder
    of such folders (the toy world's ``imagenet_ao/{seen,unseen}``) gives one split per sub-folder.
    """
    if isinstance(benchmark, Mapping):
        folders = {}
        for key, value in benchmark.items():
            if isinstance(value, Mapping):  # a style: its splits as "<key>/<split>"
                folders.update({f"{key}/{name}": path for name, path in split_folders(value).items()})
            else:
                folders[str(key)] = Path(value)
        return folders
    root = Path(benchmark)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder not found: {root}")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise ValueError(f"benchmark folder {root} has no sub-folders: expected <attribute object>/ folders of images")
    if any(_holds_images(p) for p in subs):
        return {root.name: root}
    nested = {p.name: p for p in subs if any(q.is_dir() and _holds_images(q) for q in p.iterdir())}
    if not nested:
        raise ValueError(f"no images under {root}: expected {root}/<attribute object>/<images> "
                         f"or {root}/<split>/<attribute object>/<images>")
    return nested


def split_styles(names) -> dict[str, list[str]]:
    """Style -> its split names, in the given order: the part of a split name before its last "/"
    ("alt/unseen" -> "alt"; "" for a plain name such as "unseen")."""
    styles: dict[str, list[str]] = {}
    for name in names:
        styles.setdefault(name.rpartition("/")[0], []).append(name)
    return styles


def style_group(style: str, group: str) -> str:
    """The name of a style's group: ("alt", "unseen") -> "alt/unseen"; ("", "unseen") -> "unseen"."""
    return f"{style}/{group}" if style else group


def load_benchmark(
    benchmark: str | Path | Mapping[str, str | Path],
    transform: Callable | None = None,
    vocab: "Vocabulary | None" = None,
    verify: bool = True,
    skip_unknown: bool = False,
) -> dict[str, AOFolder]:
    """One :class:`AOFolder` per split of ``benchmark`` (see :func:`split_folders`)."""
    return {name: AOFolder(path, transform, vocab, verify, skip_unknown)
            for name, path in split_folders(benchmark).items()}
