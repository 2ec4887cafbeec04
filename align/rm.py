"""Reward model (RM): learn a scalar score that prefers the chosen response of a preference pair.

    align rm configs/rm.yaml [key.path=value ...]

Starts from the SFT stage's output (`model.name: sft` means `runs/<run.name>/sft`) with a new scalar head read
at the last token of the conversation. The loop, as numbered steps:
1. load the backbone + scalar head (LoRA on the body, the head fully trained), and the preference pairs;
2. tokenise prompt+chosen and prompt+rejected with the chat template; pack a batch's 2B sequences without padding;
3. Bradley-Terry loss (Ouyang et al. 2022, eq. 1; margin as in Llama 2, Touvron et al. 2023, eq. 2):
       L = -mean_i log sigmoid( r(x_i, y_i^chosen) - r(x_i, y_i^rejected) - m )
4. AdamW, warmup + cosine, gradient clipping; evaluate held-out pairs; checkpoint periodically;
5. save the model (LoRA merged) so `reward.model.RewardModel.from_pretrained(stage_dir)` scores with it, and
   report held-out pairwise accuracy, mean margin and the chosen/rejected reward distributions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from align.attention import attend_by_segments
from align.config import to_dict
from align.data import DataConfig, data_fingerprint, load_rows
from align.loop import (
    adamw,
    check_finite,
    check_finite_parameters,
    epoch_permutation,
    learning_rate_at,
    restore_training_state,
    save_training_state,
    set_learning_rate,
    shard,
    stop_if_requested,
)
from align.models import LoraConfig, ModelConfig, attach_lora, count_parameters, save_model
from align.precision import Precision, autocast, training_weights
from align.stage import RunConfig, close_failed_stage, finish_stage, resolve_stage_model, start_stage
from align.tracking import TrackingConfig, start_tracker
from reward.model import TokenValues, packed_rewards, tokenize_for_reward


@dataclass
class RMTrainConfig:
    epochs: int = 1
    max_steps: int | None = None
    learning_rate: float = 2.0e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    margin: float = 0.0  # m in the loss: require chosen to beat rejected by at least this much
    max_length: int = 512  # tokens per prompt+response; longer ones keep their end and are reported
    pairs_per_batch: int = 8
    pack_length: int = 1024
    precision: Precision = "bf16"  # bf16 weights + fp32 masters, bf16-autocast (fp32 weights), fp32: align.precision
    eval_every: int = 50
    eval_max_pairs: int = 300
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 5


@dataclass
class RMConfig:
    stage: Literal["rm"] = "rm"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="sft", lora=LoraConfig(enabled=True)))
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="builtin:pairs:train", eval="builtin:pairs:heldout")
    )
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- pure functions ---------------------------------------------------------------------------------------------


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """-mean log sigmoid(r_c - r_r - m). chosen, rejected: [B] rewards. Returns a scalar."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Pairwise accuracy (ties count as wrong), mean margin, and the two reward distributions."""
    margin = chosen - rejected
    return {
        "accuracy": float((margin > 0).float().mean()),
        "margin": float(margin.mean()),
        "chosen_mean": float(chosen.mean()),
        "chosen_std": float(chosen.std()) if len(chosen) > 1 else 0.0,
        "rejected_mean": float(rejected.mean()),
        "rejected_std": float(rejected.std()) if len(rejected) > 1 else 0.0,
    }


def pair_rewards(model, pairs: list[tuple[list[int], list[int]]], pack_length: int):
    """Rewards of chosen and rejected sequences: ([B], [B]). The 2B sequences are packed together, each pair's
    common prefix (its prompt) computed once."""
    sequences = [c for c, _ in pairs] + [r for _, r in pairs]
    rewards = packed_rewards(model, sequences, pack_length, pairs=[(i, i + len(pairs)) for i in range(len(pairs))])
    return rewards[: len(pairs)], rewards[len(pairs) :]


@torch.no_grad()
def heldout_metrics(model, pairs, pack_length, device, precision, batch: int = 32) -> dict:
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch):
        with autocast(device, precision):
            c, r = pair_rewards(model, pairs[start : start + batch], pack_length)
        chosen.append(c.float())
        rejected.append(r.float())
    model.train()
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)
    return {**pair_metrics(chosen, rejected), "chosen_rewards": chosen.tolist(), "rejected_rewards": rejected.tolist()}


