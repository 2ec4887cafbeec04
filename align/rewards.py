"""The `reward:` section of the RL stages' configs, building its composite reward at stage start, and calling it
as TRL's GRPOTrainer calls reward functions.

    reward:
      reward_model: rm            # an earlier stage of the run, a reward-model directory, or null
      reward_model_weight: 1.0
      normalize: none             # none | batch | running (per-component z-scores before weighting)
      functions:
        - name: instruction_following
          weight: 1.0
        - name: my_rewards.py:brevity    # relative to the config file's folder, then the working directory
          weight: 0.2

Every stage that calls reward functions (PPO, GRPO) goes through `score_completions`, so a function sees the same
arguments in each, and the same as in TRL (trl 1.16, GRPOTrainer._calculate_rewards): `prompts` as the dataset
has them; `completions` as chat messages `[{"role": "assistant", "content": text}]` when the prompts are
conversational (`trl.data_utils.is_conversational`, TRL's own test), as strings when they are standard (plain
text); one keyword per dataset column; and TRL's extra keywords `completion_ids` (each completion's token ids, EOS
included when it stopped), `trainer_state` (a transformers TrainerState: `global_step`, `max_steps`, ...),
`log_metric(name, value)` (logged as `<stage>/<name>`, the mean over the step) and `log_extra(column, values)`
(one value per sample: a column of the stage's sample table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reward.compose import TRL_EXTRA_KWARGS, CompositeReward, RewardBreakdown, RewardFunctionConfig
from reward.resolve import build_components


@dataclass
class RewardConfig:
    reward_model: str | None = "rm"  # an earlier stage of the run (rm), a reward-model directory, or null
    reward_model_weight: float = 1.0  # weight of the reward model's score in the total
    normalize: Literal["none", "batch", "running"] = "none"  # z-score each component (over the batch, or
        # running statistics) before weighting
    # reward functions, each {name, weight, kwargs, factory_kwargs}: a built-in, package.module:function or
    # file.py:function (see reward.functions[] below)
    functions: list[RewardFunctionConfig] = field(
        default_factory=lambda: [RewardFunctionConfig(name="instruction_following", weight=1.0)]
    )
    config_dir: str | None = None  # where relative `file.py:function` names are looked up first (set by the CLI)


def dataset_columns(rows: list[dict]) -> list[str]:
    """The columns of prompt rows passed to reward functions as keywords: every key but those TRL leaves out."""
    return sorted({key for row in rows for key in row} - {"prompt", "completion", "completion_ids"})


def check_functions(cfg: RewardConfig, columns: list[str]) -> list[str]:
    """Resolve and check every configured function (factories called) as a stage would at its start, without
    loading the reward model; returns the component names (what `align validate` reports)."""
    base_dir = Path(cfg.config_dir) if cfg.config_dir else None
    return [name for name, _, _ in build_components(cfg.functions, base_dir, set(columns) | TRL_EXTRA_KWARGS)]


def build_reward(cfg: RewardConfig, run, columns: list[str], device=None) -> CompositeReward:
    """Resolve and check every component now (not at step 1): the reward model loads, every function exists,
    is callable and accepts (prompts, completions, **columns, **TRL's extra keywords)."""
    reward_model = None
    if cfg.reward_model:
        from align.stage import resolve_stage_model
        from align.values import load_reward_model

        path = resolve_stage_model(cfg.reward_model, run)
        reward_model = load_reward_model(path)  # bf16 where native, else fp32
        if device is not None:
            reward_model.model.to(device)
    from align.distributed import gather_list

    reward = CompositeReward.from_config(
        cfg.functions,
        reward_model=reward_model,
        reward_model_weight=cfg.reward_model_weight,
        normalize=cfg.normalize,
        base_dir=Path(cfg.config_dir) if cfg.config_dir else None,
        columns=set(columns) | TRL_EXTRA_KWARGS,
    )
    reward.gather = gather_list  # batch and running normalisation over every process's samples
    return reward


# --- calling it the TRL way -----------------------------------------------------------------------------------


def trl_completions(prompts: list, texts: list[str]) -> list:
    """Completions in the form TRL hands reward functions for these prompts: `[{"role": "assistant", "content":
    text}]` each when the prompts are conversational (decided on the first, as TRL does), the texts otherwise."""
    from trl.data_utils import is_conversational

    if prompts and is_conversational({"prompt": prompts[0]}):
        return [[{"role": "assistant", "content": text}] for text in texts]
    return list(texts)


def trainer_state(step: int, max_steps: int):
    """What TRL passes as `trainer_state`, for a stage TRL does not run: a transformers TrainerState at `step`
    completed optimiser steps (iterations) of `max_steps`."""
    from transformers import TrainerState

    return TrainerState(global_step=step, max_steps=max_steps)


@dataclass
class RewardLog:
    """What reward functions reported through `log_metric` and `log_extra` while one batch was scored."""

    metrics: dict[str, list[float]] = field(default_factory=dict)  # name -> every value logged
    extra: dict[str, list] = field(default_factory=dict)  # column -> one value per sample

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        self.extra.setdefault(column, []).extend(values)

    def metric_means(self) -> dict[str, float]:
        """Each logged metric's mean over the batch (as TRL averages them over a logging step)."""
        return {name: sum(values) / len(values) for name, values in self.metrics.items() if values}


def score_completions(reward: CompositeReward, rows: list[dict], texts: list[str], completion_ids: list[list[int]],
                      columns: list[str], state: Any,
                      log_metric: Callable[[str, float], None] | None = None) -> tuple[RewardBreakdown, RewardLog]:
    """Score the completions `texts` of `rows`' prompts with the arguments TRL gives reward functions (see the
    module docstring). `log_metric`: where the functions' metrics go (TRL's, in GRPO); by default they are kept
    in the returned RewardLog, with the `log_extra` columns."""
    log = RewardLog()
    prompts = [row["prompt"] for row in rows]
    breakdown = reward(prompts, trl_completions(prompts, texts), completion_ids=completion_ids, trainer_state=state,
                       log_extra=log.log_extra, log_metric=log_metric or log.log_metric,
                       **{column: [row.get(column) for row in rows] for column in columns})
    return breakdown, log
