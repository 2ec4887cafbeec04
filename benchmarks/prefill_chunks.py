"""The engine's prefill in chunks (`align.engine.PREFILL_TOKENS`) against one pass over every prompt, in one process.

    python benchmarks/prefill_chunks.py                      # 128 held-out prompts, 3 rounds
    python benchmarks/prefill_chunks.py --prompts 300 --rounds 2

1. The first wave of an evaluation: the 64 shortest of the prompts prefilled into 64 cache rows, with chunks of
   at most 256, 1024 and 2048 padded tokens and in one pass (each limit timed twice, the faster run kept).
2. Greedy generation of every prompt (256 new tokens, the engine's 64 rows, bf16 weights where bf16 products are
   native, as `align eval` runs), one pass and chunks of PREFILL_TOKENS taking turns, after one untimed generation.
3. With `--long-prompts LIMIT` instead: 32 prompts of 1,000 random tokens prefilled into 32 rows with chunks of at
   most LIMIT tokens; prints the seconds and the process's peak resident memory before and after (run it once
   per limit: a process's peak only grows).
Prints markdown tables. Timings, not tests: run it alone on the machine (docs/BENCHMARK.md, "Prefill in chunks").
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable (benchmarks/, align/, reward/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import align.engine as engine_module  # noqa: E402
from align.rollout import GenerationConfig, load_generator, render_prompt  # noqa: E402
from benchmarks.measure import rates_row, rows_of  # noqa: E402

ONE_PASS = 10**9  # a limit no prefill reaches


@contextlib.contextmanager
def prefill_limit(limit: int):
    """The engine's PREFILL_TOKENS set to `limit` inside the block, restored after it."""
    shipped, engine_module.PREFILL_TOKENS = engine_module.PREFILL_TOKENS, limit
    try:
        yield
    finally:
        engine_module.PREFILL_TOKENS = shipped


def label(limit: int) -> str:
    return "one pass" if limit == ONE_PASS else f"chunks of at most {limit} tokens"


def first_wave(generator, prompts: list[str], limits: list[int]) -> list[tuple[int, float]]:
    """Seconds to prefill the 64 shortest prompts into 64 rows, for each chunk limit (best of two runs)."""
    tokenizer, engine = generator.tokenizer, generator.engine
    encoded = sorted((tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts),
                     key=len)[: engine.slots]
    engine._ensure_cache(max(map(len, encoded)) + 256)
    results = []
    for limit in limits:
        runs = []
        with prefill_limit(limit):
            for _ in range(2):
                started = time.perf_counter()
                engine._prefill(list(range(len(encoded))), encoded)
                runs.append(time.perf_counter() - started)
        results.append((limit, min(runs)))
    return results


def generation(generator, prompts: list[str], rounds: int) -> dict[str, list[tuple[float, int]]]:
    """(seconds, new tokens) of greedy generation of every prompt, one pass and chunked taking turns."""
    chunked = engine_module.PREFILL_TOKENS
    runs = {"one pass": [], f"chunks of {chunked}": []}
    generator.generate(prompts, max_new_tokens=256)  # untimed: the cache is allocated and first touched here
    for _ in range(rounds):
        for name, limit in zip(runs, (ONE_PASS, chunked)):
            with prefill_limit(limit):
                started = time.perf_counter()
                out = generator.generate(prompts, max_new_tokens=256)
            runs[name].append((time.perf_counter() - started, out.new_tokens))
    return runs


def long_prompts(limit: int) -> str:
    """Step 3: a prefill of 32 prompts of 1,000 tokens with chunks of at most `limit` tokens."""
    import resource

    import torch
    from transformers import AutoModelForCausalLM

    from align.models import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m-instruct"), dtype=torch.bfloat16)
    engine = engine_module.DecoderEngine(model, slots=32, release_model=True)
    engine._ensure_cache(1024 + 32)
    prompts = torch.randint(100, 40000, (32, 1000), generator=torch.Generator().manual_seed(0)).tolist()
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 (Linux: KiB)
    before, started = peak(), time.perf_counter()
    with prefill_limit(limit):
        engine._prefill(list(range(32)), prompts)
    return f"| {label(limit)} | {time.perf_counter() - started:.1f} | {before:.0f} | {peak():.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128, help="held-out prompts (in distribution) to generate for")
    parser.add_argument("--rounds", type=int, default=3, help="timed generations of each side, taking turns")
    parser.add_argument("--long-prompts", type=int, default=None, metavar="LIMIT",
                        help=f"only step 3 with this chunk limit ({ONE_PASS}: one pass)")
    args = parser.parse_args()
    if args.long_prompts is not None:
        print("| prefill of 32 prompts x 1000 tokens | seconds | peak RSS before, MiB | after, MiB |")
        print("|---|---|---|---|")
        print(long_prompts(args.long_prompts))
        return
    prompts = [row["prompt"] for row in rows_of("builtin:prompts:heldout", "prompt", args.prompts)]
    generator = load_generator("smollm2-135m-instruct", "auto", GenerationConfig(slots=64))

    print("| prefill of the 64 shortest prompts | seconds |\n|---|---|")
    for limit, seconds in first_wave(generator, prompts, [256, 1024, 2048, ONE_PASS]):
        print(f"| {label(limit)} | {seconds:.2f} |")

    runs = generation(generator, prompts, args.rounds)
    print(f"\n| greedy generation, {len(prompts)} prompts | new tokens/s (each round) | median | new tokens |")
    print("|---|---|---|---|")
    for name, measured in runs.items():
        print(rates_row(name, measured))


if __name__ == "__main__":
    main()
