"""Throughput of caption parsing + pair counting + NMI (data_filters) against the naive substring baseline.

    .venv/bin/python benchmarks/parse_throughput.py --n 1000000 --workers 2

Captions are synthetic and deterministic (10-20 words from a mix of common caption words and the
builtin vocabulary; about 40% contain an "attribute [word] object" phrase). Each worker process
generates its chunks and then parses/counts them; generation and parsing are timed separately.
Parsing is data_filters' batch parser (data_filters/batch_parse.py, through count_captions: a numba
loop, data_filters/parse_kernel.py); each worker's parse time includes its one-time start-up, also
printed apart (importing numba and loading the compiled loop from numba's cache, ~0.5 CPU-s, and
pyarrow's import of pandas, ~0.35 CPU-s; compiling the loop, ~6 CPU-s, where numba's cache is cold,
e.g. after an edit). Two
baselines, timed in this process on a sample of the same captions and extrapolated:
  * the reference parser (data_filters/parse.py CaptionParser, one caption at a time in Python: the
    path every caption took before the batch parser, and the one it is tested against), counted into
    PairCounts caption by caption, on --reference-sample captions; its counts must equal the batch
    path's on that sample (checked here, so a figure never comes from a parser that disagrees);
  * the paper's approach: for every caption, `f"{a} {o}" in caption` for every (attribute, object)
    pair of the vocabulary (phrases precomputed, which only helps it), on --baseline-sample captions.
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from data_filters.counts import PairCounts, count_captions  # noqa: E402
from data_filters.parse import CaptionParser  # noqa: E402
from data_filters.vocab import Vocabulary, plural  # noqa: E402

FILLER = """a an the of in on with and at by for to from near next its their this that is are
photo picture image view close up shot stock illustration background street city park beach
room kitchen table light day night sunny summer winter people man woman girl boy family friends
standing sitting walking looking holding wearing playing young beautiful happy modern vintage
style design art print poster logo icon free download hd wallpaper new york london home garden
front top side two three some many our my his her best great""".split()
CHUNK = 50_000

_STATE: dict = {}


def make_words(vocab: Vocabulary) -> tuple[list[str], list[str]]:
    """Single-word attributes and object surface forms (singular and plural) to sample from."""
    attrs = [a for a in vocab.attributes if " " not in a]
    objs = [o for o in vocab.objects if " " not in o and "-" not in o]
    return attrs, objs + [plural(o) for o in objs[::4]]


def generate(seed: int, n: int, attrs: list[str], objs: list[str]) -> list[str]:
    """n deterministic captions of 10-20 words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choices(FILLER, k=rng.randint(8, 18))
        r = rng.random()
        if r < 0.4:  # attribute (optionally one word between) + object
            phrase = [rng.choice(attrs), rng.choice(objs)]
            if rng.random() < 0.3:
                phrase.insert(1, rng.choice(FILLER))
        elif r < 0.6:
            phrase = [rng.choice(objs)]  # object alone
        else:
            phrase = [rng.choice(attrs)] if r < 0.7 else []
        pos = rng.randint(0, len(words))
        words[pos:pos] = phrase
        text = " ".join(words)
        if rng.random() < 0.5:
            text = text[0].upper() + text[1:]
        if rng.random() < 0.3:
            text += "."
        out.append(text)
    return out


def _init(start_parser: bool = True) -> None:
    vocab = Vocabulary.builtin()
    _STATE["parser"] = CaptionParser(vocab)
    _STATE["words"] = make_words(vocab)
    if start_parser:  # a worker: its parser's one-time start-up, timed here to be reported apart
        t, c = time.perf_counter(), time.process_time()
        count_captions(["a warm-up caption"], _STATE["parser"])
        _STATE["start-up"] = time.perf_counter() - t, time.process_time() - c


def _work(job: tuple[int, int]):
    """(counts, generation s, parse s, parse CPU-s, start-up CPU-s) of one chunk; a worker's first
    chunk carries its parser's start-up, which the parse times include."""
    seed, n = job
    t0 = time.perf_counter()
    captions = generate(seed, n, *_STATE["words"])
    t1, c1 = time.perf_counter(), time.process_time()
    counts = count_captions(captions, _STATE["parser"])
    start_s, start_cpu = _STATE.pop("start-up", (0.0, 0.0))
    return counts, t1 - t0, time.perf_counter() - t1 + start_s, time.process_time() - c1 + start_cpu, start_cpu


