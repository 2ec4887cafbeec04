"""The shapes of the built-in data's content: a topic with its facts, and a task (the request about a topic).

The content itself lives in `reward.instruction_bank` (the "train" and "heldout" splits) and `reward.rl_bank` (the
"rl" split, prompts for RL only).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str  # noun phrase that reads well after "Explain" / "facts about": "the water cycle"
    title: str  # used for <<title>>
    core: str  # a word used several times across the facts (keyword-frequency constraints count it)
    keywords: tuple[str, ...]  # words that each appear in at least one fact (keyword constraints)
    question: str  # a yes/no question the facts answer (constrained-response prompts)
    answer: str  # "yes" | "no" | "maybe"
    evidence: int  # index of the fact that supports the answer
    facts: tuple[str, ...]
    practical: bool  # something people do (takes advice and tips), not only something to know about


def make_topic(name: str, title: str, core: str, keywords: str, question: tuple[str, str, int], facts: str,
               practical: bool = True) -> Topic:
    """A topic from its facts written one per line (as the banks write them) and its keywords in one string."""
    lines = tuple(line.strip() for line in facts.strip().splitlines())
    return Topic(name, title, core, tuple(keywords.split()), question[0], question[1], question[2], lines, practical)


@dataclass(frozen=True)
class Task:
    name: str
    templates: tuple[str, ...]  # the request; "{name}" is the topic name
    openers: tuple[str, ...]  # optional first sentence of an answer (comma-free)
    practical: bool = False  # only asked about practical topics ("advice about the moon" reads badly)
