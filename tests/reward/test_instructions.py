"""The built-in instruction-following data: verified answers, real violations, disjoint splits, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics

import pytest

from reward import instruction_bank as bank
from reward import instructions, unseen_bank
from reward.degenerate_answers import SEPARATOR_LINES
from reward.degeneration import repetition_loop
from reward.extra_verifiers import ALIGN_TYPES
from reward.functions import unasked_layouts
from reward.instructions import (
    DEFAULT_SIZES,
    PAIR_TYPES,
    SPLITS,
    UNSEEN_TYPES,
    USED_TYPES,
    build_dataset,
    describe_dataset,
)
from reward.verifiers import CONSTRAINT_TYPES, check_all, parse_constraints

ALL_TOPICS = tuple(topic for topics in bank.TOPICS.values() for topic in topics)
TRAINING = [("sft", "train"), ("pairs", "train"), ("prompts", "train"), ("prompts", "rl")]
CONTENT = {"train": "train", "heldout": "heldout", "validation": "heldout", "rl": "rl"}  # split -> bank content
PROMPT_KINDS = ("prompts", "unseen")  # rows {"prompt", "constraints", "task", "topic"} (+ "demonstration")


@pytest.fixture(scope="module")
def data() -> dict[tuple[str, str], list[dict]]:
    """Every kind and each of its splits at the default size."""
    return {(kind, split): build_dataset(kind, split) for kind, sizes in DEFAULT_SIZES.items() for split in sizes}


def prompt_of(kind: str, row: dict) -> str:
    return row["messages"][0]["content"] if kind == "sft" else row["prompt"]


def topic_of(prompt: str):
    """The topic a prompt asks about (its name or its yes/no question is in the prompt)."""
    matches = [t for t in ALL_TOPICS if t.name in prompt or t.question in prompt]
    assert len(matches) == 1, prompt
    return matches[0]


# --- size, speed, schema ----------------------------------------------------------------------------------


def test_default_sizes_are_thousands(data):
    """(How long building takes is measured by the benchmark, never asserted in a test.)"""
    assert DEFAULT_SIZES == {
        "sft": {"train": 2000, "heldout": 200},
        "pairs": {"train": 2000, "heldout": 200},
        "prompts": {"train": 1000, "heldout": 300, "validation": 200, "rl": 1000},
        "unseen": {"heldout": 300, "validation": 200},
    }
    for (kind, split), rows in data.items():
        assert len(rows) == DEFAULT_SIZES[kind][split]


def test_rows_have_the_documented_columns(data):
    for split in DEFAULT_SIZES["sft"]:
        for row in data[("sft", split)]:
            assert set(row) == {"messages", "constraints", "task", "topic"}
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    for split in DEFAULT_SIZES["pairs"]:
        for row in data[("pairs", split)]:
            assert set(row) == {"prompt", "chosen", "rejected", "constraints", "pair_type"}
    for (kind, split), rows in data.items():
        for row in rows:
            if kind in PROMPT_KINDS:
                demonstration = {"demonstration"} if kind == "prompts" else set()
                assert set(row) == {"prompt", "constraints", "task", "topic"} | demonstration
            assert isinstance(row["constraints"], str)  # a JSON string column, as the contract says
            assert 1 <= len(parse_constraints(row["constraints"])) <= (2 if kind == "unseen" else 3)


def test_prompts_are_unique_within_each_dataset(data):
    for (kind, split), rows in data.items():
        prompts = [prompt_of(kind, row) for row in rows]
        assert len(set(prompts)) == len(prompts), (kind, split)


# --- answers really follow their constraints ----------------------------------------------------------------


def test_every_sft_answer_verifies_strictly(data):
    for split in DEFAULT_SIZES["sft"]:
        for row in data[("sft", split)]:
            prompt, answer = (m["content"] for m in row["messages"])
            results = check_all(parse_constraints(row["constraints"]), answer, prompt=prompt)
            assert all(results), (row["constraints"], answer)


def test_every_prompt_rows_demonstration_verifies_strictly(data):
    for (kind, split), rows in data.items():
        for row in rows if kind == "prompts" else ():
            results = check_all(parse_constraints(row["constraints"]), row["demonstration"], prompt=row["prompt"])
            assert all(results), (row["constraints"], row["demonstration"])


def test_no_answer_of_the_data_shows_a_layout_it_was_not_asked_for(data):
    """`reward.functions.no_unasked_layouts` never charges the built-in answers: SFT answers, chosen answers and
    demonstrations use quotes around the answer, separator lines, titles and JSON only where a constraint asks."""
    for (kind, _), rows in data.items():
        answers = {"sft": lambda row: row["messages"][1]["content"], "pairs": lambda row: row["chosen"],
                   "prompts": lambda row: row["demonstration"]}.get(kind)
        for row in rows if answers else ():
            types = {c["type"] for c in parse_constraints(row["constraints"])}
            assert not unasked_layouts(answers(row), types), (row["constraints"], answers(row))


def test_sft_answers_are_short_and_about_their_topic(data):
    for split in DEFAULT_SIZES["sft"]:
        rows = data[("sft", split)]
        words = sorted(len(re.findall(r"\w+", row["messages"][1]["content"])) for row in rows)
        assert 20 <= statistics.median(words) <= 120, words[len(words) // 2]
        assert words[len(words) * 9 // 10] <= 160
        for row in rows:
            topic = next(t for t in ALL_TOPICS if t.name == row["topic"])
            answer = row["messages"][1]["content"].lower()
            assert any(fact.lower()[:-1] in answer.replace("*", "") for fact in topic.facts), answer
            if row["task"] == "answer_question":  # the yes/no answer is the topic's own, right answer
                assert f"my answer is {topic.answer}." in answer


def test_every_prompt_only_row_is_satisfiable_and_names_its_topic(data):
    for (kind, split), rows in data.items():
        for row in rows if kind in PROMPT_KINDS else ():
            assert topic_of(row["prompt"]).name == row["topic"]
            assert row["topic"] in [t.name for t in bank.TOPICS[CONTENT[split]]]
            parse_constraints(row["constraints"])  # validates every constraint


def test_rows_failing_verification_are_redrawn(monkeypatch):
    real_check = instructions.check

    def no_comma_always_fails(constraint, response, **kwargs):
        return False if constraint["type"] == "punctuation:no_comma" else real_check(constraint, response, **kwargs)

    monkeypatch.setattr(instructions, "check", no_comma_always_fails)
    rows = build_dataset("sft", "train", n=300)
    assert not any("punctuation:no_comma" in row["constraints"] for row in rows)
    monkeypatch.undo()
    assert any("punctuation:no_comma" in row["constraints"] for row in build_dataset("sft", "train", n=300))


# --- preference pairs -------------------------------------------------------------------------------------


def test_chosen_always_verifies_and_rejected_differs(data):
    for split in DEFAULT_SIZES["pairs"]:
        for row in data[("pairs", split)]:
            constraints = parse_constraints(row["constraints"])
            assert all(check_all(constraints, row["chosen"], prompt=row["prompt"])), row
            assert row["rejected"].strip() and row["rejected"] != row["chosen"]


def test_constraint_violation_pairs_have_a_rejected_answer_that_fails(data):
    for split in DEFAULT_SIZES["pairs"]:
        for row in data[("pairs", split)]:
            results = check_all(parse_constraints(row["constraints"]), row["rejected"], prompt=row["prompt"])
            if row["pair_type"] == "ignores_constraints":
                assert not all(results), row
            elif row["pair_type"] == "violates_one":  # exactly one constraint broken, the others kept
                assert len(results) >= 2 and results.count(False) == 1, (row, results)
            elif row["pair_type"] == "off_topic":  # every constraint kept, but not one fact of the asked topic
                assert all(results), row
                asked = topic_of(row["prompt"])
                rejected = row["rejected"].lower().replace("*", "")
                assert not any(fact.lower()[:-1] in rejected for fact in asked.facts), row


def test_degenerate_pairs_look_as_described(data):
    for row in data[("pairs", "train")]:
        chosen, rejected = row["chosen"], row["rejected"]
        if row["pair_type"] == "truncated":
            assert chosen.startswith(rejected) and len(rejected) < 0.8 * len(chosen)
            assert rejected[-1].isalpha()  # stops mid-sentence
        elif row["pair_type"] == "repetitive":  # the answer's tail loops until a token cap cuts it off
            assert repetition_loop(rejected), rejected
            assert len(os.path.commonprefix([chosen, rejected])) >= 20  # the loop starts inside the answer
            # cut mid-phrase, never finished; or a separator line repeated to the end
            assert rejected[-1].isalnum() or rejected.rstrip().splitlines()[-1] in {
                line.strip() for line in SEPARATOR_LINES}, rejected
        elif row["pair_type"] == "runs_on":  # the whole answer, then more instead of stopping; no loop
            assert rejected.startswith(chosen) and len(rejected) >= len(chosen) + 20
            assert not repetition_loop(rejected), rejected
        elif row["pair_type"] == "ignores_task":
            assert rejected in bank.EVASIVE_REPLIES


def test_only_looping_rejections_loop_and_no_chosen_answer_does(data):
    for split in DEFAULT_SIZES["pairs"]:
        for row in data[("pairs", split)]:
            assert not repetition_loop(row["chosen"]), row["chosen"]
            assert repetition_loop(row["rejected"]) is (row["pair_type"] == "repetitive"), row


def test_pair_types_follow_the_configured_shares(data):
    assert abs(sum(PAIR_TYPES.values()) - 1) < 1e-9
    assert PAIR_TYPES["repetitive"] + PAIR_TYPES["runs_on"] >= 0.25  # at least a quarter of the pairs teach stopping
    rows = data[("pairs", "train")]
    for pair_type, share in PAIR_TYPES.items():
        observed = sum(row["pair_type"] == pair_type for row in rows) / len(rows)
        assert abs(observed - share) < 0.05, (pair_type, observed)


# --- constraint coverage and splits -----------------------------------------------------------------------


def test_every_used_constraint_type_appears_in_every_split(data):
    assert set(USED_TYPES) == set(CONSTRAINT_TYPES) - {"language:response_language"} - set(ALIGN_TYPES)
    for kind, split in [("sft", "train"), ("sft", "heldout"), ("prompts", "rl")]:
        seen = {c["type"] for row in data[(kind, split)] for c in json.loads(row["constraints"])}
        assert seen == set(USED_TYPES), set(USED_TYPES) - seen


def _template_regex(template: str) -> re.Pattern:
    """A template with each {field} as a wildcard: "Use fewer than {n} words." matches "Use fewer than 50 words."."""
    return re.compile(".+?".join(re.escape(part) for part in re.split(r"\{[^}]*\}", template)))


@pytest.mark.parametrize("split, other", [("train", "heldout"), ("train", "rl"), ("heldout", "rl")])
def test_the_content_splits_share_no_topic_task_phrasing_or_phrase(split, other):
    assert not {t.name for t in bank.TOPICS[split]} & {t.name for t in bank.TOPICS[other]}
    assert not {t.name for t in bank.TASKS[split]} & {t.name for t in bank.TASKS[other]}
    templates = {s: {t for task in bank.TASKS[s] for t in task.templates} for s in (split, other)}
    assert not templates[split] & templates[other]
    assert set(bank.PHRASINGS[split]) == set(bank.PHRASINGS[other])
    for key in bank.PHRASINGS[split]:
        assert not set(bank.PHRASINGS[split][key]) & set(bank.PHRASINGS[other][key]), key
    for phrases in (bank.START_PHRASES, bank.END_PHRASES, bank.FIRST_WORDS):
        assert not set(phrases[split]) & set(phrases[other])


def test_no_prompt_uses_a_template_or_topic_of_another_content_split(data):
    def templates(split: str) -> list[re.Pattern]:
        phrasings = [_template_regex(t) for ts in bank.PHRASINGS[split].values() for t in ts]
        tasks = [t for task in bank.TASKS[split] for t in task.templates]  # a request opens the prompt
        return phrasings + [re.compile("^" + _template_regex(t).pattern) for t in tasks]

    for (kind, split), rows in data.items():  # validation is written from the held-out content
        others = [other for other in bank.SPLITS if other != CONTENT[split]]
        foreign_templates = [pattern for other in others for pattern in templates(other)]
        foreign_topics = [t.name for other in others for t in bank.TOPICS[other]]
        for row in rows:
            prompt = prompt_of(kind, row)
            assert not [p.pattern for p in foreign_templates if p.search(prompt)], prompt
            assert not [name for name in foreign_topics if name in prompt], prompt


def test_heldout_prompts_use_the_heldout_phrasings(data):
    phrasings = [_template_regex(t) for ts in bank.PHRASINGS["heldout"].values() for t in ts]
    for split in ("heldout", "validation"):
        for row in data[("prompts", split)]:
            assert any(p.search(row["prompt"]) for p in phrasings), row["prompt"]


# --- unseen constraint types, held-out types, validation ---------------------------------------------------


def test_unseen_types_are_align_types_never_trained_on():
    assert UNSEEN_TYPES == ALIGN_TYPES and len(UNSEEN_TYPES) >= 12
    assert all(t.startswith("align:") for t in UNSEEN_TYPES)
    assert not set(UNSEEN_TYPES) & set(USED_TYPES)


def test_no_split_but_unseen_carries_an_unseen_type(data):
    for (kind, split), rows in data.items():
        if kind != "unseen":
            types = {c["type"] for row in rows for c in json.loads(row["constraints"])}
            assert not types & set(UNSEEN_TYPES), (kind, split)


def test_every_unseen_row_asks_for_an_unseen_type_with_sane_arguments(data):
    for split in ("heldout", "validation"):
        rows = data[("unseen", split)]
        seen_types = set()
        for row in rows:
            constraints = parse_constraints(row["constraints"])  # validates them
            assert any(c["type"] in UNSEEN_TYPES for c in constraints), row
            topic = topic_of(row["prompt"])
            for c in constraints:
                seen_types.add(c["type"])
                assert _sane_unseen_arguments(c, topic), (c, row["prompt"])
        assert seen_types >= set(UNSEEN_TYPES), set(UNSEEN_TYPES) - seen_types
        assert seen_types - set(UNSEEN_TYPES)  # a second, trained type comes with some of them


def _sane_unseen_arguments(c: dict, topic) -> bool:
    """What each align type's arguments must look like in a prompt (numbers read off a real answer)."""
    checks = {
        "align:first_word": lambda: c["word"] in unseen_bank.OPENING_WORDS,
        "align:last_word": lambda: c["word"] in unseen_bank.CLOSINGS,
        "align:keyword_order": lambda: {c["first"], c["second"]} <= {topic.core, *topic.keywords},
        "align:table_rows": lambda: 2 <= c["num_rows"] <= 5,
        "align:hashtags": lambda: c["num_hashtags"] in (2, 3),
        "align:question_count": lambda: c["num_questions"] in (1, 2),
        "align:wrapped_in_tag": lambda: c["tag"] in unseen_bank.WRAPPING_TAGS,
        "align:max_paragraph_sentences": lambda: c["max_sentences"] in (2, 3),
        "align:max_word_length": lambda: 9 <= c["max_letters"] <= 20,
        "align:max_sentence_words": lambda: 5 <= c["max_words"] <= 40 and c["max_words"] % 5 == 0,
        "align:bullet_max_words": lambda: 5 <= c["max_words"] <= 30 and c["max_words"] % 5 == 0,
        "align:max_characters": lambda: 50 <= c["max_chars"] <= 2000 and c["max_chars"] % 50 == 0,
        "align:line_count": lambda: 2 <= c["num_lines"] <= 12,
    }
    return checks.get(c["type"], lambda: True)()


