"""Where an `align sft` optimiser step spends its time: torch.profiler over one step, after warm-up steps.

    python scripts/profile_sft_step.py [--model smollm2-135m-instruct] [--steps 2] [--rows 20]

The step is the stage's own (align.batching packing, causal_lm_loss, align.precision's bf16 weights with fp32
masters by default, align.loop.adamw), full fine-tuning on the built-in SFT conversations with SFTTrainConfig's
pack_length, rows_per_batch and grad_accum. It prints the
operators that took the most time and the share of the step each group of them took.
"""

from __future__ import annotations

import argparse

from align.runtime import configure_environment, set_threads

configure_environment()  # OMP_WAIT_POLICY=PASSIVE before torch is imported

import torch  # noqa: E402

GROUPS = {  # operator name prefixes -> what they are
    "matrix multiplies": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention kernel (forward + backward)": ("aten::_scaled_dot_product",),
    "dtype casts (autocast weights, gradients)": ("aten::copy_", "aten::_to_copy"),
    "zero fills": ("aten::fill_", "aten::zero_"),
    "optimiser": ("aten::_fused_adamw",),
}


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    from align.batching import causal_lm_loss, packed_batches, tokenize_conversations
    from align.data import DataConfig, load_rows
    from align.loop import adamw
    from align.models import ModelConfig, load_model
    from align.precision import PRECISIONS, autocast, training_weights
    from align.sft import SFTTrainConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2, help="warm-up steps before the profiled one")
    parser.add_argument("--rows", type=int, default=20, help="operators to list")
    parser.add_argument("--precision", default=SFTTrainConfig.precision, choices=PRECISIONS)
    args = parser.parse_args()

    set_threads(None)
    t = SFTTrainConfig()
    model, tokenizer = load_model(ModelConfig(name=args.model))
    rows, _ = load_rows("builtin:sft:train", "sft", DataConfig(train="builtin:sft:train", max_rows=200))
    examples, _ = tokenize_conversations(tokenizer, [r["messages"] for r in rows], t.max_length)
    batches = packed_batches(examples, t.pack_length, t.rows_per_batch, tokenizer.pad_token_id,
                             torch.Generator().manual_seed(0))
    weights = training_weights(model, args.precision)
    optimizer = adamw(weights.parameters(), 1e-5)

    def step(index: int) -> None:
        micro_batches = batches[index * t.grad_accum : (index + 1) * t.grad_accum]
        loss_tokens = sum(b.loss_tokens for b in micro_batches)
        for batch in micro_batches:
            with autocast(torch.device("cpu"), args.precision):
                loss, _ = causal_lm_loss(model, batch)
            (loss / loss_tokens).backward()
        optimizer.step()
        weights.step_done()
        optimizer.zero_grad(set_to_none=True)

    for index in range(args.steps):
        step(index)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(args.steps)
    averages = profiler.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in averages)
    for group, prefixes in GROUPS.items():
        share = sum(e.self_cpu_time_total for e in averages if e.key.startswith(prefixes)) / total
        print(f"{group:45s} {share:6.1%} of the step's operator time")


if __name__ == "__main__":
    main()
