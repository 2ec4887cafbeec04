"""Where an `align sft` optimiser step spends its time: torch.profiler over one step, after warm-up steps.

    python scripts/profile_sft_step.py [--model smollm2-135m-instruct] [--steps 2] [--timed 6] [--rows 20]
        [--precision bf16|bf16-autocast|fp32] [--lora] [--scores-max-keys N]

The step is the stage's own (align.batching packing, causal_lm_loss, align.precision's bf16 weights with fp32
masters by default, align.loop.adamw), full fine-tuning (or LoRA r=16) on the built-in SFT conversations with
SFTTrainConfig's pack_length, rows_per_batch and grad_accum. It prints the real tokens/s of `--timed` unprofiled
steps, the operators that took the most time in the profiled one and the share of the step each group took.
`--precision` and `--scores-max-keys` (align.attention.SCORES_MAX_KEYS; 0: every segment through SDPA's fused
kernel) compare the choices the stage makes (docs/SPEED.md).
"""

from __future__ import annotations

import argparse
import time

from align.runtime import configure_environment, set_threads

configure_environment()  # OpenMP's waiting chosen before torch is imported (align.runtime)

import torch  # noqa: E402

GROUPS = {  # operator name prefixes -> what they are
    "matrix multiplies (weights)": ("aten::mm", "aten::addmm"),
    "attention (explicit scores and softmax, or the fused kernel)": (
        "aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_scaled_dot_product"),
    "dtype casts (weights, gradients, activations)": ("aten::copy_", "aten::_to_copy"),
    "zero fills": ("aten::fill_", "aten::zero_"),
    "optimiser": ("aten::_fused_adamw",),
}


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    from align.batching import causal_lm_loss, packed_batches, tokenize_conversations
    from align.data import DataConfig, load_rows
    from align.loop import adamw
    from align import attention
    from align.models import LoraConfig, ModelConfig, load_model
    from align.precision import PRECISIONS, autocast, fast_bf16, resolve_precision, training_weights
    from align.sft import SFTTrainConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2, help="warm-up steps before the profiled one")
    parser.add_argument("--rows", type=int, default=20, help="operators to list")
    parser.add_argument("--timed", type=int, default=6, help="unprofiled steps timed after the warm-up")
    parser.add_argument("--precision", default=SFTTrainConfig.precision, choices=("auto", *PRECISIONS))
    parser.add_argument("--lora", action="store_true", help="LoRA r=16 on every layer (configs/sft.yaml)")
    parser.add_argument("--scores-max-keys", type=int, default=attention.SCORES_MAX_KEYS)
    args = parser.parse_args()
    args.precision = resolve_precision(args.precision, fast_bf16(torch.device("cpu")))  # as the stage resolves it

    set_threads(None)
    attention.SCORES_MAX_KEYS = args.scores_max_keys
    t = SFTTrainConfig()
    model, tokenizer = load_model(ModelConfig(name=args.model, lora=LoraConfig(enabled=args.lora, r=16)))
    rows, _ = load_rows("builtin:sft:train", "sft", DataConfig(train="builtin:sft:train", max_rows=200))
    examples, _ = tokenize_conversations(tokenizer, [r["messages"] for r in rows], t.max_length)
    batches = packed_batches(examples, t.pack_length, t.rows_per_batch, tokenizer.pad_token_id,
                             torch.Generator().manual_seed(0))
    weights = training_weights(model, args.precision)
    optimizer = adamw(weights.parameters(), 1e-5)

    steps = len(batches) // t.grad_accum

    def step(index: int) -> int:
        index %= steps
        micro_batches = batches[index * t.grad_accum : (index + 1) * t.grad_accum]
        loss_tokens = sum(b.loss_tokens for b in micro_batches)
        for batch in micro_batches:
            with autocast(torch.device("cpu"), args.precision):
                loss, _ = causal_lm_loss(model, batch)
            (loss / loss_tokens).backward()
        optimizer.step()
        weights.step_done()
        optimizer.zero_grad(set_to_none=True)
        return sum(b.real_tokens for b in micro_batches)

    for index in range(args.steps):
        step(index)
    started, real = time.perf_counter(), 0
    for index in range(args.steps, args.steps + args.timed):
        real += step(index)
    if args.timed:
        print(f"precision {args.precision}, {'LoRA r=16' if args.lora else 'full fine-tuning'}, scores_max_keys "
              f"{args.scores_max_keys}: {real / (time.perf_counter() - started):.1f} real tokens/s over "
              f"{args.timed} unprofiled steps")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(args.steps + args.timed)
    averages = profiler.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in averages)
    for group, prefixes in GROUPS.items():
        share = sum(e.self_cpu_time_total for e in averages if e.key.startswith(prefixes)) / total
        print(f"{group:45s} {share:6.1%} of the step's operator time")


if __name__ == "__main__":
    main()
