"""Answers for the built-in instruction data: a plan's topic facts laid out, then shaped to its constraints.

`render` writes an answer that keeps every constraint of a `reward.instruction_plans.Plan` (or all but
one, for near-miss preference pairs); `measure` then sets the numbers of the constraints that are read
off the finished answer ("fewer than 60 words"). Rendering can fail for a draw (too few facts survive
the filters); it raises `Retry` and the caller draws again.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from reward import instruction_bank as bank
from reward import unseen_bank
from reward.extra_verifiers import BULLET_WORDS, NO_DIGITS, TABLE
from reward.instruction_bank import Topic
from reward.instruction_plans import (
    BULLETS,
    CAPITALS,
    CONSTRAINED,
    END,
    EXISTENCE,
    FORBIDDEN,
    FREQUENCY,
    HIGHLIGHTS,
    JSON,
    LAYOUTS,
    LETTER,
    LOWER,
    NO_COMMA,
    NTH,
    NUMBERED,
    PARAGRAPHS,
    PLACEHOLDERS,
    POSTSCRIPT,
    QUOTE,
    REPEAT,
    SECTIONS,
    SENTENCES,
    START,
    TITLE,
    UPPER,
    WORDS,
    Plan,
    Retry,
    mentions,
    word_count,
)

# --- answers: facts laid out, then shaped to the constraints -------------------------------------------


@dataclass
class _Layout:
    kind: str  # plain | bullets | numbered | table | paragraphs | nth | sections | json | two
    count: int = 0  # bullets, items, table rows, paragraphs or sections; 0: as many as there are facts
    marker: str = "*"


def _asked(type_id: str, active: dict[str, dict], broken: dict | None) -> dict | None:
    """The constraint of this type, whether it is to be kept (active) or broken."""
    return active.get(type_id) or (broken if broken is not None and broken["type"] == type_id else None)


def _choose_layout(plan: Plan, active: dict[str, dict], broken: dict | None, rng: random.Random) -> _Layout:
    """The answer's shape. A broken layout constraint gives a near miss (one bullet too many, ...)."""
    marker = "-" if HIGHLIGHTS in active or rng.random() < 0.5 else "*"  # "* *x*" would hide a highlight
    for constraint in plan.constraints:
        type_id, near_miss = constraint["type"], constraint is broken
        if type_id not in LAYOUTS or (type_id not in active and not near_miss):
            continue
        if type_id in (BULLETS, NUMBERED, PARAGRAPHS):
            count = constraint.get("num_bullets") or constraint.get("num_items") or constraint["num_paragraphs"]
            if near_miss:
                count = count + 1 if count <= 2 or rng.random() < 0.5 else count - 1
            return _Layout({BULLETS: "bullets", NUMBERED: "numbered", PARAGRAPHS: "paragraphs"}[type_id], count, marker)
        if type_id == NTH:  # near miss: a paragraph too many or too few, or the first word left out
            change = rng.choice((-1, 1)) if near_miss and rng.random() < 0.5 else 0
            return _Layout("nth", max(1, constraint["num_paragraphs"] + change))
        if type_id == SECTIONS:
            return _Layout("sections", constraint["num_sections"] - near_miss)
        if type_id == TABLE:
            return _Layout("table", constraint["num_rows"] + near_miss)
        if not near_miss:  # a broken JSON / two-responses constraint: just a plain answer
            return _Layout("json" if type_id == JSON else "two")
    if (plan.task is not None and plan.task.name in bank.LIST_TASKS) or BULLET_WORDS in active:
        return _Layout("bullets", 0, marker)
    return _Layout("plain")


def _fact_count(plan: Plan, active: dict[str, dict], broken: dict | None, rng: random.Random) -> int:
    """How many facts to use: length constraints want short or long answers (a broken one the opposite)."""
    short = long = False
    for c in plan.constraints:
        if c["type"] in (SENTENCES, WORDS, LETTER) and (c["type"] in active or c is broken):
            wants_short = ((c.get("relation") or c.get("let_relation")) == "less than") != (c is broken)
            short, long = short or wants_short, long or not wants_short
    if long and not short:
        return rng.randint(5, 7)
    return rng.randint(2, 3) if short and not long else rng.randint(2, 4)


