"""The one list of align's stages: what each is called, where its code and config class live, what data it reads
and what it produces. The CLI, the pipeline, the report, the config reference and the benchmark read it; adding a
stage means one line here and the stage's own file (docs/ARCHITECTURE.md, "How to add a stage").

Importing this module imports nothing heavy (no torch), so `align report` and `align runs` stay light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class StageInfo:
    name: str  # the CLI command, the `stage:` key of its configs, its directory under runs/<run.name>/
    module: str  # the module with the config class and `train(cfg, restart=...) -> Path`
    config_class: str
    data_purpose: Literal["sft", "preference", "prompt"]  # how `data.train` / `data.eval` rows are read
    produces: Literal["policy", "reward_model"]  # a policy is evaluated after it in a pipeline; a reward model
    # is checked by the pipeline's quality gate
    summary: str  # one line for `align --help`


STAGES: dict[str, StageInfo] = {info.name: info for info in (
    StageInfo("sft", "align.sft", "SFTConfig", "sft", "policy", "supervised fine-tuning on conversations"),
    StageInfo("rm", "align.rm", "RMConfig", "preference", "reward_model", "a reward model on preference pairs"),
    StageInfo("ppo", "align.ppo", "PPOConfig", "prompt", "policy", "PPO with a value model and a KL penalty"),
    StageInfo("dpo", "align.dpo", "DPOConfig", "preference", "policy", "direct preference optimisation"),
    StageInfo("grpo", "align.grpo", "GRPOConfig", "prompt", "policy", "group-relative RL without a critic"),
)}

# Commands that read a config like a stage but train nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("align.eval", "EvalConfig"),
    "pipeline": ("align.pipeline", "PipelineConfig"),
}


def config_class(name: str) -> type:
    """The config dataclass of a stage or of `eval` / `pipeline`."""
    module, cls = (STAGES[name].module, STAGES[name].config_class) if name in STAGES else COMMANDS[name]
    return getattr(importlib.import_module(module), cls)


def stage_module(name: str):
    """The module of a stage or of `eval`: call its `train(cfg, restart=...)`."""
    return importlib.import_module(STAGES[name].module if name in STAGES else COMMANDS[name][0])
