"""Reward model (RM): learn a scalar score that prefers the chosen response of a preference pair.

    align rm configs/rm.yaml [key.path=value ...]

Starts from the SFT stage's output (`model.name: sft` means `runs/<run.name>/sft`) with a new scalar head read
at the last token of the conversation. The loop, as numbered steps:
1. load the backbone + scalar head (LoRA on the body, the head fully trained), and the preference pairs;
2. tokenise prompt+chosen and prompt+rejected with the chat template; pack a batch's 2B sequences without padding;
3. Bradley-Terry loss (align.losses.bradley_terry_loss; Ouyang et al. 2022, eq. 1, margin as in Llama 2):
       L = -mean_i log sigmoid( r(x_i, y_i^chosen) - r(x_i, y_i^rejected) - m )
4. AdamW, warmup + cosine, gradient clipping; log, evaluate held-out pairs, checkpoint;
5. save the model (LoRA merged) so `reward.model.RewardModel.from_pretrained(stage_dir)` scores with it, and
   report held-out pairwise accuracy, mean margin and the chosen/rejected reward distributions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from align.data import DataConfig, data_fingerprint, load_rows
from align.losses import bradley_terry_loss
from align.distributed import ddp_scale, epoch_step, epoch_steps, gather_list, global_sum, share_loss_sum, step_share
from align.loop import DatasetTrainConfig, Training, epoch_permutation, plan_steps
from align.models import LoraConfig, ModelConfig, count_parameters
from align.precision import autocast
from align.stage import RunConfig, Stage, resolve_stage_model, run_stage
from align.tracking import TrackingConfig
from align.values import TokenValues, load_reward_backbone, packed_rewards
from reward.model import tokenize_for_reward


@dataclass
class RMTrainConfig(DatasetTrainConfig):
    margin: float = 0.0  # m in the loss: require chosen to beat rejected by at least this much
    max_length: int = 512  # tokens per prompt+response; longer ones keep their end and are reported
    pairs_per_batch: int = 8  # preference pairs per optimiser step and process
    eval_max_pairs: int = 300  # held-out pairs scored at every evaluation


@dataclass
class RMConfig:
    stage: Literal["rm"] = "rm"  # the stage this file configures: `align rm` refuses any other
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="sft", lora=LoraConfig(enabled=True)))
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="builtin:pairs:train", eval="builtin:pairs:heldout")
    )
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- pure functions ---------------------------------------------------------------------------------------------


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


def accuracy_by_type(chosen: list[float], rejected: list[float], types: list[str]) -> dict[str, float]:
    """Pairwise accuracy per pair type (the built-in pairs' `pair_type` column: which way the rejected answer is
    worse, e.g. `runs_on`): {type: share of its pairs whose chosen reward is higher}."""
    wins: dict[str, list[bool]] = {}
    for c, r, kind in zip(chosen, rejected, types):
        wins.setdefault(kind, []).append(c > r)
    return {kind: sum(w) / len(w) for kind, w in sorted(wins.items())}


def gathered_rewards(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's chosen and rejected rewards, in process order (`align.distributed.gather_list`)."""
    pairs = gather_list(list(zip(chosen.detach().tolist(), rejected.detach().tolist())))
    return torch.tensor([c for c, _ in pairs]), torch.tensor([r for _, r in pairs])


def pair_rewards(model, pairs: list[tuple[list[int], list[int]]], pack_length: int):
    """Rewards of chosen and rejected sequences: ([B], [B]). The 2B sequences are packed together, each pair's
    common prefix (its prompt) computed once."""
    sequences = [c for c, _ in pairs] + [r for _, r in pairs]
    rewards = packed_rewards(model, sequences, pack_length, pairs=[(i, i + len(pairs)) for i in range(len(pairs))])
    return rewards[: len(pairs)], rewards[len(pairs) :]


@torch.no_grad()
def heldout_metrics(model, pairs, pack_length, device, precision, batch: int = 32) -> dict:
    """`pair_metrics` of held-out pairs, and every pair's two rewards (`chosen_rewards`, `rejected_rewards`)."""
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


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: RMConfig, *, restart: bool = False) -> Path:
    return run_stage(cfg, restart, reward_modelling)


