"""The built-in instruction-following data: verified answers, real violations, disjoint splits, determinism."""

from __future__ import annotations

import json
import re
import statistics
import time

import pytest

from reward import instruction_bank as bank
from reward import instructions
from reward.instructions import DEFAULT_SIZES, PAIR_TYPES, USED_TYPES, build_dataset, describe_dataset
from reward.extra_verifiers import ALIGN_TYPES
from reward.verifiers import CONSTRAINT_TYPES, check_all, parse_constraints

ALL_TOPICS = bank.TRAIN_TOPICS + bank.HELDOUT_TOPICS


@pytest.fixture(scope="module")
def built() -> tuple[dict[tuple[str, str], list[dict]], float]:
    """Every kind and split at its default size, and how long building all of them took."""
    start = time.perf_counter()
    data = {(kind, split): build_dataset(kind, split) for kind in DEFAULT_SIZES for split in bank.SPLITS}
    return data, time.perf_counter() - start


@pytest.fixture(scope="module")
def data(built) -> dict[tuple[str, str], list[dict]]:
    return built[0]


def prompt_of(kind: str, row: dict) -> str:
    return row["messages"][0]["content"] if kind == "sft" else row["prompt"]


def topic_of(prompt: str):
    """The topic a prompt asks about (its name or its yes/no question is in the prompt)."""
    matches = [t for t in ALL_TOPICS if t.name in prompt or t.question in prompt]
    assert len(matches) == 1, prompt
    return matches[0]


# --- size, speed, schema ----------------------------------------------------------------------------------


def test_default_sizes_are_thousands(built):
    """(How long building takes is measured by the benchmark, never asserted in a test.)"""
    data, _ = built
    for (kind, split), rows in data.items():
        assert len(rows) == DEFAULT_SIZES[kind][split]
    assert DEFAULT_SIZES["sft"]["train"] >= 1000 and DEFAULT_SIZES["pairs"]["train"] >= 1000


def test_rows_have_the_documented_columns(data):
    for split in bank.SPLITS:
        for row in data[("sft", split)]:
            assert set(row) == {"messages", "constraints", "task", "topic"}
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        for row in data[("pairs", split)]:
            assert set(row) == {"prompt", "chosen", "rejected", "constraints", "pair_type"}
        for row in data[("prompts", split)]:
            assert set(row) == {"prompt", "constraints", "task", "topic"}
        for kind in DEFAULT_SIZES:
            for row in data[(kind, split)]:
                assert isinstance(row["constraints"], str)  # a JSON string column, as the contract says
                assert 1 <= len(parse_constraints(row["constraints"])) <= 3


def test_prompts_are_unique_within_each_dataset(data):
    for (kind, split), rows in data.items():
        prompts = [prompt_of(kind, row) for row in rows]
        assert len(set(prompts)) == len(prompts), (kind, split)


# --- answers really follow their constraints ----------------------------------------------------------------


def test_every_sft_answer_verifies_strictly(data):
    for split in bank.SPLITS:
        for row in data[("sft", split)]:
            prompt, answer = (m["content"] for m in row["messages"])
            results = check_all(parse_constraints(row["constraints"]), answer, prompt=prompt)
            assert all(results), (row["constraints"], answer)


def test_sft_answers_are_short_and_about_their_topic(data):
    for split in bank.SPLITS:
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
    for split in bank.SPLITS:
        for row in data[("prompts", split)]:
            assert topic_of(row["prompt"]).name == row["topic"]
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
    for split in bank.SPLITS:
        for row in data[("pairs", split)]:
            constraints = parse_constraints(row["constraints"])
            assert all(check_all(constraints, row["chosen"], prompt=row["prompt"])), row
            assert row["rejected"].strip() and row["rejected"] != row["chosen"]


def test_constraint_violation_pairs_have_a_rejected_answer_that_fails(data):
    for split in bank.SPLITS:
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
        elif row["pair_type"] == "repetitive":
            facts = topic_of(row["prompt"]).facts  # one of them now loops 3-5 times
            assert max(rejected.lower().count(f.lower()) - chosen.lower().count(f.lower()) for f in facts) >= 2
        elif row["pair_type"] == "ignores_task":
            assert rejected in bank.EVASIVE_REPLIES


def test_pair_types_follow_the_configured_shares(data):
    rows = data[("pairs", "train")]
    for pair_type, share in PAIR_TYPES.items():
        observed = sum(row["pair_type"] == pair_type for row in rows) / len(rows)
        assert abs(observed - share) < 0.05, (pair_type, observed)


# --- constraint coverage and splits -----------------------------------------------------------------------


def test_every_used_constraint_type_appears_in_both_splits(data):
    assert set(USED_TYPES) == set(CONSTRAINT_TYPES) - {"language:response_language"} - set(ALIGN_TYPES)
    for split in bank.SPLITS:
        seen = {c["type"] for row in data[("sft", split)] for c in json.loads(row["constraints"])}
        assert seen == set(USED_TYPES), set(USED_TYPES) - seen


