"""Plans for the built-in instruction data: which constraint types a prompt asks for, their arguments, its text.

A `Plan` is a prompt before it is written out: a topic, a task (the request), constraints with their
arguments, and the phrasing template of each. `reward.instruction_answers` renders an answer that keeps
them; `reward.instructions` assembles datasets of prompts, answers and preference pairs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from reward import instruction_bank as bank
from reward import unseen_bank
from reward.extra_verifiers import (
    ALIGN_TYPES,
    BULLET_WORDS,
    DISTINCT_STARTS,
    FIRST_WORD,
    HASHTAGS,
    LAST_WORD,
    LINES,
    MAX_SENTENCE_WORDS,
    NO_DIGITS,
    PARAGRAPH_SENTENCES,
    QUESTIONS,
    TABLE,
    WRAPPED,
)
from reward.instruction_bank import Task, Topic

# --- constraint types and which may be asked together ------------------------------------------------

EXISTENCE, FREQUENCY = "keywords:existence", "keywords:frequency"
FORBIDDEN, LETTER = "keywords:forbidden_words", "keywords:letter_frequency"
SENTENCES, WORDS = "length_constraints:number_sentences", "length_constraints:number_words"
PARAGRAPHS, NTH = "length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word"
PLACEHOLDERS, POSTSCRIPT = "detectable_content:number_placeholders", "detectable_content:postscript"
BULLETS, NUMBERED = "detectable_format:number_bullet_lists", "detectable_format:number_numbered_items"
CONSTRAINED, HIGHLIGHTS = "detectable_format:constrained_response", "detectable_format:number_highlighted_sections"
SECTIONS, JSON = "detectable_format:multiple_sections", "detectable_format:json_format"
TITLE = "detectable_format:title"
TWO, REPEAT = "combination:two_responses", "combination:repeat_prompt"
END, START, QUOTE = "startend:end_checker", "startend:start_checker", "startend:quotation"
CAPITALS, UPPER = "change_case:capital_word_frequency", "change_case:english_capital"
LOWER, NO_COMMA = "change_case:english_lowercase", "punctuation:no_comma"

USED_TYPES = (EXISTENCE, FREQUENCY, FORBIDDEN, LETTER, SENTENCES, WORDS, PARAGRAPHS, NTH, PLACEHOLDERS,
              POSTSCRIPT, BULLETS, NUMBERED, CONSTRAINED, HIGHLIGHTS, SECTIONS, JSON, TITLE, TWO, REPEAT, END,
              START, QUOTE, CAPITALS, UPPER, LOWER, NO_COMMA)
LAYOUTS = frozenset({BULLETS, NUMBERED, PARAGRAPHS, NTH, SECTIONS, JSON, TWO, TABLE})  # at most one per prompt
CASES = frozenset({CAPITALS, UPPER, LOWER})  # at most one per prompt
KEYWORD_TYPES = frozenset({EXISTENCE, FREQUENCY, FORBIDDEN})  # about the topic's own words
MEASURED = frozenset({SENTENCES, WORDS, LETTER, CAPITALS, FREQUENCY})  # numbers read off the answer
_JSON_PARTNERS = {EXISTENCE, FREQUENCY, FORBIDDEN, LETTER, WORDS, UPPER, LOWER, TITLE, PLACEHOLDERS, CONSTRAINED}
_CONFLICTS: dict[str, set[str]] = {  # cannot both be met, or only in an unnatural way
    JSON: set(USED_TYPES) - _JSON_PARTNERS,
    TWO: {QUOTE, REPEAT, CONSTRAINED},
    NTH: {TITLE, START, CONSTRAINED, REPEAT, POSTSCRIPT, QUOTE},  # these would add or open a paragraph
    # The repeated prompt would carry commas, forbidden words, list lines...; a measured number would
    # have to be known before the answer it is measured on.
    REPEAT: {START, QUOTE, NO_COMMA, FORBIDDEN, BULLETS, NUMBERED, PARAGRAPHS, SECTIONS, CONSTRAINED} | MEASURED
    | set(ALIGN_TYPES),  # align's types are mostly measured or shaped on the finished answer too
    START: {TITLE},
    END: {POSTSCRIPT},
    POSTSCRIPT: {LOWER},  # "P.S." has capitals
    CONSTRAINED: {LOWER, UPPER},  # "My answer is yes." is matched case-sensitively
    SECTIONS: {LOWER, UPPER},  # so is the section splitter
    # align's own types (reward.extra_verifiers), asked only in the "unseen" evaluation prompts: words
    # put before or after the answer clash with whatever must open or close it.
    FIRST_WORD: {JSON, START, QUOTE, NTH, TITLE, SECTIONS, WRAPPED},
    LAST_WORD: {JSON, END, QUOTE, POSTSCRIPT, HASHTAGS, WRAPPED},
    QUESTIONS: {JSON, END, QUOTE, POSTSCRIPT},
    HASHTAGS: {JSON, END, QUOTE, POSTSCRIPT, NTH},
    WRAPPED: {JSON, START, END, QUOTE},
    NO_DIGITS: {NUMBERED, SECTIONS},  # "1." and "Section 1" are digits
    BULLET_WORDS: LAYOUTS - {BULLETS},  # it needs a bullet list, as BULLETS does
    PARAGRAPH_SENTENCES: {JSON, NTH, TABLE},  # short paragraphs add blank lines
    TABLE: {DISTINCT_STARTS},  # table cells are not sentences
    LINES: {JSON},
    MAX_SENTENCE_WORDS: {JSON},
    DISTINCT_STARTS: {JSON},
}


def compatible(a: str, b: str) -> bool:
    """Whether one prompt may ask for both types (see _CONFLICTS; one layout and one case at most)."""
    if a == b or {a, b} <= LAYOUTS or {a, b} <= CASES:
        return False
    return b not in _CONFLICTS.get(a, ()) and a not in _CONFLICTS.get(b, ())


_PARTNERS = {a: frozenset(b for b in USED_TYPES if compatible(a, b)) for a in USED_TYPES}


class Retry(Exception):
    """This draw cannot be realised (e.g. too few facts survive the filters); draw again."""


# --- plans: what a prompt asks for ---------------------------------------------------------------------


@dataclass
class Plan:
    split: str
    topic: Topic
    task: Task | None  # None: the topic's yes/no question (constrained-response prompts)
    request: str
    constraints: list[dict]
    templates: list[str]  # the phrasing template of each constraint
    prompt_to_repeat: str = ""

    @property
    def task_name(self) -> str:
        return self.task.name if self.task else "answer_question"


def mentions(text: str, word: str) -> bool:
    return word.lower() in text.lower()


def word_count(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def sample_types(rng: random.Random, exclude: frozenset[str], count: int) -> list[str]:
    chosen: list[str] = []
    allowed = set(USED_TYPES) - exclude
    while len(chosen) < count and allowed:
        chosen.append(rng.choice([t for t in USED_TYPES if t in allowed]))
        allowed &= _PARTNERS[chosen[-1]]
    return chosen


def _arguments(type_id: str, topic: Topic, task: Task | None, split: str, taken: list[dict],
               rng: random.Random) -> dict:
    """A new constraint's arguments. MEASURED numbers are set from the finished answer (0 until then)."""
    relation = rng.choice(("at least", "less than"))
    if type_id == EXISTENCE:
        return {"keywords": rng.sample(topic.keywords, rng.choice((1, 1, 2)))}
    if type_id == FORBIDDEN:  # words the answer can do without: not in the topic name, title or openers
        frame = " ".join([topic.name, topic.title, *(task.openers if task else ())])
        used = {w for c in taken for w in c.get("keywords", [])}
        options = [w for w in topic.keywords if w not in used and not mentions(frame, w)]
        if not options:
            raise Retry
        return {"forbidden_words": rng.sample(options, min(len(options), rng.choice((1, 2))))}
    if type_id == FREQUENCY:
        return {"keyword": topic.core, "frequency": rng.choice((2, 3)) if relation == "at least" else 0,
                "relation": relation}
    if type_id == LETTER:  # common letters for "at least", rare ones for "less than"
        letters = "etaoinsr" if relation == "at least" else "zqxjkvwybp"
        return {"letter": rng.choice(letters), "let_frequency": 0, "let_relation": relation}
    if type_id == CAPITALS:
        return {"capital_frequency": rng.randint(2, 4) if relation == "at least" else 0, "capital_relation": relation}
    if type_id in (SENTENCES, WORDS):
        return {"num_sentences" if type_id == SENTENCES else "num_words": 0, "relation": relation}
    if type_id == NTH:  # the asked first word suits the paragraph's place ("first", "also", "finally")
        count = rng.randint(2, 4)
        nth = rng.randint(1, count)
        first, middle, last = bank.FIRST_WORDS[split]
        words = first if nth == 1 else last if nth == count else middle
        return {"num_paragraphs": count, "nth_paragraph": nth, "first_word": rng.choice(words)}
    return {
        PARAGRAPHS: lambda: {"num_paragraphs": rng.randint(2, 4)},
        PLACEHOLDERS: lambda: {"num_placeholders": rng.randint(1, 3)},
        POSTSCRIPT: lambda: {"postscript_marker": rng.choice(bank.POSTSCRIPT_MARKERS)},
        BULLETS: lambda: {"num_bullets": rng.randint(2, 5)},
        NUMBERED: lambda: {"num_items": rng.randint(2, 5)},
        HIGHLIGHTS: lambda: {"num_highlights": rng.randint(1, 3)},
        SECTIONS: lambda: {"section_spliter": rng.choice(bank.SECTION_SPLITTERS), "num_sections": rng.randint(2, 3)},
        END: lambda: {"end_phrase": rng.choice(bank.END_PHRASES[split])},
        START: lambda: {"start_phrase": rng.choice(bank.START_PHRASES[split])},
        REPEAT: lambda: {"prompt_to_repeat": ""},  # set once the rest of the prompt is phrased
    }.get(type_id, dict)()


