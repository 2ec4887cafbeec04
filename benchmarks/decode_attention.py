"""align's decode-attention kernel (`align.decode_kernels`) against PyTorch's fused attention, in one process.

    python benchmarks/decode_attention.py                    # 128 held-out prompts, 3 rounds
    python benchmarks/decode_attention.py --prompts 300 --rounds 2

1. The kernel's one-time build: compiled into a fresh temporary extension directory (what the first use on a
   machine costs; later uses load the cached build).
2. The attention of one decode step over SmolLM2-135M's cache (30 layers, 3 key heads of 3 query heads, head_dim
   64, bf16) for 64 rows: every row at 320 positions, and rows at 64 to 320 positions (the engine's slice is the
   longest row's; the kernel reads each row's own). Median of 7 timings of each side, taking turns.
3. Greedy generation of the prompts (256 new tokens, the engine's 64 rows, bf16 weights, as `align eval` runs on a
   CPU with native bf16), the engine with each attention taking turns after one untimed generation each: new
   tokens/s, and how many prompts got the same tokens from both. Both sides run the elementwise work through
   PyTorch's operations (benchmarks/decode_elementwise.py measures align's kernels for it).
Prints markdown tables. Timings, not tests: run it alone on the machine (docs/BENCHMARK.md, "A decode-attention
kernel"). Needs a CPU with AVX-512 and a C++ compiler.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable (benchmarks/, align/, reward/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from align import decode_kernels  # noqa: E402
from align.rollout import GenerationConfig, load_generator  # noqa: E402
from benchmarks.measure import generations_in_turns, median_ms_in_turns, rates_row, rows_of  # noqa: E402

LAYERS, KV_HEADS, GROUPS, HEAD_DIM, ROWS = 30, 3, 3, 64, 64  # SmolLM2-135M's attention, the engine's 64 rows
SIDES = {"reference": "PyTorch's fused attention", "auto": "align's kernel"}  # generation.attention -> its name


def build_seconds() -> float:
    """Step 1: seconds to compile the kernel where no build is cached (a temporary extension directory)."""
    with tempfile.TemporaryDirectory() as directory:
        os.environ["TORCH_EXTENSIONS_DIR"] = directory
        started = time.perf_counter()
        if decode_kernels.load_kernel() is None:
            sys.exit("the decode-attention kernel could not be built here (see the warning above)")
        return time.perf_counter() - started


def attention_step(lengths: torch.Tensor, use_kernel: bool, cache) -> None:
    """One decode step's attention over all layers, as `DecoderEngine._decode` calls it."""
    keys, values, q = cache
    length = int(lengths.max())
    mask = None if use_kernel else decode_kernels.length_mask(lengths, length, torch.bfloat16)
    for layer in range(LAYERS):
        k, v = keys[layer, :, :, :length], values[layer, :, :, :length]
        if use_kernel:
            decode_kernels.kernel(q, k, v, lengths)
        else:
            decode_kernels.reference(q, k, v, mask)


def step_milliseconds(lengths: torch.Tensor, rounds: int = 7) -> dict[str, float]:
    """Step 2: median milliseconds of a step's attention with each implementation, taking turns."""
    generator = torch.Generator().manual_seed(0)
    shape = (LAYERS, ROWS, KV_HEADS, 352, HEAD_DIM)
    cache = (torch.randn(shape, generator=generator).bfloat16(), torch.randn(shape, generator=generator).bfloat16(),
             torch.randn(ROWS, KV_HEADS, GROUPS, HEAD_DIM, generator=generator).bfloat16())
    sides = {attention: (lambda attention=attention: attention_step(lengths, attention == "auto", cache))
             for attention in SIDES}
    return median_ms_in_turns(sides, rounds, warmup=1)


def generation(prompts: list[str], rounds: int):
    """Step 3: (seconds, new tokens) per round for each attention, and the prompts whose tokens both share."""
    generators = {attention: load_generator("smollm2-135m-instruct", "auto",
                                            GenerationConfig(slots=ROWS, attention=attention))
                  for attention in SIDES}
    if not generators["auto"].engine.use_kernel:
        sys.exit("the engine does not use the kernel here (bf16 weights on an AVX-512 CPU are needed)")
    generators["auto"].engine.fuse_elementwise = False  # the attention alone
    runs, outputs = generations_in_turns(generators, prompts, rounds, max_new_tokens=256)
    same = sum(a == b for a, b in zip(outputs["reference"].token_ids, outputs["auto"].token_ids))
    return runs, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128, help="held-out prompts (in distribution) to generate for")
    parser.add_argument("--rounds", type=int, default=3, help="timed generations of each side, taking turns")
    args = parser.parse_args()
    print(f"kernel build: {build_seconds():.1f} s\n")

    print(f"| attention of one decode step, 64 rows, 30 layers | {SIDES['reference']}, ms | {SIDES['auto']}, ms |")
    print("|---|---|---|")
    spread = torch.linspace(64, 320, ROWS).long()
    for label, lengths in (("every row at 320 positions", torch.full((ROWS,), 320)),
                           ("rows at 64 to 320 positions", spread)):
        ms = step_milliseconds(lengths)
        print(f"| {label} | {ms['reference']:.1f} | {ms['auto']:.1f} |")

    prompts = [row["prompt"] for row in rows_of("builtin:prompts:heldout", "prompt", args.prompts)]
    runs, same = generation(prompts, args.rounds)
    print(f"\n| greedy generation, {len(prompts)} prompts, 256 new tokens | new tokens/s (each round) | median | "
          f"new tokens |\n|---|---|---|---|")
    for attention, measured in runs.items():
        print(rates_row(SIDES[attention], measured))
    print(f"\nprompts with the same greedy tokens from both (bf16): {same} of {len(prompts)}")


if __name__ == "__main__":
    main()
