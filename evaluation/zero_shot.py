"""Zero-shot building blocks: text classifiers from prompt templates, image features.

Usage::

    from evaluation.zero_shot import text_classifier, image_features, SIMPLE_TEMPLATES
    W = text_classifier(model.encode_text, tokenizer, ["red circle", "blue square"],
                        SIMPLE_TEMPLATES)                     # [C, D], unit rows
    feats, targets = image_features(model.encode_image, loader)  # [N, D], [N]
    logits = 100.0 * feats @ W.T                                  # [N, C]

Templates are either format strings with one ``{}`` (``"a photo of a {}."``) or
callables ``classname -> str`` (open_clip stores ``OPENAI_IMAGENET_TEMPLATES``
as lambdas).  ``OPENAI_IMAGENET_TEMPLATES`` is loaded from open_clip lazily on
first access, so importing this module does not import open_clip.

Both functions run under ``torch.no_grad()`` and return float32 CPU tensors;
put the model in eval mode yourself (they only see bound methods).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, Union

import torch
import torch.nn.functional as F

Template = Union[str, Callable[[str], str]]

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a {}.", "an image of a {}.", "{}")


def __getattr__(name: str):
    # Lazy re-export: open_clip takes seconds to import, most callers never need this.
    if name == "OPENAI_IMAGENET_TEMPLATES":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return OPENAI_IMAGENET_TEMPLATES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_prompt(template: Template, classname: str) -> str:
    """Apply one template (format string with ``{}`` or callable) to a class name."""
    if callable(template):
        return template(classname)
    if "{}" not in template:
        # Without a slot every class gets the same prompt: a silent, useless classifier.
        raise ValueError(f"template {template!r} has no '{{}}' slot for the class name")
    return template.format(classname)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def text_classifier(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """[C, D] L2-normalised class embeddings (float32, CPU).

    For each class: format every template, encode, L2-normalise each prompt
    feature, average over templates, renormalise.  All C*T prompts are encoded
    in batches of ``batch_size``.
    """
    if not classnames or not templates:
        raise ValueError("text_classifier needs at least one class name and one template")
    # Class-major order, so a reshape to [C, T, D] groups each class's prompts.
    prompts = [format_prompt(t, c) for c in classnames for t in templates]
    feats = []
    for chunk in _batches(prompts, batch_size):
        tokens = tokenizer(list(chunk)).to(device)  # [B, L]
        feats.append(F.normalize(encode_text(tokens).float(), dim=-1).cpu())  # [B, D]
    per_prompt = torch.cat(feats).view(len(classnames), len(templates), -1)  # [C, T, D]
    return F.normalize(per_prompt.mean(dim=1), dim=-1)  # [C, D]


@torch.no_grad()
def image_features(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "images",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every batch ``(images [B,3,H,W], targets [B], ...)`` of ``loader``.

    Returns ``([N, D] L2-normalised float32, [N] int64 targets)`` on CPU.
    """
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=desc, leave=False)
    feats, targets = [], []
    for batch in loader:
        images, labels = batch[0], batch[1]
        out = encode_image(images.to(device, non_blocking=True))  # [B, D]
        feats.append(F.normalize(out.float(), dim=-1).cpu())
        targets.append(torch.as_tensor(labels, dtype=torch.long).cpu())
    if not feats:
        raise ValueError("image_features got an empty loader")
    return torch.cat(feats), torch.cat(targets)
