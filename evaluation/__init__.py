"""ImageNet-AO evaluation (plain torch, no Lightning): any CLIP-style or supervised model.

Usage::

    from data_filters.vocab import load_vocabulary
    from evaluation import ZeroShotModel, evaluate, load_benchmark, resolve_templates
    vocab = load_vocabulary("world:outputs/toyworld/<hash>")
    splits = load_benchmark("outputs/toyworld/<hash>/imagenet_ao", transform=preprocess, vocab=vocab)
    model.eval()
    result = evaluate(ZeroShotModel(model.encode_image, model.encode_text, tokenizer), splits,
                      resolve_templates("openai"))
    result.write("out/eval")

Modules: ``imagenet_ao`` (folders -> datasets), ``models`` (ZeroShotModel / HeadModel adapters,
text-classifier cache), ``zero_shot`` (text classifier, templates), ``metrics`` (top-k helpers),
``czsl`` (calibration-bias sweep), ``robustness`` (effective robustness fit), ``evaluate`` (the
protocol and metric names), ``distributed`` (each rank of a process group encodes a slice of the
images and prompts; all get the one-process result). ``aotrain eval`` and the training callback
both call ``evaluate``.
"""

from .distributed import RankSlice
from .evaluate import EvalResult, evaluate
from .imagenet_ao import AOFolder, UnreadableImageError, load_benchmark, parse_pair_name, split_folders
from .metrics import class_mean_accuracy, per_class_accuracy
from .models import HeadModel, ZeroShotModel
from .zero_shot import SIMPLE_TEMPLATES, format_prompt, resolve_templates, text_classifier

__all__ = [
    "AOFolder",
    "EvalResult",
    "HeadModel",
    "OPENAI_IMAGENET_TEMPLATES",
    "RankSlice",
    "SIMPLE_TEMPLATES",
    "UnreadableImageError",
    "ZeroShotModel",
    "class_mean_accuracy",
    "evaluate",
    "format_prompt",
    "load_benchmark",
    "parse_pair_name",
    "per_class_accuracy",
    "resolve_templates",
    "split_folders",
    "text_classifier",
]


def __getattr__(name: str):
    # Lazy, so `import evaluation` does not pay for importing open_clip.
    if name == "OPENAI_IMAGENET_TEMPLATES":
        from . import zero_shot

        return zero_shot.OPENAI_IMAGENET_TEMPLATES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
