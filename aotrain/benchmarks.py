"""From an `eval:` config section to what `evaluation.evaluate` needs: one place for the callback and `aotrain eval`.

    bench = Benchmark.from_config(cfg.eval, model_name="toy-vit-tiny")
    result = bench.run(ZeroShotModel(module.encode_image, module.encode_text, tokenizer))

Keys of the section (recipes/eval/*.yaml; `aotrain eval` takes the same ones):
  benchmarks   a folder (one split, or one split per sub-folder) or {split: folder}
  templates    openai | simple | a list of strings with {}
  vocabulary   builtin | benchmark:DIR | world:PATH | a .yaml/.txt file | null (folder names as written)
  seen_from    training data that says which benchmark pairs were seen (subset manifest.json,
               labels parquet or caption pool) | null
  open_world, batch_size, num_workers
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from aotrain import towers
from data_filters.contamination import training_pairs
from data_filters.vocab import Vocabulary, load_vocabulary
from evaluation.evaluate import EvalResult, evaluate
from evaluation.imagenet_ao import AOFolder, load_benchmark
from evaluation.zero_shot import resolve_templates


@dataclass
class Benchmark:
    splits: dict[str, AOFolder]
    templates: list
    vocab: Vocabulary | None
    seen_pairs: Mapping | None
    open_world: bool = True
    batch_size: int = 256
    num_workers: int = 0

    @classmethod
    def from_config(cls, section, model_name: str) -> "Benchmark":
        """Load every split with the model's eval transform; ValueError/FileNotFoundError on bad input."""
        vocab = load_vocabulary(section["vocabulary"]) if section.get("vocabulary") else None
        _, eval_tf = towers.image_transforms(model_name)
        benchmarks = section["benchmarks"]
        splits = load_benchmark(dict(benchmarks) if isinstance(benchmarks, Mapping) else str(benchmarks),
                                transform=eval_tf, vocab=vocab)
        seen = None
        if section.get("seen_from"):
            seen = training_pairs(section["seen_from"], vocab or _vocab_of(splits))
        return cls(splits, resolve_templates(section["templates"]), vocab, seen, bool(section.get("open_world", True)),
                   int(section.get("batch_size", 256)), int(section.get("num_workers", 0)))

    def run(self, model, progress: bool = False) -> EvalResult:
        return evaluate(model, self.splits, self.templates, open_world=self.open_world, seen_pairs=self.seen_pairs,
                        vocab=self.vocab, batch_size=self.batch_size, num_workers=self.num_workers,
                        progress=progress)


def _vocab_of(splits: dict[str, AOFolder]) -> Vocabulary:
    """The benchmark's own words, to read training captions with when no vocabulary is configured."""
    pairs = {p for ds in splits.values() for p in ds.pairs}
    return Vocabulary.build({a: [] for a, _ in pairs}, {o: [] for _, o in pairs}, {a: "unknown" for a, _ in pairs},
                            source="benchmark folder names")
