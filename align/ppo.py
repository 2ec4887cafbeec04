"""PPO: InstructGPT-style RL from the SFT policy, rewarding correct instruction following.

    align ppo configs/ppo.yaml [key.path=value ...]

Each iteration, as numbered steps (Ouyang et al. 2022; Ziegler et al. 2019; Schulman et al. 2017):
1. sample a batch of prompts; generate responses from the policy (batched, KV cache, bf16 rollout copy);
2. score each response with the composite reward (reward model + reward functions) at its last token;
   responses that never emit EOS lose `missing_eos_penalty`;
3. per-token log-probs of the policy and the frozen reference (with LoRA: the same model, adapters off; with
   adapters on the top layers only, the frozen layers below run once per iteration for every pass),
   per-token KL with the selected estimator, and the KL-shaped reward
       r_t = -beta * KL_t  (+ score at the final token);
4. per-token values V(s_t) from the value model (a scalar head on a transformer, from the reward model);
5. GAE advantages and returns (gamma, lambda), advantages whitened;
6. `ppo_epochs` passes over minibatches: clipped policy loss, clipped value loss, entropy bonus;
7. log, adapt beta, checkpoint, repeat.
The maths lives in the pure functions below; `tests/align/test_ppo_math.py` checks them against hand-derived
values and plain-loop references.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from align.config import to_dict
from align.data import DataConfig, data_fingerprint, load_rows
from align.logprobs import (
    FrozenReference,
    decoder_body,
    response_logprobs,
    response_values,
    trunk_matches,
    trunk_states,
)
from align.loop import (
    adamw,
    check_finite,
    check_finite_parameters,
    epoch_permutation,
    stop_if_requested,
)
from align.models import LoraConfig, ModelConfig, count_parameters, load_model, save_model
from align.precision import autocast
from align.rewards import RewardConfig, build_reward
from align.rollout import generate, render_prompt
from align.stage import RunConfig, close_failed_stage, finish_stage, resolve_stage_model, start_stage
from align.tracking import TrackingConfig, start_tracker
from reward.model import TokenValues


@dataclass
class PPOTrainConfig:
    iterations: int = 30  # rollout -> update cycles
    prompts_per_iteration: int = 16
    max_new_tokens: int = 128
    temperature: float = 1.0  # sampling temperature of rollouts (also used for the log-probs)
    top_p: float = 1.0
    top_k: int = 0
    generation_batch_size: int = 16
    ppo_epochs: int = 2
    minibatch_size: int = 8
    learning_rate: float = 5.0e-5
    value_learning_rate: float = 1.0e-4
    max_grad_norm: float = 1.0
    clip_range: float = 0.2  # epsilon of the clipped policy objective
    value_clip_range: float = 0.2
    value_loss_coef: float = 0.5
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    kl_coef: float = 0.05  # beta
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    adaptive_kl: bool = False  # Ziegler et al. 2019 proportional controller towards kl_target
    kl_target: float = 6.0
    kl_horizon: int = 10000
    missing_eos_penalty: float = 1.0
    pack_length: int = 1024
    precision: Literal["bf16", "fp32"] = "bf16"
    save_every: int = 10
    keep_checkpoints: int = 2
    log_every: int = 1
    sample_table_rows: int = 4  # completions logged per iteration, with their per-component rewards


@dataclass
class PPOConfig:
    stage: Literal["ppo"] = "ppo"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="sft", lora=LoraConfig(enabled=True)))
    value_model: str | None = None  # default: the reward model (reward.reward_model), else the policy's weights
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="builtin:prompts:train", eval="builtin:prompts:heldout")
    )
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: PPOTrainConfig = field(default_factory=PPOTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- pure functions (shapes: B sequences, R response tokens, mask [B, R] is 1 on real tokens) --------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over entries where mask is 1; padding never contributes, even if it holds inf/NaN."""
    return torch.where(mask.bool(), values, 0.0).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries (unbiased variance); mean kept if not shift_mean."""
    mean = masked_mean(values, mask)
    n = mask.sum()
    var = ((values - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimates of KL(policy || reference) from samples of the policy (Schulman 2020, "Approximating
    KL divergence"), with log r = log p_ref - log p_policy:
        k1 = -log r              (unbiased, can be negative)
        k2 = (log r)^2 / 2       (biased, low variance)
        k3 = (r - 1) - log r     (unbiased, always >= 0)
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_estimator must be k1, k2 or k3, got {estimator!r}")


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = -beta * KL_t on every response token, plus the sequence score on its last real token. [B, R]"""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()  # [B] index of each sequence's last token
    rewards[torch.arange(len(scores)), last] += scores * (mask.sum(1) > 0)  # an empty sequence gets nothing
    return rewards