def test_every_unseen_prompt_was_verified_with_a_reference_answer(monkeypatch):
    passed: set[tuple[str, str, str]] = set()  # (prompt, constraint, answer) that the generator checked

    def recording_check(constraint, response, *, prompt=None, **kwargs):
        result = real_check(constraint, response, prompt=prompt, **kwargs)
        if result:
            passed.add((prompt, json.dumps(constraint), response))
        return result

    real_check = instructions.check
    monkeypatch.setattr(instructions, "check", recording_check)
    for row in build_dataset("unseen", "heldout", n=80):
        constraints = [json.dumps(c) for c in json.loads(row["constraints"])]
        answers = {answer for prompt, _, answer in passed if prompt == row["prompt"]}
        assert any(all((row["prompt"], c, answer) in passed for c in constraints) for answer in answers), row


def test_heldout_types_leave_training_and_join_the_unseen_pool():
    held = ["punctuation:no_comma", "detectable_format:title"]
    for kind, split in TRAINING:
        rows = build_dataset(kind, split, heldout_types=held)
        assert len(rows) == DEFAULT_SIZES[kind][split]
        types = {c["type"] for row in rows for c in json.loads(row["constraints"])}
        assert not types & (set(held) | set(UNSEEN_TYPES)), (kind, types & set(held))
        assert types == set(USED_TYPES) - set(held)
    heldout_sft = build_dataset("sft", "heldout", heldout_types=held)  # evaluation data still asks for them
    assert {c["type"] for row in heldout_sft for c in json.loads(row["constraints"])} >= set(held)
    unseen = [json.loads(row["constraints"]) for row in build_dataset("unseen", "heldout", heldout_types=held)]
    assert all(any(c["type"] in set(UNSEEN_TYPES) | set(held) for c in cs) for cs in unseen)
    assert {c["type"] for cs in unseen for c in cs} >= set(held)
    assert build_dataset("unseen", "heldout", n=30) != build_dataset("unseen", "heldout", n=30, heldout_types=held)


