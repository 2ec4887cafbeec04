"""Built-in reward functions: exact values, None where they do not apply, TRL's call convention, both formats."""

import json

import pytest

from reward.functions import (
    BUILTIN_REWARD_FUNCTIONS,
    completion_text,
    instruction_following,
    instruction_following_all,
    instruction_following_loose,
    length_in_range,
    no_loops,
    no_repetition,
    no_unasked_layouts,
    overlong_penalty,
    prompt_text,
)
from reward.verifiers import check

NO_COMMA = {"type": "punctuation:no_comma"}
HAS_APPLE = {"type": "keywords:existence", "keywords": ["apple"]}
LOWERCASE = {"type": "change_case:english_lowercase"}
ENDS_WITH_QUESTION = {"type": "startend:end_checker", "end_phrase": "Any other questions?"}

# Satisfies no_comma, keyword 'apple' and lowercase; does not end with the phrase -> 3 of 4.
THREE_OF_FOUR = "i like apples and pears."
FOUR_CONSTRAINTS = json.dumps([NO_COMMA, HAS_APPLE, LOWERCASE, ENDS_WITH_QUESTION])  # as a dataset stores it


def trl_extras() -> dict:
    """The keyword arguments TRL's GRPOTrainer._calculate_rewards adds to every reward-function call (trl 1.16)."""
    return {"completion_ids": [[1, 2, 3]], "trainer_state": object(), "log_extra": print, "log_metric": print}


def test_instruction_following_is_the_fraction_of_constraints_satisfied():
    rewards = instruction_following(
        prompts=["p1", "p2"],
        completions=[THREE_OF_FOUR, "i like apples."],
        constraints=[FOUR_CONSTRAINTS, [NO_COMMA, HAS_APPLE]],  # a JSON string, and a list of dicts
    )
    assert rewards == [0.75, 1.0]


def test_instruction_following_all_is_one_only_when_every_constraint_holds():
    rewards = instruction_following_all(
        prompts=["p1", "p2"],
        completions=[THREE_OF_FOUR, "i like apples."],
        constraints=[FOUR_CONSTRAINTS, [NO_COMMA, HAS_APPLE]],  # a JSON string, and a list of dicts
    )
    assert rewards == [0.0, 1.0]


@pytest.mark.parametrize("fn", [instruction_following, instruction_following_all, instruction_following_loose])
def test_samples_without_constraints_get_none(fn):
    rewards = fn(prompts=["a", "b", "c"], completions=["x", "y", "z"], constraints=["[]", [], None])
    assert rewards == [None, None, None]


def test_loose_tolerates_a_preamble_line_that_strict_rejects():
    completion = "Sure!\nall lowercase here."  # the first line has capitals; IFEval's loose check drops it
    args = {"prompts": ["p"], "completions": [completion], "constraints": [[LOWERCASE]]}
    assert instruction_following(**args) == [0.0]
    assert instruction_following_loose(**args) == [1.0]


def test_conversational_samples_are_read_from_the_last_assistant_message():
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fruit?"}]]
    completions = [[{"role": "assistant", "content": "i like apples and pears."}]]
    assert instruction_following(prompts=prompts, completions=completions, constraints=[FOUR_CONSTRAINTS]) == [0.75]


def test_the_prompt_reaches_the_verifier_for_repeat_prompt_without_its_own_text():
    prompts = [[{"role": "system", "content": "sys"}, {"role": "user", "content": "Say hi."}]] * 2
    constraints = [[{"type": "combination:repeat_prompt"}]] * 2
    rewards = instruction_following(prompts=prompts, completions=["Say hi. Hi!", "Hi!"], constraints=constraints)
    assert rewards == [1.0, 0.0]


def test_a_bad_constraint_is_an_error_that_names_its_sample():
    constraints = [[NO_COMMA], json.dumps([{"type": "no_such:type"}])]
    with pytest.raises(ValueError, match="no_such:type") as caught:
        instruction_following(prompts=["a", "b"], completions=["x", "y"], constraints=constraints)
    assert caught.value.sample_index == 1


def test_a_constraints_column_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="column 'constraints' has 1 values for 2 completions"):
        instruction_following(prompts=["a", "b"], completions=["x", "y"], constraints=[[NO_COMMA]])


