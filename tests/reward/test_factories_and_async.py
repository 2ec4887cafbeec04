"""Reward-function factories (`factory_kwargs`: called once at stage start, the product is the reward function) and
`async def` reward functions (awaited together on one event loop, checked like sync ones)."""

import asyncio
import re
import time
from pathlib import Path

import pytest

from reward.compose import CompositeReward, RewardFunctionConfig, RewardFunctionError

HERE = Path(__file__).parent
FACTORIES = "fixtures/factories.py"
ASYNC = "fixtures/async_rewards.py"


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def build(*configs: RewardFunctionConfig, columns=None) -> CompositeReward:
    return CompositeReward.from_config(list(configs), base_dir=HERE, columns=columns)


# --- factories ------------------------------------------------------------------------------------------------


def test_a_users_factory_is_called_once_and_its_product_scores_with_its_own_kwargs():
    reward = build(RewardFunctionConfig(f"{FACTORIES}:make_brevity", factory_kwargs={"max_words": 2},
                                        kwargs={"scale": 2.0}))
    assert reward.names == ["brevity"]  # the product's name, as TRL names it
    assert reward(prompts=["p", "q"], completions=["one two", "one two three"]).components == {
        "brevity": [0.0, -2.0]}


def test_a_class_named_with_factory_kwargs_is_built_once():
    reward = build(RewardFunctionConfig(f"{FACTORIES}:Threshold", factory_kwargs={"at": 3}))
    assert reward.names == ["Threshold"]
    assert reward(prompts=["p", "q"], completions=["ab", "abc"]).components == {"Threshold": [0.0, 1.0]}


def test_trls_soft_overlong_punishment_factory_runs_as_trl_documents_it():
    reward = build(RewardFunctionConfig("trl.rewards:get_soft_overlong_punishment",
                                        factory_kwargs={"max_completion_len": 100, "soft_punish_cache": 20}),
                   columns={"completion_ids", "trainer_state", "log_extra", "log_metric"})
    breakdown = reward(prompts=["p"] * 3, completions=["a", "b", "c"], completion_ids=[[1] * 70, [1] * 90, [1] * 120])
    assert breakdown.components == {"soft_overlong_punishment_reward": [0.0, -0.5, -1.0]}


def test_a_factory_that_needs_a_column_the_stage_does_not_pass_fails_at_start():
    with pytest.raises(RewardFunctionError, match=exact(
        "reward.functions[0]: reward function 'trl.rewards:get_repetition_penalty_reward' requires 'completion_ids': "
        "not a dataset column (columns: constraints) and not set under `kwargs` in its config — 'completion_ids': "
        "TRL's extra keyword(s), which align's RL stages pass"
    )):
        build(RewardFunctionConfig("trl.rewards:get_repetition_penalty_reward", factory_kwargs={}),
              columns={"constraints"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (RewardFunctionConfig("trl.rewards:get_soft_overlong_punishment",
                              factory_kwargs={"max_len": 100, "soft_punish_cache": 20}),
         "factory 'trl.rewards:get_soft_overlong_punishment' has no parameter 'max_len' — did you mean "
         "'max_completion_len'? (it takes: max_completion_len, soft_punish_cache)"),
        (RewardFunctionConfig("trl.rewards:get_soft_overlong_punishment", factory_kwargs={"max_completion_len": 9}),
         "factory 'trl.rewards:get_soft_overlong_punishment' requires 'soft_punish_cache': set it under "
         "factory_kwargs"),
        (RewardFunctionConfig("trl.rewards:get_repetition_penalty_reward", factory_kwargs={"max_penalty": 1.0}),
         "factory 'trl.rewards:get_repetition_penalty_reward' raised: ValueError: max_penalty 1.0 should not be "
         "positive"),
        (RewardFunctionConfig(f"{FACTORIES}:broken_factory", factory_kwargs={"path": "/judge"}),
         f"factory '{FACTORIES}:broken_factory' raised: FileNotFoundError: no judge model at /judge"),
        (RewardFunctionConfig(f"{FACTORIES}:makes_a_number", factory_kwargs={}),
         f"factory '{FACTORIES}:makes_a_number' returned int, not a reward function; a factory must return a "
         "callable taking (prompts, completions, **kwargs)"),
        (RewardFunctionConfig(f"{FACTORIES}:make_brevity", factory_kwargs=[2]),
         f"factory_kwargs of '{FACTORIES}:make_brevity' must be a mapping, got [2]"),
        (RewardFunctionConfig(f"{FACTORIES}:make_brevity", factory_kwargs={"max_words": 2}, kwargs={"scal": 2}),
         f"reward function '{FACTORIES}:make_brevity' has no parameter 'scal' — did you mean 'scale'? "
         "(it takes: scale)"),
    ],
)
def test_bad_factory_settings_are_one_line_errors_naming_the_key(config, message):
    with pytest.raises(RewardFunctionError, match=exact(f"reward.functions[0]: {message}")):
        build(config, columns={"completion_ids"})


