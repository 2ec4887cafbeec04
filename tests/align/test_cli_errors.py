"""One convention for every user-input error, through the real command line (`python -m align ...`): exit code 2,
exactly one `align: error: ...` line on stderr (and at most one `align: hint:` line), no traceback — unless
ALIGN_DEBUG=1, which re-raises. Each case fails before training (the failing reward function after one rollout)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SFT, PPO = "configs/sft-tiny.yaml", "configs/ppo-tiny.yaml"
TINY_PPO = ["model.name=tiny-random", "reward.reward_model=null", "data.eval=null", "data.max_rows=4",
            "train.iterations=1", "train.prompts_per_iteration=4", "train.minibatch_size=4", "train.max_new_tokens=4"]


def align(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "align", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The bad inputs: a file that is not YAML, a data file with a bad row, a reward function that raises, and a
    stage that completed with another config."""
    from align.config import load_config
    from align.sft import SFTConfig
    from align.stage import begin_stage, finish_stage

    tmp = tmp_path_factory.mktemp("cli-errors")
    (tmp / "broken.yaml").write_text("stage: sft\ntrain: {learning_rate: 1e-3\n")
    (tmp / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    (tmp / "judge.py").write_text("def judge(prompts, completions, **kwargs):\n"
                                  "    raise KeyError('judge_score')\n")
    out, _, _ = begin_stage(load_config(SFTConfig, REPO / SFT, [f"run.root={tmp / 'runs'}"]))
    finish_stage(out, "complete", steps=4)
    return tmp


CASES = {
    "config key": (lambda t: ["validate", SFT, "train.learning_rat=1e-3"],
                   "configs/sft-tiny.yaml: unknown config key 'train.learning_rat' — did you mean "
                   "'train.learning_rate'?"),
    "config value": (lambda t: ["validate", SFT, "train.learning_rate=fast"],
                     "config key 'train.learning_rate' = 'fast' is not of the expected type float"),
    "YAML": (lambda t: ["sft", t / "broken.yaml"], "broken.yaml:3: not valid YAML"),
    "data row": (lambda t: ["validate", SFT, f"data.train={t / 'bad.jsonl'}"],
                 "bad.jsonl, line 1: field 'messages': must end with an assistant turn"),
    "preference pairs": (lambda t: ["validate", PPO, f"train.preference_pairs={t / 'bad.jsonl'}"],
                         "bad.jsonl: format 'messages' (detected from line 1) cannot be used for purpose "
                         "'preference'; it needs one of: preference, hh"),
    "model path": (lambda t: ["chat", "/no/such/model", "--prompt", "hi"],
                   "model.name '/no/such/model' does not exist"),
    "chat usage": (lambda t: ["chat", "tiny-random", "--out", t / "answers.jsonl"], "--out needs --prompts"),
    "command line": (lambda t: ["chat"], "the following arguments are required: model"),
    "reward function name": (lambda t: ["validate", PPO, "reward.functions=[{name: nope}]"],
                             "reward.functions[0]: unknown reward function 'nope'"),
    "factory arguments": (lambda t: ["validate", PPO, "reward.functions=[{name: 'trl.rewards:"
                                     "get_soft_overlong_punishment', factory_kwargs: {max_len: 8, "
                                     "soft_punish_cache: 2}}]"],
                          "factory 'trl.rewards:get_soft_overlong_punishment' has no parameter 'max_len' — did you "
                          "mean 'max_completion_len'?"),
    "reward function failure": (lambda t: ["ppo", PPO, f"run.root={t / 'runs'}", *TINY_PPO,
                                           f"reward.functions=[{{name: '{t / 'judge.py'}:judge'}}]"],
                                "reward function 'judge' raised on a batch of 4 samples: KeyError: 'judge_score'"),
    "stage run with another config": (lambda t: ["sft", SFT, f"run.root={t / 'runs'}", "train.learning_rate=0.5"],
                                      "was run with a different config (changed: train.learning_rate); rerun with "
                                      "--restart"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line_and_exit_code_2(inputs, case):
    args, message = CASES[case]
    done = align(*args(inputs))
    errors = [line for line in done.stderr.splitlines() if line.startswith("align: error: ")]
    hints = [line for line in done.stderr.splitlines() if line.startswith("align: hint: ")]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert len(hints) <= 1


def test_align_debug_shows_the_traceback():
    done = align("validate", PPO, "reward.functions=[{name: nope}]", env={"ALIGN_DEBUG": "1"})
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RewardFunctionError: reward.functions[0]: unknown" in done.stderr
