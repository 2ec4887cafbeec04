"""Resolving reward functions by name, checking them at stage start, and combining them into one reward."""

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from align.config import load_config
from reward.compose import (
    TRL_EXTRA_KWARGS,
    CompositeReward,
    RewardBreakdown,
    RewardFunctionConfig,
    RewardFunctionError,
    check_reward_function,
    resolve_reward_function,
)
from reward.functions import BUILTIN_REWARD_FUNCTIONS, no_repetition

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"
BAD = "fixtures/bad_signatures.py"


class LengthRewardModel:
    """A real (tiny) reward model: scores a completion by its length in characters, and records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[list, list[str]]] = []

    def score(self, prompts: list, completions: list[str]) -> list[float]:
        self.seen.append((prompts, completions))
        return [float(len(c)) for c in completions]


def constant(value):
    """A reward function returning `value` for every sample; named after the value so names stay distinct."""

    def fn(prompts, completions, **kwargs):
        return [value] * len(completions)

    fn.__name__ = f"constant_{value}"
    return fn


def exact(message: str) -> str:
    """pytest.raises(match=...) pattern that matches `message` exactly, whole string."""
    return "^" + re.escape(message) + "$"


# --- resolve_reward_function ----------------------------------------------------------------------------------


def test_a_builtin_resolves_to_itself():
    assert resolve_reward_function("no_repetition") is no_repetition


def test_an_unknown_builtin_suggests_the_closest_and_lists_them_all():
    with pytest.raises(RewardFunctionError, match=exact(
        "unknown reward function 'instruction_folowing' — did you mean 'instruction_following'? Built-ins: "
        "instruction_following, instruction_following_all, instruction_following_loose, length_in_range, "
        "no_loops, no_repetition, no_unasked_layouts, overlong_penalty. Your own function is named "
        "'package.module:function' or 'path/to/file.py:function'."
    )):
        resolve_reward_function("instruction_folowing")


def test_a_file_path_is_resolved_against_base_dir_first(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing under CWD: only base_dir can find it
    fn = resolve_reward_function("fixtures/my_rewards.py:brevity", base_dir=HERE)
    assert fn.__name__ == "brevity"
    assert fn(prompts=["p"], completions=["one two three"], max_words=2) == [0.5]


def test_a_file_path_falls_back_to_the_current_directory(monkeypatch):
    monkeypatch.chdir(HERE)
    fn = resolve_reward_function("fixtures/my_rewards.py:brevity", base_dir=HERE / "no_such_dir")
    assert fn.__name__ == "brevity"


def test_two_functions_from_one_file_share_one_import():
    a = resolve_reward_function("fixtures/my_rewards.py:brevity", base_dir=HERE)
    b = resolve_reward_function(str(FIXTURES / "my_rewards.py") + ":mentions_topic")
    assert a.__globals__ is b.__globals__


def test_a_missing_file_names_every_place_looked(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RewardFunctionError, match=exact(
        f"reward function file not found: 'rewards/mine.py' (looked for {HERE / 'rewards/mine.py'}, "
        f"{tmp_path / 'rewards/mine.py'})"
    )):
        resolve_reward_function("rewards/mine.py:fn", base_dir=HERE)


def test_a_file_that_fails_to_import_names_the_file_and_the_error(tmp_path):
    (tmp_path / "broken.py").write_text("import json\nvalue = 1 / 0\n")
    with pytest.raises(RewardFunctionError, match=exact(
        f"cannot import reward function file {tmp_path / 'broken.py'}: ZeroDivisionError: division by zero"
    )):
        resolve_reward_function("broken.py:fn", base_dir=tmp_path)


def test_a_missing_attribute_suggests_and_lists_the_functions_of_the_file():
    with pytest.raises(RewardFunctionError, match=exact(
        f"file {FIXTURES / 'my_rewards.py'} has no attribute 'brevty' — did you mean 'brevity'? "
        "(functions defined there: brevity, mentions_topic, text)"
    )):
        resolve_reward_function("fixtures/my_rewards.py:brevty", base_dir=HERE)


def test_a_module_function_resolves(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    assert resolve_reward_function("my_rewards:mentions_topic").__name__ == "mentions_topic"


def test_an_unimportable_module_says_so():
    with pytest.raises(RewardFunctionError, match=exact(
        "reward function 'no_such_pkg.rewards:fn': cannot import module 'no_such_pkg.rewards' "
        "(ModuleNotFoundError: No module named 'no_such_pkg'). Is it installed or on PYTHONPATH? "
        "For a file, write 'path/to/file.py:function'."
    )):
        resolve_reward_function("no_such_pkg.rewards:fn")


def test_a_name_that_is_not_callable_is_refused():
    with pytest.raises(RewardFunctionError, match=exact(
        "reward function 'fixtures/my_rewards.py:THRESHOLD' is not callable: it is a float"
    )):
        resolve_reward_function("fixtures/my_rewards.py:THRESHOLD", base_dir=HERE)


def test_a_class_is_refused_but_an_instance_is_named_after_its_class():
    with pytest.raises(RewardFunctionError, match=exact(
        "reward function 'fixtures/my_rewards.py:LengthReward' is a class; name a function, or an instance created "
        "in the module (e.g. `my_reward = LengthReward()`) whose __call__ takes (prompts, completions, **kwargs), "
        "or set `factory_kwargs` to build one at stage start"
    )):
        resolve_reward_function("fixtures/my_rewards.py:LengthReward", base_dir=HERE)
    reward = CompositeReward.from_config([RewardFunctionConfig("fixtures/my_rewards.py:length_reward")], base_dir=HERE)
    assert reward(prompts=["p"], completions=["four"]).components == {"LengthReward": [2.0]}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("  ", "a reward function name must be a non-empty string, got '  '"),
        ("path.py:", "reward function 'path.py:': expected 'package.module:function' or 'path/to/file.py:function'"),
        (":fn", "reward function ':fn': expected 'package.module:function' or 'path/to/file.py:function'"),
    ],
)
def test_malformed_names_are_refused(name, message):
    with pytest.raises(RewardFunctionError, match=exact(message)):
        resolve_reward_function(name, base_dir=HERE)


# --- the calling convention -----------------------------------------------------------------------------------


def test_trl_style_functions_and_builtins_accept_everything_trl_passes():
    columns = {"constraints"} | TRL_EXTRA_KWARGS
    configs = [RewardFunctionConfig(f"{BAD}:trl_style"), RewardFunctionConfig("instruction_following")]
    reward = CompositeReward.from_config(configs, base_dir=HERE, columns=columns)
    extras = {"completion_ids": [[1, 2]], "trainer_state": object(), "log_extra": print, "log_metric": print}
    breakdown = reward(prompts=["p"], completions=["ok"], constraints=['[{"type": "punctuation:no_comma"}]'], **extras)
    assert breakdown.components == {"trl_style": [1.0], "instruction_following": [1.0]}
    with pytest.raises(RewardFunctionError, match="does not accept the dataset column"):
        check_reward_function("without_kwargs", resolve_reward_function(f"{BAD}:without_kwargs", HERE), columns)


@pytest.mark.parametrize(
    ("function", "columns", "message"),
    [
        ("positional_names", {"constraints"},
         "reward function '{name}' requires 'p', 'c': not a dataset column (columns: constraints) "
         "and not set under `kwargs` in its config — it is called as f(prompts=..., completions=..., <columns>), "
         "as TRL does, so name its parameters 'prompts', 'completions'"),
        ("only_completions", None,
         "reward function '{name}' does not accept the keyword argument 'prompts'; define it as "
         "`def f(prompts, completions, **kwargs)` — reward functions are called as "
         "f(prompts=..., completions=..., <one keyword per dataset column>), as TRL does"),
        ("positional_only", None,
         "reward function '{name}' has positional-only parameters (prompts, completions); reward functions are "
         "called with keyword arguments (prompts=..., completions=..., one per dataset column), as TRL does"),
        ("without_kwargs", {"constraints", "topic"},
         "reward function '{name}' does not accept the dataset column(s) 'constraints', 'topic'; add **kwargs to "
         "its parameters (every dataset column is passed as a keyword argument, as in TRL)"),
        ("misspelled_column", {"constraints"},
         "reward function '{name}' requires 'constraint': not a dataset column (columns: constraints) "
         "and not set under `kwargs` in its config — did you mean the column 'constraints'?"),
    ],
)
def test_functions_that_cannot_take_trls_call_are_refused_at_start(function, columns, message):
    name = f"{BAD}:{function}"
    with pytest.raises(RewardFunctionError, match=exact(f"reward.functions[0]: {message.format(name=name)}")):
        CompositeReward.from_config([RewardFunctionConfig(name)], base_dir=HERE, columns=columns)


def test_a_builtin_that_needs_a_column_the_dataset_lacks_fails_at_start():
    with pytest.raises(RewardFunctionError, match=exact(
        "reward.functions[1]: reward function 'instruction_following' requires 'constraints': not a "
        "dataset column (columns: topic) and not set under `kwargs` in its config"
    )):
        CompositeReward.from_config(
            [RewardFunctionConfig("no_repetition"), RewardFunctionConfig("instruction_following")], columns={"topic"}
        )


# --- from_config: kwargs, weights, names ----------------------------------------------------------------------


def test_a_misspelled_kwarg_fails_at_start_instead_of_vanishing_into_kwargs():
    with pytest.raises(RewardFunctionError, match=exact(
        "reward.functions[0]: reward function 'no_repetition' has no parameter 'nn' — did you mean 'n'? (it takes: n)"
    )):
        CompositeReward.from_config([RewardFunctionConfig("no_repetition", kwargs={"nn": 2})])


def test_a_kwarg_cannot_override_a_dataset_column():
    with pytest.raises(RewardFunctionError, match=exact(
        "reward.functions[0]: reward function 'fixtures/my_rewards.py:mentions_topic': kwarg 'topic' cannot be set "
        "in the config, it is passed at every call (a dataset column)"
    )):
        CompositeReward.from_config(
            [RewardFunctionConfig("fixtures/my_rewards.py:mentions_topic", kwargs={"topic": "x"})],
            base_dir=HERE, columns={"topic"},
        )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (RewardFunctionConfig("no_repetition", kwargs={"n": 0}),
         "reward function 'no_repetition': 'n' must be an integer >= 1, got 0"),
        (RewardFunctionConfig("length_in_range", kwargs={"min_words": 10, "max_words": 5}),
         "reward function 'length_in_range': 'min_words' (10) must not exceed 'max_words' (5)"),
        (RewardFunctionConfig("length_in_range", kwargs={"min_words": 10}),
         "reward function 'length_in_range' requires 'max_words': not a dataset column "
         "(columns: constraints) and not set under `kwargs` in its config"),
        (RewardFunctionConfig("no_repetition", weight=float("nan")),
         "weight of 'no_repetition' must be a finite number, got nan"),
    ],
)
def test_bad_builtin_settings_fail_at_start(config, message):
    with pytest.raises(RewardFunctionError, match=exact(f"reward.functions[0]: {message}")):
        CompositeReward.from_config([config])


def test_the_same_function_twice_is_reported_as_name_and_name_2():
    reward = CompositeReward.from_config(
        [RewardFunctionConfig("no_repetition", kwargs={"n": 1}), RewardFunctionConfig("no_repetition", weight=2.0)]
    )
    assert reward.names == ["no_repetition", "no_repetition#2"]
    breakdown = reward(prompts=["p"], completions=["a a b c d e"])
    assert breakdown.components == {"no_repetition": [-1 / 6], "no_repetition#2": [0.0]}  # n=1 vs the default n=4


def test_a_user_function_named_like_the_reward_model_gets_a_suffix(tmp_path):
    (tmp_path / "r.py").write_text(
        "def reward_model(prompts, completions, **kwargs):\n    return [1.0] * len(completions)\n"
    )
    configs = [RewardFunctionConfig("r.py:reward_model")]
    reward = CompositeReward.from_config(configs, reward_model=LengthRewardModel(), base_dir=tmp_path)
    assert reward.names == ["reward_model#2", "reward_model"]


def test_the_users_own_file_is_resolved_weighted_and_reported_under_its_own_name(monkeypatch, tmp_path):
    """The README example: a function in the user's file, named in YAML with a weight, next to a built-in."""
    monkeypatch.chdir(tmp_path)
    configs = [
        RewardFunctionConfig("instruction_following"),
        RewardFunctionConfig("fixtures/my_rewards.py:brevity", weight=0.5, kwargs={"max_words": 4}),
        RewardFunctionConfig("fixtures/my_rewards.py:mentions_topic", weight=2.0),
    ]
    reward = CompositeReward.from_config(configs, base_dir=HERE, columns={"constraints", "topic"})
    assert reward.names == ["instruction_following", "brevity", "mentions_topic"]
    breakdown = reward(
        prompts=["Name a fruit, no commas.", "Say hi."],
        completions=["apples, pears and plums", "hi"],  # 4 words with a comma; 1 word
        constraints=[json.dumps([{"type": "punctuation:no_comma"}]), "[]"],
        topic=["apple", ""],
    )
    assert breakdown.components == {
        "instruction_following": [0.0, None],
        "brevity": [1.0, 1.0],
        "mentions_topic": [1.0, None],
    }
    assert breakdown.total == [1.0 * 0.0 + 0.5 * 1.0 + 2.0 * 1.0, 0.5 * 1.0]


