"""The engine's decode kernels on one thread or on all, and its products through oneDNN or align's kernel, in one
process.

    python benchmarks/decode_products.py                     # 5 rounds of PPO rollouts, 2 of evaluations
    python benchmarks/decode_products.py --rounds 3 --eval-rounds 1

Three sides, each an engine over the same bf16 weights, taking turns:
1. `before`: the decode kernels built without OpenMP, so every loop of theirs ran on one thread (the module as
   align built it until then), and the products through oneDNN's packed layout;
2. `threads`: the kernels on all of torch's threads, products still through oneDNN;
3. `products`: the kernels on all threads and the products through the kernels' `linear` (AVX512_BF16's dot
   product over a layout of its own), as the engine now runs them on such a CPU.
Each round times a PPO rollout of `configs/ppo.yaml`'s size (16 responses, here one to each of 16 training prompts,
temperature 0.8, 128 new tokens, the frozen trunk's states kept at layer L-8) and, in the first `--eval-rounds`
rounds, an evaluation's generation (128 held-out prompts, greedy, 256 new tokens, 64 rows). Prints a markdown
table of the medians, and whether the first two sides sampled the same tokens (they must: the threads split the
same sums). Timings, not tests: run it alone on the machine (docs/BENCHMARK.md, "Products through AVX512_BF16's
dot product").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable (benchmarks/, align/, reward/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from align import decode_kernels  # noqa: E402
from align.rollout import GenerationConfig, load_generator  # noqa: E402
from benchmarks.measure import rows_of  # noqa: E402

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each side's PPO rollout, taking turns")
    parser.add_argument("--eval-rounds", type=int, default=2, help="of those rounds, how many also evaluate")
    args = parser.parse_args()
    from torch.utils import cpp_extension

    threaded = decode_kernels.load_kernel()
    serial = cpp_extension.load("align_decode_kernels_serial", [str(decode_kernels.SOURCE)],
                                extra_cflags=decode_kernels.COMPILE_FLAGS)  # no -fopenmp: the module as it was
    kernels = {"before": serial, "threads": threaded, "products": threaded}
    generators = {side: load_generator("smollm2-135m-instruct", "auto", GenerationConfig(
        slots=64, products="auto" if side == "products" else "reference")) for side in kernels}
    engine = generators["products"].engine
    if not engine.use_kernel or engine.layers[0].qkv.kernel is None:
        sys.exit("decode_products: align's kernels do not run here (bf16 on a CPU with AVX512_BF16 and no AMX)")
    rollout_prompts = [row["prompt"] for row in rows_of("builtin:prompts:train", "prompt", 16)]
    eval_prompts = [row["prompt"] for row in rows_of("builtin:prompts:heldout", "prompt", 128)]
    rollout = dict(max_new_tokens=128, temperature=0.8, states_at=len(engine.layers) - 8)
    for side, generator in generators.items():  # untimed: first allocations
        decode_kernels.load_kernel = lambda module=kernels[side]: module
        generator.generate(rollout_prompts[:8], max_new_tokens=16)
    rates, tokens = {side: {"rollout": [], "eval": []} for side in kernels}, {side: [] for side in kernels}
    for round_ in range(args.rounds):
        order = list(kernels) if round_ % 2 == 0 else list(reversed(kernels))
        for side in order:
            decode_kernels.load_kernel = lambda module=kernels[side]: module
            started = time.perf_counter()
            out = generators[side].generate(rollout_prompts, seed=round_, **rollout)
            rates[side]["rollout"].append(out.new_tokens / (time.perf_counter() - started))
            tokens[side].append(out.token_ids)
            if round_ < args.eval_rounds:
                started = time.perf_counter()
                out = generators[side].generate(eval_prompts, max_new_tokens=256)
                rates[side]["eval"].append(out.new_tokens / (time.perf_counter() - started))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, smollm2-135m-instruct, bf16, "
          f"{args.rounds} rollout rounds, {args.eval_rounds} evaluation rounds (medians)\n")
    print("| side | PPO rollout new tokens/s | x before | evaluation new tokens/s | x before |\n|---|---|---|---|---|")
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    base = {kind: median(rates["before"][kind]) for kind in ("rollout", "eval")}
    for side, by_kind in rates.items():
        rollout_rate, eval_rate = (median(by_kind[kind]) for kind in ("rollout", "eval"))
        print(f"| {side} | {rollout_rate:.0f} | {rollout_rate / base['rollout']:.2f} | {eval_rate:.0f} | "
              f"{eval_rate / base['eval']:.2f} |")
    print(f"\nbefore and threads sampled the same tokens in every round: {tokens['before'] == tokens['threads']}")


if __name__ == "__main__":
    main()
