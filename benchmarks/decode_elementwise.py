"""align's elementwise decode kernels (`align.decode_kernels`: add_rms_norm, rotary_into_cache, silu_mul) against
PyTorch's operations for the same work, in one process; both sides decode with align's attention kernel.

    python benchmarks/decode_elementwise.py                  # 128 held-out prompts, 3 rounds
    python benchmarks/decode_elementwise.py --prompts 300 --rounds 2

1. Greedy generation of the held-out prompts (256 new tokens, the engine's 64 rows, bf16 weights, as `align eval`
   runs on a CPU with native bf16).
2. Sampled generation as configs/grpo-rlvr.yaml's rollouts run: 8 prompts x 4 completions, temperature 0.9, 128
   new tokens.
The two engines hold the same weights and take turns, after one untimed generation each: new tokens/s per round,
their median, and how many completions came out the same from both (bf16: the norm's sum of squares adds in
another order, so an occasional rounding differs, and greedy text diverges from there). Prints markdown tables.
Timings, not tests: run it alone on the machine (docs/SPEED.md). Needs a CPU with AVX-512 and a C++ compiler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable (benchmarks/, align/, reward/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.rollout import GenerationConfig, load_generator  # noqa: E402
from benchmarks.measure import generations_in_turns, rates_row, rows_of  # noqa: E402

SIDES = {False: "PyTorch's operations", True: "align's elementwise kernels"}  # fuse_elementwise -> its name


def table(title: str, runs: dict, outputs: dict) -> None:
    """Each side's rounds, and how many completions both sides' untimed generations share."""
    same = sum(a == b for a, b in zip(outputs[False].token_ids, outputs[True].token_ids))
    print(f"\n| {title} | new tokens/s (each round) | median | new tokens |\n|---|---|---|---|")
    for side, measured in runs.items():
        print(rates_row(SIDES[side], measured))
    print(f"\ncompletions with the same tokens from both (bf16): {same} of {len(outputs[True].token_ids)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128, help="held-out prompts (in distribution) to generate for")
    parser.add_argument("--rounds", type=int, default=3, help="timed generations of each side, taking turns")
    args = parser.parse_args()
    generators = {side: load_generator("smollm2-135m-instruct", "auto", GenerationConfig(slots=64))
                  for side in SIDES}
    if not generators[True].engine.fuse_elementwise:
        sys.exit("the engine does not use align's kernels here (bf16 weights on an AVX-512 CPU are needed)")
    generators[False].engine.fuse_elementwise = False

    prompts = [row["prompt"] for row in rows_of("builtin:prompts:heldout", "prompt", args.prompts)]
    runs, outputs = generations_in_turns(generators, prompts, args.rounds, max_new_tokens=256)
    table(f"greedy generation, {len(prompts)} prompts, 256 new tokens", runs, outputs)

    groups = [prompt for prompt in prompts[:8] for _ in range(4)]
    runs, outputs = generations_in_turns(generators, groups, args.rounds, max_new_tokens=128, temperature=0.9, seed=0)
    table("sampled rollouts, 8 prompts x 4, temperature 0.9, 128 new tokens", runs, outputs)


if __name__ == "__main__":
    main()