def gae_advantages(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), right-padded sequences:
        delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last real token is 0)
        A_t     = delta_t + gamma * lambda * A_{t+1}
        returns = A + V
    rewards, values, mask: [B, R] -> (advantages [B, R], returns [B, R]), zero on padding."""
    B, R = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype)
    next_advantage = torch.zeros(B, dtype=rewards.dtype)
    for t in reversed(range(R)):
        live = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * live
        # Padding passes nothing back: the next real token sees V=0 and A=0 beyond the sequence end.
        next_value = values[:, t] * live
        next_advantage = advantages[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_range: float) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:
        L = mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)),   rho_t = exp(logp_t - logp_old_t)
    Returns (loss, {clip_fraction, approx_kl}) where approx_kl = mean (rho - 1) - log rho (k3)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": float(masked_mean((clipped > unclipped).float(), mask)),
            "approx_kl": float(masked_mean(torch.expm1(log_ratio) - log_ratio, mask)),
        }
    return loss, stats


def value_loss(values, old_values, returns, mask, clip_range: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (as in OpenAI baselines' PPO2):
        V_clip = V_old + clip(V - V_old, -eps, eps);  L = 0.5 * mean_t max((V - G)^2, (V_clip - G)^2)"""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": float(masked_mean(((clipped_values - returns) ** 2 > (values - returns) ** 2)
                                                          .float(), mask))}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[G - V] / Var[G] over real tokens: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1.0 - var_residual / var_returns.clamp(min=1e-8))


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. 2019, eq. (2): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""
    error = max(-0.2, min(0.2, observed_kl / target - 1.0))
    return kl_coef * (1.0 + error * n_steps / horizon)


