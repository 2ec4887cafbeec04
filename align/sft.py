"""Supervised fine-tuning (SFT): next-token loss on the assistant turns of chat conversations.

    align sft configs/sft.yaml [key.path=value ...]

The loop, as numbered steps:
0. optionally (`self_distill.enabled`), let the starting model answer training prompts itself and keep the answers
   that follow every constraint, end with EOS and do not loop (align.self_distill: rejection sampling);
1. load the model (full or LoRA), the tokenizer and its chat template;
2. load and validate the conversations; tokenise them with assistant-only labels (EOS included) and report
   examples longer than `train.max_length`;
3. pack them into rows of `train.pack_length` tokens (best fit, no padding inside rows, attention kept within
   each conversation by restarting position ids);
4. train with AdamW (where bf16 is native, on fp32 master weights of bf16 weights: align.precision),
   normalising the loss by the number of assistant tokens in each optimiser step, clipping gradients, warmup +
   cosine schedule;
5. evaluate held-out loss every `train.eval_every` steps, checkpoint every `train.save_every` steps;
6. save the final model (LoRA merged) so `AutoModelForCausalLM.from_pretrained(stage_dir)` loads it, and check
   that greedy generation on held-out prompts stops with EOS.
Loss, per optimiser step over its micro-batches b and their assistant tokens t (y: labels, x: context):
    L = - (1 / sum_b |T_b|) * sum_b sum_{t in T_b} [log p(y_t | x_<t) + alpha * sum_{c in C_t} log(1 - p(c | x_<t))]
with alpha = `train.unlikelihood` (0 by default) and C_t the tokens the answer used before t, other than y_t
(token-level unlikelihood, Welleck et al. 2020: align.losses.token_unlikelihood); with
`train.repeated_line_negatives`, plus - sum_t log(1 - p(r_t | r_<t)) over the repeated lines r of negatives: a
share of the conversations, each cut after one of its answer's lines and made to repeat it (sequence-level
unlikelihood, Welleck et al. 2020, on loops that start where the answer wrote the line:
align.batching.repeated_line_negative).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from align.batching import (TokenizedExample, causal_lm_loss, packed_batches, repeated_line_negative,
                            tokenize_conversations)
from align.data import DataConfig, data_fingerprint, load_rows
from align.distributed import ddp_scale, epoch_step, epoch_steps, global_sum, step_share
from align.loop import DatasetTrainConfig, Training, epoch_generator, plan_steps
from align.models import LoraConfig, ModelConfig, count_parameters, load_model
from align.precision import autocast
from align.self_distill import SelfDistillConfig, self_distilled_conversations
from align.stage import RunConfig, Stage, resolve_stage_model, run_stage
from align.tracking import TrackingConfig


@dataclass
class SFTTrainConfig(DatasetTrainConfig):
    max_length: int = 512  # longest example in tokens
    on_overflow: Literal["truncate", "drop"] = "truncate"  # what to do with longer examples (always reported)
    rows_per_batch: int = 1  # packed rows per micro-batch
    grad_accum: int = 2  # micro-batches per optimiser step and process (a step: grad_accum x processes of them)
    eval_max_examples: int = 200  # held-out conversations whose loss is measured
    eos_check_prompts: int = 8  # held-out prompts generated greedily at the end to check the model stops
    unlikelihood: float = 0.0  # weight of the token-level unlikelihood term (Welleck et al. 2020) added to the
        # loss: each answer's already-used tokens are pushed down (against repetition loops); 0: likelihood only
    repeated_line_negatives: float = 0.0  # share of the training conversations that also train against a copy of
        # their answer cut after one of its lines and repeating that line twice (the repeats pushed down:
        # sequence-level unlikelihood, Welleck et al. 2020): a loop starts against the training signal wherever a
        # line was written; 0: none

    def __post_init__(self) -> None:  # refused when the config is read
        if not 0.0 <= self.repeated_line_negatives <= 1.0:
            raise ValueError(f"train.repeated_line_negatives is a share of the training conversations, between 0 and "
                             f"1, got {self.repeated_line_negatives}")


@dataclass
class SFTConfig:
    stage: Literal["sft"] = "sft"  # the stage this file configures: `align sft` refuses any other
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(lora=LoraConfig(enabled=True)))
    data: DataConfig = field(default_factory=DataConfig)
    self_distill: SelfDistillConfig = field(default_factory=SelfDistillConfig)  # the model's own verified answers
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- pure functions ---------------------------------------------------------------------------------------------


@torch.no_grad()
def heldout_loss(model, batches, device, precision: str) -> float:
    """Mean next-token loss over the assistant tokens of held-out batches."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        with autocast(device, precision):
            loss, n = causal_lm_loss(model, _to(batch, device))
        total, count = total + float(loss), count + n
    model.train()
    return total / max(1, count)


