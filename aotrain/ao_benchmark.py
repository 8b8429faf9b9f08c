"""From an `eval:` config section to what `evaluation.evaluate` needs: one place for the callback and `aotrain eval`.

    bench = Benchmark.from_config(cfg.eval, model_name="toy-vit-tiny")
    result = bench.run(ZeroShotModel(module.encode_image, module.encode_text, tokenizer))
    result = bench.run(adapter, rank_slice=RankSlice.of_process_group())   # every rank of a DDP group

Keys of the section (recipes/eval/*.yaml; `aotrain eval` takes the same ones):
  benchmarks   a folder (one split, or one split per sub-folder) or {split: folder}; a nested
               {style: {split: folder}} gives splits "<style>/<split>", scored apart (the toy world's
               second renderer: eval/alt/unseen/...; evaluation/evaluate.py)
  templates    openai | simple | a list of strings with {}
  vocabulary   builtin | benchmark:DIR | world:PATH | a .yaml/.txt file | null (folder names as written)
  seen_from    training data that says which benchmark pairs were seen (subset manifest.json,
               labels parquet or caption pool) | null
  seen_vocabulary  the vocabulary seen_from was labelled with (builtin | world:PATH | a file ...): a
               benchmark pair is seen when the folder name it came from resolves in this vocabulary
               to a pair of the training data | null (match in `vocabulary`, else the folder names)
  open_world, batch_size, num_workers

`Benchmark.seen_info` says how seen_from marked the pairs and `describe_seen()` says it in one line;
a benchmark none of whose pairs resolves in seen_vocabulary is left unmarked, not an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from aotrain import towers
from data_filters.contamination import training_pairs
from data_filters.vocab import Vocabulary, load_vocabulary
from evaluation.distributed import RankSlice
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
    seen_info: dict | None = None  # how seen_from marked the pairs (see _seen_pairs); None without seen_from

    @classmethod
    def from_config(cls, section, model_name: str) -> "Benchmark":
        """Load every split with the model's eval transform; ValueError/FileNotFoundError on bad input."""
        vocab = load_vocabulary(section["vocabulary"]) if section.get("vocabulary") else None
        _, eval_tf = towers.image_transforms(model_name)
        benchmarks = section["benchmarks"]
        splits = load_benchmark(dict(benchmarks) if isinstance(benchmarks, Mapping) else str(benchmarks),
                                transform=eval_tf, vocab=vocab)
        seen, info = None, None
        if section.get("seen_from"):
            seen, info = _seen_pairs(splits, str(section["seen_from"]), vocab, section.get("seen_vocabulary"))
        return cls(splits, resolve_templates(section["templates"]), vocab, seen, bool(section.get("open_world", True)),
                   int(section.get("batch_size", 256)), int(section.get("num_workers", 0)), info)

    def describe_seen(self) -> str | None:
        """One line: how many benchmark pairs seen_from marked seen and unseen (None without seen_from)."""
        info = self.seen_info
        if info is None:
            return None
        n, source, words = info["benchmark_pairs"], info["source"], info["vocabulary"]
        if info["seen"] + info["unseen"] == 0:
            return (f"none of the benchmark's {n} pairs is a pair of vocabulary {words} (the one {source} was "
                    "labelled with): its pairs are not marked seen or unseen")
        line = f"{info['seen']} of {n} benchmark pairs seen in training, {info['unseen']} unseen ({source}"
        if info["unresolved"]:
            line += f"; {info['unresolved']} of the unseen are not pairs of vocabulary {words}"
        return line + ")"

    def run(self, model, progress: bool = False, rank_slice: RankSlice = RankSlice()) -> EvalResult:
        """The whole benchmark's result; with `rank_slice` (every rank of a process group), this rank
        encodes only its slice of the images (evaluation/distributed.py)."""
        return evaluate(model, self.splits, self.templates, open_world=self.open_world, seen_pairs=self.seen_pairs,
                        vocab=self.vocab, batch_size=self.batch_size, num_workers=self.num_workers,
                        progress=progress, rank_slice=rank_slice)


def _seen_pairs(splits: dict[str, AOFolder], source: str, vocab: Vocabulary | None,
                seen_vocabulary: str | None) -> tuple[Mapping | None, dict]:
    """(benchmark pair -> training samples, or None when nothing can be marked; what was marked).

    With `seen_vocabulary`, each benchmark pair (in the splits' names) is read by that vocabulary, the
    one the training data was labelled with, and is seen when it resolves to a pair of the training data.
    """
    candidates = sorted({p for ds in splits.values() for p in ds.pairs})
    info = {"source": source, "benchmark_pairs": len(candidates)}
    if not seen_vocabulary:
        words = vocab or _vocab_of(splits)
        seen = training_pairs(source, words)
        marked = sum(p in seen for p in candidates)
        info.update(vocabulary=words.source or "(eval.vocabulary)", seen=marked, unseen=len(candidates) - marked,
                    unresolved=0)
        return seen, info
    words = load_vocabulary(str(seen_vocabulary))
    training = training_pairs(source, words)
    resolved = {p: q for p in candidates if (q := words.split_pair(f"{p[0]} {p[1]}")) is not None}
    info.update(vocabulary=str(seen_vocabulary), unresolved=len(candidates) - len(resolved))
    if not resolved:  # no pair of the benchmark can be in the training data's labels: say so, mark nothing
        info.update(seen=0, unseen=0)
        return None, info
    seen = {p: training[q] for p, q in resolved.items() if q in training}
    info.update(seen=len(seen), unseen=len(candidates) - len(seen))
    return seen, info


def _vocab_of(splits: dict[str, AOFolder]) -> Vocabulary:
    """The benchmark's own words, to read training captions with when no vocabulary is configured."""
    pairs = {p for ds in splits.values() for p in ds.pairs}
    return Vocabulary.build({a: [] for a, _ in pairs}, {o: [] for _, o in pairs}, {a: "unknown" for a, _ in pairs},
                            source="benchmark folder names")