def test_the_readme_yaml_resolves_files_next_to_the_config(monkeypatch, tmp_path):
    """README flow: rewards/my_rewards.py beside the YAML config, named under reward.functions."""
    (tmp_path / "rewards").mkdir()
    shutil.copy(FIXTURES / "my_rewards.py", tmp_path / "rewards" / "my_rewards.py")
    config_path = tmp_path / "grpo.yaml"
    config_path.write_text(
        "reward:\n"
        "  functions:\n"
        "    - name: instruction_following\n"
        "    - name: rewards/my_rewards.py:brevity\n"
        "      weight: 0.5\n"
        "      kwargs: {max_words: 80}\n"
    )

    @dataclass
    class RewardSection:  # the shape a stage config gives its `reward:` section
        functions: list[RewardFunctionConfig] = field(default_factory=list)

    @dataclass
    class StageConfig:
        reward: RewardSection = field(default_factory=RewardSection)

    monkeypatch.chdir(HERE)  # CWD is elsewhere: the path is found relative to the config file
    config = load_config(StageConfig, config_path)
    reward = CompositeReward.from_config(config.reward.functions, base_dir=config_path.parent, columns={"constraints"})
    breakdown = reward(prompts=["Hi"], completions=["hello there"], constraints=["[]"])
    assert breakdown.components == {"instruction_following": [None], "brevity": [1.0]}
    assert breakdown.metrics() == {
        "reward/total": 0.5,
        "reward/instruction_following/applies": 0.0,
        "reward/brevity": 1.0,
        "reward/brevity/applies": 1.0,
    }