def reward_modelling(stage: Stage) -> None:
    cfg, t, device = stage.cfg, stage.cfg.train, stage.accelerator.device

    # 1. backbone + scalar head, and the preference pairs
    base_path = resolve_stage_model(cfg.model.name, cfg.run)
    backbone, tokenizer = load_reward_backbone(cfg.model, base_path)
    model = TokenValues(backbone)
    trainable, total = count_parameters(model)
    print(f"[align] rm: from {base_path}: {trainable:,} of {total:,} parameters trainable")
    train_rows, report = load_rows(cfg.data.train, "preference", cfg.data)
    eval_rows = load_rows(cfg.data.eval, "preference", cfg.data)[0][: t.eval_max_pairs] if cfg.data.eval else []

    # 2. tokens, and a fixed shuffle per epoch
    pairs, truncated = tokenize_pairs(tokenizer, train_rows, t.max_length)
    eval_pairs, _ = tokenize_pairs(tokenizer, eval_rows, t.max_length)
    print(f"[align] rm: {len(pairs)} training pairs from {report.source}; {truncated} sequences longer than "
          f"max_length={t.max_length} keep their last {t.max_length} tokens")

    per_step = t.pairs_per_batch * stage.processes  # pairs of one optimiser step, every process together
    steps_per_epoch = epoch_steps(len(pairs), per_step)
    total_steps = plan_steps(steps_per_epoch, t, "no training pairs")
    training = Training(stage, {"model": model}, t, total_steps, throughput="pairs", manifest=dict(
        base_model=base_path, data_fingerprint=data_fingerprint(train_rows),
        data={"train": cfg.data.train, "eval": cfg.data.eval, "pairs": len(pairs), "truncated_sequences": truncated,
              "bad_rows_skipped": len(report.bad_rows)}))

    def held_out() -> dict:
        return heldout_metrics(training.raw["model"], eval_pairs, t.pack_length, device, stage.precision)

    evaluate = held_out if eval_pairs else None
    before = training.evaluate(held_out) if training.step == 0 and evaluate else None
    training.models["model"].train()
    while training.step < total_steps:
        # 3. this process's share of the step's pairs -> Bradley-Terry loss on their rewards, as a part of the mean
        # over the step's pairs on every process (align.distributed)
        epoch, position = divmod(training.step, steps_per_epoch)
        ids = epoch_step(epoch_permutation(len(pairs), cfg.run.seed, epoch), per_step, position)
        share, real = step_share(ids, stage.accelerator.process_index, stage.processes)
        training.plan_learning_rate()
        with autocast(device, stage.precision):
            chosen, rejected = pair_rewards(training.models["model"], [pairs[i] for i in share], t.pack_length)
        chosen, rejected = chosen.float(), rejected.float()
        loss_sum = share_loss_sum(lambda c, r: bradley_terry_loss(c, r, t.margin), real, chosen, rejected)
        training.backward(loss_sum * ddp_scale(len(ids)))
        loss = global_sum(loss_sum.item()) / len(ids)

        # 4. AdamW step; log (over the step's pairs on every process), evaluate, checkpoint
        training.optimizer_step(loss)
        training.count(real)
        training.end_step(log=lambda: {"loss": loss, "learning_rate": training.learning_rate,
                                       "grad_norm": training.grad_norm,
                                       **pair_metrics(*gathered_rewards(chosen[:real], rejected[:real]))},
                          evaluate=evaluate, eval_every=t.eval_every)

    # 5. final model and report
    training.finish(tokenizer, output=lambda values: values.model)
    if not stage.main:
        return
    metrics = {"rm/train_loss": loss}
    if before is not None:
        metrics["rm/eval/accuracy_before"] = before["accuracy"]
    if evaluate:
        held = training.latest_evaluation(held_out)
        metrics.update({f"rm/eval/{k}": v for k, v in held.items() if not k.endswith("_rewards")})
        types = [row.get("pair_type") for row in eval_rows]
        if all(isinstance(kind, str) for kind in types):  # held-out pairs that say how their rejected answer fails
            metrics.update({f"rm/eval/accuracy/{kind}": value for kind, value in accuracy_by_type(
                held["chosen_rewards"], held["rejected_rewards"], types).items()})
        (stage.out / "eval_rewards.json").write_text(json.dumps(
            {"chosen": held["chosen_rewards"], "rejected": held["rejected_rewards"]}))
    stage.complete(metrics, training.step, [f"{k:28s} {v:.4f}" for k, v in metrics.items()] + [
        f"score with: RewardModel.from_pretrained('{stage.out}').score(prompts, completions)"])