def test_validation_rows_are_disjoint_from_heldout_rows(data):
    for kind in PROMPT_KINDS:
        heldout = {row["prompt"] for row in data[(kind, "heldout")]}
        validation = [row["prompt"] for row in data[(kind, "validation")]]
        assert not heldout & set(validation), kind
        assert {topic_of(p).name for p in validation} <= {t.name for t in bank.HELDOUT_TOPICS}


def test_prompts_heldout_keeps_its_first_200_rows():
    """Raising the default size to 300 kept the first 200 rows: sha256 of them, computed before the change (the
    demonstration column came later and is left out)."""
    rows = [{k: v for k, v in row.items() if k != "demonstration"} for row in build_dataset("prompts", "heldout")[:200]]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert digest == "509773887899c9ba456a02546ee0bd85738f9a0ee270f2ada0ae43d342c55196"


# --- determinism and bad requests --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DEFAULT_SIZES))
def test_same_seed_same_rows_other_seed_other_rows(kind):
    split, other_split = list(DEFAULT_SIZES[kind])[:2]
    first = build_dataset(kind, split, n=40, seed=7)
    assert build_dataset(kind, split, n=40, seed=7) == first
    assert build_dataset(kind, split, n=40, seed=8) != first
    assert build_dataset(kind, other_split, n=40, seed=7) != first


