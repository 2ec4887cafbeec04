"""DPO: direct preference optimisation from the SFT policy on preference pairs, no reward model, no sampling.

    align dpo configs/dpo.yaml [key.path=value ...]

With pi the policy, pi_ref the frozen reference (the SFT model; with LoRA, the same model with adapters off)
and h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)] summed over response tokens:
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from align.config import to_dict
from align.data import DataConfig, data_fingerprint, load_rows
from align.logprobs import FrozenReference, response_logprobs
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
from align.models import LoraConfig, ModelConfig, count_parameters, load_model, save_model
from align.precision import Precision, autocast, training_weights
from align.rollout import render_prompt
from align.stage import RunConfig, close_failed_stage, finish_stage, resolve_stage_model, start_stage
from align.tracking import TrackingConfig, start_tracker


@dataclass
class DPOTrainConfig:
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    beta: float = 0.1
    precompute_reference: bool = True
    epochs: int = 1
    max_steps: int | None = None
    learning_rate: float = 5.0e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    max_prompt_length: int = 256  # longer prompts keep their end; counted and reported
    max_response_length: int = 256  # longer responses keep their start; counted and reported
    pairs_per_batch: int = 8
    pack_length: int = 1024
    precision: Precision = "bf16"  # bf16 weights + fp32 masters, bf16-autocast (fp32 weights), fp32: align.precision
    eval_every: int = 50
    eval_max_pairs: int = 200
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 5


@dataclass
class DPOConfig:
    stage: Literal["dpo"] = "dpo"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="sft", lora=LoraConfig(enabled=True)))
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="builtin:pairs:train", eval="builtin:pairs:heldout")
    )
    train: DPOTrainConfig = field(default_factory=DPOTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- pure functions (B pairs; log-probs are sums over response tokens unless said otherwise) -----------------------


def dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """-mean log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))). All inputs [B] summed log-probs."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * h).mean()


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """mean (h - 1/(2 beta))^2 with h built from *per-token averaged* log-probs (Azar et al. 2023)."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return ((h - 1.0 / (2.0 * beta)) ** 2).mean()


LOSSES = {"sigmoid": dpo_sigmoid_loss, "ipo": ipo_loss}


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


def pair_logps(logprobs_fn, pairs, pack_length: int, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of chosen and rejected: ([B], [B]); the 2B sequences packed together, each pair's
    prompt computed once. `logprobs_fn` is `response_logprobs` bound to a model (or a reference's `logprobs`)."""
    prompts = [p for p, _, _ in pairs] * 2
    responses = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    shared = [(i, i + len(pairs)) for i in range(len(pairs))]
    logps = sequence_logps(logprobs_fn(prompts, responses, pack_length, pairs=shared), average)
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