def pad_right(sequences: list[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [R_i] -> ([B, R_max] padded, [B, R_max] mask)."""
    width = max(1, max(len(s) for s in sequences))
    out = torch.full((len(sequences), width), value, dtype=torch.float32)
    mask = torch.zeros((len(sequences), width), dtype=torch.float32)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s.detach().float().cpu()
        mask[i, : len(s)] = 1.0
    return out, mask


def pearson(x: list[float], y: list[float]) -> float:
    """Correlation of two lists (0 when either is constant): e.g. reward vs response length, a hacking signal."""
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def pairwise_disagreement(model_scores: list[float], verifier_scores: list[float | None]) -> float:
    """Among pairs of samples that the verifiers rank differently, the fraction the reward model ranks the other
    way round: how often the learned reward and the programmatic checks disagree (0 = never)."""
    pairs = disagree = 0
    for i in range(len(model_scores)):
        for j in range(i + 1, len(model_scores)):
            vi, vj = verifier_scores[i], verifier_scores[j]
            if vi is None or vj is None or vi == vj:
                continue
            pairs += 1
            disagree += (model_scores[i] - model_scores[j]) * (vi - vj) < 0
    return disagree / pairs if pairs else 0.0


# ---- models -----------------------------------------------------------------------------------------------------


def merged_weights(policy) -> dict[str, torch.Tensor]:
    """The policy's weights with LoRA deltas added (W + B A * scale), without modifying the policy itself."""
    import peft

    if not isinstance(policy, peft.PeftModel):
        return policy.state_dict()
    base = policy.get_base_model()
    weights = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    for name, module in base.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer) and "default" in module.lora_A:
            weights[f"{name}.weight"] = module.get_base_layer().weight + module.get_delta_weight("default")
    return weights


def load_value_model(cfg: PPOConfig, policy_path: str):
    """Value model: a transformer + scalar head, from `value_model`, else the reward model, else the policy; loaded
    as the reward-model stage loads its backbone, with the policy's `model.lora` adapters."""
    from align.rm import load_reward_backbone

    source = cfg.value_model or cfg.reward.reward_model
    path = resolve_stage_model(source, cfg.run) if source else policy_path
    model, _ = load_reward_backbone(cfg.model, path)
    return model, path


def shared_trunk_layers(lora: LoraConfig, policy, value_model) -> tuple[int, int] | None:
    """(policy, value model) layers below the adapters: frozen, so one run per iteration serves the old and the
    reference log-probs, the values and every update. None with full fine-tuning, adapters on every layer, or a
    model that cannot be run in two parts (`align.logprobs.trunk_matches`)."""
    if not (lora.enabled and lora.last_layers):
        return None
    layers = tuple(decoder_body(m).config.num_hidden_layers - lora.last_layers for m in (policy, value_model))
    if min(layers) < 1:
        return None
    if trunk_matches(policy, layers[0]) and trunk_matches(value_model, layers[1], values=True):
        return layers
    print("[align] ppo: these models cannot be run in two parts; every pass runs all their layers")
    return None


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: PPOConfig, *, restart: bool = False) -> Path:
    from transformers import AutoModelForCausalLM

    start = start_stage(cfg, restart)
    if start.done:
        return start.out
    accelerator, out, resume_from = start.accelerator, start.out, start.resume_from
    main = accelerator.is_main_process
    t = cfg.train
    device = accelerator.device

    # models: policy (trained), reference (frozen), rollout copy (bf16, for fast generation), value model
    policy_path = resolve_stage_model(cfg.model.name, cfg.run)
    policy, tokenizer = load_model(dataclasses.replace(cfg.model, name=policy_path))
    reference = FrozenReference(policy, lora=cfg.model.lora.enabled)
    rollout_dtype = torch.bfloat16 if t.precision == "bf16" else torch.float32
    rollout_model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=rollout_dtype, use_safetensors=True).to(device)
    value_model, value_path = load_value_model(cfg, policy_path)
    value_model = TokenValues(value_model)
    print(f"[align] ppo: policy {policy_path} ({count_parameters(policy)[0]:,} trainable), value model from "
          f"{value_path}, reference = {'policy without adapters' if cfg.model.lora.enabled else 'frozen copy'}")

    # prompts and the composite reward, checked now rather than at the first step
    rows, _ = load_rows(cfg.data.train, "prompt", cfg.data)
    columns = sorted({k for row in rows for k in row} - {"prompt"})
    reward_fn = build_reward(cfg.reward, cfg.run, columns=set(columns), device=device)
    print(f"[align] ppo: {len(rows)} prompts from {cfg.data.train}; reward = {reward_fn.describe()}")
    per_process = t.prompts_per_iteration // accelerator.num_processes
    if per_process < 1 or per_process < t.minibatch_size:
        raise ValueError(f"train.prompts_per_iteration={t.prompts_per_iteration} must give every one of the "
                         f"{accelerator.num_processes} processes at least train.minibatch_size={t.minibatch_size}")

    def iteration_rows(iteration: int) -> list[dict]:
        """This process's prompts for `iteration`: a fixed per-epoch shuffle, so a resumed run sees the same ones."""
        start = iteration * t.prompts_per_iteration
        epoch = start // len(rows)
        # two epochs' orders back to back, for an iteration that runs over an epoch's end
        n, seed = len(rows), cfg.run.seed
        order = epoch_permutation(n, seed, epoch) + epoch_permutation(n, seed, epoch + 1)
        begin = start % len(rows) + accelerator.process_index * per_process
        return [rows[i] for i in order[begin : begin + per_process]]

    trunk_layers = shared_trunk_layers(cfg.model.lora, policy, value_model)
    if trunk_layers:
        print(f"[align] ppo: the frozen layers below the adapters ({trunk_layers[0]} of the policy, {trunk_layers[1]} "
              f"of the value model) run once per iteration, shared by every pass")
    optimizer = adamw([
        {"params": [p for p in policy.parameters() if p.requires_grad], "lr": t.learning_rate},
        {"params": [p for p in value_model.parameters() if p.requires_grad], "lr": t.value_learning_rate},
    ], t.learning_rate)
    policy, value_model, optimizer = accelerator.prepare(policy, value_model, optimizer)
    raw_policy, raw_value = accelerator.unwrap_model(policy), accelerator.unwrap_model(value_model)
    iteration, kl_coef, wandb_id = 0, t.kl_coef, None
    if resume_from:
        iteration, kl_coef, wandb_id = _restore(resume_from, raw_policy, raw_value, optimizer, reward_fn)
        print(f"[align] ppo: resuming from {resume_from} at iteration {iteration}")
    tracker = start_tracker(cfg.tracking, out_dir=out, run_name=f"{cfg.run.name}-ppo", group=cfg.run.name,
                            job_type="ppo", config=to_dict(cfg), resume_id=wandb_id) if main else None
    if main:
        finish_stage(out, "running", processes=accelerator.num_processes,
                     base_model=policy_path, data_fingerprint=data_fingerprint(rows),
                     parents={"policy": policy_path, "reward_model": cfg.reward.reward_model, "value": value_path})
    try:
        from tqdm import tqdm

        progress = tqdm(total=t.iterations, initial=iteration, desc="ppo", disable=not main)
        while iteration < t.iterations:
            timings, started = {}, time.perf_counter()
            batch = iteration_rows(iteration)
            prompts = [r["prompt"] for r in batch]

            # 1. generate with the bf16 rollout copy of the current policy
            rollout_model.load_state_dict(merged_weights(raw_policy))
            gens = generate(rollout_model, tokenizer, prompts, max_new_tokens=t.max_new_tokens,
                            batch_size=t.generation_batch_size, temperature=t.temperature, top_p=t.top_p,
                            top_k=t.top_k, generator_seed=cfg.run.seed * 100003 + iteration * 101
                            + accelerator.process_index)
            prompt_ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
                          for p in prompts]
            response_ids = [ids or [tokenizer.eos_token_id] for ids in gens.token_ids]
            timings["generate"] = time.perf_counter() - started

            # 2. composite reward at the end of each response; unfinished responses are penalised
            started = time.perf_counter()
            breakdown = reward_fn(prompts, gens.texts, **{c: [r.get(c) for r in batch] for c in columns})
            finished = torch.tensor(gens.finished, dtype=torch.float32)
            scores = torch.tensor(breakdown.total, dtype=torch.float32) - t.missing_eos_penalty * (1 - finished)
            timings["score"] = time.perf_counter() - started

            # 3.-4. old log-probs, reference log-probs, values (no gradients); a frozen trunk runs once, here
            started = time.perf_counter()
            with torch.no_grad(), autocast(device, t.precision):
                policy_trunk = value_trunk = None
                if trunk_layers:
                    sequences = [p + r for p, r in zip(prompt_ids, response_ids)]
                    policy_trunk = trunk_states(raw_policy, sequences, trunk_layers[0], t.pack_length)
                    value_trunk = trunk_states(raw_value, sequences, trunk_layers[1], t.pack_length)
                old_lp = response_logprobs(raw_policy, prompt_ids, response_ids, t.pack_length, t.temperature,
                                           trunk=policy_trunk)
                ref_lp = reference.logprobs(prompt_ids, response_ids, t.pack_length, t.temperature, trunk=policy_trunk)
                old_values = response_values(raw_value, prompt_ids, response_ids, t.pack_length, trunk=value_trunk)
            old_lp, mask = pad_right(old_lp)
            ref_lp, _ = pad_right(ref_lp)
            old_values, _ = pad_right(old_values)
            kl = kl_per_token(old_lp, ref_lp, t.kl_estimator) * mask
            rewards = shaped_rewards(scores, kl, mask, kl_coef)
            timings["logprobs"] = time.perf_counter() - started

            # 5. advantages and returns
            advantages, returns = gae_advantages(rewards, old_values, mask, t.gamma, t.lam)
            if t.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

            # 6. PPO epochs over minibatches
            started = time.perf_counter()
            stats: dict[str, list[float]] = {}
            generator = torch.Generator().manual_seed(cfg.run.seed * 7919 + iteration)
            for _ in range(t.ppo_epochs):
                for idx in torch.randperm(len(batch), generator=generator).split(t.minibatch_size):
                    sub_p, sub_r = [prompt_ids[i] for i in idx], [response_ids[i] for i in idx]
                    width = max(len(r) for r in sub_r)
                    m = mask[idx, :width]
                    with autocast(device, t.precision):
                        new_lp, entropy = response_logprobs(policy, sub_p, sub_r, t.pack_length, t.temperature,
                                                            with_entropy=True,
                                                            trunk=policy_trunk and policy_trunk.subset(idx))
                        new_values = response_values(value_model, sub_p, sub_r, t.pack_length,
                                                     trunk=value_trunk and value_trunk.subset(idx))
                    new_lp, entropy = pad_sequence(new_lp, batch_first=True), pad_sequence(entropy, batch_first=True)
                    new_values = pad_sequence(new_values, batch_first=True)
                    pg_loss, pg_stats = policy_loss(new_lp.cpu(), old_lp[idx, :width], advantages[idx, :width], m,
                                                    t.clip_range)
                    vf_loss, vf_stats = value_loss(new_values.cpu(), old_values[idx, :width], returns[idx, :width],
                                                   m, t.value_clip_range)
                    mean_entropy = masked_mean(entropy.cpu(), m)
                    loss = pg_loss + t.value_loss_coef * vf_loss - t.entropy_coef * mean_entropy
                    check_finite(loss.item(), "ppo", iteration)
                    accelerator.backward(loss)
                    grad_norm = float(accelerator.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]], t.max_grad_norm))
                    check_finite(grad_norm, "ppo", iteration, "gradient norm")
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    for key, value in {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                                       "entropy": mean_entropy.item(), "grad_norm": grad_norm,
                                       **pg_stats, **vf_stats}.items():
                        stats.setdefault(key, []).append(value)
            timings["update"] = time.perf_counter() - started

            # 7. log, adapt beta, checkpoint
            kl_per_sequence = kl.sum(1)
            if t.adaptive_kl:
                kl_coef = adaptive_kl_coef(kl_coef, float(kl_per_sequence.mean()), t.kl_target, t.kl_horizon,
                                           t.prompts_per_iteration)
            iteration += 1
            progress.update(1)
            if main and (iteration % t.log_every == 0 or iteration == t.iterations):
                metrics = _iteration_metrics(breakdown, scores, gens, batch, kl_per_sequence, kl_coef, stats,
                                             old_values, returns, mask, timings)
                tracker.log(metrics, step=iteration)
                tracker.log_table("ppo/samples", ["iteration", "prompt", "completion", "total",
                                                  *breakdown.components],
                                  [[iteration, p[-1]["content"], c, round(total, 4),
                                    *[breakdown.components[name][i] for name in breakdown.components]]
                                   for i, (p, c, total) in enumerate(zip(prompts, gens.texts, breakdown.total))
                                   ][: t.sample_table_rows], step=iteration)
                progress.set_postfix(reward=f"{metrics['ppo/reward/total']:.3f}", kl=f"{metrics['ppo/kl']:.3f}")
            if main and iteration % t.save_every == 0 and iteration < t.iterations:
                _save(out, iteration, raw_policy, raw_value, optimizer, reward_fn, kl_coef, tracker, t)
            if main:
                stop_if_requested(lambda: _save(out, iteration, raw_policy, raw_value, optimizer, reward_fn, kl_coef,
                                                tracker, t))
            accelerator.wait_for_everyone()
        progress.close()

        if main:
            check_finite_parameters(raw_policy, "ppo", iteration)
            save_model(raw_policy, tokenizer, out)
            last = _last_metrics(out)
            summary = {"ppo/iterations": iteration, "ppo/kl_coef": kl_coef,
                       "ppo/kl_within_target": float(last.get("ppo/kl", 0.0) <= t.kl_target)}
            tracker.summary(summary)
            finish_stage(out, "complete", metrics={**last, **summary}, steps=iteration, wandb_run=tracker.run_id)
            tracker.finish(0)
            print(f"\n[align] ppo finished -> {out}\n    mean KL to the reference at the last iteration: "
                  f"{last.get('ppo/kl', float('nan')):.3f} nats per response (train.kl_target={t.kl_target})"
                  f"\n    load it with: AutoModelForCausalLM.from_pretrained('{out}')")
    except BaseException as error:
        if main:
            close_failed_stage(out, error, iteration, tracker)
        raise
    finally:
        accelerator.end_training()
    return out