def _template_regex(template: str) -> re.Pattern:
    """A template with each {field} as a wildcard: "Use fewer than {n} words." matches "Use fewer than 50 words."."""
    return re.compile(".+?".join(re.escape(part) for part in re.split(r"\{[^}]*\}", template)))


def test_heldout_topics_tasks_and_phrasings_are_disjoint_from_train():
    assert not {t.name for t in bank.TRAIN_TOPICS} & {t.name for t in bank.HELDOUT_TOPICS}
    assert not {t.name for t in bank.TASKS["train"]} & {t.name for t in bank.TASKS["heldout"]}
    templates = {split: {t for task in bank.TASKS[split] for t in task.templates} for split in bank.SPLITS}
    assert not templates["train"] & templates["heldout"]
    assert set(bank.PHRASINGS["train"]) == set(bank.PHRASINGS["heldout"])
    for key in bank.PHRASINGS["train"]:
        assert not set(bank.PHRASINGS["train"][key]) & set(bank.PHRASINGS["heldout"][key]), key
    for phrases in (bank.START_PHRASES, bank.END_PHRASES, bank.FIRST_WORDS):
        assert not set(phrases["train"]) & set(phrases["heldout"])


def test_no_heldout_prompt_uses_a_train_template_or_topic_and_vice_versa(data):
    def templates(split: str) -> list[re.Pattern]:
        phrasings = [_template_regex(t) for ts in bank.PHRASINGS[split].values() for t in ts]
        tasks = [t for task in bank.TASKS[split] for t in task.templates]  # a request opens the prompt
        return phrasings + [re.compile("^" + _template_regex(t).pattern) for t in tasks]

    for split, other in (("heldout", "train"), ("train", "heldout")):
        foreign_templates = templates(other)
        foreign_topics = [t.name for t in bank.TOPICS[other]]
        for kind in DEFAULT_SIZES:
            for row in data[(kind, split)]:
                prompt = prompt_of(kind, row)
                assert not [p.pattern for p in foreign_templates if p.search(prompt)], prompt
                assert not [name for name in foreign_topics if name in prompt], prompt


def test_heldout_prompts_use_the_heldout_phrasings(data):
    phrasings = [_template_regex(t) for ts in bank.PHRASINGS["heldout"].values() for t in ts]
    for row in data[("prompts", "heldout")]:
        assert any(p.search(row["prompt"]) for p in phrasings), row["prompt"]


# --- determinism and bad requests --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DEFAULT_SIZES))
def test_same_seed_same_rows_other_seed_other_rows(kind):
    first = build_dataset(kind, "train", n=40, seed=7)
    assert build_dataset(kind, "train", n=40, seed=7) == first
    assert build_dataset(kind, "train", n=40, seed=8) != first
    assert build_dataset(kind, "heldout", n=40, seed=7) != first


def test_a_smaller_n_is_a_prefix_of_a_larger_one(data):
    for kind in DEFAULT_SIZES:
        assert build_dataset(kind, "train", n=100) == data[(kind, "train")][:100]
        assert build_dataset(kind, "heldout", n=25, seed=3) == build_dataset(kind, "heldout", n=60, seed=3)[:25]
    assert build_dataset("sft", "train", n=0) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("dpo", "train"), "unknown dataset kind 'dpo'; expected one of 'sft', 'pairs', 'prompts'"),
        (("sft", "test"), "unknown split 'test'; expected one of 'train', 'heldout'"),
        (("sft", "train", -1), "n (number of rows) must be a non-negative int or None for the default, got -1"),
        (("sft", "train", "10"), "n (number of rows) must be a non-negative int or None for the default, got '10'"),
        (("sft", "train", True), "n (number of rows) must be a non-negative int or None for the default, got True"),
        (("sft", "train", 5, "0"), "seed must be an int, got '0'"),
    ],
)
def test_bad_requests_raise_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_dataset(*arguments)


# --- describe_dataset and the shipped bank ------------------------------------------------------------------


def test_describe_dataset_counts_the_default_data(data):
    summary = describe_dataset()
    assert summary["sizes"] == DEFAULT_SIZES
    for split in bank.SPLITS:
        described = summary["splits"][split]
        expected = {}
        for kind in DEFAULT_SIZES:
            for row in data[(kind, split)]:
                for constraint in json.loads(row["constraints"]):
                    expected[constraint["type"]] = expected.get(constraint["type"], 0) + 1
        assert described["constraint_types"] == dict(sorted(expected.items()))
        assert sum(described["pair_types"].values()) == DEFAULT_SIZES["pairs"][split]
        assert sum(described["constraints_per_prompt"].values()) == sum(s[split] for s in DEFAULT_SIZES.values())
        assert described["topics"] == [t.name for t in bank.TOPICS[split]]
        low, median, high = (described["sft_response_words"][k] for k in ("p10", "median", "p90"))
        assert 0 < low <= median <= high
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
