"""Evaluation throughput of the ImageNet-AO protocol with the cached text classifier against one rebuilt per call.

    .venv/bin/python benchmarks/eval_throughput.py                      # toy-vit-tiny, openai templates, 5 calls
    .venv/bin/python benchmarks/eval_throughput.py --templates simple --repeats 10 --threads 2

Scenario: one set of weights evaluated --repeats times on the toy world's whole benchmark (seen and
unseen splits), as `aotrain eval` over several benchmarks or repeated evaluation of one checkpoint does.
  * rebuilt per call (the baseline): a fresh ZeroShotModel before every call, so the open-world pair,
    object and attribute text classifiers are encoded again each time;
  * cached: one ZeroShotModel for all calls; the first call encodes them, the later ones reuse them.
The model is a random init (the timing does not depend on the weights); the world is generated once
under --root (cached by config hash) with a small training pool and the default evaluation images.
One untimed call warms up first. Both modes must give identical metrics, or the script fails.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

import torch  # noqa: E402

from aotrain import towers  # noqa: E402
from aotrain.toyworld import generate_world  # noqa: E402
from data_filters.vocab import load_vocabulary  # noqa: E402
from evaluation.evaluate import evaluate  # noqa: E402
from evaluation.imagenet_ao import load_benchmark  # noqa: E402
from evaluation.models import ZeroShotModel  # noqa: E402
from evaluation.zero_shot import resolve_templates  # noqa: E402

# Small training pool (unused here, only generated once); evaluation images at DEFAULT_CONFIG's counts.
WORLD = {"pool": {"n_samples": 2000, "samples_per_shard": 1000}}


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    """Exact equality, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy-vit-tiny")
    ap.add_argument("--repeats", type=int, default=5, help="evaluation calls per mode (default 5)")
    ap.add_argument("--templates", default="openai", choices=("openai", "simple"),
                    help="prompt templates: openai (80) or simple (4)")
    ap.add_argument("--batch-size", type=int, default=256, help="images per evaluation batch")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--root", default="/tmp/aotrain-bench", help="where the toy world is generated/reused")
    args = ap.parse_args(argv)
    if args.repeats < 2:
        ap.error("--repeats must be >= 2 (the cached mode needs calls after the first)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    world = generate_world(WORLD, args.root, progress=False)
    vocab = load_vocabulary(f"world:{world}")
    _, eval_tf = towers.image_transforms(args.model)
    splits = load_benchmark(world / "imagenet_ao", transform=eval_tf, vocab=vocab)
    templates = resolve_templates(args.templates)
    clip = towers.build_clip(args.model).to(args.device).eval()
    tok = towers.tokenizer(args.model)

    def adapter() -> ZeroShotModel:
        return ZeroShotModel(clip.encode_image, clip.encode_text, tok, device=args.device)

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    def call(model: ZeroShotModel) -> dict[str, float]:
        return evaluate(model, splits, templates, vocab=vocab, batch_size=args.batch_size).metrics

    n_images = sum(len(ds) for ds in splits.values())
    candidates = sorted({p for ds in splits.values() for p in ds.pairs})
    attributes = sorted({a for a, _ in candidates})
    objects = sorted({o for _, o in candidates})
    # The three classifiers evaluate() asks for (open world on): attribute x object grid, objects, attributes.
    class_lists = [[f"{a} {o}" for a in attributes for o in objects], objects, [f"{a} object" for a in attributes]]
    n_classes = sum(len(c) for c in class_lists)

    with torch.inference_mode():
        reference = call(adapter())  # warm-up (kernels, file cache), untimed

        # One text-classifier build: all three classifiers of the benchmark, from an empty cache.
        model = adapter()
        sync()
        t0 = time.perf_counter()
        for names in class_lists:
            model.classifier(names, templates)
        sync()
        build_s = time.perf_counter() - t0

        # (a) rebuilt per call
        rebuilt_calls, rebuilt_cpu = [], 0.0
        for _ in range(args.repeats):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            metrics = call(adapter())
            sync()
            rebuilt_calls.append(time.perf_counter() - t0)
            rebuilt_cpu += time.process_time() - c0
            assert same_metrics(metrics, reference), "rebuilt-per-call metrics differ between calls"

        # (b) cached: one adapter for every call
        model = adapter()
        cached_calls, cached_cpu = [], 0.0
        for _ in range(args.repeats):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            metrics = call(model)
            sync()
            cached_calls.append(time.perf_counter() - t0)
            cached_cpu += time.process_time() - c0
            assert same_metrics(metrics, reference), "cached metrics differ from rebuilt-per-call metrics"

    splits_desc = ", ".join(f"{name} {len(ds)}" for name, ds in splits.items())
    print(f"model {args.model}, device {args.device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"world {world.name}")
    print(f"benchmark: {n_images} images ({splits_desc}), {len(candidates)} candidate pairs, "
          f"{len(attributes)} attributes x {len(objects)} objects")
    print(f"text classifiers: {n_classes} classes ({len(class_lists[0])} open-world pairs + {len(objects)} objects + "
          f"{len(attributes)} attributes) x {len(templates)} {args.templates} templates = "
          f"{n_classes * len(templates):,} prompts; one build {build_s:.2f} s "
          f"({n_classes * len(templates) / build_s:,.0f} prompts/s)")
    print(f"metrics identical across modes and calls: yes ({len(reference)} metrics, "
          f"e.g. unseen/pair_top1 {reference.get('unseen/pair_top1', float('nan')):.4f})")
    print()
    rows = [("rebuilt per call", rebuilt_calls, rebuilt_cpu), ("cached", cached_calls, cached_cpu)]
    base_rate = args.repeats * n_images / sum(rebuilt_calls)
    base_cpu = rebuilt_cpu
    print(f"{'mode':<20}{'calls':>6}{'images':>8}{'seconds':>9}{'s/call':>8}{'first':>8}{'later':>8}"
          f"{'images/s':>10}{'ratio':>8}{'CPU s':>9}{'CPU ratio':>11}")
    for name, calls, cpu in rows:
        total = sum(calls)
        rate = len(calls) * n_images / total
        later = sum(calls[1:]) / (len(calls) - 1)
        print(f"{name:<20}{len(calls):>6}{len(calls) * n_images:>8}{total:>9.2f}{total / len(calls):>8.3f}"
              f"{calls[0]:>8.3f}{later:>8.3f}{rate:>10.1f}{rate / base_rate:>7.2f}x{cpu:>9.2f}{base_cpu / cpu:>10.2f}x")
    print()
    print("seconds: wall time of all calls; first/later: the first call and the mean of the later ones; "
          "ratio: images/s against rebuilt per call;")
    print("CPU s: process CPU time of all calls (all threads), less sensitive to other load on the machine; "
          "CPU ratio: rebuilt CPU s / this mode's.")
    steady = (sum(rebuilt_calls[1:]) / (len(rebuilt_calls) - 1)) / (sum(cached_calls[1:]) / (len(cached_calls) - 1))
    print(f"steady state (later calls, rebuilt / cached s/call): {steady:.2f}x; the ratio above tends to it as --repeats grows")
    print(f"cached first call minus its later calls: {cached_calls[0] - sum(cached_calls[1:]) / (len(cached_calls) - 1):.2f} s "
          f"(the one build it pays; timed directly: {build_s:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