def tokenize_pairs(tokenizer, rows: list[dict], max_length: int) -> tuple[list, int]:
    """[(chosen ids, rejected ids)] and how many sequences were cut to max_length (their start is dropped)."""
    pairs, truncated = [], 0
    for row in rows:
        c = tokenize_for_reward(tokenizer, row["prompt"], row["chosen"], 10**9)
        r = tokenize_for_reward(tokenizer, row["prompt"], row["rejected"], 10**9)
        truncated += (len(c) > max_length) + (len(r) > max_length)
        pairs.append((c[-max_length:], r[-max_length:]))
    return pairs, truncated


def load_reward_backbone(cfg: ModelConfig, path: str):
    """A *ForSequenceClassification model (num_labels=1) on the weights at `path` (the SFT stage's, for the reward
    model; the reward model's, for PPO's value model), LoRA on the body if enabled."""
    from transformers import AutoModelForSequenceClassification

    from align.models import load_tokenizer

    tokenizer = load_tokenizer(path, cfg.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch.float32, use_safetensors=True, trust_remote_code=cfg.trust_remote_code
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    attend_by_segments(model)
    if cfg.lora.enabled:
        model = attach_lora(model, cfg.lora, task_type="SEQ_CLS")  # SEQ_CLS also trains `score`
    return model, tokenizer


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: RMConfig, *, restart: bool = False) -> Path:
    start = start_stage(cfg, restart)
    if start.done:
        return start.out
    accelerator, out, resume_from = start.accelerator, start.out, start.resume_from

    # 1. model and data
    base_path = resolve_stage_model(cfg.model.name, cfg.run)
    backbone, tokenizer = load_reward_backbone(cfg.model, base_path)
    model = TokenValues(backbone)
    trainable, total = count_parameters(model)
    print(f"[align] rm: from {base_path}: {trainable:,} of {total:,} parameters trainable")
    train_rows, train_report = load_rows(cfg.data.train, "preference", cfg.data)
    eval_rows, _ = load_rows(cfg.data.eval, "preference", cfg.data) if cfg.data.eval else ([], None)
    eval_rows = eval_rows[: cfg.train.eval_max_pairs]

    # 2. tokens
    pairs, truncated = tokenize_pairs(tokenizer, train_rows, cfg.train.max_length)
    eval_pairs, _ = tokenize_pairs(tokenizer, eval_rows, cfg.train.max_length)
    print(f"[align] rm: {len(pairs)} training pairs from {cfg.data.train}; {truncated} sequences longer than "
          f"max_length={cfg.train.max_length} keep their last {cfg.train.max_length} tokens")

    def epoch_order(epoch: int) -> list[int]:
        return shard(epoch_permutation(len(pairs), cfg.run.seed, epoch), accelerator)

    steps_per_epoch = len(epoch_order(0)) // cfg.train.pairs_per_batch
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    if total_steps < 1:
        raise ValueError(f"train.pairs_per_batch={cfg.train.pairs_per_batch} exceeds the {len(pairs)} pairs")

    # 4. optimiser (over fp32 masters of bf16 weights, align.precision) and resumed state
    weights = training_weights(model, cfg.train.precision, accelerator.num_processes)
    optimizer = adamw(weights.parameters(), cfg.train.learning_rate, cfg.train.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    step, wandb_id = 0, None
    if resume_from:
        state = restore_training_state(resume_from, weights, optimizer)
        step, wandb_id = state["step"], state.get("wandb_id")
        print(f"[align] rm: resuming from {resume_from} at step {step}")
    tracker = start_tracker(cfg.tracking, out_dir=out, run_name=f"{cfg.run.name}-rm", group=cfg.run.name,
                            job_type="rm", config=to_dict(cfg), resume_id=wandb_id) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        finish_stage(out, "running", processes=accelerator.num_processes,
                     base_model=base_path, data_fingerprint=data_fingerprint(train_rows),
                     data={"train": cfg.data.train, "eval": cfg.data.eval, "pairs": len(pairs),
                           "truncated_sequences": truncated, "bad_rows_skipped": len(train_report.bad_rows)})

    metrics: dict = {}
    held, held_step = {}, None  # the latest held-out evaluation and the step it was made at
    evaluate = lambda: heldout_metrics(raw_model, eval_pairs, cfg.train.pack_length,  # noqa: E731
                                       accelerator.device, cfg.train.precision)
    if step == 0 and eval_pairs and accelerator.is_main_process:
        before = evaluate()
        metrics["rm/eval_accuracy_before"] = before["accuracy"]
        tracker.log({"rm/eval/accuracy": before["accuracy"], "rm/eval/margin": before["margin"]}, step=0)
    model.train()
    try:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc="rm", disable=not accelerator.is_main_process)
        window_pairs, window_start = 0, time.perf_counter()
        while step < total_steps:
            # 3. one batch of pairs -> Bradley-Terry loss
            epoch, position = divmod(step, steps_per_epoch)
            order = epoch_order(epoch)
            batch = [pairs[i] for i in order[position * cfg.train.pairs_per_batch:(position + 1) * cfg.train.pairs_per_batch]]
            lr = learning_rate_at(step, total_steps, cfg.train.learning_rate, cfg.train.warmup_ratio,
                                  cfg.train.lr_schedule)
            set_learning_rate(optimizer, lr)
            with autocast(accelerator.device, cfg.train.precision):
                chosen, rejected = pair_rewards(model, batch, cfg.train.pack_length)
            loss = bradley_terry_loss(chosen.float(), rejected.float(), cfg.train.margin)
            check_finite(loss.item(), "rm", step)
            accelerator.backward(loss)
            grad_norm = float(accelerator.clip_grad_norm_(weights.parameters(), cfg.train.max_grad_norm))
            check_finite(grad_norm, "rm", step, "gradient norm")
            optimizer.step()
            weights.step_done()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_pairs += len(batch)
            progress.update(1)

            if accelerator.is_main_process and (step % cfg.train.log_every == 0 or step == total_steps):
                batch_metrics = pair_metrics(chosen.detach().float(), rejected.detach().float())
                tracker.log({"rm/loss": loss.item(), "rm/accuracy": batch_metrics["accuracy"],
                             "rm/margin": batch_metrics["margin"], "rm/learning_rate": lr, "rm/grad_norm": grad_norm,
                             "rm/pairs_per_s": window_pairs * accelerator.num_processes
                             / (time.perf_counter() - window_start)}, step=step)
                progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{batch_metrics['accuracy']:.2f}")
                window_pairs, window_start = 0, time.perf_counter()
            if eval_pairs and accelerator.is_main_process and (step % cfg.train.eval_every == 0 or step == total_steps):
                held, held_step = evaluate(), step
                scalars = {k: v for k, v in held.items() if not k.endswith("_rewards")}
                metrics.update({f"rm/eval_{k}": v for k, v in scalars.items()})
                tracker.log({f"rm/eval/{k}": v for k, v in scalars.items()}, step=step)
            if accelerator.is_main_process and step % cfg.train.save_every == 0 and step < total_steps:
                save_training_state(out, step, weights, optimizer, {"wandb_id": tracker.run_id},
                                    cfg.train.keep_checkpoints)
            if accelerator.is_main_process:
                stop_if_requested(lambda: save_training_state(
                    out, step, weights, optimizer, {"wandb_id": tracker.run_id}, cfg.train.keep_checkpoints))
            accelerator.wait_for_everyone()
        progress.close()

        # 5. final model and report
        if accelerator.is_main_process:
            metrics["rm/train_loss"] = loss.item()
            if eval_pairs:
                if held_step != step:  # the loop evaluates at the last step unless it was resumed there
                    held = evaluate()
                (out / "eval_rewards.json").write_text(json.dumps(
                    {"chosen": held["chosen_rewards"], "rejected": held["rejected_rewards"]}))
            check_finite_parameters(weights, "rm", step)
            save_model(weights.fp32_model().model, tokenizer, out)
            tracker.summary(metrics)
            finish_stage(out, "complete", metrics=metrics, steps=step, wandb_run=tracker.run_id)
            tracker.finish(0)
            print(f"\n[align] rm finished -> {out}")
            for key, value in metrics.items():
                print(f"    {key:28s} {value:.4f}")
            print(f"    score with: RewardModel.from_pretrained('{out}').score(prompts, completions)")
    except BaseException as error:
        if accelerator.is_main_process:
            close_failed_stage(out, error, step, tracker)
        raise
    finally:
        accelerator.end_training()
    return out