# --- calling: totals, None, the reward model ------------------------------------------------------------------


def test_the_total_is_the_weighted_sum_of_the_components_that_apply():
    def only_first(prompts, completions, **kwargs):
        return [10.0] + [None] * (len(completions) - 1)

    reward = CompositeReward([("a", constant(1.0), 2.0), ("only_first", only_first, -0.5)])
    breakdown = reward(prompts=["p", "q"], completions=["x", "y"])
    assert breakdown == RewardBreakdown(
        total=[2.0 * 1.0 - 0.5 * 10.0, 2.0 * 1.0], components={"a": [1.0, 1.0], "only_first": [10.0, None]}
    )
    assert reward.describe() == "2 x a + -0.5 x only_first (normalize=none)"  # the stages' start-up line


def test_a_sample_no_component_applies_to_is_an_error_not_a_zero():
    def never(prompts, completions, **kwargs):
        return [None] * len(completions)

    with pytest.raises(RewardFunctionError, match=exact(
        "no reward component applies to sample 0 (completion 'x'): never all returned None. Add a reward that "
        "applies to every sample (e.g. a reward model or no_repetition), or leave such samples out of the dataset"
    )):
        CompositeReward([("never", never, 1.0)])(prompts=["p"], completions=["x"])


def test_weight_zero_logs_a_component_without_counting_it():
    reward = CompositeReward([("a", constant(1.0), 1.0), ("watch", constant(5.0), 0.0)])
    breakdown = reward(prompts=["p"], completions=["x"])
    assert breakdown.total == [1.0] and breakdown.components["watch"] == [5.0]