def sft_step(training: Training, micro_batches, precision: str) -> float:
    """Forward and backward of one optimiser step's micro-batches (those of every process: this process takes
    its share, align.distributed.step_share); returns the step's loss, the same on every process.

    The loss is normalised by the assistant tokens of the whole step, summed over every process (DDP averages the
    gradients over processes: align.distributed.ddp_scale); a padding micro-batch counts 0."""
    accelerator = training.stage.accelerator
    share, real = step_share(micro_batches, accelerator.process_index, accelerator.num_processes)
    loss_tokens = global_sum(sum(b.loss_tokens for b in share[:real]))
    scale, loss_sum = ddp_scale(loss_tokens), 0.0
    for i, batch in enumerate(share):
        with autocast(accelerator.device, precision):
            batch_loss, _ = causal_lm_loss(training.models["model"], _to(batch, accelerator.device),
                                           training.cfg.unlikelihood)
        training.backward(batch_loss * (scale if i < real else 0.0))
        if i < real:
            loss_sum += batch_loss.item()
            training.count(batch.real_tokens)
    return global_sum(loss_sum) / max(1.0, loss_tokens)


def eos_rate(model_dir: Path, prompts: list[list[dict]], precision: str, max_new_tokens: int = 256):
    """Fraction of greedy generations from the saved model that end with EOS within `max_new_tokens`, and the
    generations. Reads the saved directory back (bf16, batched), so it also checks that the output loads."""
    from transformers import AutoModelForCausalLM

    from align.models import load_tokenizer
    from align.rollout import generate

    dtype = torch.float32 if precision == "fp32" else torch.bfloat16  # as the stage computed
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
    generations = generate(model, load_tokenizer(str(model_dir)), prompts, max_new_tokens=max_new_tokens)
    del model
    return sum(generations.finished) / max(1, len(prompts)), generations.texts


def _to(batch, device):
    batch.input_ids = batch.input_ids.to(device)
    batch.position_ids = batch.position_ids.to(device)
    batch.labels = batch.labels.to(device)
    if batch.unlikely is not None:  # a negative's repeated tokens (train.repeated_line_negatives)
        batch.unlikely = batch.unlikely.to(device)
    return batch


def repetition_negatives(examples: list[TokenizedExample], tokenizer, share: float, seed: int,
                         max_length: int) -> list[TokenizedExample]:
    """`repeated_line_negative` of a `share` of the examples, drawn with `seed`, cut to `max_length` tokens; lines
    end at the tokens that decode to a line break."""
    rng = random.Random(seed)
    chosen = [example for example in examples if rng.random() < share]
    used = {token for example in chosen for token in example.input_ids}
    newlines = {token for token in used if "\n" in tokenizer.decode([token])}
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    specials = set(tokenizer.all_special_ids)
    negatives = [repeated_line_negative(example, newlines, newline, specials, rng) for example in chosen]
    return [TokenizedExample(n.input_ids[:max_length], n.labels[:max_length], n.unlikely[:max_length])
            for n in negatives]


def load_conversations(cfg: SFTConfig, tokenizer, own: list[dict] = ()):
    """(training rows, their load report, tokenised training examples and length report, held-out rows and
    their tokenised examples). `own`: self-distilled conversations added to the training rows."""
    t = cfg.train
    train_rows, report = load_rows(cfg.data.train, "sft", cfg.data)
    train_rows = train_rows + list(own)
    eval_rows = load_rows(cfg.data.eval, "sft", cfg.data)[0][: t.eval_max_examples] if cfg.data.eval else []
    examples, lengths = tokenize_conversations(tokenizer, [r["messages"] for r in train_rows], t.max_length,
                                               t.on_overflow)
    eval_examples, _ = tokenize_conversations(tokenizer, [r["messages"] for r in eval_rows], t.max_length,
                                              t.on_overflow)
    print(f"[align] sft: {report.rows_kept} training conversations from {report.source}; "
          f"{lengths.describe(t.max_length)}")
    if report.bad_rows:
        print(f"[align] sft: skipped {len(report.bad_rows)} bad rows (data.skip_bad_rows=true)")
    if not examples:
        raise ValueError(f"no training examples left from {report.source} after length filtering")
    if t.repeated_line_negatives:
        negatives = repetition_negatives(examples, tokenizer, t.repeated_line_negatives, cfg.run.seed,
                                         t.max_length)
        print(f"[align] sft: {len(negatives)} negatives repeating a line of their answer")
        examples = examples + negatives
    return train_rows, report, examples, lengths, eval_rows, eval_examples


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: SFTConfig, *, restart: bool = False) -> Path:
    """Run the SFT stage described by `cfg`; return its stage directory."""
    return run_stage(cfg, restart, supervised_fine_tuning)


