"""Where the generation engine's time goes in an `align eval`-like generation: the held-out prompts, greedy, 256 new
tokens, the engine's 64 rows, bf16 weights (as `align eval` runs on a CPU with native bf16).

    python benchmarks/generation_profile.py                 # 128 held-out prompts
    python benchmarks/generation_profile.py --prompts 300
    python benchmarks/generation_profile.py --pytorch-elementwise   # without align's elementwise kernels

Each part is timed by wrapping the engine's calls with a clock (no profiler, so no profiler overhead): prefill and
decode steps as a whole, and inside them the matrix products (the layers' and the vocabulary projection apart),
the decode attention and the sampling; "other" is the decode steps' time outside their products and attention
(the elementwise work and the per-operation overhead). One untimed generation first. Prints a markdown table.
Timings, not tests: run it alone on the machine (docs/SPEED.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable (benchmarks/, align/, reward/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import decode_kernels, engine  # noqa: E402
from align.rollout import GenerationConfig, Sampler, load_generator  # noqa: E402
from benchmarks.measure import rows_of  # noqa: E402


class Clock:
    """Seconds spent in each wrapped callable, by name, while `on`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.on = False

    def wrap(self, name: str, call):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                if self.on:
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128, help="held-out prompts (in distribution) to generate for")
    parser.add_argument("--pytorch-elementwise", action="store_true",
                        help="the elementwise work through PyTorch's operations, not align's kernels")
    args = parser.parse_args()
    generator = load_generator("smollm2-135m-instruct", "auto", GenerationConfig(slots=64))
    decoder, clock = generator.engine, Clock()
    decoder.fuse_elementwise = decoder.fuse_elementwise and not args.pytorch_elementwise
    decoding = [False]  # inside a decode step: its products count as decode products

    def project(projection, x):
        part = "vocabulary projection" if projection is decoder.lm_head else "layer products"
        return clock.wrap(f"{'decode' if decoding[0] else 'prefill'}: {part}", PROJECT)(projection, x)

    def decode(*args):
        decoding[0] = True
        try:
            return clock.wrap("decode steps", DECODE)(*args)
        finally:
            decoding[0] = False

    PROJECT, DECODE = engine.Projection.__call__, decoder._decode
    engine.Projection.__call__ = project
    decoder._decode = decode
    decoder._prefill = clock.wrap("prefill", decoder._prefill)
    decode_kernels.kernel = clock.wrap("decode: attention", decode_kernels.kernel)
    Sampler.__call__ = clock.wrap("sampling", Sampler.__call__)

    prompts = [row["prompt"] for row in rows_of("builtin:prompts:heldout", "prompt", args.prompts)]
    generator.generate(prompts[:8], max_new_tokens=16)  # untimed: the kernels' load, first allocations
    clock.on = True
    started = time.perf_counter()
    out = generator.generate(prompts, max_new_tokens=256)
    total = time.perf_counter() - started
    seconds = clock.seconds
    seconds["decode: other"] = seconds["decode steps"] - sum(
        seconds.get(f"decode: {part}", 0.0) for part in ("layer products", "vocabulary projection", "attention"))
    print(f"{len(prompts)} prompts, {out.new_tokens} new tokens in {total:.1f} s ({out.new_tokens / total:.0f} new "
          f"tokens/s), attention kernel {'on' if decoder.use_kernel else 'off'}, elementwise kernels "
          f"{'on' if decoder.fuse_elementwise else 'off'}\n\n| part | seconds | share |\n|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {value / total:.0%} |")
    rest = total - seconds["prefill"] - seconds["decode steps"] - seconds["sampling"]
    print(f"| everything else (the rows' bookkeeping between steps) | {rest:.2f} | {rest / total:.0%} |")


if __name__ == "__main__":
    main()