def _choose_facts(plan: Plan, topic: Topic, active: dict[str, dict], broken: dict | None, count: int,
                  exact: bool, rng: random.Random) -> tuple[list[str], list[str]]:
    """(facts for the body, unused facts for a postscript), obeying the content constraints."""
    broken_type = broken["type"] if broken else None
    avoid = list(active[FORBIDDEN]["forbidden_words"]) if FORBIDDEN in active else []
    if broken_type == EXISTENCE:
        avoid += broken["keywords"]
    if broken_type == FREQUENCY and broken["relation"] == "at least":
        avoid.append(broken["keyword"])
    pool = [f for f in topic.facts if not any(mentions(f, w) for w in avoid)]
    if NO_COMMA in active:
        pool = [f for f in pool if "," not in f]
    if NO_DIGITS in active:
        pool = [f for f in pool if not re.search(r"\d", f)]
    required: list[str] = []

    def need(candidates: list[str]) -> None:
        if not candidates:
            raise Retry
        if not any(c in required for c in candidates):
            required.append(rng.choice(candidates))

    if plan.task is None and CONSTRAINED in active:  # the answer leads with the fact that supports it
        need([f for f in pool if f == topic.facts[topic.evidence]])
    for word in active[EXISTENCE]["keywords"] if EXISTENCE in active else ():
        need([f for f in pool if mentions(f, word)])
    frequency = active.get(FREQUENCY)
    if frequency and frequency["relation"] == "at least":
        with_word = [f for f in pool if word_count(f, frequency["keyword"]) and f not in required]
        rng.shuffle(with_word)
        while sum(word_count(f, frequency["keyword"]) for f in required) < frequency["frequency"]:
            if not with_word:
                raise Retry
            required.append(with_word.pop())
    elif frequency:  # "less than": leave the word out where the topic has enough other facts
        clear = [f for f in pool if not mentions(f, frequency["keyword"])]
        pool = clear if len(clear) > count else pool
    if broken_type == FORBIDDEN:
        need([f for f in pool if any(mentions(f, w) for w in broken["forbidden_words"])])
    if broken_type == NO_COMMA and any("," in f for f in pool):
        need([f for f in pool if "," in f])
    if broken_type == FREQUENCY and broken["relation"] == "less than":
        required += [f for f in pool if mentions(f, broken["keyword"]) and f not in required]
    rest = [f for f in pool if f not in required]
    if len(required) > count and exact or len(required) + len(rest) < count and (exact or count <= 4):
        raise Retry
    chosen = required + rng.sample(rest, max(0, min(count - len(required), len(rest))))
    lead = chosen[:1] if plan.task is None and CONSTRAINED in active else []
    body = lead + sorted(chosen[len(lead):], key=topic.facts.index)  # the bank's order reads best
    return body, [f for f in rest if f not in chosen]


def _emphasise(facts: list[str], count: int, rng: random.Random) -> list[str]:
    """Write `count` words of the facts in capitals, for emphasis."""
    words = [fact.split() for fact in facts]
    spots = [(i, j) for i, fact in enumerate(words) for j, word in enumerate(fact)
             if len(word.strip(".*")) >= 4 and word.strip(".*").isalpha() and not word.isupper()]
    if len(spots) < count:
        raise Retry
    for i, j in rng.sample(spots, count):
        words[i][j] = words[i][j].upper()
    return [" ".join(w) for w in words]


def _lower_first(text: str) -> str:
    """Lower-case the first letter (after a highlight asterisk) unless it starts a word in capitals."""
    at = 1 if text.startswith("*") else 0
    return text if text[at + 1 : at + 2].isupper() else text[:at] + text[at].lower() + text[at + 1 :]


def _split(items: list[str], parts: int, rng: random.Random) -> list[list[str]]:
    """Split items into `parts` contiguous non-empty groups."""
    cuts = sorted(rng.sample(range(1, len(items)), parts - 1))
    return [items[a:b] for a, b in zip([0] + cuts, cuts + [len(items)])]