def test_no_repetition_is_minus_the_share_of_repeated_ngrams():
    loop = "a b c d a b c d a b c d"  # 9 four-grams, 4 distinct -> 5 repeats
    rewards = no_repetition(prompts=["p"] * 4, completions=["The cat sat on the mat.", loop, "too short", ""])
    assert rewards == [0.0, -5 / 9, 0.0, 0.0]
    assert no_repetition(prompts=["p"], completions=["Go go GO go!"], n=1) == [-0.75]  # case-insensitive words


def test_no_repetition_rejects_n_below_one():
    with pytest.raises(ValueError, match="'n' must be an integer >= 1, got 0"):
        no_repetition(prompts=[], completions=[], n=0)


def test_length_in_range_penalises_the_distance_outside_the_range():
    completions = ["one two", "one two three four", " ".join(["w"] * 6), " ".join(["w"] * 20)]
    rewards = length_in_range(prompts=["p"] * 4, completions=completions, min_words=4, max_words=5)
    assert rewards == [-0.5, 0.0, -0.2, -1.0]  # 2 short of 4; in range; 1 over 5; 15 over 5 floored at -1


@pytest.mark.parametrize(
    ("min_words", "max_words", "message"),
    [
        (5, 2, r"'min_words' \(5\) must not exceed 'max_words' \(2\)"),
        (-1, 2, "'min_words' must be an integer >= 0, got -1"),
        (0, 0, "'max_words' must be an integer >= 1, got 0"),
        (1, 2.5, "'max_words' must be an integer >= 1, got 2.5"),
    ],
)
def test_length_in_range_rejects_bad_bounds(min_words, max_words, message):
    with pytest.raises(ValueError, match=message):
        length_in_range(prompts=[], completions=[], min_words=min_words, max_words=max_words)


def test_overlong_penalty_is_zero_to_the_soft_limit_then_linear_to_minus_one_at_the_cap():
    """soft_limit 4, max_tokens 8: span 4. Lengths (from completion_ids, not the text) 3 and 4: 0; 6: -(6 - 4) / 4
    = -0.5; 7: -0.75; 8 (the cap): -1; 10 (past it): -1."""
    ids = [[7] * n for n in (3, 4, 6, 7, 8, 10)]
    rewards = overlong_penalty(prompts=["p"] * 6, completions=["same text"] * 6, completion_ids=ids, soft_limit=4,
                               max_tokens=8)
    assert rewards == [0.0, 0.0, -0.5, -0.75, -1.0, -1.0]


@pytest.mark.parametrize(("soft_limit", "max_tokens", "message"), [
    (8, 8, r"'soft_limit' \(8\) must be below 'max_tokens' \(8\)"),
    (-1, 8, "'soft_limit' must be an integer >= 0, got -1"),
    (0, 0, "'max_tokens' must be an integer >= 1, got 0"),
])
def test_overlong_penalty_rejects_bad_limits(soft_limit, max_tokens, message):
    with pytest.raises(ValueError, match=message):
        overlong_penalty(prompts=[], completions=[], soft_limit=soft_limit, max_tokens=max_tokens)


def test_overlong_penalty_without_completion_ids_says_where_they_come_from():
    with pytest.raises(ValueError, match="reads completion lengths from `completion_ids`"):
        overlong_penalty(prompts=["p"], completions=["x"], soft_limit=1, max_tokens=2)


def test_no_loops_is_minus_one_for_a_repetition_loop_and_zero_otherwise():
    """A sentence of 6 words repeated 5 times holds each of its 6-word windows 5 times: a loop (-1). Four times is
    not (0), nor is ordinary prose; a shorter `ngram` / fewer `min_repeats` catch the short refrain."""
    sentence = "the cat sat on the mat. "
    completions = [sentence * 5, sentence * 4, "Plain prose about tea, brewed hot.", "la la la la"]
    assert no_loops(prompts=["p"] * 4, completions=completions) == [-1.0, 0.0, 0.0, 0.0]
    assert no_loops(prompts=["p"], completions=[[{"role": "assistant", "content": "la la la la"}]], ngram=1,
                    min_repeats=4) == [-1.0]


