"""Supervised fine-tuning (SFT): next-token loss on the assistant turns of chat conversations.

    align sft configs/sft.yaml [key.path=value ...]

The loop, as numbered steps:
1. load the model (full or LoRA), the tokenizer and its chat template;
2. load and validate the conversations; tokenise them with assistant-only labels (EOS included) and report
   examples longer than `train.max_length`;
3. pack them into rows of `train.pack_length` tokens (best fit, no padding inside rows, attention kept within
   each conversation by restarting position ids);
4. train with AdamW (on fp32 master weights while the model computes with bf16 weights: align.precision),
   normalising the loss by the number of assistant tokens in each optimiser step, clipping gradients, warmup +
   cosine schedule;
5. evaluate held-out loss every `train.eval_every` steps, checkpoint every `train.save_every` steps;
6. save the final model (LoRA merged) so `AutoModelForCausalLM.from_pretrained(stage_dir)` loads it, and check
   that greedy generation on held-out prompts stops with EOS.
Loss, per optimiser step over its micro-batches b and their assistant tokens t (y: labels, x: context):
    L = - (1 / sum_b |T_b|) * sum_b sum_{t in T_b} log p(y_t | x_<t)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from align.batching import causal_lm_loss, packed_batches, tokenize_conversations
from align.config import to_dict
from align.loop import (
    adamw,
    check_finite,
    check_finite_parameters,
    epoch_generator,
    learning_rate_at,
    restore_training_state,
    save_training_state,
    set_learning_rate,
    shard,
    stop_if_requested,
)
from align.data import DataConfig, data_fingerprint, load_rows
from align.models import LoraConfig, ModelConfig, count_parameters, load_model, save_model
from align.precision import Precision, autocast, training_weights
from align.stage import RunConfig, close_failed_stage, finish_stage, resolve_stage_model, start_stage
from align.tracking import TrackingConfig, start_tracker


@dataclass
class SFTTrainConfig:
    epochs: int = 1
    max_steps: int | None = None  # stop early after this many optimiser steps
    learning_rate: float = 2.0e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    max_length: int = 512  # longest example in tokens
    on_overflow: Literal["truncate", "drop"] = "truncate"  # what to do with longer examples (always reported)
    pack_length: int = 1024  # tokens per packed row
    rows_per_batch: int = 1  # packed rows per micro-batch
    grad_accum: int = 2  # micro-batches per optimiser step
    precision: Precision = "bf16"  # bf16 weights + fp32 masters, bf16-autocast (fp32 weights), fp32: align.precision
    eval_every: int = 50
    eval_max_examples: int = 200
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 5
    eos_check_prompts: int = 8  # held-out prompts generated greedily at the end to check the model stops


@dataclass
class SFTConfig:
    stage: Literal["sft"] = "sft"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(lora=LoraConfig(enabled=True)))
    data: DataConfig = field(default_factory=DataConfig)
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


def eos_rate(model_dir: Path, prompts: list[list[dict]], precision: str, max_new_tokens: int = 256):
    """Fraction of greedy generations from the saved model that end with EOS within `max_new_tokens`, and the
    generations. Reads the saved directory back (bf16, batched), so it also checks that the output loads."""
    from transformers import AutoModelForCausalLM

    from align.models import load_tokenizer
    from align.rollout import generate

    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
    generations = generate(model, load_tokenizer(str(model_dir)), prompts, max_new_tokens=max_new_tokens)
    return sum(generations.finished) / max(1, len(prompts)), generations.texts


def _to(batch, device):
    batch.input_ids = batch.input_ids.to(device)
    batch.position_ids = batch.position_ids.to(device)
    batch.labels = batch.labels.to(device)
    return batch


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: SFTConfig, *, restart: bool = False) -> Path:
    """Run the SFT stage described by `cfg`; return its stage directory."""
    start = start_stage(cfg, restart)
    if start.done:
        return start.out
    accelerator, out, resume_from = start.accelerator, start.out, start.resume_from

    # 1. model and tokenizer
    model, tokenizer = load_model(dataclasses.replace(cfg.model, name=resolve_stage_model(cfg.model.name, cfg.run)))
    trainable, total = count_parameters(model)
    print(f"[align] sft: {cfg.model.name}: {trainable:,} of {total:,} parameters trainable; "
          f"{start.threads} threads x {accelerator.num_processes} processes")

    # 2. data -> tokens, with every dropped/truncated row reported
    train_rows, train_report = load_rows(cfg.data.train, "sft", cfg.data)
    eval_rows, _ = load_rows(cfg.data.eval, "sft", cfg.data) if cfg.data.eval else ([], None)
    eval_rows = eval_rows[: cfg.train.eval_max_examples]
    examples, length_report = tokenize_conversations(
        tokenizer, [r["messages"] for r in train_rows], cfg.train.max_length, cfg.train.on_overflow
    )
    eval_examples, _ = tokenize_conversations(
        tokenizer, [r["messages"] for r in eval_rows], cfg.train.max_length, cfg.train.on_overflow
    )
    print(f"[align] sft: {train_report.rows_kept} training conversations from {cfg.data.train}; "
          f"{length_report.describe(cfg.train.max_length)}")
    if train_report.bad_rows:
        print(f"[align] sft: skipped {len(train_report.bad_rows)} bad rows (data.skip_bad_rows=true)")
    if not examples:
        raise ValueError(f"no training examples left from {cfg.data.train} after length filtering")

    # 3. packed batches; every epoch reshuffles the rows with its own seed, so a resumed run sees the same order
    def epoch_batches(epoch: int):
        batches = packed_batches(examples, cfg.train.pack_length, cfg.train.rows_per_batch,
                                 tokenizer.pad_token_id, epoch_generator(cfg.run.seed, epoch))
        return shard(batches, accelerator)

    eval_batches = packed_batches(eval_examples, cfg.train.pack_length, 1, tokenizer.pad_token_id,
                                  torch.Generator().manual_seed(0)) if eval_examples else []
    steps_per_epoch = len(epoch_batches(0)) // cfg.train.grad_accum
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    if total_steps < 1:
        raise ValueError(
            f"train.grad_accum={cfg.train.grad_accum} is larger than the {len(epoch_batches(0))} packed batches "
            f"per process; lower it or add data"
        )

    # 4. optimiser (over fp32 masters of bf16 weights, align.precision), resumed state
    weights = training_weights(model, cfg.train.precision, accelerator.num_processes)
    optimizer = adamw(weights.parameters(), cfg.train.learning_rate, cfg.train.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    step, wandb_id = 0, None
    if resume_from:
        state = restore_training_state(resume_from, weights, optimizer)
        step, wandb_id = state["step"], state.get("wandb_id")
        print(f"[align] sft: resuming from {resume_from} at step {step}")

    tracker = start_tracker(
        cfg.tracking, out_dir=out, run_name=f"{cfg.run.name}-sft", group=cfg.run.name, job_type="sft",
        config=to_dict(cfg), resume_id=wandb_id,
    ) if accelerator.is_main_process else None
    fingerprint = data_fingerprint(train_rows)
    if accelerator.is_main_process:
        finish_stage(out, "running", processes=accelerator.num_processes,
                     base_model=cfg.model.name, data_fingerprint=fingerprint,
                     data={"train": cfg.data.train, "eval": cfg.data.eval, "rows": train_report.rows_kept,
                           "truncated": length_report.truncated, "dropped": length_report.dropped,
                           "bad_rows_skipped": len(train_report.bad_rows)})
        tracker.log({"sft/data/truncated": length_report.truncated, "sft/data/dropped": length_report.dropped,
                     "sft/data/bad_rows_skipped": len(train_report.bad_rows)}, step=step)

    # 5. the loop
    metrics = {}
    if step == 0 and eval_batches and accelerator.is_main_process:
        metrics["sft/eval_loss_before"] = heldout_loss(raw_model, eval_batches, accelerator.device, cfg.train.precision)
        tracker.log({"sft/eval_loss": metrics["sft/eval_loss_before"]}, step=0)
    model.train()
    window_tokens, window_start = 0, time.perf_counter()
    try:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc="sft", disable=not accelerator.is_main_process)
        batches_epoch, batches = -1, []
        while step < total_steps:
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != batches_epoch:
                batches_epoch, batches = epoch, epoch_batches(epoch)
            micro = batches[position * cfg.train.grad_accum : (position + 1) * cfg.train.grad_accum]
            # Normalise by the assistant tokens of the whole step on all processes; DDP then averages the
            # gradients over processes, hence the division by their number.
            loss_tokens = float(accelerator.reduce(torch.tensor(sum(b.loss_tokens for b in micro)), "sum"))
            loss_tokens /= accelerator.num_processes
            lr = learning_rate_at(step, total_steps, cfg.train.learning_rate, cfg.train.warmup_ratio,
                                  cfg.train.lr_schedule)
            set_learning_rate(optimizer, lr)
            step_loss = 0.0
            for batch in micro:
                with autocast(accelerator.device, cfg.train.precision):
                    loss_sum, _ = causal_lm_loss(model, _to(batch, accelerator.device))
                loss = loss_sum / max(1, loss_tokens)
                accelerator.backward(loss)
                step_loss += loss.item()
                window_tokens += batch.real_tokens
            check_finite(step_loss, "sft", step)
            grad_norm = float(accelerator.clip_grad_norm_(weights.parameters(), cfg.train.max_grad_norm))
            check_finite(grad_norm, "sft", step, "gradient norm")
            optimizer.step()
            weights.step_done()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)

            if accelerator.is_main_process and (step % cfg.train.log_every == 0 or step == total_steps):
                elapsed = time.perf_counter() - window_start
                tracker.log({"sft/loss": step_loss, "sft/learning_rate": lr, "sft/grad_norm": grad_norm,
                             "sft/tokens_per_s": window_tokens * accelerator.num_processes / elapsed,
                             "sft/epoch": step / steps_per_epoch}, step=step)
                progress.set_postfix(loss=f"{step_loss:.3f}")
                window_tokens, window_start = 0, time.perf_counter()
            if eval_batches and accelerator.is_main_process and (step % cfg.train.eval_every == 0 or step == total_steps):
                metrics["sft/eval_loss"] = heldout_loss(raw_model, eval_batches, accelerator.device, cfg.train.precision)
                tracker.log({"sft/eval_loss": metrics["sft/eval_loss"]}, step=step)
            if accelerator.is_main_process and step % cfg.train.save_every == 0 and step < total_steps:
                save_training_state(out, step, weights, optimizer, {"wandb_id": tracker.run_id},
                                    cfg.train.keep_checkpoints)
            if accelerator.is_main_process:
                stop_if_requested(lambda: save_training_state(
                    out, step, weights, optimizer, {"wandb_id": tracker.run_id}, cfg.train.keep_checkpoints))
            accelerator.wait_for_everyone()
        progress.close()

        # 6. final model, EOS check, manifest
        if accelerator.is_main_process:
            metrics["sft/train_loss"] = step_loss
            check_finite_parameters(weights, "sft", step)
            save_model(weights.fp32_model(), tokenizer, out)
            if eval_rows and cfg.train.eos_check_prompts:
                prompts = [r["messages"][:-1] for r in eval_rows[: cfg.train.eos_check_prompts]]
                metrics["sft/eos_rate"], samples = eos_rate(out, prompts, cfg.train.precision)
                tracker.log_table("sft/samples", ["prompt", "completion"],
                                  [[p[-1]["content"], s] for p, s in zip(prompts, samples)], step=step)
            tracker.log({k: v for k, v in metrics.items()}, step=step)
            tracker.summary(metrics)
            finish_stage(out, "complete", metrics=metrics, steps=step, wandb_run=tracker.run_id)
            tracker.finish(0)
            _print_summary(out, metrics, tracker)
    except BaseException as error:
        if accelerator.is_main_process:
            close_failed_stage(out, error, step, tracker)
        raise
    finally:
        accelerator.end_training()
    return out


def _print_summary(out: Path, metrics: dict, tracker) -> None:
    print(f"\n[align] sft finished -> {out}")
    for key, value in metrics.items():
        print(f"    {key:28s} {value:.4f}")
    print(f"    load it with: AutoModelForCausalLM.from_pretrained('{out}')")
    if tracker.sync_hint:
        print(f"    W&B: {tracker.sync_hint}")