def test_a_smaller_n_is_a_prefix_of_a_larger_one(data):
    for (kind, split), rows in data.items():
        assert build_dataset(kind, split, n=50) == rows[:50], (kind, split)
        assert build_dataset(kind, split, n=25, seed=3) == build_dataset(kind, split, n=60, seed=3)[:25]
    held = ["startend:quotation"]
    assert build_dataset("unseen", "validation", n=20, heldout_types=held) == build_dataset(
        "unseen", "validation", n=45, heldout_types=held)[:20]
    assert build_dataset("sft", "train", n=0) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("dpo", "train"), "unknown dataset kind 'dpo'; expected one of 'sft', 'pairs', 'prompts', 'unseen'"),
        (("sft", "test"), "unknown split 'test'; expected one of 'train', 'heldout', 'validation', 'rl'"),
        (("unseen", "train"), "kind 'unseen' has no split 'train'; it has 'heldout', 'validation'"),
        (("sft", "validation"), "kind 'sft' has no split 'validation'; it has 'train', 'heldout'"),
        (("sft", "train", -1), "n (number of rows) must be a non-negative int or None for the default, got -1"),
        (("sft", "train", "10"), "n (number of rows) must be a non-negative int or None for the default, got '10'"),
        (("sft", "train", True), "n (number of rows) must be a non-negative int or None for the default, got True"),
        (("sft", "train", 5, "0"), "seed must be an int, got '0'"),
        (("sft", "train", 5, 0, ["punctuation:no_coma", "align:first_word"]),
         "heldout_types has unknown or untrained type ids 'align:first_word', 'punctuation:no_coma'; "
         "valid ids (the trained types): keywords:existence, keywords:frequency,"),
        (("sft", "train", 5, 0, "punctuation:no_comma"),
         "heldout_types must be a list of constraint type ids, got str; valid ids (the trained types): "),
        (("sft", "train", 5, 0, list(USED_TYPES)),
         "heldout_types holds out every trained type; leave at least one to train on"),
    ],
)
def test_bad_requests_raise_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_dataset(*arguments)


