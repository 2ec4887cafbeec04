"""PPO: InstructGPT-style RL from the SFT policy, rewarding correct instruction following.

    align ppo configs/ppo.yaml [key.path=value ...]

Each iteration, as numbered steps (Ouyang et al. 2022; Ziegler et al. 2019; Schulman et al. 2017), passing a
`Rollout` from step to step:
1. take the iteration's prompts; generate `completions_per_prompt` responses to each from the policy (batched, KV
   cache, rollout copy); with `demonstration_column`, a prompt whose responses all fail it gets the row's reference
   answer in place of its last response (off-policy guidance, align.rl.demonstrate_failed_prompts); with
   `loop_unlikelihood`, also decode each prompt greedily and keep the continuations that loop;
2. score each response with the composite reward (reward model + reward functions) at its last token;
   responses that never emit EOS lose `missing_eos_penalty`;
3. per-token log-probs of the policy (in fp32, the rollout's own) and the frozen reference (with LoRA: the same
   model, adapters off; with adapters on the top layers only, the frozen layers below run once per iteration for
   every pass) and per-token values V(s_t) from the value model (a scalar head on a transformer, from the reward
   model);
4. per-token KL with the selected estimator, the KL-shaped reward
       r_t = -beta * KL_t  (+ score at the final token, less the mean of its prompt's other scores with
                            score_baseline leave_one_out),
   GAE advantages and returns (gamma, lambda), advantages whitened;
5. `ppo_epochs` passes over minibatches: the policy loss (`train.policy_loss`, align.losses.POLICY_LOSSES),
   clipped value loss, entropy bonus; the first step also pushes down the greedy loops' repeated tokens
   (sequence-level unlikelihood);
6. adapt beta; log, checkpoint, repeat.
The maths lives in the pure functions below and in align.losses; `tests/align/test_ppo_math.py` and
`tests/align/test_losses.py` check them against hand-derived values and plain-loop references.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from align.config import ConfigError
from align.data import DataConfig, data_fingerprint, load_rows
from align.logprobs import (FrozenReference, frozen_trunk_layers, response_logprobs, response_values, same_trunk,
                            trunk_states)
from align.losses import (POLICY_LOSSES, PolicyLossName, kl_per_token, masked_mean, rloo_advantages,
                          sequence_unlikelihood, value_loss)
from align.loop import RLTrainConfig, Training
from align.models import LoraConfig, ModelConfig, count_parameters, load_model
from align.precision import autocast
from align.preference_term import PreferenceTerm, load_preference_term
from align.rewards import RewardConfig, RewardLog, build_reward, dataset_columns, trainer_state
from align.distributed import (count_share, global_masked_mean, global_masked_whiten, global_mean, global_sum,
                               global_sums, token_share)
from align.rl import (GreedyLoops, StepTimer, check_demonstrations, check_prompt_split, completion_metrics,
                      demonstrated_share, global_completions, greedy_loops, greedy_loops_in, iteration_prompts,
                      iteration_trunk, last_metrics, log_samples, loop_share_at, minibatch_updates,
                      old_logprobs_from_rollout, pad_right, penalised_scores, read_logged, rollout_generator,
                      same_prompt, sample_completions, trunk_from_rollout, window_means, with_demonstrations,
                      with_greedy_members)
from align.rollout import GenerationConfig, TextGenerator
from align.sharding import gathered
from align.stage import RunConfig, Stage, resolve_stage_model, run_stage
from align.tracking import TrackingConfig
from align.values import TokenValues, load_reward_backbone


@dataclass
class PPOTrainConfig(RLTrainConfig):
    prompts_per_iteration: int = 16  # prompts generated for, scored and trained on per iteration (all processes)
    completions_per_prompt: int = 1  # k responses sampled per prompt (OpenRLHF's n_samples_per_prompt): the value
        # model sees k returns of each prompt, and the passes without gradients compute each prompt once
    ppo_epochs: int = 2  # passes over each iteration's responses
    minibatch_size: int = 8  # responses per optimiser step, drawn from those of every process
    policy_loss: PolicyLossName = "clipped"  # align.losses.POLICY_LOSSES
    value_learning_rate: float = 1.0e-4  # peak learning rate of the value model
    clip_range: float = 0.2  # epsilon of the clipped policy objective
    value_clip_range: float = 0.2  # how far a value may move from its rollout value before its loss is clipped
    value_loss_coef: float = 0.5  # weight of the value loss in the total loss
    value_warmup_iterations: int = 0  # the first N iterations train the value model only (no policy loss): GAE's
        # advantages are only as good as the values, and a value head starts far from the returns
    entropy_coef: float = 0.0  # weight of the entropy bonus (subtracted from the loss)
    unlikelihood: float = 0.0  # weight of the token-level unlikelihood of the sampled responses (Welleck et al.
        # 2020, as SFT's train.unlikelihood), per response token, added to the policy loss: keeps pushing down the
        # tokens a response already used while the policy moves, against the repetition loops of greedy decoding
    loop_unlikelihood: float = 0.0  # weight of the sequence-level unlikelihood (Welleck et al. 2020) of the policy's
        # own loops: each iteration also decodes its prompts greedily, as evaluation does, and pushes down every
        # token of a repeated 4-gram in the continuations that loop (reward.degeneration); 0: no greedy decode
    gamma: float = 1.0  # discount of GAE
    lam: float = 0.95  # lambda of GAE: bias (0) against variance (1) of the advantages
    whiten_advantages: bool = True  # normalise advantages to mean 0, variance 1 over the batch
    kl_coef: float = 0.05  # beta: weight of the per-token KL to the reference in the reward
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # per-token KL estimate (Schulman 2020): see kl_per_token
    adaptive_kl: bool = False  # Ziegler et al. 2019 proportional controller towards kl_target
    kl_target: float = 6.0  # nats per response the adaptive controller steers to (and the manifest checks)
    kl_horizon: int = 10000  # responses over which the controller closes the gap
    missing_eos_penalty: float = 1.0  # subtracted from the score of a response that never emitted EOS
    score_baseline: Literal["none", "leave_one_out"] = "none"  # subtracted from each response's score before the
        # advantages: leave_one_out, the mean score of the other k - 1 responses to its prompt (RLOO's baseline;
        # needs completions_per_prompt >= 2). Prompts differ in how hard they are more than the value model can
        # tell from the prompt; against its siblings a response is judged only by what it did
    pack_length: int = 1024  # tokens per packed row in the log-prob, value and update passes
    sample_table_rows: int = 4  # completions logged per iteration, with their per-component rewards
    preference_pairs: str | list[str] | None = None  # preference pairs (a source as data.train, read with data's
        # max_rows and skip_bad_rows; e.g. builtin:pairs:train) whose DPO loss is added to every optimiser step's
        # policy loss (align.preference_term): what the pairs reject, e.g. loops that PPO's samples never show, is
        # pushed down directly. null: off
    preference_coef: float = 1.0  # weight of that DPO loss in the total loss
    preference_beta: float = 0.1  # its beta (DPO's train.beta), against PPO's reference
    preference_pairs_per_step: int = 2  # pairs per optimiser step, every process together

    def __post_init__(self) -> None:  # refused when the config is read, as GRPOTrainConfig's group size is
        needs_two = {  # the settings that judge a response against other responses to its prompt, and why
            "score_baseline=leave_one_out": (self.score_baseline == "leave_one_out",
                                             "the other responses to the same prompt"),
            "demonstration_column": (self.demonstration_column, "a demonstration replaces one of a prompt's responses"),
            "greedy_member": (self.greedy_member, "the greedy answer is judged against the sampled ones"),
        }
        if self.preference_pairs_per_step < 1:
            raise ValueError(f"train.preference_pairs_per_step must be at least 1, got "
                             f"{self.preference_pairs_per_step}")
        for setting, (chosen, why) in needs_two.items():
            if chosen and self.completions_per_prompt < 2:
                raise ValueError(f"train.{setting} needs train.completions_per_prompt >= 2 ({why}), got "
                                 f"{self.completions_per_prompt}")


@dataclass
class PPOConfig:
    stage: Literal["ppo"] = "ppo"  # the stage this file configures: `align ppo` refuses any other
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="sft", lora=LoraConfig(enabled=True)))
    value_model: str | None = None  # default: the reward model (reward.reward_model), else the policy's weights
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="builtin:prompts:train", eval="builtin:prompts:heldout")
    )
    reward: RewardConfig = field(default_factory=RewardConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # how rollouts are decoded
    train: PPOTrainConfig = field(default_factory=PPOTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- pure functions (shapes: B sequences, R response tokens, mask [B, R] is 1 on real tokens) --------------------


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries (unbiased variance); mean kept if not shift_mean."""
    mean = masked_mean(values, mask)
    n = mask.sum()
    var = ((values - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = -beta * KL_t on every response token, plus the sequence score on its last real token. [B, R]"""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()  # [B] index of each sequence's last token
    rewards[torch.arange(len(scores)), last] += scores * (mask.sum(1) > 0)  # an empty sequence gets nothing
    return rewards


def leave_one_out_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each response's score minus the mean score of the other k - 1 responses to its prompt (the leave-one-out
    baseline of Kool et al. 2019, as RLOO uses it; `align.losses.rloo_advantages`). The baseline does not depend on
    the response itself, so the policy gradient stays unbiased. [P * k] scores, the k of a prompt in a row ->
    [P * k]."""
    return rloo_advantages(scores.view(-1, k)).flatten()


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


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, mean=masked_mean) -> float:
    """1 - Var[G - V] / Var[G] over real tokens: 1 is a perfect critic, 0 no better than a constant. `mean`: the
    masked mean (over every process's tokens: align.distributed.global_masked_mean)."""
    var_returns = mean((returns - mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = mean((residual - mean(residual, mask)) ** 2, mask)
    return float(1.0 - var_residual / var_returns.clamp(min=1e-8))


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. 2019, eq. (2): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""
    error = max(-0.2, min(0.2, observed_kl / target - 1.0))
    return kl_coef * (1.0 + error * n_steps / horizon)


# ---- models -----------------------------------------------------------------------------------------------------


def load_value_model(cfg: PPOConfig, policy_path: str) -> tuple[TokenValues, str]:
    """Value model: a transformer + scalar head, from `value_model`, else the reward model, else the policy; loaded
    as the reward-model stage loads its backbone, with the policy's `model.lora` adapters."""
    source = cfg.value_model or cfg.reward.reward_model
    path = resolve_stage_model(source, cfg.run) if source else policy_path
    model, _ = load_reward_backbone(cfg.model, path)
    return TokenValues(model), path


def shared_trunk_layers(lora: LoraConfig, policy, value_model) -> tuple[int, int] | None:
    """(policy, value model) layers below the adapters: frozen, so one run per iteration serves the old and the
    reference log-probs, the values and every update. None with full fine-tuning, adapters on every layer, or a
    model that cannot be run in two parts (`align.logprobs.frozen_trunk_layers`)."""
    layers = (frozen_trunk_layers(lora, policy), frozen_trunk_layers(lora, value_model, values=True))
    return None if None in layers else layers


@dataclass
class PPOModels:
    """The models of a PPO run besides the trained policy and value model (which `Training` holds)."""

    reference: FrozenReference  # the SFT policy: with LoRA, the policy with its adapters off
    generator: TextGenerator  # a copy of the policy that generates rollouts; refreshed every iteration
    tokenizer: object
    trunk_layers: tuple[int, int] | None  # frozen layers run once per iteration (`shared_trunk_layers`)
    value_shares_trunk: bool  # the value model's frozen layers are the policy's (`align.logprobs.same_trunk`)
    rollout_logprobs: bool  # the old log-probs are the rollout's own (fp32, or train.old_logprobs=rollout)
    rollout_trunk: bool  # the policy's frozen-trunk states are the rollout copy's (`align.rl.trunk_from_rollout`)


def load_models(cfg: PPOConfig, device, precision: str) -> tuple[object, TokenValues, PPOModels, dict]:
    """(policy, value model, the other models, the lineage for the manifest)."""
    policy_path = resolve_stage_model(cfg.model.name, cfg.run)
    policy, tokenizer = load_model(dataclasses.replace(cfg.model, name=policy_path))
    reference = FrozenReference(policy, cfg.model.lora.enabled, precision)
    generator = rollout_generator(policy_path, tokenizer, cfg.generation, device, precision)
    value_model, value_path = load_value_model(cfg, policy_path)
    print(f"[align] ppo: policy {policy_path} ({count_parameters(policy)[0]:,} trainable), value model from "
          f"{value_path}, reference = {'policy without adapters' if cfg.model.lora.enabled else 'frozen copy'}")
    trunk_layers = shared_trunk_layers(cfg.model.lora, policy, value_model)
    # A value model made from the policy (or from a reward model trained only above the trunk) has the policy's
    # frozen layers: their states are computed once for both.
    value_shares_trunk = bool(trunk_layers) and trunk_layers[0] == trunk_layers[1] and same_trunk(
        policy, value_model, trunk_layers[0])
    if trunk_layers:
        print(f"[align] ppo: the frozen layers below the adapters ({trunk_layers[0]} of the policy, {trunk_layers[1]} "
              f"of the value model) run once per iteration, shared by every pass"
              + ("; the value model's are the policy's, run once for both" if value_shares_trunk else ""))
    rollout_logprobs = old_logprobs_from_rollout(precision, cfg.train.old_logprobs)
    rollout_trunk = trunk_from_rollout(cfg.train.trunk_states, trunk_layers and trunk_layers[0], generator,
                                       "ppo")
    models = PPOModels(reference, generator, tokenizer, trunk_layers, value_shares_trunk, rollout_logprobs,
                       rollout_trunk)
    return policy, value_model, models, {"policy": policy_path, "reward_model": cfg.reward.reward_model,
                                         "value": value_path}


# ---- the steps of an iteration ------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One iteration's experience, filled in step by step (B responses; [B, R] tensors are right-padded)."""

    rows: list[dict]  # the prompts' dataset rows
    prompt_ids: list[list[int]]  # chat-template tokens of each prompt
    response_ids: list[list[int]]  # each response's tokens, EOS included when it stopped (never empty)
    texts: list[str]  # the responses as text
    finished: list[bool]  # emitted EOS before max_new_tokens
    sampled_logprobs: list[list[float]] | None  # 1. the rollout copy's log-prob of each sampled token, or None
    sampled_states: list[torch.Tensor] | None = None  # 1. the rollout copy's frozen-trunk states, or None
    demonstrated: list[int] = field(default_factory=list)  # 1. the positions of responses replaced by a reference
    # answer (train.demonstration_column), left out of what the iteration's metrics say about the policy's own
    greedy: list[int] = field(default_factory=list)  # 1. the positions of greedy answers (train.greedy_member)
    breakdown: object = None  # 2. the composite reward's total and components (reward.compose.RewardBreakdown)
    reward_log: RewardLog = None  # 2. what the reward functions logged (log_metric, log_extra)
    scores: torch.Tensor = None  # 2. [B] total reward after the missing-EOS penalty
    trunks: tuple = (None, None)  # 3. frozen-trunk states of the policy and the value model, or None
    old_logprobs: torch.Tensor = None  # 3. [B, R] of the policy that generated
    ref_logprobs: torch.Tensor = None  # 3. [B, R] of the reference
    values: torch.Tensor = None  # 3. [B, R] V(s_t)
    mask: torch.Tensor = None  # 3. [B, R] 1 on response tokens
    kl: torch.Tensor = None  # 4. [B, R] per-token KL estimate (0 on padding)
    advantages: torch.Tensor = None  # 4. [B, R]
    returns: torch.Tensor = None  # 4. [B, R]
    timings: dict = field(default_factory=dict)  # seconds per step

    @property
    def prompts(self) -> list:
        return [row["prompt"] for row in self.rows]


def generate_rollout(training: Training, models: PPOModels, rows: list[dict], t: PPOTrainConfig, seed: int,
                     first: int = 0) -> Rollout:
    """1. `completions_per_prompt` responses of each prompt from the current policy's rollout copy
    (`align.rl.sample_completions`; the rows are prompts `first`, `first` + 1, ... of the iteration); with
    `train.greedy_member`, the first response of each prompt is its greedy answer; with
    `train.demonstration_column`, a reference answer replaces a response of each prompt no response followed."""
    states_at = models.trunk_layers[0] if models.rollout_trunk else None
    k = t.completions_per_prompt
    repeated, sampled = sample_completions(training.raw["policy"], models.generator, rows, k, t, seed, first,
                                           states_at)
    sampled, greedy = with_greedy_members(models.generator, repeated, sampled, k, t)
    sampled, replaced = with_demonstrations(repeated, sampled, k, t, models.generator.tokenizer)
    return Rollout(repeated, *sampled, demonstrated=replaced, greedy=greedy)


def score_rollout(rollout: Rollout, reward_fn, columns: list[str], missing_eos_penalty: float, state) -> None:
    """2. The composite reward of each response, its functions called as TRL calls them (`state`: the
    trainer_state they get); one that never emitted EOS loses `missing_eos_penalty`."""
    rollout.breakdown, rollout.reward_log, rollout.scores = penalised_scores(
        reward_fn, rollout.rows, rollout.texts, rollout.response_ids, rollout.finished, columns, missing_eos_penalty,
        state)


@torch.no_grad()
def evaluate_rollout(rollout: Rollout, training: Training, models: PPOModels, t: PPOTrainConfig, device,
                     precision: str) -> None:
    """3. Log-probs of the policy that generated (the rollout's own in fp32 or with train.old_logprobs=rollout, else
    recomputed) and of the reference, and values, per response token (no gradients); a frozen trunk runs once, here,
    for every later pass (or comes from the rollout copy: train.trunk_states)."""
    policy, value_model = training.raw["policy"], training.raw["value"]
    prompts, responses = rollout.prompt_ids, rollout.response_ids
    shared = same_prompt(range(len(responses)), t.completions_per_prompt)  # each prompt computed once, not k times
    with gathered(policy, value_model), autocast(device, precision):  # FSDP2: shards gathered (align.sharding)
        if models.trunk_layers:
            sequences = [p + r for p, r in zip(prompts, responses)]
            policy_trunk = iteration_trunk(policy, models.trunk_layers[0], sequences, rollout.sampled_states,
                                           t.pack_length, shared)
            rollout.trunks = (policy_trunk, policy_trunk if models.value_shares_trunk else
                              trunk_states(value_model, sequences, models.trunk_layers[1], t.pack_length, shared))
        policy_trunk, value_trunk = rollout.trunks
        if models.rollout_logprobs and rollout.sampled_logprobs is not None:
            old = [torch.tensor(lp) for lp in rollout.sampled_logprobs]
        else:
            old = response_logprobs(policy, prompts, responses, t.pack_length, t.temperature, groups=shared,
                                    trunk=policy_trunk)
        ref = models.reference.logprobs(prompts, responses, t.pack_length, t.temperature, groups=shared,
                                        trunk=policy_trunk)
        values = response_values(value_model, prompts, responses, t.pack_length, groups=shared, trunk=value_trunk)
    rollout.old_logprobs, rollout.mask = pad_right(old)
    rollout.ref_logprobs, _ = pad_right(ref)
    rollout.values, _ = pad_right(values)


def compute_advantages(rollout: Rollout, kl_coef: float, t: PPOTrainConfig) -> None:
    """4. Per-token KL, the KL-shaped reward (from the scores, less their leave-one-out baseline if asked for),
    GAE advantages (whitened over every process's responses, as `masked_whiten` over the global batch) and
    returns."""
    rollout.kl = kl_per_token(rollout.old_logprobs, rollout.ref_logprobs, t.kl_estimator) * rollout.mask
    scores = rollout.scores
    if t.score_baseline == "leave_one_out":
        scores = leave_one_out_scores(scores, t.completions_per_prompt)
    rewards = shaped_rewards(scores, rollout.kl, rollout.mask, kl_coef)
    rollout.advantages, rollout.returns = gae_advantages(rewards, rollout.values, rollout.mask, t.gamma, t.lam)
    if t.whiten_advantages:
        rollout.advantages = global_masked_whiten(rollout.advantages, rollout.mask)


def minibatch_loss(training: Training, rollout: Rollout, idx: torch.Tensor, t: PPOTrainConfig, device,
                   precision: str, real: bool = True):
    """The PPO loss of the responses `idx` (with gradients): policy loss + c_v * value loss - c_e * entropy
    (+ c_ul * the responses' token-level unlikelihood per token); returns (loss, stats), this process's part of
    the minibatch's; with `real` False, weight 0 (align.rl.minibatch_updates)."""
    prompts, responses = [rollout.prompt_ids[i] for i in idx], [rollout.response_ids[i] for i in idx]
    width = max(len(r) for r in responses)
    mask = rollout.mask[idx, :width] * float(real)
    policy_trunk, value_trunk = (trunk and trunk.subset(idx) for trunk in rollout.trunks)
    with autocast(device, precision):
        new_lp, entropy, *unlikelihoods = response_logprobs(
            training.models["policy"], prompts, responses, t.pack_length, t.temperature, with_entropy=True,
            trunk=policy_trunk, with_unlikelihood=t.unlikelihood > 0, entropy_grad=t.entropy_coef != 0)
        new_values = response_values(training.models["value"], prompts, responses, t.pack_length, trunk=value_trunk)
    new_lp, entropy = pad_sequence(new_lp, batch_first=True), pad_sequence(entropy, batch_first=True)
    new_values = pad_sequence(new_values, batch_first=True)
    pg_loss, pg_stats = POLICY_LOSSES[t.policy_loss](new_lp.cpu(), rollout.old_logprobs[idx, :width],
                                                     rollout.advantages[idx, :width], mask, t.clip_range)
    vf_loss, vf_stats = value_loss(new_values.cpu(), rollout.values[idx, :width], rollout.returns[idx, :width], mask,
                                   t.value_clip_range)
    mean_entropy = masked_mean(entropy.cpu(), mask)
    # summed over the responses, per response token (as SFT's term); 0 when not asked for
    unlikelihood = (torch.stack(unlikelihoods[0]).sum().cpu() * float(real) / mask.sum().clamp(min=1)
                    if unlikelihoods else torch.zeros(()))
    # during the value warm-up the policy's gradients are 0, so AdamW (without weight decay) leaves it as it is
    policy_weight = 0.0 if training.step < t.value_warmup_iterations else 1.0
    # token means over the minibatch's tokens on every process: this process's part (align.distributed)
    share = token_share(mask)
    policy_terms = pg_loss - t.entropy_coef * mean_entropy + t.unlikelihood * unlikelihood
    loss = (policy_weight * policy_terms + t.value_loss_coef * vf_loss) * share
    stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "entropy": mean_entropy.item(),
             "unlikelihood": unlikelihood.item(), **pg_stats, **vf_stats}
    return loss, {name: value * share for name, value in stats.items()}


def push_down_loops(training: Training, loops: GreedyLoops, t: PPOTrainConfig, device, precision: str) -> dict:
    """5, first: the gradient of c_loop x the sequence-level unlikelihood of this process's greedy continuations
    that loop (`align.losses.sequence_unlikelihood`, a mean over every process's candidate tokens), left in the
    gradients for the first PPO step to add to. Returns the logged statistics."""
    stats = {"greedy_loop_share": global_mean(torch.tensor(loops.looping, dtype=torch.float32))}
    looping = [i for i, loop in enumerate(loops.looping) if loop]
    if not global_sum(len(looping)) or training.step < t.value_warmup_iterations:
        return stats
    # a process without loops still runs a backward, weighted 0 (DDP's all-reduce waits for every process)
    real, idx = bool(looping), looping or [0]
    candidates = torch.tensor([c and real for i in idx for c in loops.candidates[i]])
    with autocast(device, precision):
        logprobs = response_logprobs(training.models["policy"], [loops.prompt_ids[i] for i in idx],
                                     [loops.response_ids[i] for i in idx], t.pack_length)
    loss, count = sequence_unlikelihood(torch.cat(logprobs).float().cpu(), candidates), float(candidates.sum())
    training.backward(t.loop_unlikelihood * loss * count_share(count))
    total, counted = global_sums(loss.detach() * count, count)  # the mean over every process's candidates
    return {**stats, "loop_unlikelihood": total / counted if counted else 0.0}


def ppo_update(training: Training, rollout: Rollout, t: PPOTrainConfig, device, seed: int, precision: str,
               preference: PreferenceTerm | None = None) -> dict[str, float]:
    """5. `ppo_epochs` passes over the responses in shuffled minibatches, an optimiser step each (with
    `preference`, the gradient of c_pref x its DPO term is left in the gradients for each step's to add to, as
    `push_down_loops` does); returns the mean of every statistic over the minibatches."""
    steps = itertools.count(training.step * optimiser_steps(t))  # the run's optimiser steps so far: the pairs' place

    def loss_of(idx, real):
        step, pair_stats = next(steps), {}
        if preference is not None and training.step >= t.value_warmup_iterations:  # not while the policy waits
            pair_loss, pair_stats = preference.loss(training.models["policy"], training.raw["policy"], step,
                                                    device, precision)
            training.backward(t.preference_coef * pair_loss)
        loss, stats = minibatch_loss(training, rollout, idx, t, device, precision, real)
        return loss, {**stats, **pair_stats}

    return minibatch_updates(training, torch.arange(len(rollout.rows)), t.ppo_epochs, t.minibatch_size, seed,
                             loss_of)


def optimiser_steps(t: PPOTrainConfig) -> int:
    """Optimiser steps per iteration: `ppo_epochs` passes over minibatches of the iteration's responses."""
    return t.ppo_epochs * -(-t.prompts_per_iteration * t.completions_per_prompt // t.minibatch_size)


def iteration_metrics(rollout: Rollout, kl_coef: float, stats: dict[str, float]) -> dict[str, float]:
    """Everything an RL run is judged by, including reward-hacking signals (names without the `ppo/` prefix),
    over the responses of every process (call it on every process); the timings are this process's. What the
    responses did (rewards, pass rates, length, EOS, loops) is said of the policy's own: demonstrations left out."""
    breakdown, reward_log, rows, texts, lengths, finished = global_completions(
        rollout.breakdown, rollout.reward_log, rollout.rows, rollout.texts, [len(r) for r in rollout.response_ids],
        rollout.finished, leave_out=rollout.demonstrated)
    return {
        **reward_log.metric_means(),  # what the reward functions logged (log_metric); align's own win
        **completion_metrics(breakdown, rows, texts, lengths, finished),
        "reward/score": global_mean(rollout.scores),  # total after the missing-EOS penalty
        "kl": global_mean(rollout.kl.sum(1)), "kl_coef": kl_coef,
        "value_explained_variance": explained_variance(rollout.values, rollout.returns, rollout.mask,
                                                       global_masked_mean),
        **stats, **{f"time/{k}": v for k, v in rollout.timings.items()},
    }


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: PPOConfig, *, restart: bool = False) -> Path:
    return run_stage(cfg, restart, proximal_policy_optimisation)


def check_batch(t: PPOTrainConfig, processes: int) -> None:
    """The prompts of an iteration split evenly between the processes, at least one response per prompt, and an
    iteration holds at least one minibatch (both sizes count the responses of every process)."""
    check_prompt_split(t.prompts_per_iteration, processes)
    if t.completions_per_prompt < 1:
        raise ConfigError(f"train.completions_per_prompt={t.completions_per_prompt}: at least 1 response per prompt")
    responses = t.prompts_per_iteration * t.completions_per_prompt
    if t.minibatch_size > responses:
        raise ConfigError(f"train.minibatch_size={t.minibatch_size} is larger than the {responses} responses of an "
                          f"iteration (train.prompts_per_iteration x train.completions_per_prompt): no minibatch is "
                          f"ever full")


def proximal_policy_optimisation(stage: Stage) -> None:
    cfg, t, device, accelerator = stage.cfg, stage.cfg.train, stage.accelerator.device, stage.accelerator

    # models (policy and value model trained; reference and rollout copy frozen), prompts and the composite reward,
    # checked now rather than at the first step
    policy, value_model, models, parents = load_models(cfg, device, stage.precision)
    rows, report = load_rows(cfg.data.train, "prompt", cfg.data)
    columns = dataset_columns(rows)
    reward_fn = build_reward(cfg.reward, cfg.run, columns, device=device)
    print(f"[align] ppo: {len(rows)} prompts from {report.source}; reward = {reward_fn.describe()}")
    check_batch(t, accelerator.num_processes)
    check_demonstrations(rows, t.demonstration_column, report.source)
    # with train.preference_pairs, a DPO term in every optimiser step (align.preference_term); else None
    preference = load_preference_term(cfg, models.tokenizer, models.reference,
                                      models.trunk_layers and models.trunk_layers[0])
    kl = {"coef": t.kl_coef}  # beta, adapted after every iteration when train.adaptive_kl
    training = Training(stage, {"policy": policy, "value": value_model}, t, t.iterations,
                        learning_rates={"value": t.value_learning_rate},
                        state=lambda: {"kl_coef": kl["coef"], "reward": reward_fn.state_dict()},
                        manifest=dict(base_model=parents["policy"], data_fingerprint=data_fingerprint(rows),
                                      parents=parents))
    if training.resumed_state:
        kl["coef"] = training.resumed_state["kl_coef"]
        reward_fn.load_state_dict(training.resumed_state["reward"])

    while training.step < t.iterations:
        iteration, timer = training.step, StepTimer()
        # 1. generate with the rollout copy of the current policy
        batch, seed, first = iteration_prompts(rows, iteration, t.prompts_per_iteration, cfg.run.seed, accelerator)
        rollout = generate_rollout(training, models, batch, t, seed, first)
        timer.lap("generate")
        loops = None
        if t.loop_unlikelihood:  # 1b. greedy continuations of the same prompts: the loops evaluation will see
            loops = (greedy_loops_in(rollout, rollout.greedy) if t.greedy_member else
                     greedy_loops(models.generator, batch, t.max_new_tokens))
            timer.lap("greedy")
        # 2. composite reward at the end of each response
        score_rollout(rollout, reward_fn, columns, t.missing_eos_penalty, trainer_state(iteration, t.iterations))
        timer.lap("score")
        # 3. old and reference log-probs, values; 4. KL-shaped rewards, advantages and returns
        evaluate_rollout(rollout, training, models, t, device, stage.precision)
        compute_advantages(rollout, kl["coef"], t)
        timer.lap("logprobs")
        # 5. PPO epochs over minibatches
        training.plan_learning_rate()
        loop_stats = push_down_loops(training, loops, t, device, stage.precision) if loops is not None else {}
        stats = ppo_update(training, rollout, t, device, cfg.run.seed * 7919 + iteration, stage.precision,
                           preference)
        stats.update(loop_stats)
        if t.demonstration_column:  # the share of the iteration's responses that were reference answers
            stats["demonstrations"] = demonstrated_share(len(rollout.rows), rollout.demonstrated)
        if t.greedy_member and not t.loop_unlikelihood:  # the share of the iteration's greedy answers that loop
            # (with train.loop_unlikelihood, push_down_loops has logged it, from the same answers)
            stats["greedy_loop_share"] = loop_share_at(rollout.texts, rollout.greedy)
        timer.lap("update")
        rollout.timings = timer.seconds
        # 6. adapt beta; log, checkpoint
        if t.adaptive_kl:  # the KL of every process's responses, so every process keeps the same beta
            kl["coef"] = adaptive_kl_coef(kl["coef"], global_mean(rollout.kl.sum(1)), t.kl_target, t.kl_horizon,
                                          t.prompts_per_iteration * t.completions_per_prompt)

        def log() -> dict:
            log_samples(stage.tracker, "ppo/samples", iteration + 1, rollout.prompts, rollout.texts,
                        rollout.breakdown, t.sample_table_rows, step_column="iteration", extra=rollout.reward_log.extra)
            return iteration_metrics(rollout, kl["coef"], stats)

        training.end_step(log=log)

    training.finish(models.tokenizer, model="policy")
    if stage.main:
        logged = read_logged(stage.out)
        last = last_metrics(logged)
        summary = {"ppo/iterations": training.step, "ppo/kl_coef": kl["coef"],
                   "ppo/kl_within_target": float(last.get("ppo/kl", 0.0) <= t.kl_target)}
        stage.complete({**last, **summary}, training.step, [
            f"mean KL to the reference at the last iteration: {last.get('ppo/kl', float('nan')):.3f} nats per "
            f"response (train.kl_target={t.kl_target})",
            f"load it with: AutoModelForCausalLM.from_pretrained('{stage.out}')"],
            windows=window_means(logged, "ppo/"))
