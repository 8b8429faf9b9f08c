"""What evaluation needs from a model: two small adapters, one per kind of supervision.

    from evaluation.models import ZeroShotModel, HeadModel, adapter_for
    clip = ZeroShotModel(model.encode_image, model.encode_text, tokenizer, device="cuda")
    W = clip.classifier(["red circle", "blue square"], templates)   # [C, D]; cached
    head = HeadModel(net.classify_image, {"object": ["circle", "square"]})   # a supervised classifier

A CLIP-style model is evaluated zero-shot from text classifiers; a supervised model from its own
head, whose classes are matched to the benchmark's objects by name. `evaluation.evaluate` takes
either, so both land in one table.

Text classifiers are cached per (class names, templates): the pair, open-world, object and
attribute classifiers of a benchmark are encoded once and reused by every split and every later
call. The cache belongs to the adapter, that is to one set of weights: after the weights change
(training), call `clear_cache()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .distributed import RankSlice
from .zero_shot import Template, format_prompt, text_classifier


def template_key(templates: Sequence[Template]) -> tuple[str, ...]:
    """A hashable identity for templates; callables are identified by the prompt they make of '{}'."""
    return tuple(format_prompt(t, "{}") for t in templates)


@dataclass
class ZeroShotModel:
    """A contrastive image-text model: unit image features against unit text classifiers."""

    encode_image: Callable[[torch.Tensor], torch.Tensor]  # [B,3,H,W] -> [B,D]
    encode_text: Callable[[torch.Tensor], torch.Tensor]  # [B,L] -> [B,D]
    tokenizer: Callable[[list[str]], torch.Tensor]  # texts -> [B,L]
    device: str | torch.device = "cpu"
    text_batch_size: int = 256
    _cache: dict = field(default_factory=dict, repr=False)

    def classifier(self, classnames: Sequence[str], templates: Sequence[Template],
                   rank_slice: RankSlice = RankSlice()) -> torch.Tensor:
        """[C, D] unit class embeddings (float32, CPU), encoded at most once per (classnames, templates);
        with `rank_slice`, each rank of a process group encodes a slice of the prompts (the same result)."""
        key = (tuple(classnames), template_key(templates))
        if key not in self._cache:
            self._cache[key] = text_classifier(self.encode_text, self.tokenizer, list(classnames), templates,
                                               batch_size=self.text_batch_size, device=self.device,
                                               rank_slice=rank_slice)
        return self._cache[key]

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, D] unit image features (float32, CPU)."""
        return F.normalize(self.encode_image(images.to(self.device, non_blocking=True)).float(), dim=-1).cpu()


@dataclass
class HeadModel:
    """A supervised classifier: `classify_image` gives {task: logits over classes[task]} ("object",
    optionally "attribute")."""

    classify_image: Callable[[torch.Tensor], dict]  # [B,3,H,W] -> {task: [B, len(classes[task])]}
    classes: Mapping[str, Sequence[str]]
    device: str | torch.device = "cpu"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{task: [B, H] head logits} (float32, CPU)."""
        out = self.classify_image(images.to(self.device, non_blocking=True))
        return {task: logits.float().cpu() for task, logits in out.items()}

    def clear_cache(self) -> None:  # nothing cached: the head is the classifier
        pass


def adapter_for(net: torch.nn.Module, kind: str, tokenizer, device: str | torch.device = "cpu",
                through_forward: bool = False) -> ZeroShotModel | HeadModel:
    """The adapter of a trained network. kind "supervised": a classifier whose forward gives
    {task: logits} over its `classes`, as a HeadModel; otherwise an open_clip CLIP, as a
    ZeroShotModel with `tokenizer`. `through_forward` encodes with the CLIP's forward
    (`net(image=...)`, `net(text=...)`, output_dict=True) rather than encode_image/encode_text, for
    sharding that gathers parameters in forward hooks only (DeepSpeed ZeRO-3).

        adapter = adapter_for(model, "clip", open_clip.get_tokenizer("ViT-B-32"), device="cuda")
    """
    if kind == "supervised":
        return HeadModel(_images_in_weight_dtype(net, net), net.classes, device=device)
    encode_image, encode_text = net.encode_image, net.encode_text
    if through_forward:  # features come back unit-length, as features() makes them anyway
        encode_image = lambda images: net(image=images)["image_features"]  # noqa: E731
        encode_text = lambda tokens: net(text=tokens)["text_features"]  # noqa: E731
    return ZeroShotModel(_images_in_weight_dtype(encode_image, net.visual), encode_text, tokenizer, device=device)


def _images_in_weight_dtype(encode: Callable, tower: torch.nn.Module) -> Callable:
    """`encode` with its images cast to the tower's weight dtype: DeepSpeed's bf16 keeps the weights
    themselves in bf16 (outside autocast), and a float32 image batch cannot meet them."""
    dtype = next(p.dtype for p in tower.parameters() if p.is_floating_point())
    if dtype == torch.float32:
        return encode
    return lambda images: encode(images.to(dtype))