def test_factory_kwargs_load_from_yaml_next_to_kwargs(tmp_path):
    from align.config import load_config
    from align.rewards import RewardConfig

    config = tmp_path / "reward.yaml"
    config.write_text("functions:\n"
                      "  - name: trl.rewards:get_soft_overlong_punishment\n"
                      "    factory_kwargs: {max_completion_len: 4, soft_punish_cache: 2}\n"
                      "    weight: 0.5\n")
    cfg = load_config(RewardConfig, config)
    assert cfg.functions == [RewardFunctionConfig("trl.rewards:get_soft_overlong_punishment", weight=0.5,
                                                  factory_kwargs={"max_completion_len": 4, "soft_punish_cache": 2})]


# --- async functions ------------------------------------------------------------------------------------------


def test_async_functions_of_a_batch_run_concurrently():
    reward = build(RewardFunctionConfig(f"{ASYNC}:slow_length"), RewardFunctionConfig(f"{ASYNC}:slow_words"))
    started = time.perf_counter()
    breakdown = reward(prompts=["p", "q"], completions=["one two", "three"])
    elapsed = time.perf_counter() - started
    assert breakdown.components == {"slow_length": [7.0, 5.0], "slow_words": [2.0, 1.0]}
    assert elapsed < 0.9, f"two 0.5 s async functions took {elapsed:.2f} s: they did not overlap"


def test_sync_and_async_components_keep_config_order_and_weights():
    reward = build(RewardFunctionConfig(f"{ASYNC}:slow_length", weight=2.0, kwargs={"delay": 0.0}),
                   RewardFunctionConfig("no_repetition"),
                   RewardFunctionConfig(f"{ASYNC}:judge", weight=-1.0))
    breakdown = reward(prompts=["p"], completions=["a b"])
    assert list(breakdown.components) == ["slow_length", "no_repetition", "AsyncJudge"]
    assert breakdown.total == [2.0 * 3.0 + 0.0 - 0.5]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("fails", "reward function 'fails' raised on a batch of 2 samples: ConnectionError: judge unreachable"),
        ("nan_for_second", "reward function 'nan_for_second' returned nan for sample 1 (completion 'y'); rewards "
                           "must be finite numbers, or None where it does not apply"),
        ("one_value", "reward function 'one_value' returned 1 values for 2 samples; it must return exactly one "
                      "value per completion (a float, or None where it does not apply)"),
    ],
)
def test_async_results_are_checked_like_sync_ones(function, message):
    reward = build(RewardFunctionConfig(f"{ASYNC}:{function}"), RewardFunctionConfig("no_repetition"))
    with pytest.raises(RewardFunctionError, match=exact(message)):
        reward(prompts=["p", "q"], completions=["x", "y"])


def test_a_composite_called_inside_a_running_event_loop_still_awaits_its_functions():
    reward = build(RewardFunctionConfig(f"{ASYNC}:slow_length", kwargs={"delay": 0.0}))

    async def notebook_cell():
        return reward(prompts=["p"], completions=["abc"])

    assert asyncio.run(notebook_cell()).components == {"slow_length": [3.0]}


def test_a_function_without_kwargs_is_told_about_trls_keywords(tmp_path):
    (tmp_path / "strict.py").write_text("def strict(prompts, completions, constraints):\n"
                                        "    return [0.0 for _ in completions]\n")
    with pytest.raises(RewardFunctionError, match=exact(
        "reward.functions[0]: reward function 'strict.py:strict' does not accept TRL's keyword(s) 'completion_ids', "
        "'log_extra', 'log_metric', 'trainer_state'; add **kwargs to its parameters (TRL, and align's RL stages, "
        "pass completion_ids, trainer_state, log_metric and log_extra to every reward function)"
    )):
        CompositeReward.from_config([RewardFunctionConfig("strict.py:strict")], base_dir=tmp_path,
                                    columns={"constraints", "completion_ids", "trainer_state", "log_extra",
                                             "log_metric"})