def reference_rate(parser: CaptionParser, captions: list[str]) -> float:
    """Captions per CPU-second of the reference parser counting caption by caption; raises if its
    counts differ from count_captions' (the batch parser) on the same captions."""
    counts = PairCounts(parser.vocab.attributes, parser.vocab.objects)
    start = time.process_time()
    for caption in captions:
        counts.add(parser.pairs(caption))
    rate = len(captions) / (time.process_time() - start)
    if counts != count_captions(captions, parser):
        raise SystemExit("the batch parser's counts differ from the reference parser's: figures withheld")
    return rate


def naive_pairs(caption: str, phrases: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    text = caption.lower()
    return [(a, o) for a, o, p in phrases if p in text]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="captions (default 10,000,000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-sample", type=int, default=100, help="captions timed for the naive baseline")
    ap.add_argument("--reference-sample", type=int, default=50_000,
                    help="captions timed for the reference parser (default 50,000)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    jobs = [(i, min(CHUNK, args.n - start)) for i, start in enumerate(range(0, args.n, CHUNK))]
    total, gen_s, parse_s, parse_cpu, start_cpu = PairCounts(), 0.0, 0.0, 0.0, 0.0
    with multiprocessing.get_context("fork").Pool(args.workers, _init) as pool:
        for counts, g, p, c, s in pool.imap_unordered(_work, jobs):
            total.merge(counts)
            gen_s, parse_s, parse_cpu, start_cpu = gen_s + g, parse_s + p, parse_cpu + c, start_cpu + s
    t_stats = time.perf_counter()
    stats = total.stats()
    stats_s = time.perf_counter() - t_stats
    wall = time.perf_counter() - t0
    # parse wall time on `workers` cores: summed worker parse time / workers (+ the NMI step)
    parse_wall = parse_s / args.workers + stats_s

    _init(start_parser=False)
    vocab = _STATE["parser"].vocab
    ref_per_cpu_s = reference_rate(_STATE["parser"], generate(10**9 + 1, args.reference_sample, *_STATE["words"]))
    phrases = [(a, o, f"{a} {o}") for a in vocab.attributes for o in vocab.objects]
    sample = generate(10**9, args.baseline_sample, *_STATE["words"])
    tb = time.perf_counter()
    for c in sample:
        naive_pairs(c, phrases)
    per_caption = (time.perf_counter() - tb) / len(sample)
    naive_wall = per_caption * args.n / args.workers  # assumes perfect scaling over the same workers

    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"captions {args.n:,}, workers {args.workers}, vocabulary {len(vocab.attributes)} attributes x "
          f"{len(vocab.objects)} objects")
    print(f"with a pair {stats['fraction_with_pair']:.1%}, labelled {stats['fraction_labelled']:.1%}, "
          f"NMI {stats['nmi']:.4f}, distinct pairs {stats['distinct_pairs']:,}")
    print(f"end-to-end wall (generate + parse + count + NMI): {wall:.1f} s")
    print(f"  generation (not part of the method): {gen_s / args.workers:.1f} s per worker")
    print(f"data_filters parse+count+NMI: {parse_wall:.1f} s  -> {args.n / parse_wall:,.0f} captions/s")
    # CPU time does not grow when other jobs share the cores; wall time does.
    print(f"  CPU time: {parse_cpu:.1f} s -> {args.n / parse_cpu:,.0f} captions per CPU-second; "
          f"projected {10_000_000 / (args.n / parse_cpu) / args.workers:.0f} s for 10M captions on {args.workers} free cores")
    print(f"  of which the workers' one-time start-up (numba's cached loop, pyarrow's pandas import): "
          f"{start_cpu:.1f} s")
    print(f"reference parser, one caption at a time (same counts on {args.reference_sample:,} captions, checked): "
          f"{ref_per_cpu_s:,.0f} captions per CPU-second -> batch parser {args.n / parse_cpu / ref_per_cpu_s:.1f}x")
    print(f"naive baseline ({len(phrases):,} substring tests/caption), timed on {len(sample)} captions and "
          f"EXTRAPOLATED: {per_caption * 1e3:.2f} ms/caption -> {naive_wall:,.0f} s for {args.n:,} on "
          f"{args.workers} workers ({1 / per_caption * args.workers:,.0f} captions/s)")
    print(f"speed-up vs baseline: {naive_wall / parse_wall:,.0f}x")
    print(f"peak RSS (largest process): {rss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