def test_the_reward_model_gets_prompts_as_given_and_completion_text_and_is_reported_as_reward_model():
    model = LengthRewardModel()
    reward = CompositeReward([("a", constant(1.0), 1.0)], reward_model=model, reward_model_weight=0.1)
    prompts = [[{"role": "system", "content": "sys"}, {"role": "user", "content": "Say hello."}]]
    completions = [[{"role": "assistant", "content": "hello"}]]
    breakdown = reward(prompts=prompts, completions=completions)
    assert model.seen == [(prompts, ["hello"])]  # the model renders the conversation with its own chat template
    assert breakdown.components == {"a": [1.0], "reward_model": [5.0]}
    assert breakdown.total == [1.0 + 0.1 * 5.0]


def test_columns_and_trl_extras_reach_user_functions_unchanged():
    received = {}

    def spy(prompts, completions, **kwargs):
        received.update(kwargs)
        return [0.0] * len(completions)

    state = object()
    CompositeReward([("spy", spy, 1.0)])(prompts=["p"], completions=["c"], topic=["t"], trainer_state=state)
    assert received == {"topic": ["t"], "trainer_state": state}


def test_numpy_results_are_accepted():
    def as_array(prompts, completions, **kwargs):
        return np.array([0.25] * len(completions), dtype=np.float32)

    assert CompositeReward([("as_array", as_array, 1.0)])(prompts=["p"], completions=["c"]).total == [0.25]


