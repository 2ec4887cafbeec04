"""Built-in instruction-following data, generated from shipped content (no downloads), deterministic.

    build_dataset("sft", "train")       # [{"messages": [...], "constraints": "[...]", "task", "topic"}]
    build_dataset("pairs", "heldout")   # [{"prompt", "chosen", "rejected", "constraints", "pair_type"}]
    build_dataset("prompts", "train")   # [{"prompt", "constraints", "task", "topic", "demonstration"}]  (for RL)
    build_dataset("unseen", "heldout")  # same columns: prompts asking for constraint types never trained on

A prompt is an everyday request about a topic ("Explain the water cycle.") plus 1-3 verifiable
constraints phrased in natural language; the machine-checkable spec goes in the ``constraints``
column (a JSON string of constraint dicts, see `reward.verifiers`). Answers are built from the
topic's short factual sentences (`reward.instruction_bank`), then shaped to meet each constraint
(lower case, exactly N bullets, JSON, a title, ...). Every answer is checked with
`reward.verifiers.check` (strict) before it is kept and redrawn if it fails, so every SFT answer and
every chosen answer verifies, and every prompt-only row is one whose generated answer verified; the
"prompts" kind keeps that answer in its ``demonstration`` column (for RL's off-policy guidance,
`align.rl.demonstrate_failed_prompts`).

Splits: "heldout" uses other topics, other tasks and other phrasings of every constraint type
(and other start/end phrases) than "train", so held-out scores measure generalisation. "validation"
(kinds "prompts" and "unseen", for tuning) uses the held-out content too, but its rows are drawn apart
from the held-out rows and never repeat a prompt of the default-size held-out set. "rl" (kind "prompts",
for RL) is written from a third content split, `reward.rl_bank`, new to both: RL then learns on requests
as unfamiliar to the SFT model as held-out ones are, without training on them.

Constraint types: training data ("sft", "pairs", "prompts" on "train" or "rl") uses `USED_TYPES`, every IFEval
type of `reward.verifiers.CONSTRAINT_TYPES` except ``language:response_language`` (the shipped content is
English only, and "answer in English" is not a constraint a model can fail in an interesting way), minus
any ``heldout_types`` given to `build_dataset`. The "unseen" kind (1-2 constraints per prompt, see
`reward.unseen_prompts`) always asks for at least one type training never uses: align's own
`UNSEEN_TYPES` (`reward.extra_verifiers`) or one of the ``heldout_types``.

Modules: `reward.instruction_plans` (constraint types, plans, prompt text), `reward.instruction_answers`
(answers rendered from a plan), `reward.unseen_prompts` (the unseen kind), `reward.degenerate_answers`
(rejected answers that end badly), this one (datasets: verification, preference pairs, sizes).

Determinism: row i depends only on (kind, split, seed, heldout_types, i) and the rows before it (a
duplicate of an earlier prompt is redrawn), so ``build_dataset(kind, split, n=100)`` is exactly the
first 100 rows of any larger n with the same arguments ("prefix-stable").
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter
from collections.abc import Callable, Collection

from reward import degenerate_answers
from reward import instruction_bank as bank
from reward.instruction_answers import measure, render
from reward.instruction_plans import KEYWORD_TYPES, USED_TYPES, Plan, Retry, make_plan, prompt_text
from reward.unseen_prompts import UNSEEN_TYPES, draw_unseen, unseen_pool
from reward.verifiers import check

__all__ = ["DEFAULT_SIZES", "KINDS", "PAIR_TYPES", "SPLITS", "UNSEEN_TYPES", "USED_TYPES", "build_dataset",
           "content_split", "describe_dataset", "heldout_types_error"]

SPLITS = ("train", "heldout", "validation", "rl")
DEFAULT_SIZES: dict[str, dict[str, int]] = {  # kind -> the splits it has -> default rows
    "sft": {"train": 2000, "heldout": 200},
    "pairs": {"train": 2000, "heldout": 200},
    "prompts": {"train": 1000, "heldout": 300, "validation": 200, "rl": 1000},
    "unseen": {"heldout": 300, "validation": 200},
}
KINDS = tuple(DEFAULT_SIZES)
PAIR_TYPES: dict[str, float] = {  # pair type -> share of the pairs
    "ignores_constraints": 0.17,  # rejected: a plain answer that ignores the constraints (fails >= 1)
    "violates_one": 0.20,  # rejected: keeps every constraint but one (a near miss where possible)
    "off_topic": 0.12,  # rejected: keeps every constraint, but is about another topic
    "truncated": 0.08,  # rejected: the chosen answer cut off mid-sentence
    "repetitive": 0.13,  # rejected: the chosen answer's tail loops until it is cut off (a repetition loop)
    # rejected: the complete chosen answer, then rambling on instead of stopping. The hardest type for a reward
    # model (nothing in the rambling breaks a checker); at a 0.10 share the pipeline's reward model (256 pairs)
    # preferred the finished answer in only 0.60 of held-out pairs (README, Results)
    "runs_on": 0.22,
    "ignores_task": 0.08,  # rejected: an evasive reply that does not attempt the request
}
_WORD = re.compile(r"\w+")

# --- examples, pairs, datasets ---------------------------------------------------------------------------

_CONSTRAINT_COUNTS = {1: 0.35, 2: 0.40, 3: 0.25}  # constraints per prompt -> share
_MAX_DRAWS = 200  # draws per row before giving up; a handful is typical
_TRAINING_SPLITS = ("train", "rl")  # the splits a model trains on: they never ask for a held-out type


def content_split(split: str) -> str:
    """The bank content (`reward.instruction_bank.SPLITS`) a split is written from: validation shares the held-out
    topics, tasks and phrasings."""
    return "heldout" if split == "validation" else split


def _verify(constraints: list[dict], response: str, prompt: str) -> list[bool]:
    """Strict verification, as `reward.verifiers.check_all` (one `check` per constraint)."""
    return [check(constraint, response, prompt=prompt) for constraint in constraints]


def _verified(draw: Callable[[], tuple[Plan, str]], split: str, stats: Counter) -> tuple[Plan, str, str]:
    """The first (plan, prompt, answer) from `draw` whose answer verifies strictly, drawing again on failure."""
    for _ in range(_MAX_DRAWS):
        try:
            plan, response = draw()
        except Retry:
            stats["redrawn: content did not fit"] += 1
            continue
        prompt = prompt_text(plan)
        if all(_verify(plan.constraints, response, prompt)):
            return plan, prompt, response
        stats["redrawn: failed verification"] += 1
    raise RuntimeError(f"no verifiable example after {_MAX_DRAWS} draws (split {split!r})")


def _example(rng: random.Random, split: str, stats: Counter, exclude: frozenset[str] = frozenset(),
             counts: dict[int, float] = _CONSTRAINT_COUNTS) -> tuple[Plan, str, str]:
    """A plan of trained types (none in `exclude`), its prompt, and an answer that verifies."""

    def draw() -> tuple[Plan, str]:
        plan = make_plan(rng, split, exclude, rng.choices(list(counts), list(counts.values()))[0])
        response = render(plan, rng)
        measure(plan, response, rng)
        return plan, response

    return _verified(draw, split, stats)


def _rejected(pair_type: str, plan: Plan, prompt: str, chosen: str, rng: random.Random) -> str | None:
    """The rejected answer of a pair, or None when this plan cannot give that kind of pair."""
    if pair_type == "ignores_constraints":
        text = render(plan, rng, ignore_all=True)
        return text if not all(_verify(plan.constraints, text, prompt)) else None
    if pair_type == "violates_one":
        for index in rng.sample(range(len(plan.constraints)), len(plan.constraints)):
            try:
                text = render(plan, rng, broken=plan.constraints[index])
            except Retry:
                continue
            results = _verify(plan.constraints, text, prompt)
            if results.count(False) == 1 and not results[index]:
                return text
        return None
    if pair_type == "off_topic":
        other = rng.choice([t for t in bank.TOPICS[plan.split] if t is not plan.topic])
        for _ in range(3):
            try:
                text = render(plan, rng, topic=other)
            except Retry:
                continue
            if all(_verify(plan.constraints, text, prompt)):
                return text
        return None
    if pair_type == "truncated":
        return degenerate_answers.truncated(chosen, rng)
    if pair_type == "repetitive":
        return degenerate_answers.looping(chosen, plan.topic, rng)
    if pair_type == "runs_on":
        return degenerate_answers.running_on(chosen, plan.topic, rng)
    return rng.choice(bank.EVASIVE_REPLIES)  # ignores_task


def _pair(split: str, rng: random.Random, stats: Counter, exclude: frozenset[str]) -> tuple[dict, str]:
    pair_type = rng.choices(list(PAIR_TYPES), list(PAIR_TYPES.values()))[0]
    if pair_type == "off_topic":  # the other topic lacks the words
        exclude |= KEYWORD_TYPES
    counts = {2: 0.6, 3: 0.4} if pair_type == "violates_one" else _CONSTRAINT_COUNTS
    for _ in range(_MAX_DRAWS):
        plan, prompt, chosen = _example(rng, split, stats, exclude, counts)
        rejected = _rejected(pair_type, plan, prompt, chosen, rng)
        if rejected is not None and rejected.strip() and rejected != chosen:
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
                    "constraints": json.dumps(plan.constraints), "pair_type": pair_type}, prompt
        stats[f"redrawn: no {pair_type} rejection"] += 1
    raise RuntimeError(f"no {pair_type} pair after {_MAX_DRAWS} draws (split {split!r})")


def _row(kind: str, split: str, rng: random.Random, stats: Counter, heldout: frozenset[str]) -> tuple[dict, str]:
    """One row of `kind` and its prompt. Training rows never ask for a held-out type."""
    content = content_split(split)
    exclude = heldout if split in _TRAINING_SPLITS else frozenset()
    if kind == "pairs":
        return _pair(content, rng, stats, exclude)
    if kind == "unseen":
        trained = tuple(t for t in USED_TYPES if t not in heldout)
        plan, prompt, _ = _verified(lambda: draw_unseen(rng, content, unseen_pool(heldout), trained), content, stats)
    else:
        plan, prompt, response = _example(rng, content, stats, exclude)
    row = {"constraints": json.dumps(plan.constraints), "task": plan.task_name, "topic": plan.topic.name}
    if kind == "sft":
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return {"messages": messages, **row}, prompt
    if kind == "prompts":
        row["demonstration"] = response
    return {"prompt": prompt, **row}, prompt


def _build(kind: str, split: str, n: int, seed: int,
           heldout: frozenset[str] = frozenset()) -> tuple[list[dict], Counter]:
    stats: Counter = Counter()
    rows: list[dict] = []
    seen: set[str] = set()
    if split == "validation":  # never a prompt of the default-size held-out set
        held_out = _build(kind, "heldout", DEFAULT_SIZES[kind]["heldout"], seed, heldout)[0]
        seen = {row["prompt"] for row in held_out}
    for index in range(n):
        for attempt in range(_MAX_DRAWS):  # a prompt already in the dataset is drawn again
            rng = random.Random(f"{kind}:{split}:{seed}:{index}:{attempt}")
            row, prompt = _row(kind, split, rng, stats, heldout)
            if prompt not in seen:
                break
            stats["redrawn: duplicate prompt"] += 1
        seen.add(prompt)
        rows.append(row)
    return rows, stats


def heldout_types_error(heldout_types: object) -> str | None:
    """Why `heldout_types` cannot be held out of training, or None when it can (a collection of USED_TYPES)."""
    valid = f"valid ids (the trained types): {', '.join(USED_TYPES)}"
    if isinstance(heldout_types, str) or not isinstance(heldout_types, Collection):
        return f"heldout_types must be a list of constraint type ids, got {type(heldout_types).__name__}; {valid}"
    unknown = sorted({repr(t) for t in heldout_types if t not in USED_TYPES})
    if unknown:
        return f"heldout_types has unknown or untrained type ids {', '.join(unknown)}; {valid}"
    if set(USED_TYPES) <= set(heldout_types):
        return "heldout_types holds out every trained type; leave at least one to train on"
    return None


def build_dataset(kind: str, split: str, n: int | None = None, seed: int = 0,
                  heldout_types: Collection[str] = ()) -> list[dict]:
    """`n` rows (default `DEFAULT_SIZES[kind][split]`) of kind "sft" | "pairs" | "prompts" | "unseen".

    `heldout_types` (trained type ids) are left out of every training dataset (splits "train", "rl") and asked
    for by the "unseen" kind next to align's own types. Deterministic in (kind, split, seed,
    heldout_types), and prefix-stable: n=100 gives the first 100 rows of n=1000.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(map(repr, KINDS))}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(map(repr, SPLITS))}")
    if split not in DEFAULT_SIZES[kind]:
        raise ValueError(f"kind {kind!r} has no split {split!r}; it has {', '.join(map(repr, DEFAULT_SIZES[kind]))}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ValueError(f"n (number of rows) must be a non-negative int or None for the default, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if error := heldout_types_error(heldout_types):
        raise ValueError(error)
    return _build(kind, split, DEFAULT_SIZES[kind][split] if n is None else n, seed, frozenset(heldout_types))[0]


def describe_dataset(seed: int = 0) -> dict:
    """Counts over the default-size datasets, per split: constraint types, pair types, tasks, lengths."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    summary: dict = {"sizes": DEFAULT_SIZES, "splits": {}}
    for split in SPLITS:
        kinds = [kind for kind, sizes in DEFAULT_SIZES.items() if split in sizes]
        built = {kind: _build(kind, split, DEFAULT_SIZES[kind][split], seed) for kind in kinds}
        rows = [row for rows, _ in built.values() for row in rows]
        constraints = [json.loads(row["constraints"]) for row in rows]
        described = {
            "kinds": list(built),
            "constraint_types": dict(sorted(Counter(c["type"] for cs in constraints for c in cs).items())),
            "constraints_per_prompt": dict(sorted(Counter(len(cs) for cs in constraints).items())),
            "tasks": dict(sorted(Counter(row["task"] for row in rows if "task" in row).items())),
            "topics": [t.name for t in bank.TOPICS[content_split(split)]],
            "redrawn": dict(sorted(sum((stats for _, stats in built.values()), Counter()).items())),
        }
        if "pairs" in built:
            described["pair_types"] = dict(sorted(Counter(row["pair_type"] for row in built["pairs"][0]).items()))
        if "sft" in built:
            words = sorted(len(_WORD.findall(row["messages"][1]["content"])) for row in built["sft"][0])
            described["sft_response_words"] = {"p10": words[len(words) // 10], "p90": words[len(words) * 9 // 10],
                                               "median": int(statistics.median(words))}
        summary["splits"][split] = described
    return summary