def render(plan: Plan, rng: random.Random, *, broken: dict | None = None, ignore_all: bool = False,
            topic: Topic | None = None) -> str:
    """An answer to `plan` keeping every constraint but `broken` (none with ignore_all), about `topic`."""
    topic = topic or plan.topic
    active = {} if ignore_all else {c["type"]: c for c in plan.constraints if c is not broken}
    layout = _choose_layout(plan, active, broken, rng)
    count = _fact_count(plan, active, broken, rng)
    exact = layout.kind in ("bullets", "numbered", "table") and layout.count > 0  # one fact per bullet, item or row
    least = 2 if layout.kind == "two" else layout.count  # facts needed to fill the layout
    if exact:
        count = layout.count
    else:  # two responses: about two facts each
        count = max(count, 4 if layout.kind == "two" else least)
    facts, unused = _choose_facts(plan, topic, active, broken, count, exact, rng)
    if len(facts) < least:
        raise Retry

    # Inside the facts: highlights, words in capitals; then a sentence with placeholders.
    if highlights := _asked(HIGHLIGHTS, active, broken):
        wanted = highlights["num_highlights"] - (highlights is broken)
        if wanted > len(facts):
            raise Retry
        for i in rng.sample(range(len(facts)), wanted):
            facts[i] = f"*{facts[i][:-1]}*{facts[i][-1]}"  # *highlight*. keeps the full stop outside
    capitals = _asked(CAPITALS, active, broken)
    if capitals and (capitals["capital_relation"] == "at least") != (capitals is broken):
        facts = _emphasise(facts, capitals["capital_frequency"] + (capitals is broken), rng)
    placeholders = _asked(PLACEHOLDERS, active, broken)
    wanted = placeholders["num_placeholders"] - (placeholders is broken) if placeholders else 0
    tail = [rng.choice([s for s, n in bank.PLACEHOLDER_SENTENCES if n == wanted])] if wanted else []

    lead = []
    if plan.task is None and CONSTRAINED in active:
        lead.append(f"My answer is {topic.answer}.")
    if plan.task is not None and rng.random() < 0.6:
        lead.append(rng.choice(plan.task.openers).format(name=topic.name))
    if broken is not None and broken["type"] == NO_COMMA and not any("," in f for f in facts):
        lead.append("Sure, here is a short answer.")  # the topic has no fact with a comma to offer
    title = f"<<{topic.title}>>" if TITLE in active else None
    body = _lay_out(layout, facts, tail, lead, title, topic, active, broken, rng)

    # Around the body.
    if title and layout.kind != "json":
        body = f"{title}\n\n{body}"
    if START in active:
        body = active[START]["start_phrase"] + ("\n\n" if "\n" in body else " ") + body
    if POSTSCRIPT in active:
        note = unused[0] if unused else "Thanks for asking."
        body += f"\n\n{active[POSTSCRIPT]['postscript_marker'].rstrip('.')}. {note}"
    if END in active:
        ends_in_list = layout.kind in ("bullets", "numbered", "table") and not tail and POSTSCRIPT not in active
        body += ("\n\n" if ends_in_list else " ") + active[END]["end_phrase"]
    if REPEAT in active:
        body = f"{plan.prompt_to_repeat}\n\n{body}"
    if QUOTE in active:
        body = f'"{body}"'
    return body.lower() if LOWER in active else body.upper() if UPPER in active else body


