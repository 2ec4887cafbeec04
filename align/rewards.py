"""The `reward:` section of the RL stages' configs, and building its composite reward at stage start.

    reward:
      reward_model: rm            # an earlier stage of the run, a reward-model directory, or null
      reward_model_weight: 1.0
      normalize: none             # none | batch | running (per-component z-scores before weighting)
      functions:
        - name: instruction_following
          weight: 1.0
        - name: my_rewards.py:brevity    # relative to the config file's folder, then the working directory
          weight: 0.2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reward.compose import CompositeReward, RewardFunctionConfig


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


def build_reward(cfg: RewardConfig, run, columns: set[str] | None = None, device=None) -> CompositeReward:
    """Resolve and check every component now (not at step 1): the reward model loads, every function exists,
    is callable and accepts (prompts, completions, **columns)."""
    reward_model = None
    if cfg.reward_model:
        import torch

        from align.stage import resolve_stage_model
        from align.values import load_reward_model

        path = resolve_stage_model(cfg.reward_model, run)
        reward_model = load_reward_model(path, dtype=torch.bfloat16)
        if device is not None:
            reward_model.model.to(device)
    return CompositeReward.from_config(
        cfg.functions,
        reward_model=reward_model,
        reward_model_weight=cfg.reward_model_weight,
        normalize=cfg.normalize,
        base_dir=Path(cfg.config_dir) if cfg.config_dir else None,
        columns=columns,
    )
