"""The reward-model stage on `tiny-random`: it learns an easy preference, reports held-out metrics, and its
directory loads into the scorer with no extra arguments; packed scoring equals one-at-a-time scoring."""

import json
from pathlib import Path

import pytest
import torch

from align.config import load_config
from align.rm import RMConfig, train
from reward.model import RewardModel
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]


def pairs(n: int, seed: int) -> list[dict]:
    """chosen answers in lowercase, rejected ones shouting: a preference a tiny model can learn."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append({"prompt": f"What is {a} plus {b}? Answer in lowercase.",
                     "chosen": f"the answer is {a + b}.", "rejected": f"THE ANSWER IS {a + b}!",
                     "pair_type": "small_sum" if a + b < 50 else "large_sum"})
    return rows


@pytest.fixture(scope="module")
def reward_stage(tmp_path_factory) -> Path:
    from align.sft import SFTConfig
    from align.sft import train as train_sft

    root = tmp_path_factory.mktemp("rm")
    train_sft(load_config(SFTConfig, REPO / "configs" / "sft-tiny.yaml",
                          [f"run.root={root}", "train.max_steps=1", "train.eos_check_prompts=0"]))
    train_file = write_jsonl(root / "pairs.jsonl", pairs(64, 0))
    eval_file = write_jsonl(root / "held.jsonl", pairs(16, 1))
    cfg = load_config(RMConfig, REPO / "configs" / "rm-tiny.yaml", [
        f"run.root={root}", f"data.train={train_file}", f"data.eval={eval_file}", "data.max_rows=null",
        "train.epochs=3", "train.learning_rate=1e-3", "train.margin=0.5"])
    return train(cfg)


def test_reward_model_learns_the_preference_and_reports_held_out_metrics(reward_stage):
    manifest = json.loads((reward_stage / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    metrics = manifest["metrics"]
    assert metrics["rm/eval/accuracy"] == 1.0 and metrics["rm/eval/margin"] > 0.5
    for key in ("rm/eval/chosen_mean", "rm/eval/chosen_std", "rm/eval/rejected_mean", "rm/eval/rejected_std"):
        assert key in metrics
    rewards = json.loads((reward_stage / "eval_rewards.json").read_text())
    assert len(rewards["chosen"]) == len(rewards["rejected"]) == 16
    # held-out pairs that carry a pair_type get an accuracy per type
    assert metrics["rm/eval/accuracy/small_sum"] == metrics["rm/eval/accuracy/large_sum"] == 1.0


def test_accuracy_by_pair_type_by_hand():
    from align.rm import accuracy_by_type

    chosen, rejected = [1.0, 0.0, 2.0, 3.0, -1.0], [0.0, 1.0, 2.0, 1.0, -2.0]
    types = ["runs_on", "runs_on", "runs_on", "truncated", "truncated"]
    assert accuracy_by_type(chosen, rejected, types) == {"runs_on": 1 / 3, "truncated": 1.0}  # a tie is wrong


def test_scorer_loads_the_stage_directory_with_no_extra_arguments(reward_stage):
    scorer = RewardModel.from_pretrained(reward_stage)
    chosen, rejected = scorer.score(["What is 2 plus 2? Answer in lowercase."] * 2,
                                    ["the answer is 4.", "THE ANSWER IS 4!"])
    assert chosen > rejected


def test_packed_scoring_equals_scoring_one_at_a_time(reward_stage):
    scorer = RewardModel.from_pretrained(reward_stage, dtype=torch.float32)
    prompts = ["hi", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}], "x"]
    completions = ["a", "bb b", "ccc c c"]
    together = scorer.score(prompts, completions)
    alone = [scorer.score([p], [c])[0] for p, c in zip(prompts, completions)]
    assert together == pytest.approx(alone, abs=1e-4)


def test_eval_reports_the_reward_models_score_and_pair_accuracy(reward_stage, tmp_path):
    from align.eval import EvalConfig, evaluate

    held = write_jsonl(tmp_path / "held.jsonl", pairs(8, 2))
    results = evaluate(EvalConfig(model="tiny-random", max_prompts=2, max_new_tokens=4, out=str(tmp_path),
                                  reward_model=str(reward_stage), reward_pairs=str(held)))
    assert results["reward_model_pair_accuracy"] == 1.0
    assert isinstance(results["reward_model_mean_score"], float)


def test_score_rejects_mismatched_lengths(reward_stage):
    with pytest.raises(ValueError, match="score: 2 prompts but 1 completions"):
        RewardModel.from_pretrained(reward_stage).score(["a", "b"], ["c"])


def test_a_policy_directory_is_not_taken_for_a_reward_model(reward_stage):
    message = "is not a reward-model directory: its head has 2 outputs, a reward model has 1"
    with pytest.raises(ValueError, match=message):
        RewardModel.from_pretrained(reward_stage.parent / "sft")
