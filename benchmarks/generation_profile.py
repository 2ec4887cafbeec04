"""Where the generation engine's time goes in an `align eval`-like generation: the held-out prompts, greedy, 256 new
tokens, the engine's 64 rows, bf16 weights (as `align eval` runs on a CPU with native bf16).

    python benchmarks/generation_profile.py                 # 128 held-out prompts
    python benchmarks/generation_profile.py --prompts 300
    python benchmarks/generation_profile.py --pytorch-elementwise   # without align's elementwise kernels
    python benchmarks/generation_profile.py --rollout       # a PPO rollout as configs/ppo.yaml samples one

`--rollout`: 16 training prompts sampled at temperature 0.8, 128 new tokens, the input of layer 22 kept at every
position (the frozen trunk's states, `train.trunk_states: rollout`), the 16 responses of one iteration of
`configs/ppo.yaml` (which samples four to each of 4 prompts); three rollouts (seeds 0, 1, 2), the table the last
one's.

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

from transformers import AutoConfig  # noqa: E402

from align import decode_kernels, engine  # noqa: E402
from align.models import resolve_model_path  # noqa: E402
from align.rollout import GenerationConfig, Sampler, load_generator  # noqa: E402
from benchmarks.measure import rows_of  # noqa: E402

MODEL = "smollm2-135m-instruct"


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
    parser.add_argument("--rollout", action="store_true", help="a PPO rollout of configs/ppo.yaml, not an evaluation")
    args = parser.parse_args()
    generator = load_generator(MODEL, "auto", GenerationConfig(slots=64))
    decoder, clock = generator.engine, Clock()
    decoder.fuse_elementwise = decoder.fuse_elementwise and not args.pytorch_elementwise
    decoding = [False]  # inside a decode step: its products count as decode products

    def project(projection, x):
        part = "vocabulary projection" if projection is decoder.lm_head else "layer products"
        return clock.wrap(f"{'decode' if decoding[0] else 'prefill'}: {part}", PROJECT)(projection, x)

    steps = [0, 0]  # decode steps, rows summed over them

    def decode(*args):
        if clock.on:
            steps[0], steps[1] = steps[0] + 1, steps[1] + len(args[0])
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

    if args.rollout:
        prompts = [row["prompt"] for row in rows_of("builtin:prompts:train", "prompt", 16)]
        sampling = dict(max_new_tokens=128, temperature=0.8, states_at=len(decoder.layers) - 8)
    else:
        prompts = [row["prompt"] for row in rows_of("builtin:prompts:heldout", "prompt", args.prompts)]
        sampling = dict(max_new_tokens=256)
    generator.generate(prompts[:8], max_new_tokens=16)  # untimed: the kernels' load, first allocations
    totals = []
    for seed in range(3 if args.rollout else 1):
        clock.seconds.clear()
        steps[:] = [0, 0]
        clock.on = True
        started = time.perf_counter()
        out = generator.generate(prompts, seed=seed, **sampling)
        totals.append(time.perf_counter() - started)
        clock.on = False
    total = totals[-1]
    if args.rollout:
        print("rollouts of " + ", ".join(f"{t:.2f}" for t in totals) + " s; the table is the last one's")
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
    products = seconds["decode: layer products"] + seconds["decode: vocabulary projection"]
    weight_bytes = product_weight_bytes(AutoConfig.from_pretrained(resolve_model_path(MODEL)),
                                        decoder.embed.element_size())
    print(f"\n{steps[0]} decode steps of {steps[1] / max(1, steps[0]):.1f} rows on average; their products read "
          f"{weight_bytes / 1e6:.0f} MB of weights a step: {steps[0] * weight_bytes / products / 1e9:.1f} GB/s")


def product_weight_bytes(config, bytes_per_weight: int) -> int:
    """The bytes of weights one decode step's products read (a transformers Llama-family config): every layer's
    [q; k; v], output, [gate; up] and down products, and the vocabulary projection."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    qkv_out = (2 * config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
    per_layer = hidden * (qkv_out + 3 * config.intermediate_size)
    return (config.num_hidden_layers * per_layer + config.vocab_size * hidden) * bytes_per_weight


if __name__ == "__main__":
    main()