def _iteration_metrics(breakdown, scores, gens, batch, kl_per_sequence, kl_coef, stats, values, returns, mask,
                       timings) -> dict[str, float]:
    """Everything an RL run is judged by, including reward-hacking signals."""
    from reward.functions import prompt_text
    from reward.verifiers import check_all, parse_constraints

    lengths = [len(ids) for ids in gens.token_ids]
    metrics = {f"ppo/{k}": v for k, v in breakdown.metrics("reward/").items()}
    metrics.update({
        "ppo/reward/score": float(scores.mean()),  # total after the missing-EOS penalty
        "ppo/kl": float(kl_per_sequence.mean()), "ppo/kl_coef": kl_coef,
        "ppo/response_length": sum(lengths) / len(lengths),
        "ppo/unfinished_fraction": 1 - sum(gens.finished) / len(gens.finished),
        "ppo/reward_length_correlation": pearson(breakdown.total, lengths),
        "ppo/value_explained_variance": explained_variance(values, returns, mask),
        **{f"ppo/{k}": sum(v) / len(v) for k, v in stats.items()},
        **{f"ppo/time/{k}": v for k, v in timings.items()},
    })
    by_type: dict[str, list[bool]] = {}
    for row, text in zip(batch, gens.texts):
        constraints = parse_constraints(row["constraints"]) if row.get("constraints") else []
        for constraint, ok in zip(constraints, check_all(constraints, text, prompt=prompt_text(row["prompt"]))):
            by_type.setdefault(constraint["type"], []).append(ok)
    metrics.update({f"ppo/constraint/{k}": sum(v) / len(v) for k, v in by_type.items()})
    components = breakdown.components
    if "reward_model" in components and "instruction_following" in components:
        metrics["ppo/reward_model_verifier_disagreement"] = pairwise_disagreement(
            components["reward_model"], components["instruction_following"])
    return metrics


