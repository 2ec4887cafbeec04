"""Prompts that ask for constraint types a model was never trained on: the "unseen" evaluation kind.

Each prompt carries 1-2 constraints, at least one from the unseen pool: align's own types
(`UNSEEN_TYPES`, from `reward.extra_verifiers`) plus any trained types held out of training with
``heldout_types``. A second constraint, when there is one, is any compatible type, seen or unseen.
Prompts use the held-out topics, tasks and phrasings, so only the constraint types are new.

`draw_unseen` also writes a reference answer: the plan rendered by `reward.instruction_answers` (which
knows the table layout and bullet lists), then shaped for align's other types (an opening word,
questions, hashtags, a closing word, a wrapping tag, short paragraphs, one sentence per line). The
numbers read off that answer are set last (longest word and sentence, characters, lines, keyword
order). The caller keeps a prompt only when this answer passes every constraint strictly, so every
unseen prompt is satisfiable, with arguments taken from a real answer.
"""

from __future__ import annotations

import random
import re

from reward import unseen_bank
from reward.extra_verifiers import (
    ALIGN_TYPES,
    BULLET_WORDS,
    FIRST_WORD,
    HASHTAGS,
    KEYWORD_ORDER,
    LAST_WORD,
    LINES,
    MAX_CHARS,
    MAX_SENTENCE_WORDS,
    MAX_WORD_LENGTH,
    PARAGRAPH_SENTENCES,
    QUESTIONS,
    TABLE,
    WRAPPED,
    keyword_position,
)
from reward.instruction_answers import measure, render
from reward.instruction_plans import LOWER, UPPER, USED_TYPES, Plan, Retry, compatible, plan_for_types
from reward.text_stats import count_words, split_sentences

UNSEEN_TYPES: tuple[str, ...] = ALIGN_TYPES
_SECOND_CONSTRAINT = 0.5  # share of prompts that add a second constraint
_WORD = re.compile(r"\w+")
_BULLET = re.compile(r"^[ \t]*[*-][ \t]+(\S.*)$", flags=re.MULTILINE)
_MARKUP_LINE = re.compile(r"^[ \t]*(?:[-*+|{}\[\]]|\d+[.)]|<<|```)")  # list, table, JSON lines: never re-flowed


