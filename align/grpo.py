"""GRPO: critic-free RL from the SFT policy, with the composite reward of PPO and no value model.

    align grpo configs/grpo.yaml [key.path=value ...]

For each prompt the policy samples a group of k = `completions_per_prompt` completions; a completion's advantage is
its reward relative to its own group (Shao et al. 2024, DeepSeekMath, section 4.1), and every one of its tokens
shares it. The group replaces PPO's value model: that is the whole point. Each iteration, as numbered steps passing
a `Groups` from step to step:
1. take the iteration's prompts (align.rl.iteration_rows); sample k completions of each with the generation engine,
   from a rollout copy of the policy whose weights are refreshed every iteration (with adapters on the top layers
   only, just those layers: the rest never changes); with `demonstration_column`, a prompt whose completions all
   fail it gets the row's reference answer in place of its last completion (align.rl.demonstrate_failed_prompts);
2. score each completion with the composite reward (reward model, verifiers, your functions) through
   align.rewards.score_completions, TRL's calling convention; one that never emitted EOS loses
   `missing_eos_penalty`;
3. old log-probs: the rollout's own when it computes in fp32, the policy's precision, since they equal the training
   forward's to float precision (tests/align/test_engine.py); none when the update is one optimiser step on every
   completion (`one_step_on_policy`: the loss's own, detached, are the old ones); otherwise recomputed. Reference
   log-probs (with LoRA: the policy with its adapters off); with adapters on the top layers only, the frozen
   layers below run once per iteration, shared by every pass. These passes compute each prompt once for its k
   completions (`same_prompt`);
4. the per-token KL to the reference (`kl_estimator`); with `kl_in: reward`, r <- r - beta * sum_t KL_t; then the
   group-relative advantages (`advantages`, align.losses.ADVANTAGES). A group whose rewards are all equal has
   advantages 0; `skip_equal_groups` leaves it out of the update (DAPO's dynamic-sampling filter);
5. `updates_per_batch` passes over the completions in shuffled minibatches, an optimiser step each: the clipped
   surrogate (asymmetric with `clip_range_high`, DAPO's clip-higher) plus, with `kl_in: loss`, beta * KL_t per
   token, added up over tokens by `loss` (align.losses.GRPO_LOSSES: grpo, dr_grpo, dapo);
6. log (grpo/...), checkpoint, stop: the `Training` shell, as every stage.
The maths lives in align.losses; tests/align/test_losses.py checks it against hand-derived values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from align.data import DataConfig, data_fingerprint, load_rows
from align.logprobs import FrozenReference, frozen_trunk_layers, response_logprobs
from align.distributed import count_share, global_mean, global_sum, token_share
from align.losses import (ADVANTAGES, GRPO_TOKEN_MEANS, AdvantageName, GRPOLossName, equal_groups, group_policy_loss,
                          kl_per_token, masked_mean)
from align.loop import RLTrainConfig, Training
from align.models import LoraConfig, ModelConfig, count_parameters, load_model
from align.precision import autocast
from align.rewards import RewardConfig, RewardLog, build_reward, dataset_columns, trainer_state
from align.rl import (StepTimer, check_demonstrations, check_prompt_split, completion_metrics, demonstrated_share,
                      global_completions, iteration_prompts, iteration_trunk, last_metrics, log_samples,
                      loop_share_at, minibatch_updates, old_logprobs_from_rollout, pad_right, penalised_scores,
                      read_logged, rollout_generator, same_prompt, sample_completions, trunk_from_rollout,
                      window_means, with_demonstrations, with_greedy_members)
from align.rollout import GenerationConfig, TextGenerator
from align.sharding import gathered
from align.stage import RunConfig, Stage, resolve_stage_model, run_stage
from align.tracking import TrackingConfig


@dataclass
class GRPOTrainConfig(RLTrainConfig):
    iterations: int = 20  # sample -> score -> update cycles
    prompts_per_iteration: int = 4  # prompts sampled for per iteration (all processes together)
    completions_per_prompt: int = 4  # k: the group each completion's advantage is relative to (at least 2)
    updates_per_batch: int = 1  # passes over each iteration's completions (GRPO's mu)
    minibatch_size: int = 16  # completions per optimiser step, drawn from those of every process
    loss: GRPOLossName = "grpo"  # how token losses add up (align.losses.GRPO_LOSSES): grpo (per-completion mean,
        # then mean), dr_grpo (sum / (completions x max_new_tokens)), dapo (mean over every token)
    advantages: AdvantageName = "grpo"  # align.losses.ADVANTAGES: grpo ((r - mean) / (std + eps)), dr_grpo
        # (r - mean), rloo (r minus the mean of the other k - 1)
    clip_range: float = 0.2  # epsilon of the clipped surrogate (its lower side when clip_range_high is set)
    clip_range_high: float | None = None  # upper epsilon (DAPO's clip-higher: 0.28); null: clip_range
    kl_coef: float = 0.04  # beta: weight of the per-token KL to the reference
    kl_estimator: Literal["k1", "k3"] = "k3"  # per-token KL estimate (align.losses.kl_per_token): k3 as GRPO
    kl_in: Literal["loss", "reward", "none"] = "loss"  # loss: beta * KL_t added to each token's loss (GRPO);
        # reward: beta * sum_t KL_t subtracted from the reward before the advantages; none: no reference at all
    skip_equal_groups: bool = False  # leave groups whose rewards are all equal (advantages 0) out of the update
        # (DAPO's dynamic-sampling filter); counted in grpo/equal_groups_skipped
    missing_eos_penalty: float = 1.0  # subtracted from the reward of a completion that never emitted EOS
    pack_length: int = 1024  # tokens per packed row in the log-prob and update passes
    sample_table_rows: int = 4  # completions logged per iteration (the first prompt's group first), with rewards

    def __post_init__(self) -> None:
        if self.completions_per_prompt < 2:
            raise ValueError(f"train.completions_per_prompt is {self.completions_per_prompt}; a group needs at "
                             "least 2 completions per prompt (each is scored against the others of its group)")
        for key in ("iterations", "prompts_per_iteration", "max_new_tokens", "updates_per_batch", "minibatch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be at least 1, got {getattr(self, key)}")


@dataclass
class GRPOConfig:
    stage: Literal["grpo"] = "grpo"  # the stage this file configures: `align grpo` refuses any other
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="sft", lora=LoraConfig(enabled=True)))
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="builtin:prompts:train", eval="builtin:prompts:heldout")
    )
    reward: RewardConfig = field(default_factory=RewardConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # how completions are decoded
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- models -----------------------------------------------------------------------------------------------------


@dataclass
class GRPOModels:
    """The models of a GRPO run besides the trained policy (which `Training` holds)."""

    reference: FrozenReference | None  # the SFT policy (with LoRA: the policy, adapters off); None with kl_in none
    generator: TextGenerator  # a copy of the policy that samples the completions; refreshed every iteration
    tokenizer: object
    trunk_layers: int | None  # frozen layers run once per iteration (`align.logprobs.frozen_trunk_layers`)
    rollout_logprobs: bool  # the old log-probs are the rollout's own (fp32, or train.old_logprobs=rollout)
    rollout_trunk: bool  # the frozen-trunk states are the rollout copy's (`align.rl.trunk_from_rollout`)


def load_models(cfg: GRPOConfig, device, precision: str) -> tuple[object, GRPOModels, str]:
    """(policy, the other models, the policy's path)."""
    policy_path = resolve_stage_model(cfg.model.name, cfg.run)
    policy, tokenizer = load_model(dataclasses.replace(cfg.model, name=policy_path))
    reference = FrozenReference(policy, cfg.model.lora.enabled, precision) if cfg.train.kl_in != "none" else None
    generator = rollout_generator(policy_path, tokenizer, cfg.generation, device, precision)
    trunk_layers = frozen_trunk_layers(cfg.model.lora, policy)
    reference_is = ("none (kl_in: none)" if reference is None else
                    "policy without adapters" if cfg.model.lora.enabled else "frozen copy")
    print(f"[align] grpo: policy {policy_path} ({count_parameters(policy)[0]:,} trainable), reference = "
          f"{reference_is}" + (f"; the {trunk_layers} frozen layers below the adapters run once per iteration"
                               if trunk_layers else ""))
    rollout_logprobs = old_logprobs_from_rollout(precision, cfg.train.old_logprobs)
    rollout_trunk = trunk_from_rollout(cfg.train.trunk_states, trunk_layers, generator, "grpo")
    models = GRPOModels(reference, generator, tokenizer, trunk_layers, rollout_logprobs, rollout_trunk)
    return policy, models, policy_path


# ---- the steps of an iteration ------------------------------------------------------------------------------------


@dataclass
class Groups:
    """One iteration's completions, P prompts x k completions laid out group by group (completion i belongs to
    prompt i // k), filled in step by step. B = P * k; [B, R] tensors are right-padded."""

    rows: list[dict]  # each completion's dataset row (a prompt's row k times)
    k: int  # completions per prompt
    prompt_ids: list[list[int]]  # chat-template tokens of each completion's prompt
    response_ids: list[list[int]]  # each completion's tokens, EOS included when it stopped (never empty)
    texts: list[str]  # the completions as text
    finished: list[bool]  # emitted EOS before max_new_tokens
    sampled_logprobs: list[list[float]] | None  # 1. the rollout copy's log-prob of each sampled token, or None
    sampled_states: list[torch.Tensor] | None = None  # 1. the rollout copy's frozen-trunk states, or None
    demonstrated: list[int] = field(default_factory=list)  # 1. the positions of completions replaced by a reference
    # answer (train.demonstration_column), left out of what the iteration's metrics say about the policy's own
    greedy: list[int] = field(default_factory=list)  # 1. the positions of greedy answers (train.greedy_member)
    breakdown: object = None  # 2. the composite reward's total and components (reward.compose.RewardBreakdown)
    reward_log: RewardLog = None  # 2. what the reward functions logged (log_metric, log_extra)
    scores: torch.Tensor = None  # 2. [B] total reward after the missing-EOS penalty
    trunk: object = None  # 3. the policy's frozen-trunk states, or None
    old_logprobs: torch.Tensor = None  # 3. [B, R] of the policy that sampled (None: the loss's own, detached)
    ref_logprobs: torch.Tensor = None  # 3. [B, R] of the reference (None with kl_in none)
    mask: torch.Tensor = None  # 3. [B, R] 1 on completion tokens
    kl: torch.Tensor = None  # 4. [B, R] per-token KL estimate (0 on padding; None with kl_in none)
    advantages: torch.Tensor = None  # 4. [B]
    equal: torch.Tensor = None  # 4. [P] groups whose rewards are all equal
    train_index: torch.Tensor = None  # 4. the completions the update trains on
    timings: dict = field(default_factory=dict)  # seconds per step

    @property
    def prompts(self) -> list:
        return [row["prompt"] for row in self.rows]


def sample_groups(training: Training, models: GRPOModels, rows: list[dict], t: GRPOTrainConfig, seed: int,
                  first: int = 0) -> Groups:
    """1. k completions of each prompt from the current policy's rollout copy (`align.rl.sample_completions`; the
    rows are prompts `first`, `first` + 1, ... of the iteration); with `train.greedy_member`, the first completion
    of each prompt is its greedy answer (`align.rl.with_greedy_members`); with `train.demonstration_column`, a
    reference answer replaces a completion of each prompt no completion followed (`align.rl.with_demonstrations`)."""
    k = t.completions_per_prompt
    states_at = models.trunk_layers if models.rollout_trunk else None
    repeated, sampled = sample_completions(training.raw["policy"], models.generator, rows, k, t, seed, first,
                                           states_at)
    sampled, greedy = with_greedy_members(models.generator, repeated, sampled, k, t)
    sampled, replaced = with_demonstrations(repeated, sampled, k, t, models.generator.tokenizer)
    return Groups(repeated, k, *sampled, demonstrated=replaced, greedy=greedy)


def score_groups(groups: Groups, reward_fn, columns: list[str], missing_eos_penalty: float, state) -> None:
    """2. The composite reward of each completion, its functions called as TRL calls them (`state`: the
    trainer_state they get); one that never emitted EOS loses `missing_eos_penalty`."""
    groups.breakdown, groups.reward_log, groups.scores = penalised_scores(
        reward_fn, groups.rows, groups.texts, groups.response_ids, groups.finished, columns, missing_eos_penalty,
        state)


@torch.no_grad()
def evaluate_groups(groups: Groups, training: Training, models: GRPOModels, t: GRPOTrainConfig, device,
                    precision: str) -> None:
    """3. Log-probs of the policy that sampled (the rollout's own in fp32 or with train.old_logprobs=rollout, else
    recomputed) and of the reference, per completion token (no gradients); a frozen trunk runs once, here, for every
    later pass (or comes from the rollout copy: train.trunk_states)."""
    policy, prompts, responses = training.raw["policy"], groups.prompt_ids, groups.response_ids
    shared = same_prompt(range(len(responses)), groups.k)  # each prompt computed once, not k times
    with gathered(policy), autocast(device, precision):  # FSDP2: shards gathered (align.sharding)
        if models.trunk_layers:
            groups.trunk = iteration_trunk(policy, models.trunk_layers, [p + r for p, r in zip(prompts, responses)],
                                           groups.sampled_states, t.pack_length, shared)
        if models.rollout_logprobs and groups.sampled_logprobs is not None:
            old = [torch.tensor(lp) for lp in groups.sampled_logprobs]
        elif one_step_on_policy(t):
            old = None
        else:
            old = response_logprobs(policy, prompts, responses, t.pack_length, t.temperature, groups=shared,
                                    trunk=groups.trunk)
        if models.reference is not None:
            ref = models.reference.logprobs(prompts, responses, t.pack_length, t.temperature, groups=shared,
                                            trunk=groups.trunk)
            groups.ref_logprobs, _ = pad_right(ref)
    if old is None:
        groups.mask = pad_right([torch.zeros(len(r)) for r in responses])[1]
    else:
        groups.old_logprobs, groups.mask = pad_right(old)


def one_step_on_policy(t: GRPOTrainConfig) -> bool:
    """Whether the update is a single optimiser step on every completion of the iteration, with the KL in the loss
    (or none): then the policy the loss sees is the policy that sampled, its old log-probs are the loss's own
    (detached; the ratio is 1 and its gradient the policy gradient), and they need no pass of their own. TRL's
    GRPOTrainer does the same when num_iterations is 1."""
    return (t.updates_per_batch == 1 and t.minibatch_size >= t.prompts_per_iteration * t.completions_per_prompt
            and t.kl_in != "reward" and not t.skip_equal_groups)  # (every completion's KL is then logged)


def group_advantages(groups: Groups, t: GRPOTrainConfig) -> None:
    """4. Per-token KL to the reference; the rewards (minus beta * sum_t KL_t with kl_in reward) as [P, k] groups;
    each completion's group-relative advantage; the completions the update trains on (every one, or those of
    groups whose rewards differ with skip_equal_groups)."""
    rewards = groups.scores
    if groups.ref_logprobs is not None and groups.old_logprobs is None:
        groups.kl = torch.zeros_like(groups.mask)  # filled in by the update (`minibatch_loss`)
    elif groups.ref_logprobs is not None:
        groups.kl = kl_per_token(groups.old_logprobs, groups.ref_logprobs, t.kl_estimator) * groups.mask
        if t.kl_in == "reward":
            rewards = rewards - t.kl_coef * groups.kl.sum(1)
    rewards = rewards.view(-1, groups.k)  # [P, k]
    groups.equal = equal_groups(rewards)
    groups.advantages = ADVANTAGES[t.advantages](rewards).flatten()
    keep = ~groups.equal.repeat_interleave(groups.k) if t.skip_equal_groups else torch.ones(len(rewards) * groups.k,
                                                                                           dtype=torch.bool)
    groups.train_index = keep.nonzero().flatten()


def minibatch_loss(training: Training, groups: Groups, idx: torch.Tensor, t: GRPOTrainConfig, device,
                   precision: str, real: bool = True):
    """The loss of the completions `idx` (with gradients): the clipped surrogate plus, with kl_in loss, beta * KL_t,
    added up by `t.loss`; returns (loss, stats), this process's part of the minibatch's; with `real` False,
    weight 0 (align.rl.minibatch_updates)."""
    prompts, responses = [groups.prompt_ids[i] for i in idx], [groups.response_ids[i] for i in idx]
    width = max(len(r) for r in responses)
    mask = groups.mask[idx, :width] * float(real)
    with autocast(device, precision):
        new_lp, entropy = response_logprobs(training.models["policy"], prompts, responses, t.pack_length,
                                            t.temperature, with_entropy=True, entropy_grad=False,  # logged only
                                            trunk=groups.trunk and groups.trunk.subset(idx))
    new_lp, entropy = pad_sequence(new_lp, batch_first=True).cpu(), pad_sequence(entropy, batch_first=True).cpu()
    old = new_lp.detach() if groups.old_logprobs is None else groups.old_logprobs[idx, :width]
    if groups.old_logprobs is None and groups.ref_logprobs is not None and real:  # the iteration's KL, logged
        groups.kl[idx, :width] = kl_per_token(old, groups.ref_logprobs[idx, :width], t.kl_estimator) * mask
    penalty = None
    if t.kl_in == "loss" and t.kl_coef:
        penalty = t.kl_coef * kl_per_token(new_lp, groups.ref_logprobs[idx, :width], t.kl_estimator)
    loss, stats = group_policy_loss(new_lp, old, groups.advantages[idx], mask, t.loss,
                                    t.clip_range, t.clip_range_high, t.max_new_tokens, penalty)
    # The processes hold different numbers of the minibatch's completions (and tokens): a mean over this
    # process's completions or tokens, times its share of them, is its part of the minibatch's mean
    tokens = token_share(mask)
    loss = loss * (tokens if t.loss in GRPO_TOKEN_MEANS else count_share(len(idx) * float(real)))
    stats = {"entropy": masked_mean(entropy, mask).item() * tokens,
             **{name: value * tokens for name, value in stats.items()}}
    return loss, {"policy_loss": loss.item(), **stats}


def iteration_metrics(groups: Groups, stats: dict[str, float], t: GRPOTrainConfig) -> dict[str, float]:
    """Everything an RL run is judged by, including reward-hacking signals (names without the `grpo/` prefix),
    over the completions of every process (call it on every process); the timings are this process's."""
    breakdown, reward_log, rows, texts, lengths, finished = global_completions(
        groups.breakdown, groups.reward_log, groups.rows, groups.texts, [len(r) for r in groups.response_ids],
        groups.finished, leave_out=groups.demonstrated)
    metrics = {
        **reward_log.metric_means(),  # what the reward functions logged (log_metric); align's own win
        **completion_metrics(breakdown, rows, texts, lengths, finished),
        "reward/score": global_mean(groups.scores),  # total after the missing-EOS penalty
        "equal_group_fraction": global_mean(groups.equal.float()),
        "equal_groups_skipped": int(global_sum(groups.equal.sum())) if t.skip_equal_groups else 0,
        "advantage_abs_mean": global_mean(groups.advantages.abs()),
        **({"demonstrations": demonstrated_share(len(groups.rows), groups.demonstrated)}
           if t.demonstration_column else {}),  # the share of the completions that were reference answers
        **({"greedy_loop_share": loop_share_at(groups.texts, groups.greedy)}
           if t.greedy_member else {}),  # the share of the greedy answers that loop
        **stats, **{f"time/{k}": v for k, v in groups.timings.items()},
    }
    if groups.kl is not None:
        metrics["kl"] = global_mean(groups.kl.sum(1))  # nats per completion, from the old log-probs (the loss's)
    return metrics


# ---- the stage --------------------------------------------------------------------------------------------------


def train(cfg: GRPOConfig, *, restart: bool = False) -> Path:
    return run_stage(cfg, restart, group_relative_policy_optimisation)


def group_relative_policy_optimisation(stage: Stage) -> None:
    cfg, t, device, accelerator = stage.cfg, stage.cfg.train, stage.accelerator.device, stage.accelerator
    check_prompt_split(t.prompts_per_iteration, accelerator.num_processes)

    # models (policy trained; reference and rollout copy frozen), prompts and the composite reward, checked now
    # rather than at the first step
    policy, models, policy_path = load_models(cfg, device, stage.precision)
    rows, report = load_rows(cfg.data.train, "prompt", cfg.data)
    check_demonstrations(rows, t.demonstration_column, report.source)
    columns = dataset_columns(rows)
    reward_fn = build_reward(cfg.reward, cfg.run, columns, device=device)
    reward_model = resolve_stage_model(cfg.reward.reward_model, cfg.run) if cfg.reward.reward_model else None
    print(f"[align] grpo: {len(rows)} prompts from {report.source}, {t.prompts_per_iteration} x "
          f"{t.completions_per_prompt} completions per iteration; reward = {reward_fn.describe()}")
    training = Training(stage, {"policy": policy}, t, t.iterations, throughput="completions",
                        state=lambda: {"reward": reward_fn.state_dict()},
                        manifest={"base_model": policy_path, "data_fingerprint": data_fingerprint(rows),
                                  "parents": {"policy": policy_path, "reward_model": reward_model},
                                  "data": {"train": cfg.data.train, "prompts": len(rows),
                                           "bad_rows_skipped": len(report.bad_rows)}})
    if training.resumed_state:
        reward_fn.load_state_dict(training.resumed_state["reward"])

    while training.step < t.iterations:
        iteration, timer = training.step, StepTimer()
        # 1. k completions per prompt from the rollout copy of the current policy
        batch, seed, first = iteration_prompts(rows, iteration, t.prompts_per_iteration, cfg.run.seed, accelerator)
        groups = sample_groups(training, models, batch, t, seed, first)
        timer.lap("generate")
        # 2. composite reward of each completion
        score_groups(groups, reward_fn, columns, t.missing_eos_penalty, trainer_state(iteration, t.iterations))
        timer.lap("score")
        # 3. old and reference log-probs; 4. KL, group-relative advantages
        evaluate_groups(groups, training, models, t, device, stage.precision)
        group_advantages(groups, t)
        timer.lap("logprobs")
        # 5. updates_per_batch passes over minibatches
        training.plan_learning_rate()
        stats = minibatch_updates(training, groups.train_index, t.updates_per_batch, t.minibatch_size,
                                  cfg.run.seed * 7919 + iteration,
                                  lambda idx, real, g=groups: minibatch_loss(training, g, idx, t, device,
                                                                             stage.precision, real))
        timer.lap("update")
        groups.timings = timer.seconds
        training.count(len(groups.rows))

        # 6. log, checkpoint, stop
        def log(groups=groups, stats=stats, iteration=iteration) -> dict:
            log_samples(stage.tracker, "grpo/samples", iteration + 1, groups.prompts, groups.texts, groups.breakdown,
                        t.sample_table_rows, step_column="iteration", extra=groups.reward_log.extra)
            return iteration_metrics(groups, stats, t)

        training.end_step(log=log)

    training.finish(models.tokenizer, model="policy")
    if stage.main:
        logged = read_logged(stage.out)
        last = last_metrics(logged)
        stage.complete({**last, "grpo/iterations": training.step}, training.step, [
            (f"mean reward at the last iteration: {last.get('grpo/reward/total', float('nan')):.3f}; KL to the "
             f"reference: {last.get('grpo/kl', float('nan')):.3f} nats per completion"),
            f"load it with: AutoModelForCausalLM.from_pretrained('{stage.out}')"],
            windows=window_means(logged, "grpo/"))