# --- describe_dataset and the shipped bank ------------------------------------------------------------------


def test_describe_dataset_counts_the_default_data(data):
    summary = describe_dataset()
    assert summary["sizes"] == DEFAULT_SIZES
    assert list(summary["splits"]) == list(SPLITS)
    for split in SPLITS:
        described = summary["splits"][split]
        kinds = [kind for kind in DEFAULT_SIZES if split in DEFAULT_SIZES[kind]]
        assert described["kinds"] == kinds
        expected = {}
        for kind in kinds:
            for row in data[(kind, split)]:
                for constraint in json.loads(row["constraints"]):
                    expected[constraint["type"]] = expected.get(constraint["type"], 0) + 1
        assert described["constraint_types"] == dict(sorted(expected.items()))
        assert sum(described["constraints_per_prompt"].values()) == sum(DEFAULT_SIZES[k][split] for k in kinds)
        assert described["topics"] == [t.name for t in bank.TOPICS[CONTENT[split]]]
        if "pairs" in kinds:
            assert sum(described["pair_types"].values()) == DEFAULT_SIZES["pairs"][split]
        if "sft" in kinds:
            low, median, high = (described["sft_response_words"][k] for k in ("p10", "median", "p90"))
            assert 0 < low <= median <= high
    assert "pair_types" not in summary["splits"]["validation"]
    json.dumps(summary)  # plain data, ready for a README


