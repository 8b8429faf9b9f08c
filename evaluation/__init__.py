"""ImageNet-AO zero-shot evaluation (plain torch, no Lightning).

Usage::

    from evaluation import AOFolder, evaluate_zero_shot, SIMPLE_TEMPLATES
    splits = {"unseen": AOFolder("world/imagenet_ao/unseen", transform=preprocess),
              "seen": AOFolder("world/imagenet_ao/seen", transform=preprocess)}
    result = evaluate_zero_shot(model.encode_image, model.encode_text, tokenizer, splits, SIMPLE_TEMPLATES)
    result.write("out/eval")

Modules: ``imagenet_ao`` (dataset), ``zero_shot`` (text classifier, image
features, templates), ``metrics`` (top-k helpers), ``evaluate`` (protocol and
metric names).  ``OPENAI_IMAGENET_TEMPLATES`` is fetched from open_clip lazily.
"""

from .evaluate import EvalResult, evaluate_zero_shot
from .imagenet_ao import AOFolder, UnreadableImageError, parse_pair_name
from .metrics import class_mean_accuracy, per_class_accuracy, topk_correct
from .zero_shot import SIMPLE_TEMPLATES, format_prompt, image_features, text_classifier

__all__ = [
    "AOFolder",
    "EvalResult",
    "OPENAI_IMAGENET_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "UnreadableImageError",
    "class_mean_accuracy",
    "evaluate_zero_shot",
    "format_prompt",
    "image_features",
    "parse_pair_name",
    "per_class_accuracy",
    "text_classifier",
    "topk_correct",
]


def __getattr__(name: str):
    # Lazy, so `import evaluation` does not pay for importing open_clip.
    if name == "OPENAI_IMAGENET_TEMPLATES":
        from . import zero_shot

        return zero_shot.OPENAI_IMAGENET_TEMPLATES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
