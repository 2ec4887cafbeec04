"""The engine's prefill with the prompts packed back to back against right-padded to the longest, in one process.

    python benchmarks/prefill_packing.py                     # 5 rounds of each, taking turns
    python benchmarks/prefill_packing.py --rounds 3

Before the engine packed its prefill it ran a chunk of prompts right-padded to the longest, so the products ran on
every padding position too; `padded_prefill_chunk` below is that method as it was, put back on the engine for the
baseline. Each round times, on both sides:
1. a PPO rollout of `configs/ppo.yaml`'s size (16 responses, here one to each of 16 training prompts, temperature
   0.8, 128 new tokens, the frozen trunk's states kept at layer L-8, bf16 weights where bf16 products are native):
   seconds, prefill seconds, new tokens;
2. the first wave of an evaluation: the 64 shortest of 128 held-out prompts prefilled into 64 rows.
Prints a markdown table of the medians. Timings, not tests: run it alone on the machine (docs/BENCHMARK.md,
"Prefill packed").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable (benchmarks/, align/, reward/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from align.engine import PREFILL_TOKENS, DecoderEngine  # noqa: E402
from align.rollout import GenerationConfig, load_generator, render_prompt  # noqa: E402
from benchmarks.measure import rows_of  # noqa: E402


def padded_prefill_chunk(self, rows: list[int], prompts: list[list[int]], start: int = 0) -> torch.Tensor:
    """The engine's `_prefill_chunk` before packing: prompts right-padded to the longest, in one pass."""
    n, width = len(prompts), max(len(p) for p in prompts) - start
    ids = torch.zeros(n, width, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, : len(prompt) - start] = torch.tensor(prompt[start:])
    ids, index = ids.to(self.device), torch.tensor(rows, device=self.device)
    cos, sin = self.cos[start : start + width, None], self.sin[start : start + width, None]
    mask = None if not start else torch.ones(width, start + width, dtype=torch.bool, device=self.device).tril(start)
    x = self.embed[ids]
    for layer, weights in enumerate(self.layers):
        if layer == self.states_at:
            self.states[index, start : start + width] = x
        q, k, v = self._qkv(weights, x, cos, sin)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        self.keys[layer, index, :, start : start + width] = k
        self.values[layer, index, :, start : start + width] = v
        if start:
            k, v = self.keys[layer, index, :, : start + width], self.values[layer, index, :, : start + width]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=not start,
                                             enable_gqa=True)
        x = x + weights.out(out.transpose(1, 2).flatten(2))
        x = self._mlp(weights, x)
    ends = torch.tensor([len(p) - 1 - start for p in prompts], device=self.device)
    return self.lm_head(self._norm(x[torch.arange(n, device=self.device), ends], self.final_norm))


def padded_prefill(self, rows: list[int], prompts: list[list[int]]) -> torch.Tensor:
    """The engine's `_prefill` before packing: a chunk holds as many prompts as fit PREFILL_TOKENS padded."""
    shared = self._shared_start(rows, prompts)
    lengths = [len(p) - shared for p in prompts]
    logits, start = [], 0
    while start < len(prompts):
        end, longest = start + 1, lengths[start]
        while end < len(prompts) and (end + 1 - start) * max(longest, lengths[end]) <= PREFILL_TOKENS:
            longest = max(longest, lengths[end])
            end += 1
        logits.append(self._prefill_chunk(rows[start:end], prompts[start:end], shared))
        start = end
    return torch.cat(logits)


def use(engine, side: str, spent: list[float]) -> None:
    """Put `side`'s prefill ("packed": the engine's own, "padded": the one above) on `engine`, timed into spent."""
    prefill, chunk = ((DecoderEngine._prefill, DecoderEngine._prefill_chunk) if side == "packed"
                      else (padded_prefill, padded_prefill_chunk))

    def timed(rows, prompts):
        started = time.perf_counter()
        try:
            return prefill(engine, rows, prompts)
        finally:
            spent[0] += time.perf_counter() - started

    engine._prefill, engine._prefill_chunk = timed, types.MethodType(chunk, engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each side, taking turns (medians kept)")
    args = parser.parse_args()
    generator = load_generator("smollm2-135m-instruct", "auto", GenerationConfig(slots=64))
    engine, tokenizer = generator.engine, generator.tokenizer
    rollout_prompts = [row["prompt"] for row in rows_of("builtin:prompts:train", "prompt", 16)]
    heldout = [row["prompt"] for row in rows_of("builtin:prompts:heldout", "prompt", 128)]
    wave = sorted((tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in heldout),
                  key=len)[: engine.slots]
    generator.generate(rollout_prompts[:8], max_new_tokens=16)  # untimed: the kernels' load, first allocations
    runs = {"padded": [], "packed": []}
    for round_ in range(args.rounds):
        for side in ("padded", "packed") if round_ % 2 == 0 else ("packed", "padded"):
            spent = [0.0]
            use(engine, side, spent)
            started = time.perf_counter()
            out = generator.generate(rollout_prompts, seed=round_, max_new_tokens=128, temperature=0.8,
                                     states_at=len(engine.layers) - 8)
            rollout, rollout_prefill = time.perf_counter() - started, spent[0]
            engine._ensure_cache(max(map(len, wave)) + 256)
            started = time.perf_counter()
            engine._prefill(list(range(len(wave))), wave)
            runs[side].append((rollout, rollout_prefill, out.new_tokens, time.perf_counter() - started))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, smollm2-135m-instruct, {engine.dtype}, "
          f"{args.rounds} rounds (medians)\n")
    print("| prefill | PPO rollout s | its prefill s | rollout new tokens/s | first wave of an evaluation: 64 "
          "prompts' prefill s |\n|---|---|---|---|---|")
    for side, rows in runs.items():
        rollout, prefill, _, wave_s = (statistics.median(column) for column in zip(*rows))
        rates = statistics.median(t / r for r, _, t, _ in rows)
        print(f"| {side} | {rollout:.2f} | {prefill:.2f} | {rates:.0f} | {wave_s:.2f} |")


if __name__ == "__main__":
    main()
