"""DPO: direct preference optimisation from the SFT policy on preference pairs, no reward model, no sampling.

    align dpo configs/dpo.yaml [key.path=value ...]

With pi the policy, pi_ref the frozen reference (the SFT model; with LoRA, the same model with adapters off)
and h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)] summed over response tokens,
`train.loss` picks a loss of align.losses.DPO_LOSSES:
    sigmoid (Rafailov et al. 2023, eq. 7):  L = -log sigmoid(beta * h)
    ipo     (Azar et al. 2023, eq. 17):     L = (h / |y| - 1 / (2 beta))^2     (log-probs averaged per token)
The loop, as numbered steps:
1. load the policy (LoRA or full) and the pairs; tokenise prompt+chosen and prompt+rejected;
2. reference log-probs: computed once for every pair before training (`precompute_reference`, the default,
   since the reference never changes), or on the fly;
3. per batch: policy log-probs of both responses on packed rows, the loss above, AdamW step;
4. log rewards (beta * log-ratio) of chosen and rejected, margins and accuracies; evaluate held-out pairs;
5. save the model (LoRA merged) like every policy stage.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from align.data import DataConfig, data_fingerprint, load_rows
from align.logprobs import FrozenReference, response_logprobs
from align.losses import DPO_AVERAGES_TOKENS, DPO_LOSSES, DPOLossName
from align.distributed import ddp_scale, epoch_step, epoch_steps, gather_list, global_sum, share_loss_sum, step_share
from align.loop import DatasetTrainConfig, Training, epoch_permutation, plan_steps
from align.models import LoraConfig, ModelConfig, count_parameters, load_model
from align.precision import autocast
from align.rollout import render_prompt
from align.stage import RunConfig, Stage, resolve_stage_model, run_stage
from align.tracking import TrackingConfig


@dataclass
class DPOTrainConfig(DatasetTrainConfig):
    learning_rate: float = 5.0e-5
    loss: DPOLossName = "sigmoid"  # sigmoid (DPO) | ipo: align.losses.DPO_LOSSES
    beta: float = 0.1  # strength of the implicit KL constraint to the reference
    precompute_reference: bool = True  # reference log-probs of every pair once before training, or per batch
    max_prompt_length: int = 256  # longer prompts keep their end; counted and reported
    max_response_length: int = 256  # longer responses keep their start; counted and reported
    pairs_per_batch: int = 8  # preference pairs per optimiser step and process
    eval_max_pairs: int = 200  # held-out pairs scored at every evaluation


@dataclass
class DPOConfig:
    stage: Literal["dpo"] = "dpo"  # the stage this file configures: `align dpo` refuses any other
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="sft", lora=LoraConfig(enabled=True)))
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="builtin:pairs:train", eval="builtin:pairs:heldout")
    )
    train: DPOTrainConfig = field(default_factory=DPOTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- pure functions (B pairs; log-probs are sums over response tokens unless said otherwise) -----------------------


def implicit_rewards(policy_logps, ref_logps, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi - log pi_ref): [B]."""
    return beta * (policy_logps - ref_logps)


def sequence_logps(token_logps: list[torch.Tensor], average: bool) -> torch.Tensor:
    """Per-token log-probs [R_i] -> one number per sequence (sum, or mean for IPO): [N]."""
    return torch.stack([t.mean() if average else t.sum() for t in token_logps])


