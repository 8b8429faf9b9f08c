"""Zero-shot text side: text classifiers from prompt templates.

Usage::

    from evaluation.zero_shot import text_classifier, resolve_templates
    W = text_classifier(model.encode_text, tokenizer, ["red circle", "blue square"],
                        resolve_templates("openai"))          # [C, D], unit rows
    logits = 100.0 * image_feats @ W.T                         # [N, C]

Templates are either format strings with one ``{}`` (``"a photo of a {}."``) or
callables ``classname -> str`` (open_clip stores ``OPENAI_IMAGENET_TEMPLATES``
as lambdas).  ``OPENAI_IMAGENET_TEMPLATES`` is loaded from open_clip lazily on
first access, so importing this module does not import open_clip.

``text_classifier`` runs under ``torch.no_grad()`` and returns a float32 CPU tensor; put the
model in eval mode yourself (it only sees a bound method).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F

from .distributed import RankSlice, gather_rows

Template = Union[str, Callable[[str], str]]

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a {}.", "an image of a {}.", "{}")


def __getattr__(name: str):
    # Lazy re-export: open_clip takes seconds to import, most callers never need this.
    if name == "OPENAI_IMAGENET_TEMPLATES":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return OPENAI_IMAGENET_TEMPLATES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_templates(spec) -> list[Template]:
    """Templates from config: "openai" (open_clip's 80 ImageNet templates), "simple", or a list of strings."""
    if isinstance(spec, str):
        named = {"openai": lambda: list(__getattr__("OPENAI_IMAGENET_TEMPLATES")), "simple": lambda: list(SIMPLE_TEMPLATES)}
        if spec not in named:
            raise ValueError(f"unknown template set {spec!r}: use openai, simple or a list of strings with {{}}")
        return named[spec]()
    templates = list(spec)
    if not templates:
        raise ValueError("the template list is empty")
    for t in templates:
        format_prompt(t, "x")  # a template without a slot fails here, before any encoding
    return templates


def format_prompt(template: Template, classname: str) -> str:
    """Apply one template (format string with ``{}`` or callable) to a class name."""
    if callable(template):
        return template(classname)
    if "{}" not in template:
        # Without a slot every class gets the same prompt: a silent, useless classifier.
        raise ValueError(f"template {template!r} has no '{{}}' slot for the class name")
    return template.format(classname)


@torch.no_grad()
def text_classifier(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    rank_slice: RankSlice = RankSlice(),
) -> torch.Tensor:
    """[C, D] L2-normalised class embeddings (float32, CPU).

    For each class: format every template, encode, L2-normalise each prompt
    feature, average over templates, renormalise.  All C*T prompts are encoded
    in batches of ``batch_size``; with ``rank_slice`` (every rank of a process
    group) each rank encodes a run of those batches and all gather the prompt
    features, so every rank returns bitwise what one process does
    (evaluation/distributed.py).
    """
    if not classnames or not templates:
        raise ValueError("text_classifier needs at least one class name and one template")
    # Class-major order, so a reshape to [C, T, D] groups each class's prompts.
    prompts = [format_prompt(t, c) for c in classnames for t in templates]

    def encode(chunk: Sequence[str]) -> torch.Tensor:
        tokens = tokenizer(list(chunk)).to(device)  # [B, L]
        return F.normalize(encode_text(tokens).float(), dim=-1).cpu()  # [B, D]

    feats = [encode(prompts[start:stop]) for _, start, stop in rank_slice.batches([len(prompts)], batch_size)]
    for _ in range(rank_slice.idle_calls([len(prompts)], batch_size)):  # sharded weights: join every forward
        encode(prompts[:1])
    if rank_slice.world_size > 1:  # every rank's [n_r, D] rows, in prompt order; [0, 0]: a rank with no batch
        feats = [gather_rows(torch.cat(feats) if feats else torch.empty(0, 0))]  # [C*T, D]
    per_prompt = torch.cat(feats).view(len(classnames), len(templates), -1)  # [C, T, D]
    return F.normalize(per_prompt.mean(dim=1), dim=-1)  # [C, D]