def supervised_fine_tuning(stage: Stage) -> None:
    cfg, t, device = stage.cfg, stage.cfg.train, stage.accelerator.device
    base = resolve_stage_model(cfg.model.name, cfg.run)

    # 0. optionally, the starting model's own answers that follow their prompts' constraints and end cleanly
    own = self_distilled_conversations(cfg.self_distill, base, cfg.data, stage.out, cfg.run.seed) \
        if cfg.self_distill.enabled else []

    # 1. model and tokenizer
    model, tokenizer = load_model(dataclasses.replace(cfg.model, name=base))
    trainable, total = count_parameters(model)
    print(f"[align] sft: {cfg.model.name}: {trainable:,} of {total:,} parameters trainable; "
          f"{stage.threads} threads x {stage.accelerator.num_processes} processes")

    # 2. data -> tokens, with every dropped/truncated row reported
    rows, report, examples, lengths, eval_rows, eval_examples = load_conversations(cfg, tokenizer, own)

    # 3. packed batches; every epoch reshuffles the rows with its own seed, so a resumed run sees the same order.
    # A step takes grad_accum micro-batches per process; the epoch's last step takes what is left (every row once)
    def epoch_batches(epoch: int):
        return packed_batches(examples, t.pack_length, t.rows_per_batch, tokenizer.pad_token_id,
                              epoch_generator(cfg.run.seed, epoch))

    eval_batches = packed_batches(eval_examples, t.pack_length, 1, tokenizer.pad_token_id,
                                  torch.Generator().manual_seed(0)) if eval_examples else []
    per_step = t.grad_accum * stage.processes  # micro-batches of one optimiser step, every process together
    steps_per_epoch = epoch_steps(len(epoch_batches(0)), per_step)
    total_steps = plan_steps(steps_per_epoch, t, "no packed batches to train on; add data")

    # 4. optimiser (over fp32 masters of bf16 weights, align.precision), resumed state
    data = {"train": cfg.data.train, "eval": cfg.data.eval, "rows": report.rows_kept, "self_distilled": len(own),
            "truncated": lengths.truncated,
            "dropped": lengths.dropped, "bad_rows_skipped": len(report.bad_rows)}
    training = Training(stage, {"model": model}, t, total_steps, throughput="tokens", manifest=dict(
        base_model=cfg.model.name, data_fingerprint=data_fingerprint(rows), data=data))
    stage.log({"sft/data/truncated": lengths.truncated, "sft/data/dropped": lengths.dropped,
               "sft/data/bad_rows_skipped": len(report.bad_rows)}, training.step)

    # 5. the loop: one optimiser step over `grad_accum` micro-batches of packed rows
    def held_out() -> dict:
        return {"loss": heldout_loss(training.raw["model"], eval_batches, device, stage.precision)}

    evaluate = held_out if eval_batches else None
    before = training.evaluate(held_out) if training.step == 0 and evaluate else None
    training.models["model"].train()
    step_loss, batches_epoch, batches = float("nan"), -1, []
    while training.step < total_steps:
        epoch, position = divmod(training.step, steps_per_epoch)
        if epoch != batches_epoch:
            batches_epoch, batches = epoch, epoch_batches(epoch)
        training.plan_learning_rate()
        step_loss = sft_step(training, epoch_step(batches, per_step, position), stage.precision)
        training.optimizer_step(step_loss)
        training.end_step(log=lambda: {"loss": step_loss, "learning_rate": training.learning_rate,
                                       "grad_norm": training.grad_norm, "epoch": training.step / steps_per_epoch},
                          evaluate=evaluate, eval_every=t.eval_every)

    # 6. final model, EOS check, manifest
    training.finish(tokenizer)
    if not stage.main:
        return
    metrics = {"sft/train_loss": step_loss}
    if before is not None:
        metrics["sft/eval/loss_before"] = before["loss"]
    if evaluate:
        metrics["sft/eval/loss"] = training.latest_evaluation(held_out)["loss"]
    if eval_rows and t.eos_check_prompts:
        prompts = [r["messages"][:-1] for r in eval_rows[: t.eos_check_prompts]]
        metrics["sft/eos_rate"], samples = eos_rate(stage.out, prompts, stage.precision)
        stage.tracker.log_table("sft/samples", ["prompt", "completion"],
                                [[p[-1]["content"], s] for p, s in zip(prompts, samples)], step=training.step)
    stage.log(metrics, training.step)
    stage.complete(metrics, training.step, [f"{k:28s} {v:.4f}" for k, v in metrics.items()] + [
        f"load it with: AutoModelForCausalLM.from_pretrained('{stage.out}')"])
