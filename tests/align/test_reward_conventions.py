"""Reward functions are called as TRL calls them, in PPO and in GRPO alike, on `tiny-random` (short runs, no SFT
stage): conversational prompts (the built-in data) -> completions as `[{"role": "assistant", "content": ...}]`,
standard (string) prompts -> strings, and TRL's completion_ids, trainer_state, log_metric and log_extra. The
functions (tests/align/fixtures/trl_format_rewards.py) are written for one format only and check every argument's
shape; they are named from a file and from an installed module, next to TRL's own conversational function, one of
TRL's factories and an async function. Each run must finish and log every component and what they logged."""

import json
import sys
from pathlib import Path

import pytest

from align.config import load_config
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
FILE = FIXTURES / "trl_format_rewards.py"

CONVERSATIONAL = (
    f"[{{name: '{FILE}:conversational_length'}},"  # from a file
    " {name: 'trl_format_rewards:conversational_judge', weight: 0.5},"  # from an installed module; async
    " {name: 'trl.rewards:think_format_reward'},"  # TRL's own, unchanged
    " {name: 'trl.rewards:get_soft_overlong_punishment',"  # TRL's factory
    "  factory_kwargs: {max_completion_len: 6, soft_punish_cache: 3}}]"
)
CONVERSATIONAL_COMPONENTS = ("conversational_length", "conversational_judge", "think_format_reward",
                             "soft_overlong_punishment_reward")
STANDARD = f"[{{name: '{FILE}:standard_words'}}, {{name: 'trl_format_rewards:standard_topic'}}]"
STANDARD_COMPONENTS = ("standard_words", "standard_topic")
STEPS = 2


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The fixture folder on sys.path, so `trl_format_rewards` imports as an installed module would."""
    sys.path.insert(0, str(FIXTURES))
    yield tmp_path_factory.mktemp("conventions")
    sys.path.remove(str(FIXTURES))
    sys.modules.pop("trl_format_rewards", None)


@pytest.fixture(scope="module")
def standard_prompts(installed) -> Path:
    """Prompts in TRL's standard format (plain strings), with a `topic` column."""
    topics = ["tea", "rain", "moss", "salt", "wind", "iron", "rice", "snow"]
    return write_jsonl(installed / "standard.jsonl",
                       [{"prompt": f"Say one thing about {t}.", "topic": t} for t in topics])


def ppo(installed: Path, name: str, functions: str, data: str):
    from align.ppo import PPOConfig, train

    cfg = load_config(PPOConfig, REPO / "configs" / "ppo-tiny.yaml", [
        f"run.root={installed / 'runs'}", f"run.name={name}", "model.name=tiny-random", "reward.reward_model=null",
        f"reward.functions={functions}", f"data.train={data}", "data.eval=null", "data.max_rows=8",
        f"train.iterations={STEPS}", "train.prompts_per_iteration=4", "train.minibatch_size=4",
        "train.max_new_tokens=8", "train.ppo_epochs=1"])
    return train(cfg)


def grpo(installed: Path, name: str, functions: str, data: str):
    from align.grpo import GRPOConfig, train

    cfg = load_config(GRPOConfig, REPO / "configs" / "grpo-tiny.yaml", [
        f"run.root={installed / 'runs'}", f"run.name={name}", "model.name=tiny-random", "reward.reward_model=null",
        f"reward.functions={functions}", f"data.train={data}", "data.eval=null", "data.max_rows=8",
        f"train.iterations={STEPS}", "train.prompts_per_iteration=2", "train.completions_per_prompt=2",
        "train.minibatch_size=4", "train.max_new_tokens=8", "train.save_every=100"])
    return train(cfg)


def logged(out: Path) -> list[dict]:
    """The metrics.jsonl rows of a stage that carry its reward total (one per step)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if f"{out.name}/reward/total" in row]


def table_columns(out: Path) -> list[str]:
    (line, *_) = (out / "tables" / out.name / "samples.jsonl").read_text().splitlines()
    return json.loads(line)["columns"]


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_conversational_prompts_give_message_completions_and_trls_keywords(installed, stage):
    out = {"ppo": ppo, "grpo": grpo}[stage](installed, f"chat-{stage}", CONVERSATIONAL, "builtin:prompts:train")
    rows = logged(out)
    assert len(rows) == STEPS
    for row in rows:
        for component in CONVERSATIONAL_COMPONENTS:
            assert f"{stage}/reward/{component}" in row, (component, sorted(row))
        assert 0.0 <= row[f"{stage}/reward/conversational_length"] <= 1.0
        assert row[f"{stage}/reward/soft_overlong_punishment_reward"] <= 0.0  # 8 tokens > 6 - 3
        assert row[f"{stage}/answer_chars"] >= 0  # what the function logged with log_metric
    assert "answer_chars" in table_columns(out)  # what it logged with log_extra: a column of the sample table


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_standard_prompts_give_string_completions(installed, standard_prompts, stage):
    out = {"ppo": ppo, "grpo": grpo}[stage](installed, f"text-{stage}", STANDARD, str(standard_prompts))
    rows = logged(out)
    assert len(rows) == STEPS
    for row in rows:
        assert -1.0 <= row[f"{stage}/reward/standard_words"] <= 0.0
        assert row[f"{stage}/reward/standard_topic/applies"] == 1.0
        assert f"{stage}/answer_words" in row