def test_metrics_are_batch_means_over_the_samples_each_component_applies_to():
    breakdown = RewardBreakdown(total=[1.0, 3.0], components={"a": [1.0, None], "b": [None, None]})
    assert breakdown.metrics() == {
        "reward/total": 2.0, "reward/a": 1.0, "reward/a/applies": 0.5, "reward/b/applies": 0.0  # no NaN for 'b'
    }


# --- failures during a call: never a silently zeroed reward ---------------------------------------------------


def test_a_function_that_raises_is_named_with_the_original_error():
    def fragile(prompts, completions, **kwargs):
        return [1 / 0 for _ in completions]

    with pytest.raises(RewardFunctionError, match=exact(
        "reward function 'fragile' raised on a batch of 2 samples: ZeroDivisionError: division by zero"
    )) as caught:
        CompositeReward([("fragile", fragile, 1.0)])(prompts=["p", "q"], completions=["x", "y"])
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_a_builtin_that_raises_names_the_sample():
    reward = CompositeReward.from_config([RewardFunctionConfig("instruction_following")], columns={"constraints"})
    with pytest.raises(RewardFunctionError, match=r"^reward function 'instruction_following' raised on sample 1 "
                       r"\(completion 'second'\): \w+: .*no_such:type"):
        reward(prompts=["p", "q"], completions=["first", "second"], constraints=["[]", '[{"type": "no_such:type"}]'])


def test_the_wrong_number_of_values_names_expected_and_actual():
    def short(prompts, completions, **kwargs):
        return [1.0]

    with pytest.raises(RewardFunctionError, match=exact(
        "reward function 'short' returned 1 values for 3 samples; it must return exactly one value per completion "
        "(a float, or None where it does not apply)"
    )):
        CompositeReward([("short", short, 1.0)])(prompts=["p"] * 3, completions=["x"] * 3)


@pytest.mark.parametrize(
    ("bad", "shown"), [(math.nan, "nan"), (math.inf, "inf"), ("high", "'high' (str)"), ([0.5], "[0.5] (list)")]
)
def test_nan_inf_and_non_numbers_name_the_function_sample_and_value(bad, shown):
    def second_is_bad(prompts, completions, **kwargs):
        return [0.0, bad]

    with pytest.raises(RewardFunctionError, match=exact(
        f"reward function 'second_is_bad' returned {shown} for sample 1 (completion 'y'); rewards must be finite "
        "numbers, or None where it does not apply"
    )):
        CompositeReward([("second_is_bad", second_is_bad, 1.0)])(prompts=["p", "q"], completions=["x", "y"])


def test_a_single_float_instead_of_a_list_is_refused():
    def scalar(prompts, completions, **kwargs):
        return 1.0

    with pytest.raises(RewardFunctionError, match=exact(
        "reward function 'scalar' returned float instead of a list of 2 values (one float per completion, or None "
        "where it does not apply)"
    )):
        CompositeReward([("scalar", scalar, 1.0)])(prompts=["p", "q"], completions=["x", "y"])


def test_a_reward_model_must_score_every_sample():
    class Abstaining:
        def score(self, prompts, completions):
            return [None for _ in completions]

    with pytest.raises(RewardFunctionError, match=exact(
        "reward model returned None (NoneType) for sample 0 (completion 'x'); rewards must be finite numbers"
    )):
        CompositeReward([], reward_model=Abstaining())(prompts=["p"], completions=["x"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([],), "no reward configured: list reward functions under reward.functions, or a reward model"),
        (([("a", constant(1.0), 1.0)], None, 1.0, "zscore"),
         "normalize must be one of none, batch, running, got 'zscore'"),
        (([("a", constant(1.0), 1.0), ("a", constant(2.0), 1.0)],),
         "reward component names must be unique, repeated: a"),
        (([], object()), "reward_model must have a score(prompts, completions) method, got object"),
        (([("a", constant(1.0), True)],), "weight of reward function 'a' must be a finite number, got True"),
    ],
)
def test_bad_composites_are_refused(args, message):
    with pytest.raises(RewardFunctionError, match=exact(message)):
        CompositeReward(*args)