def test_bank_facts_keywords_and_questions_are_consistent():
    for topic in ALL_TOPICS:
        assert len(topic.facts) >= 8 and len(set(topic.facts)) == len(topic.facts), topic.name
        for fact in topic.facts:  # plain sentences the layouts can wrap in any markdown
            assert fact.endswith(".") and not re.search(r"[*\[\]<>#\"]|^[-\d]", fact), fact
        assert sum("," not in fact for fact in topic.facts) >= 5, topic.name
        for word in topic.keywords:
            assert any(re.search(rf"\b{word}\b", fact, re.I) for fact in topic.facts), (topic.name, word)
        assert sum(len(re.findall(rf"\b{topic.core}\b", f, re.I)) for f in topic.facts) >= 3, topic.name
        assert topic.answer in ("yes", "no", "maybe") and 0 <= topic.evidence < len(topic.facts)
        assert topic.question.endswith("?") and topic.title and "," not in topic.title
    for split in bank.SPLITS:
        for type_id in USED_TYPES:  # every used type has phrasings, per relation where it has one
            has_relation = any(arg.kind == "relation" for arg in CONSTRAINT_TYPES[type_id].args)
            keys = [f"{type_id}|{r}" for r in ("at least", "less than")] if has_relation else [type_id]
            assert all(bank.PHRASINGS[split].get(key) for key in keys), (split, type_id)
    for type_id in UNSEEN_TYPES:  # at least three phrasings each, using exactly the type's arguments
        phrasings = unseen_bank.PHRASINGS[type_id]
        assert len(phrasings) >= 3 and len(set(phrasings)) == len(phrasings), type_id
        arguments = {arg.name for arg in CONSTRAINT_TYPES[type_id].args}
        for phrasing in phrasings:
            assert set(re.findall(r"\{(\w+)\}", phrasing)) == arguments, phrasing