def tokenize_pairs(tokenizer, rows, max_prompt: int, max_response: int) -> tuple[list, dict]:
    """[(prompt ids, chosen ids, rejected ids)], and how many prompts/responses were cut."""
    eos = tokenizer.eos_token_id
    pairs, cut = [], {"prompts_truncated": 0, "responses_truncated": 0}
    for row in rows:
        prompt = tokenizer(render_prompt(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
        cut["prompts_truncated"] += len(prompt) > max_prompt
        responses = []
        for text in (row["chosen"], row["rejected"]):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]  # the end of turn is learnt too
            cut["responses_truncated"] += len(ids) > max_response
            responses.append(ids[:max_response])
        pairs.append((prompt[-max_prompt:], responses[0], responses[1]))
    return pairs, cut


def pair_layout(pairs) -> tuple[list, list, list[tuple[int, int]]]:
    """B pairs as 2B sequences: (prompts, responses, groups), every chosen response first, then every rejected
    one; pair i's two sequences form a group, which computes their prompt once (`align.batching.flat_passes`)."""
    prompts = [p for p, _, _ in pairs] * 2
    responses = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    return prompts, responses, [(i, i + len(pairs)) for i in range(len(pairs))]


def pair_logps(logprobs_fn, pairs, pack_length: int, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of chosen and rejected: ([B], [B]); the 2B sequences packed together (`pair_layout`),
    each pair's prompt computed once. `logprobs_fn` is `response_logprobs` bound to a model (or a reference's
    `logprobs`)."""
    prompts, responses, shared = pair_layout(pairs)
    logps = sequence_logps(logprobs_fn(prompts, responses, pack_length, groups=shared), average)
    return logps[: len(pairs)], logps[len(pairs) :]


def policy_logps(model):
    return lambda *args, **kwargs: response_logprobs(model, *args, **kwargs)


class CachedReference:
    """Reference sequence log-probs per pair index, computed once: the reference never changes."""

    def __init__(self, reference: FrozenReference, pack_length: int, average: bool, device, precision):
        self.reference, self.pack_length, self.average = reference, pack_length, average
        self.device, self.precision = device, precision
        self.cache: dict[int, tuple[float, float]] = {}

    def __call__(self, pairs, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [i for i in ids if i not in self.cache]
        if missing:
            with autocast(self.device, self.precision):
                c, r = pair_logps(self.reference.logprobs, [pairs[i] for i in missing], self.pack_length,
                                  self.average)
            self.cache.update({i: (cv, rv) for i, cv, rv in zip(missing, c.tolist(), r.tolist())})
        return (torch.tensor([self.cache[i][0] for i in ids]), torch.tensor([self.cache[i][1] for i in ids]))

    def precompute(self, pairs, chunk: int = 32) -> None:
        started = time.perf_counter()
        for start in range(0, len(pairs), chunk):
            self(pairs, list(range(start, min(start + chunk, len(pairs)))))
        print(f"[align] dpo: reference log-probs of {len(pairs)} pairs precomputed in "
              f"{time.perf_counter() - started:.1f}s")


def gathered_logps(*logps: torch.Tensor, real: int) -> list[torch.Tensor]:
    """The first `real` entries of each of `logps` ([B] each), every process's in process order
    (`align.distributed.gather_list`)."""
    rows = gather_list(list(zip(*(t.detach()[:real].tolist() for t in logps))))
    return [torch.tensor([row[i] for row in rows]) for i in range(len(logps))]


def pair_stats(policy_c, policy_r, ref_c, ref_r, beta) -> dict[str, float]:
    chosen, rejected = implicit_rewards(policy_c, ref_c, beta), implicit_rewards(policy_r, ref_r, beta)
    return {"rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
            "rewards/margin": float((chosen - rejected).mean()),
            "rewards/accuracy": float((chosen > rejected).float().mean())}


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: DPOConfig, *, restart: bool = False) -> Path:
    return run_stage(cfg, restart, direct_preference_optimisation)


def direct_preference_optimisation(stage: Stage) -> None:
    cfg, t, device = stage.cfg, stage.cfg.train, stage.accelerator.device
    average, loss_fn = t.loss in DPO_AVERAGES_TOKENS, DPO_LOSSES[t.loss]

    # 1. policy and pairs
    base_path = resolve_stage_model(cfg.model.name, cfg.run)
    policy, tokenizer = load_model(dataclasses.replace(cfg.model, name=base_path))
    print(f"[align] dpo: from {base_path}: {count_parameters(policy)[0]:,} parameters trainable")
    train_rows, report = load_rows(cfg.data.train, "preference", cfg.data)
    eval_rows = load_rows(cfg.data.eval, "preference", cfg.data)[0] if cfg.data.eval else []
    pairs, cut = tokenize_pairs(tokenizer, train_rows, t.max_prompt_length, t.max_response_length)
    eval_pairs, _ = tokenize_pairs(tokenizer, eval_rows[: t.eval_max_pairs], t.max_prompt_length,
                                   t.max_response_length)
    print(f"[align] dpo: {len(pairs)} pairs from {report.source}; {cut['prompts_truncated']} prompts and "
          f"{cut['responses_truncated']} responses longer than the limits were cut (kept prompt ends, response starts)")

    per_step = t.pairs_per_batch * stage.processes  # pairs of one optimiser step, every process together
    steps_per_epoch = epoch_steps(len(pairs), per_step)
    total_steps = plan_steps(steps_per_epoch, t, "no training pairs")

    # 2. the reference (a full fine-tuning run's frozen copy is taken now, before any resumed weights load, in the
    # weights' precision), the optimiser over bf16 weights' fp32 masters, then the reference log-probs
    frozen = FrozenReference(policy, cfg.model.lora.enabled, stage.precision)
    training = Training(stage, {"policy": policy}, t, total_steps, throughput="pairs", manifest=dict(
        base_model=base_path, data_fingerprint=data_fingerprint(train_rows), parents={"policy": base_path},
        data={"train": cfg.data.train, "pairs": len(pairs), **cut, "bad_rows_skipped": len(report.bad_rows)}))
    reference = CachedReference(frozen, t.pack_length, average, device, stage.precision)
    eval_reference = CachedReference(frozen, t.pack_length, average, device, stage.precision)
    if t.precompute_reference:
        with training.gathered():  # FSDP2: the adapters-off policy's weights, gathered (align.sharding)
            reference.precompute(pairs)

    @torch.no_grad()
    def held_out() -> dict[str, float]:
        raw_policy = training.raw["policy"]
        raw_policy.eval()
        ref_c, ref_r = eval_reference(eval_pairs, list(range(len(eval_pairs))))
        with autocast(device, stage.precision):
            pol_c, pol_r = pair_logps(policy_logps(raw_policy), eval_pairs, t.pack_length, average)
        raw_policy.train()
        return pair_stats(pol_c.float().cpu(), pol_r.float().cpu(), ref_c, ref_r, t.beta)

    evaluate = held_out if eval_pairs else None
    if training.step == 0 and evaluate:
        training.evaluate(held_out)
    while training.step < total_steps:
        # 3. this process's share of the step's pairs: policy log-probs of chosen and rejected against the
        # reference's, the loss as a part of the mean over the step's pairs on every process (align.distributed)
        epoch, position = divmod(training.step, steps_per_epoch)
        ids = epoch_step(epoch_permutation(len(pairs), cfg.run.seed, epoch), per_step, position)
        share, real = step_share(ids, stage.accelerator.process_index, stage.processes)
        # FSDP2: the adapters-off policy gathered, unless every pair's reference log-probs are cached already
        with nullcontext() if t.precompute_reference else training.gathered():
            ref_c, ref_r = reference(pairs, share)
        training.plan_learning_rate()
        with autocast(device, stage.precision):
            pol_c, pol_r = pair_logps(policy_logps(training.models["policy"]), [pairs[i] for i in share],
                                      t.pack_length, average)
        pol_c, pol_r = pol_c.float().cpu(), pol_r.float().cpu()
        loss_sum = share_loss_sum(lambda *logps: loss_fn(*logps, t.beta), real, pol_c, pol_r, ref_c, ref_r)
        training.backward(loss_sum * ddp_scale(len(ids)))
        loss = global_sum(loss_sum.item()) / len(ids)
        training.optimizer_step(loss)
        training.count(real)

        # 4. log rewards, margins and accuracies (over the step's pairs on every process); evaluate held-out
        # pairs; checkpoint
        training.end_step(log=lambda: {"loss": loss, "learning_rate": training.learning_rate,
                                       "grad_norm": training.grad_norm,
                                       **pair_stats(*gathered_logps(pol_c, pol_r, ref_c, ref_r, real=real), t.beta)},
                          evaluate=evaluate, eval_every=t.eval_every)

    # 5. final model
    training.finish(tokenizer)
    if not stage.main:
        return
    metrics = {"dpo/train_loss": loss}
    if evaluate:
        metrics.update({f"dpo/eval/{k}": v for k, v in training.latest_evaluation(held_out).items()})
    stage.complete(metrics, training.step, [f"{k:28s} {v:.4f}" for k, v in metrics.items()])