def _lay_out(layout: _Layout, facts: list[str], tail: list[str], lead: list[str], title: str | None,
             topic: Topic, active: dict[str, dict], broken: dict | None, rng: random.Random) -> str:
    if layout.kind == "plain":
        return " ".join(lead + facts + tail)
    if layout.kind in ("bullets", "numbered", "table"):  # an intro line replaces the task's opener
        count = unseen_bank.NUMBER_WORDS[len(facts)] if NO_DIGITS in active else len(facts)
        intro = rng.choice(bank.LIST_INTROS).format(n=count, name=topic.name)
        head = " ".join([s for s in lead if s.startswith("My answer")] + [intro[:1].upper() + intro[1:]])
        if layout.kind == "table":  # blank lines around it, as markdown wants
            return "\n\n".join([head, _table(facts)] + tail)
        items = [f"{layout.marker} {f}" if layout.kind == "bullets" else f"{i}. {f}" for i, f in enumerate(facts, 1)]
        return "\n".join([head] + items + tail)
    if layout.kind == "json":
        record: dict = {"title": title} if title else {}
        record.update({"answer": lead[0]} if lead and lead[0].startswith("My answer") else {})
        record.update({"topic": topic.name, "points": facts})
        record.update({"note": tail[0]} if tail else {})
        text = json.dumps(record, indent=2, ensure_ascii=False)
        fenced = rng.random() < 0.3 and LOWER not in active and UPPER not in active
        return f"```json\n{text}\n```" if fenced else text
    if layout.kind == "two":
        first, second = _split(facts, 2, rng)
        return " ".join(lead + first) + "\n******\n" + " ".join(second + tail)
    groups = [" ".join(group) for group in _split(facts, layout.count, rng)]
    groups[-1] = " ".join([groups[-1]] + tail)
    if layout.kind == "sections":
        groups[0] = " ".join(lead + [groups[0]])
        splitter = _asked(SECTIONS, active, broken)["section_spliter"]
        return "\n\n".join(f"{splitter} {i}\n{text}" for i, text in enumerate(groups, 1))
    if layout.kind == "paragraphs":
        groups[0] = " ".join(lead + [groups[0]])
        return "\n\n***\n\n".join(groups)
    # nth: blank-line paragraphs, the asked one opening with the asked word (left out in one near miss)
    rule = _asked(NTH, active, broken)
    if rule["nth_paragraph"] != 1:
        groups[0] = " ".join(lead + [groups[0]])
    left_out = rule is broken and layout.count == rule["num_paragraphs"]
    if rule["nth_paragraph"] <= len(groups) and not left_out:
        connector = rule["first_word"].capitalize() + ("" if NO_COMMA in active else ",")
        groups[rule["nth_paragraph"] - 1] = f"{connector} {_lower_first(groups[rule['nth_paragraph'] - 1])}"
    return "\n\n".join(groups)


def _table(facts: list[str]) -> str:
    """A two-column markdown table, one fact per row, rows labelled First, Second, ... (no digits)."""
    rows = [unseen_bank.TABLE_HEADER, ("---", "---")] + list(zip(unseen_bank.ORDINALS, facts))
    return "\n".join(f"| {label} | {text} |" for label, text in rows)


_WORD = re.compile(r"\w+")
_CAPITAL_WORD = re.compile(r"\w+(?:['’-]\w+)*")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*]|\d+[.)])[ \t]+", flags=re.MULTILINE)


def measure(plan: Plan, response: str, rng: random.Random) -> None:
    """Set the numbers of MEASURED constraints from the finished answer, with a natural-looking margin.

    The counts approximate the verifiers' (words and sentences as IFEval counts them); the margin
    absorbs small differences, and every answer is verified afterwards anyway.
    """
    round_up, round_down = (lambda x: 5 * -(-x // 5)), (lambda x: 5 * (x // 5))
    for c in plan.constraints:
        if c["type"] == WORDS:
            words, margin = len(_WORD.findall(response)), rng.randint(3, 12)
            less = c["relation"] == "less than"
            c["num_words"] = round_up(words + margin) if less else max(5, round_down(words - margin))
        elif c["type"] == SENTENCES:
            text = _LIST_MARKER.sub("", response).replace("P.P.S.", "PPS").replace("P.S.", "PS")
            sentences = max(1, len(_SENTENCE_END.findall(text)))
            less = c["relation"] == "less than"
            c["num_sentences"] = sentences + rng.randint(1, 3) if less else max(1, sentences - rng.randint(0, 2))
        elif c["type"] == LETTER:
            letters = response.lower().count(c["letter"])
            if c["let_relation"] == "at least":
                threshold = letters - rng.randint(0, letters // 4)
                c["let_frequency"] = round_down(threshold) if threshold >= 10 else threshold
                if c["let_frequency"] < 1:
                    raise Retry
            else:
                threshold = letters + rng.randint(1, 4)
                c["let_frequency"] = round_up(threshold) if threshold > 10 else threshold
        elif c["type"] == CAPITALS and c["capital_relation"] == "less than":
            capitals = sum(1 for word in _CAPITAL_WORD.findall(response) if word.isupper())
            c["capital_frequency"] = max(2, capitals + rng.randint(1, 3))
        elif c["type"] == FREQUENCY and c["relation"] == "less than":
            c["frequency"] = max(2, response.lower().count(c["keyword"].lower()) + rng.randint(1, 2))