def _phrase(template: str, constraint: dict) -> str:
    fields = dict(constraint)
    for key in ("keywords", "forbidden_words"):  # ['rain', 'clouds'] -> "'rain' and 'clouds'"
        if key in fields:
            quoted = [f"'{word}'" for word in fields[key]]
            fields[key] = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
    return template.format(**fields)


_PHRASINGS = {split: {**bank.PHRASINGS[split], **unseen_bank.PHRASINGS} for split in bank.SPLITS}


def make_plan(rng: random.Random, split: str, exclude: frozenset[str], count: int) -> Plan:
    """A plan with `count` compatible trained types (fewer when no more fit), none of them in `exclude`."""
    types = sample_types(rng, exclude, count)
    if not types:  # everything is excluded
        raise Retry
    return plan_for_types(rng, split, types)


def plan_for_types(rng: random.Random, split: str, types: list[str]) -> Plan:
    """A plan asking for `types` on a random topic and task of `split` (the content split: train | heldout).

    align's own types get no arguments here (their phrasings come from `reward.unseen_bank`); the
    unseen-prompt builder sets them.
    """
    phrasings = _PHRASINGS[split]
    topic = rng.choice(bank.TOPICS[split])
    tasks = [t for t in bank.TASKS[split] if topic.practical or not t.practical]
    task = None if CONSTRAINED in types else rng.choice(tasks)
    request = topic.question if task is None else rng.choice(task.templates).format(name=topic.name)
    types.sort(key=lambda t: t == REPEAT)  # the repeat instruction goes last: it excludes itself
    constraints: list[dict] = []
    for type_id in types:
        constraints.append({"type": type_id, **_arguments(type_id, topic, task, split, constraints, rng)})
    templates = []
    for c in constraints:
        relation = c.get("relation") or c.get("let_relation") or c.get("capital_relation")
        templates.append(rng.choice(phrasings[f"{c['type']}|{relation}" if relation else c["type"]]))
    plan = Plan(split, topic, task, request, constraints, templates)
    if REPEAT in types:  # no MEASURED types come with it, so every other phrase is final already
        plan.prompt_to_repeat = " ".join([request] + [_phrase(t, c) for t, c in zip(templates, constraints[:-1])])
        constraints[-1]["prompt_to_repeat"] = plan.prompt_to_repeat
    return plan


def prompt_text(plan: Plan) -> str:
    return " ".join([plan.request] + [_phrase(t, c) for t, c in zip(plan.templates, plan.constraints)])