def test_no_unasked_layouts_charges_a_layout_only_where_no_constraint_asks_for_it():
    """Each layout of `LAYOUTS` in an answer to a prompt that asks only for no commas: -1; the same answer where a
    constraint asks for that layout: 0. Bullets and *highlights* are no separator line; a row without constraints
    says nothing about what was asked (None)."""
    quoted, separated = '"Tea is brewed hot."', "Tea is brewed hot.\n\n***\n\nIt cools."
    titled, as_json = "<<Tea>>\nTea is brewed hot.", '{"tea": "brewed hot"}'
    plain = "Tea is *brewed* hot.\n* green\n* black"
    no_comma = json.dumps([NO_COMMA])
    assert no_unasked_layouts(prompts=["p"] * 5, completions=[quoted, separated, titled, as_json, plain],
                              constraints=[no_comma] * 5) == [-1.0, -1.0, -1.0, -1.0, 0.0]
    asking = [[{"type": "startend:quotation"}], [{"type": "combination:two_responses"}],
              [{"type": "detectable_format:title"}], [{"type": "detectable_format:json_format"}, NO_COMMA]]
    assert no_unasked_layouts(prompts=["p"] * 4, completions=[quoted, separated, titled, as_json],
                              constraints=[json.dumps(c) for c in asking]) == [0.0, 0.0, 0.0, 0.0]
    assert no_unasked_layouts(prompts=["p"] * 2, completions=[quoted, [{"role": "assistant", "content": quoted}]],
                              constraints=[None, no_comma]) == [None, -1.0]


def test_no_unasked_layouts_charges_a_separator_before_the_answer_even_where_separators_are_asked_for():
    """IFEval's paragraph checker passes "***, A, ***, B" as two paragraphs (an empty first part is dropped); no type
    asks for a separator before the first part, so it is charged whatever the constraints. A separator between the
    parts, or asterisks that open a line of text, are not."""
    paragraphs = json.dumps([{"type": "length_constraints:number_paragraphs", "num_paragraphs": 2}])
    completions = ["***\n\nTea is brewed hot.\n\n***\n\nIt cools.", "\n  *****  \nTea is brewed hot.",
                   "Tea is brewed hot.\n\n***\n\nIt cools.", "*** Tea is brewed hot.\n\n***\n\nIt cools."]
    assert check(json.loads(paragraphs)[0], completions[0])  # the verifier alone would pay for it
    assert no_unasked_layouts(prompts=["p"] * 4, completions=completions,
                              constraints=[paragraphs] * 4) == [-1.0, -1.0, 0.0, 0.0]


@pytest.mark.parametrize("name", sorted(BUILTIN_REWARD_FUNCTIONS))
def test_every_builtin_accepts_trls_call_and_returns_one_value_per_completion(name):
    fn = BUILTIN_REWARD_FUNCTIONS[name]
    kwargs = {"length_in_range": {"min_words": 1, "max_words": 10},
              "overlong_penalty": {"soft_limit": 2, "max_tokens": 4}}.get(name, {})
    rewards = fn(
        prompts=["Write in lowercase."], completions=[THREE_OF_FOUR], constraints=[FOUR_CONSTRAINTS],
        other_column=["ignored"], **trl_extras(), **kwargs,
    )
    assert len(rewards) == 1 and isinstance(rewards[0], float)


def test_completion_text_reads_both_formats():
    assert completion_text("plain") == "plain"
    assert completion_text([{"content": "no role"}]) == "no role"  # TRL's own examples omit the role
    tool_turn = [
        {"role": "assistant", "content": "calling a tool"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": [{"type": "text", "text": "The answer "}, {"type": "text", "text": "is 42."}]},
    ]
    assert completion_text(tool_turn) == "The answer is 42."


def test_prompt_text_is_the_last_user_message():
    chat = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]
    assert prompt_text(chat) == "second"
    assert prompt_text("plain") == "plain"


def test_unreadable_samples_are_clear_errors():
    with pytest.raises(ValueError, match=r"completion has no assistant message \(roles: \['user'\]\)"):
        completion_text([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match=r"prompt has no user message \(roles: \['system'\]\)"):
        prompt_text([{"role": "system", "content": "hi"}])
    with pytest.raises(TypeError, match="a completion must be a string or a list of chat messages.*got int"):
        completion_text(3)