# --- normalisation --------------------------------------------------------------------------------------------


def test_batch_normalisation_z_scores_each_component_over_the_samples_it_applies_to():
    def scores(prompts, completions, **kwargs):
        return [1.0, 3.0, None]  # mean 2, std 1 over the two samples it applies to

    reward = CompositeReward([("scores", scores, 2.0), ("flat", constant(7.0), 1.0)], normalize="batch")
    breakdown = reward(prompts=["p"] * 3, completions=["x"] * 3)
    assert breakdown.components["scores"] == [1.0, 3.0, None]  # raw values are reported, not the z-scores
    assert breakdown.total == pytest.approx([2.0 * -1.0, 2.0 * 1.0, 0.0], abs=1e-5)  # a constant normalises to 0


def test_running_normalisation_accumulates_and_resumes_from_its_state():
    batches = [[0.0, 2.0], [4.0, 6.0], [10.0, None]]

    def make():
        """A fresh reward whose function returns `batches` in order, one per call."""
        values = iter(batches)
        return CompositeReward([("r", lambda prompts, completions, **kw: next(values), 1.0)], normalize="running")

    first = make()
    first(prompts=["p"] * 2, completions=["x"] * 2)
    second_batch = first(prompts=["p"] * 2, completions=["x"] * 2)
    # After 0, 2, 4, 6: mean 3, population std sqrt(5).
    assert second_batch.total == pytest.approx([1 / math.sqrt(5), 3 / math.sqrt(5)], abs=1e-5)
    state = json.loads(json.dumps(first.state_dict()))  # what an RL checkpoint stores
    assert state == {"normalize": "running", "components": {"r": {"count": 4, "mean": 3.0, "m2": 20.0}}}

    resumed = make()
    resumed.load_state_dict(state)
    third = resumed(prompts=["p"] * 2, completions=["x"] * 2)  # returns [0, 2], on top of the restored statistics
    seen = [0.0, 2.0, 4.0, 6.0, 0.0, 2.0]
    mean = sum(seen) / 6
    std = math.sqrt(sum((v - mean) ** 2 for v in seen) / 6)
    assert third.total == pytest.approx([(0.0 - mean) / std, (2.0 - mean) / std], abs=1e-5)


def test_running_state_from_another_setup_is_refused():
    reward = CompositeReward([("a", constant(1.0), 1.0)], normalize="running")
    with pytest.raises(RewardFunctionError, match=exact(
        "reward state has components ['b'], but this reward has ['a']; resume with the reward functions the run "
        "was started with"
    )):
        reward.load_state_dict({"normalize": "running", "components": {"b": {"count": 1, "mean": 0.0, "m2": 0.0}}})
    with pytest.raises(RewardFunctionError, match=exact(
        "reward state was saved with normalize='batch', but this reward uses normalize='running'"
    )):
        reward.load_state_dict({"normalize": "batch", "components": {}})


def test_every_builtin_can_be_named_in_a_config():
    kwargs = {"length_in_range": {"min_words": 1, "max_words": 100},
              "overlong_penalty": {"soft_limit": 2, "max_tokens": 4}}
    configs = [RewardFunctionConfig(name, kwargs=kwargs.get(name, {})) for name in sorted(BUILTIN_REWARD_FUNCTIONS)]
    reward = CompositeReward.from_config(configs, columns={"constraints", "completion_ids"})
    constraints = ['[{"type": "punctuation:no_comma"}]']
    breakdown = reward(prompts=["p"], completions=["i like apples."], constraints=constraints,
                       completion_ids=[[5, 6, 7]])
    assert set(breakdown.components) == set(BUILTIN_REWARD_FUNCTIONS)
    assert breakdown.components["instruction_following"] == [1.0]
    assert breakdown.components["overlong_penalty"] == [-0.5]  # 3 tokens: (3 - 2) / (4 - 2) past the soft limit
    assert breakdown.components["no_loops"] == [0.0]
