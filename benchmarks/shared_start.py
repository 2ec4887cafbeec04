"""The tokens a batch of conversations starts with in common (a chat template's system prompt: 24 tokens of
SmolLM2's), computed once against computed for every conversation, in one process, the two sides taking turns.

    python benchmarks/shared_start.py              # 5 rounds
    python benchmarks/shared_start.py --rounds 3

1. The passes of a PPO iteration without gradients, as configs/ppo.yaml runs them on smollm2-135m-instruct (LoRA
   on the top 8 layers, bf16 autocast): the 22 frozen layers once, then the reference's log-probs and the values
   above them (`align.batching.prefix_units` lays the common start out once).
2. The update's passes with gradients on 8 of those responses: the policy's log-probs, entropies and
   unlikelihood, and the values, forward and backward.
3. The generation engine's prefill of the 16 prompts (`DecoderEngine._shared_start`).
16 training prompts under the chat template, with responses of the lengths of one PPO iteration of the benchmark
(random tokens: the cost depends on the lengths only). Prints a markdown table of seconds per round and medians.
Timings, not tests: run it alone on the machine (docs/SPEED.md).
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

import align.batching as batching  # noqa: E402
import align.engine as engine  # noqa: E402
from align.logprobs import FrozenReference, response_logprobs, response_values, trunk_states  # noqa: E402
from align.models import LoraConfig, ModelConfig, load_model, resolve_model_path  # noqa: E402
from align.precision import autocast  # noqa: E402
from align.rollout import GenerationConfig, load_generator, render_prompt  # noqa: E402
from align.values import TokenValues, load_reward_backbone  # noqa: E402
from benchmarks.measure import rows_of  # noqa: E402

RESPONSE_LENGTHS = [21, 27, 42, 65, 99, 125] + [128] * 10  # one iteration of the benchmark's PPO case
CPU = torch.device("cpu")


SHARED_PREFIX_MIN = batching.SHARED_PREFIX_MIN  # align's own setting, restored for the "once" side


def shared(on: bool) -> None:
    """Compute the common start once (on) or for every conversation (off), in the flat passes and the engine."""
    batching.SHARED_PREFIX_MIN = engine.SHARED_PREFIX_MIN = SHARED_PREFIX_MIN if on else 10**9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    path = resolve_model_path("smollm2-135m-instruct")
    torch.manual_seed(0)
    config = ModelConfig(name=path, lora=LoraConfig(enabled=True, last_layers=8))
    policy, tokenizer = load_model(config)
    value_model, reference = TokenValues(load_reward_backbone(config, path)[0]), FrozenReference(policy, lora=True)
    rows = rows_of("builtin:prompts:train", "prompt", len(RESPONSE_LENGTHS))
    prompts = [tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"] for r in rows]
    draw = torch.Generator().manual_seed(0)
    responses = [torch.randint(100, 40000, (n,), generator=draw).tolist() for n in RESPONSE_LENGTHS]
    sequences = [p + r for p, r in zip(prompts, responses)]
    generator = load_generator(path, "auto", GenerationConfig(slots=len(prompts)))
    decoder = generator.engine
    decoder._ensure_cache(max(map(len, prompts)) + 1)

    def without_gradients():
        with torch.no_grad(), autocast(CPU, "bf16-autocast"):
            trunk = trunk_states(policy, sequences, 22, 1024)
            reference.logprobs(prompts, responses, 1024, 0.8, trunk=trunk)
            response_values(value_model, prompts, responses, 1024, trunk=trunk)
        return trunk

    def update(trunk):
        part = trunk.subset(range(8))
        with autocast(CPU, "bf16-autocast"):
            logprobs, entropies, unlikelihoods = response_logprobs(
                policy, prompts[:8], responses[:8], 1024, 0.8, with_entropy=True, trunk=part, with_unlikelihood=True)
            values = response_values(value_model, prompts[:8], responses[:8], 1024, trunk=part)
        (torch.cat(logprobs).sum() + torch.cat(entropies).sum() + torch.stack(unlikelihoods).sum()
         + torch.cat(values).float().pow(2).sum()).backward()
        policy.zero_grad(), value_model.zero_grad()

    rows_of_cache = list(range(len(prompts)))
    seconds: dict[tuple[str, bool], list[float]] = {}

    def timed(part: str, on: bool, measured: bool, run):
        started = time.perf_counter()
        result = run()
        if measured:
            seconds.setdefault((part, on), []).append(time.perf_counter() - started)
        return result

    for round_ in range(args.rounds + 1):  # round 0 untimed
        for on in (False, True):
            shared(on)
            trunk = timed("passes without gradients (16 responses)", on, round_ > 0, without_gradients)
            timed("update passes (8 responses)", on, round_ > 0, lambda: update(trunk))
            timed("engine prefill (16 prompts)", on, round_ > 0, lambda: decoder._prefill(rows_of_cache, prompts))
    print(f"16 conversations of {sum(map(len, sequences))} tokens; the common start: "
          f"{min(batching.shared_prefix_length(sequences[0], s) for s in sequences[1:])} tokens\n")
    print("| part | every conversation (s, each round) | the common start once | median ratio |\n|---|---|---|---|")
    for part in dict.fromkeys(part for part, _ in seconds):
        off, on = seconds[(part, False)], seconds[(part, True)]
        print(f"| {part} | {' '.join(f'{s:.2f}' for s in off)} | {' '.join(f'{s:.2f}' for s in on)} | "
              f"{statistics.median(on) / statistics.median(off):.2f} |")


if __name__ == "__main__":
    main()