def unseen_pool(heldout_types: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The types every unseen prompt asks for one of: align's own, then the held-out trained ones."""
    return UNSEEN_TYPES + tuple(t for t in USED_TYPES if t in heldout_types)


def sample_unseen_types(rng: random.Random, pool: tuple[str, ...], trained: tuple[str, ...]) -> list[str]:
    """One type of `pool`, and half the time a compatible second one from `pool` or `trained`."""
    first = rng.choice(pool)
    partners = [t for t in pool + trained if compatible(first, t)]
    if rng.random() >= _SECOND_CONSTRAINT or not partners:
        return [first]
    return [first, rng.choice(partners)]


def draw_unseen(rng: random.Random, split: str, pool: tuple[str, ...], trained: tuple[str, ...]) -> tuple[Plan, str]:
    """A plan for an unseen prompt on `split`'s content and a reference answer (not yet verified).

    Raises Retry when this draw cannot be realised.
    """
    plan = plan_for_types(rng, split, sample_unseen_types(rng, pool, trained))
    for constraint in plan.constraints:
        constraint.update(_given_arguments(constraint["type"], rng))
    response = _shape(plan, render(plan, rng), rng)
    measure(plan, response, rng)  # the trained types' numbers ("fewer than 60 words")
    for constraint in plan.constraints:
        constraint.update(_measured_arguments(constraint, plan, response, rng))
    return plan, response


def _given_arguments(type_id: str, rng: random.Random) -> dict:
    """Arguments the answer is shaped to; those read off the answer are set by _measured_arguments."""
    choices = {
        FIRST_WORD: lambda: {"word": rng.choice(unseen_bank.OPENING_WORDS)},
        LAST_WORD: lambda: {"word": rng.choice(sorted(unseen_bank.CLOSINGS))},
        QUESTIONS: lambda: {"num_questions": rng.choice((1, 1, 2))},
        HASHTAGS: lambda: {"num_hashtags": rng.choice((2, 3))},
        TABLE: lambda: {"num_rows": rng.randint(2, 5)},
        WRAPPED: lambda: {"tag": rng.choice(unseen_bank.WRAPPING_TAGS)},
        PARAGRAPH_SENTENCES: lambda: {"max_sentences": rng.choice((2, 3))},
        MAX_WORD_LENGTH: lambda: {"max_letters": rng.choice((9, 10, 12))},  # raised if the answer needs it
    }
    return choices[type_id]() if type_id in choices else {}


def _round_up(value: int, step: int = 5) -> int:
    return step * -(-value // step)


def _measured_arguments(constraint: dict, plan: Plan, text: str, rng: random.Random) -> dict:
    """Numbers read off the finished answer, with a natural-looking margin (rounded to 5 or 50)."""
    type_id = constraint["type"]
    if type_id == MAX_WORD_LENGTH:
        return {"max_letters": max([constraint["max_letters"]] + [len(w) for w in _WORD.findall(text)])}
    if type_id == MAX_SENTENCE_WORDS:
        longest = max(count_words(sentence) for sentence in split_sentences(text))
        return {"max_words": _round_up(longest + rng.randint(0, 2))}
    if type_id == BULLET_WORDS:
        bullets = _BULLET.findall(text)
        if not bullets:
            raise Retry
        return {"max_words": _round_up(max(count_words(bullet) for bullet in bullets) + rng.randint(0, 2))}
    if type_id == MAX_CHARS:
        return {"max_chars": _round_up(len(text.strip()) + rng.randint(10, 60), 50)}
    if type_id == LINES:
        lines = sum(1 for line in text.splitlines() if line.strip())
        if lines < 2:  # "exactly 1 lines" reads badly, and a one-line answer is not much of a task
            raise Retry
        return {"num_lines": lines}
    if type_id == KEYWORD_ORDER:
        topic_words = dict.fromkeys((plan.topic.core, *plan.topic.keywords))
        words = [w for w in topic_words if keyword_position(text, w) is not None]
        if len(words) < 2:
            raise Retry
        first, second = sorted(rng.sample(words, 2), key=lambda word: keyword_position(text, word))
        return {"first": first, "second": second}
    return {}


# --- shaping the reference answer ------------------------------------------------------------------------------


def _shape(plan: Plan, text: str, rng: random.Random) -> str:
    """The rendered answer changed to keep align's types that the renderer does not know about."""
    asked = {c["type"]: c for c in plan.constraints}

    def cased(words: str) -> str:  # what is added follows an all-lowercase or all-capitals answer
        return words.lower() if LOWER in asked else words.upper() if UPPER in asked else words

    if PARAGRAPH_SENTENCES in asked:
        text = _short_paragraphs(text, asked[PARAGRAPH_SENTENCES]["max_sentences"])
    if LINES in asked and "\n" not in text.strip():  # one sentence per line
        text = "\n".join(split_sentences(text))
    if FIRST_WORD in asked:
        text = f"{cased(asked[FIRST_WORD]['word'])}! {text}"
    if QUESTIONS in asked:
        questions = rng.sample(unseen_bank.READER_QUESTIONS, asked[QUESTIONS]["num_questions"])
        text += _gap(text) + cased(" ".join(questions))
    if HASHTAGS in asked:
        forbidden = {w.lower() for c in plan.constraints for w in c.get("forbidden_words", [])}
        words = [w for w in dict.fromkeys((plan.topic.core, *plan.topic.keywords)) if w.lower() not in forbidden]
        if len(words) < asked[HASHTAGS]["num_hashtags"]:
            raise Retry
        text += "\n\n" + " ".join(cased(f"#{w.lower()}") for w in rng.sample(words, asked[HASHTAGS]["num_hashtags"]))
    if LAST_WORD in asked:
        text += _gap(text) + cased(unseen_bank.CLOSINGS[asked[LAST_WORD]["word"]])
    if WRAPPED in asked:
        tag = cased(asked[WRAPPED]["tag"])
        text = f"<{tag}>\n{text}\n</{tag}>"
    return text


def _gap(text: str) -> str:
    """What goes between the answer and a sentence added after it: a blank line after a list or table."""
    return "\n\n" if _MARKUP_LINE.match(text.splitlines()[-1]) else " "


def _short_paragraphs(text: str, limit: int) -> str:
    """Blank lines between the lines of a long paragraph, and between groups of `limit` sentences of a long line.

    A list becomes a loose list (a blank line between items, which markdown renders the same); list,
    table and markup lines are never re-flowed.
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n[ \t]*\n", text):
        for line in block.split("\n") if len(split_sentences(block)) > limit else [block]:
            sentences = split_sentences(line)
            if len(sentences) <= limit or "\n" in line or _MARKUP_LINE.match(line):
                paragraphs.append(line)
            else:
                paragraphs += [" ".join(sentences[i : i + limit]) for i in range(0, len(sentences), limit)]
    return "\n\n".join(paragraphs)