def pair_stats(policy_c, policy_r, ref_c, ref_r, beta) -> dict[str, float]:
    chosen, rejected = implicit_rewards(policy_c, ref_c, beta), implicit_rewards(policy_r, ref_r, beta)
    return {"rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
            "rewards/margin": float((chosen - rejected).mean()),
            "rewards/accuracy": float((chosen > rejected).float().mean())}


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: DPOConfig, *, restart: bool = False) -> Path:
    start = start_stage(cfg, restart)
    if start.done:
        return start.out
    accelerator, out, resume_from = start.accelerator, start.out, start.resume_from
    main = accelerator.is_main_process
    t, device = cfg.train, accelerator.device
    average = t.loss == "ipo"

    # 1. policy and pairs
    base_path = resolve_stage_model(cfg.model.name, cfg.run)
    policy, tokenizer = load_model(dataclasses.replace(cfg.model, name=base_path))
    print(f"[align] dpo: from {base_path}: {count_parameters(policy)[0]:,} parameters trainable")
    train_rows, report = load_rows(cfg.data.train, "preference", cfg.data)
    eval_rows, _ = load_rows(cfg.data.eval, "preference", cfg.data) if cfg.data.eval else ([], None)
    pairs, cut = tokenize_pairs(tokenizer, train_rows, t.max_prompt_length, t.max_response_length)
    eval_pairs, _ = tokenize_pairs(tokenizer, eval_rows[: t.eval_max_pairs], t.max_prompt_length,
                                   t.max_response_length)
    print(f"[align] dpo: {len(pairs)} pairs from {cfg.data.train}; {cut['prompts_truncated']} prompts and "
          f"{cut['responses_truncated']} responses longer than the limits were cut (kept prompt ends, response starts)")

    # 2. bf16 weights (fp32 masters for the optimiser, align.precision), then reference log-probs: a full
    # fine-tuning run's frozen copy is made in bf16 too
    weights = training_weights(policy, t.precision, accelerator.num_processes)
    frozen = FrozenReference(policy, cfg.model.lora.enabled)
    reference = CachedReference(frozen, t.pack_length, average, device, t.precision)
    eval_reference = CachedReference(frozen, t.pack_length, average, device, t.precision)
    if t.precompute_reference:
        started = time.perf_counter()
        for start in range(0, len(pairs), 32):
            reference(pairs, list(range(start, min(start + 32, len(pairs)))))
        print(f"[align] dpo: reference log-probs of {len(pairs)} pairs precomputed in "
              f"{time.perf_counter() - started:.1f}s")

    def epoch_order(epoch: int) -> list[int]:
        return shard(epoch_permutation(len(pairs), cfg.run.seed, epoch), accelerator)

    steps_per_epoch = len(epoch_order(0)) // t.pairs_per_batch
    total_steps = min(steps_per_epoch * t.epochs, t.max_steps or 10**12)
    if total_steps < 1:
        raise ValueError(f"train.pairs_per_batch={t.pairs_per_batch} exceeds the {len(pairs)} pairs per process")
    optimizer = adamw(weights.parameters(), t.learning_rate, t.weight_decay)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    raw_policy = accelerator.unwrap_model(policy)
    step, wandb_id = 0, None
    if resume_from:
        state = restore_training_state(resume_from, weights, optimizer)
        step, wandb_id = state["step"], state.get("wandb_id")
        print(f"[align] dpo: resuming from {resume_from} at step {step}")
    tracker = start_tracker(cfg.tracking, out_dir=out, run_name=f"{cfg.run.name}-dpo", group=cfg.run.name,
                            job_type="dpo", config=to_dict(cfg), resume_id=wandb_id) if main else None
    if main:
        finish_stage(out, "running", processes=accelerator.num_processes,
                     base_model=base_path, data_fingerprint=data_fingerprint(train_rows),
                     parents={"policy": base_path},
                     data={"train": cfg.data.train, "pairs": len(pairs), **cut,
                           "bad_rows_skipped": len(report.bad_rows)})

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        raw_policy.eval()
        ids = list(range(len(eval_pairs)))
        ref_c, ref_r = eval_reference(eval_pairs, ids)
        with autocast(device, t.precision):
            pol_c, pol_r = pair_logps(policy_logps(raw_policy), eval_pairs, t.pack_length, average)
        raw_policy.train()
        return pair_stats(pol_c.float().cpu(), pol_r.float().cpu(), ref_c, ref_r, t.beta)

    metrics: dict = {}
    if step == 0 and eval_pairs and main:
        tracker.log({f"dpo/eval/{k}": v for k, v in evaluate().items()}, step=0)
    loss_fn = LOSSES[t.loss]
    try:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc="dpo", disable=not main)
        window_pairs, window_start = 0, time.perf_counter()
        while step < total_steps:
            # 3. one batch: policy log-probs of chosen and rejected, loss, step
            epoch, position = divmod(step, steps_per_epoch)
            ids = epoch_order(epoch)[position * t.pairs_per_batch : (position + 1) * t.pairs_per_batch]
            batch = [pairs[i] for i in ids]
            ref_c, ref_r = reference(pairs, ids)
            lr = learning_rate_at(step, total_steps, t.learning_rate, t.warmup_ratio, t.lr_schedule)
            set_learning_rate(optimizer, lr)
            with autocast(device, t.precision):
                pol_c, pol_r = pair_logps(policy_logps(policy), batch, t.pack_length, average)
            loss = loss_fn(pol_c.float().cpu(), pol_r.float().cpu(), ref_c, ref_r, t.beta)
            check_finite(loss.item(), "dpo", step)
            accelerator.backward(loss)
            grad_norm = float(accelerator.clip_grad_norm_(weights.parameters(), t.max_grad_norm))
            check_finite(grad_norm, "dpo", step, "gradient norm")
            optimizer.step()
            weights.step_done()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_pairs += len(batch)
            progress.update(1)

            # 4. log, evaluate, checkpoint
            if main and (step % t.log_every == 0 or step == total_steps):
                stats = pair_stats(pol_c.detach().float().cpu(), pol_r.detach().float().cpu(), ref_c, ref_r, t.beta)
                tracker.log({"dpo/loss": loss.item(), "dpo/learning_rate": lr, "dpo/grad_norm": grad_norm,
                             **{f"dpo/{k}": v for k, v in stats.items()},
                             "dpo/pairs_per_s": window_pairs * accelerator.num_processes
                             / (time.perf_counter() - window_start)}, step=step)
                progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{stats['rewards/accuracy']:.2f}")
                window_pairs, window_start = 0, time.perf_counter()
            if eval_pairs and main and (step % t.eval_every == 0 or step == total_steps):
                metrics.update({f"dpo/eval_{k}": v for k, v in evaluate().items()})
                tracker.log({f"dpo/eval/{k}": metrics[f"dpo/eval_{k}"] for k in
                             ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy")}, step=step)
            if main and step % t.save_every == 0 and step < total_steps:
                save_training_state(out, step, weights, optimizer, {"wandb_id": tracker.run_id},
                                    t.keep_checkpoints)
            if main:
                stop_if_requested(lambda: save_training_state(
                    out, step, weights, optimizer, {"wandb_id": tracker.run_id}, t.keep_checkpoints))
            accelerator.wait_for_everyone()
        progress.close()

        # 5. final model
        if main:
            metrics["dpo/train_loss"] = loss.item()
            check_finite_parameters(weights, "dpo", step)
            save_model(weights.fp32_model(), tokenizer, out)
            tracker.summary(metrics)
            finish_stage(out, "complete", metrics=metrics, steps=step, wandb_run=tracker.run_id)
            tracker.finish(0)
            print(f"\n[align] dpo finished -> {out}")
            for key, value in metrics.items():
                print(f"    {key:28s} {value:.4f}")
    except BaseException as error:
        if main:
            close_failed_stage(out, error, step, tracker)
        raise
    finally:
        accelerator.end_training()
    return out