def _save(out, iteration, policy, value_model, optimizer, reward_fn, kl_coef, tracker, t) -> None:
    from align.checkpoint import save_checkpoint

    check_finite_parameters(policy, "ppo", iteration)
    tensors = {f"policy.{n}": p for n, p in policy.named_parameters() if p.requires_grad}
    tensors.update({f"value.{n}": p for n, p in value_model.named_parameters() if p.requires_grad})
    save_checkpoint(out / "checkpoints", iteration, tensors,
                    state={"step": iteration, "kl_coef": kl_coef, "wandb_id": tracker.run_id,
                           "reward": reward_fn.state_dict()},
                    objects={"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()},
                    keep_last=t.keep_checkpoints)


def _restore(checkpoint, policy, value_model, optimizer, reward_fn) -> tuple[int, float, str | None]:
    from align.checkpoint import load_checkpoint

    tensors, state, objects = load_checkpoint(checkpoint)
    policy.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("policy.")}, strict=False)
    value_model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("value.")}, strict=False)
    optimizer.load_state_dict(objects["optimizer"])
    torch.set_rng_state(objects["rng"])
    reward_fn.load_state_dict(state["reward"])
    return state["step"], state["kl_coef"], state.get("wandb_id")


def _last_metrics(out: Path) -> dict:
    import json

    last: dict = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        last.update(json.loads(line))
    return last

