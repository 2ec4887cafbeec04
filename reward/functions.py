"""Built-in reward functions, and the helpers that read TRL's two sample formats.

A reward function is a plain callable with TRL's `GRPOTrainer` signature:

    def my_reward(prompts, completions, **columns) -> list[float | None]: ...

It is called with keyword arguments, exactly as TRL calls it: `prompts=`, `completions=` and one keyword per
extra dataset column (a list with one value per sample). `None` means "does not apply to this sample", so the
sample's total is made of the components that do apply. A function that works with TRL works here, and back.

`prompts`/`completions` are lists of strings (TRL's "standard" format) or, in TRL's "conversational" format,
lists of chat messages (`[{"role": "assistant", "content": "..."}]`). The built-ins accept both through
`prompt_text` and `completion_text`, which user functions may import too.

When a built-in fails on one sample it sets `sample_index` on the exception, so the error that reaches the user
names the sample (`reward.compose` reads it). User functions may do the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from reward.degeneration import repetition_loop
from reward.verifiers import check_all, parse_constraints

Message = dict[str, Any]
Prompt = str | list[Message]  # standard | conversational
Completion = str | list[Message]


def _content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a multimodal content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "".join(part.get("text", "") for part in parts)
    raise TypeError(f"message content must be a string or a list of content parts, got {type(content).__name__}")


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def completion_text(completion: Completion) -> str:
    """The text of one completion: the string itself, or the content of the last assistant message.

    Messages without a `role` count as assistant messages (TRL's own examples write `[{"content": ...}]`).
    """
    if isinstance(completion, str):
        return completion
    if _is_message_list(completion):
        for message in reversed(completion):
            if message.get("role", "assistant") == "assistant":
                return _content_text(message.get("content"))
        raise ValueError(f"completion has no assistant message (roles: {[m.get('role') for m in completion]})")
    raise TypeError(
        "a completion must be a string or a list of chat messages like [{'role': 'assistant', 'content': '...'}], "
        f"got {type(completion).__name__}"
    )


def prompt_text(prompt: Prompt) -> str:
    """The text of one prompt: the string itself, or the content of the last user message.

    System messages and earlier turns are dropped: verifiers and reward models judge the response to the
    final instruction.
    """
    if isinstance(prompt, str):
        return prompt
    if _is_message_list(prompt):
        for message in reversed(prompt):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        raise ValueError(f"prompt has no user message (roles: {[m.get('role') for m in prompt]})")
    raise TypeError(
        "a prompt must be a string or a list of chat messages like [{'role': 'user', 'content': '...'}], "
        f"got {type(prompt).__name__}"
    )


# --- instruction following: the sample's `constraints` column, checked by reward.verifiers ---------------------


def _each_constrained_sample(prompts: list[Prompt], completions: list[Completion], constraints: list[Any],
                             judge: Callable[[Prompt, Completion, list[dict]], Any]) -> list[Any]:
    """`judge(prompt, completion, its parsed constraints)` of each sample, or None for a sample without constraints.
    An error raised on a sample carries its index (`sample_index`), which CompositeReward names."""
    if len(constraints) != len(completions):
        raise ValueError(f"column 'constraints' has {len(constraints)} values for {len(completions)} completions")
    results = []
    for index, (prompt, completion, raw) in enumerate(zip(prompts, completions, constraints, strict=True)):
        try:
            parsed = parse_constraints(raw) if raw is not None else []
            results.append(judge(prompt, completion, parsed) if parsed else None)
        except Exception as err:
            err.sample_index = index
            raise
    return results


def constraint_results(
    prompts: list[Prompt], completions: list[Completion], constraints: list[Any], *, loose: bool
) -> list[list[bool] | None]:
    """Per sample: one pass/fail per constraint, or None when the sample has no constraints."""
    return _each_constrained_sample(prompts, completions, constraints, lambda prompt, completion, parsed: check_all(
        parsed, completion_text(completion), prompt=prompt_text(prompt), loose=loose))


def instruction_following(
    prompts: list[Prompt], completions: list[Completion], *, constraints: list[Any], **kwargs: Any
) -> list[float | None]:
    """Fraction of the sample's constraints satisfied (strict check); None for a sample without constraints."""
    results = constraint_results(prompts, completions, constraints, loose=False)
    return [None if r is None else sum(r) / len(r) for r in results]


def instruction_following_all(
    prompts: list[Prompt], completions: list[Completion], *, constraints: list[Any], **kwargs: Any
) -> list[float | None]:
    """1.0 if every constraint of the sample is satisfied (strict), else 0.0; None without constraints."""
    results = constraint_results(prompts, completions, constraints, loose=False)
    return [None if r is None else float(all(r)) for r in results]


def instruction_following_loose(
    prompts: list[Prompt], completions: list[Completion], *, constraints: list[Any], **kwargs: Any
) -> list[float | None]:
    """Like `instruction_following`, with IFEval's loose check (tolerates a preamble/outro line and `*`)."""
    results = constraint_results(prompts, completions, constraints, loose=True)
    return [None if r is None else sum(r) / len(r) for r in results]


# --- shaping: small penalties in [-1, 0] that apply to every sample ------------------------------------------


def _require_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}, got {value!r}")


def no_repetition(prompts: list[Prompt], completions: list[Completion], *, n: int = 4, **kwargs: Any) -> list[float]:
    """Minus the share of the completion's word n-grams that repeat an earlier one, in [-1, 0].

    This is -seq-rep-n (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training"):
    0.0 when every n-gram is new, close to -1.0 for a completion stuck in a loop. Words are lowercased `\\w+` runs;
    a completion shorter than n words has no n-grams and scores 0.0.
    """
    _require_int("n", n, 1)
    rewards = []
    for completion in completions:
        words = re.findall(r"\w+", completion_text(completion).lower())
        ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        rewards.append(0.0 if not ngrams else -(len(ngrams) - len(set(ngrams))) / len(ngrams))
    return rewards


def length_in_range(
    prompts: list[Prompt], completions: list[Completion], *, min_words: int, max_words: int, **kwargs: Any
) -> list[float]:
    """0.0 when the completion has min_words..max_words words (whitespace-separated), else a penalty in [-1, 0).

    Below the range: -(min_words - words) / min_words. Above: -(words - max_words) / max_words, floored at -1.
    """
    _require_int("min_words", min_words, 0)
    _require_int("max_words", max_words, 1)
    if min_words > max_words:
        raise ValueError(f"'min_words' ({min_words}) must not exceed 'max_words' ({max_words})")
    rewards = []
    for completion in completions:
        words = len(completion_text(completion).split())
        if words < min_words:
            rewards.append(-(min_words - words) / min_words)
        elif words > max_words:
            rewards.append(-min(1.0, (words - max_words) / max_words))
        else:
            rewards.append(0.0)
    return rewards


def overlong_penalty(
    prompts: list[Prompt], completions: list[Completion], *, soft_limit: int, max_tokens: int,
    completion_ids: list[list[int]] | None = None, **kwargs: Any
) -> list[float]:
    """DAPO's overlong reward shaping (Yu et al. 2025, section 3.4, soft overlong punishment), in completion tokens:
    0.0 up to `soft_limit` tokens, then linear down to -1.0 at `max_tokens` (the cap, normally the stage's
    max_new_tokens), -1.0 beyond:
        r(L) = 0                                                L <= soft_limit
               -(L - soft_limit) / (max_tokens - soft_limit)    soft_limit < L <= max_tokens
               -1                                               L > max_tokens
    L is read from `completion_ids` (each completion's token ids, EOS included when it stopped), which TRL and
    align's RL stages pass to every reward function.
    """
    _require_int("soft_limit", soft_limit, 0)
    _require_int("max_tokens", max_tokens, 1)
    if soft_limit >= max_tokens:
        raise ValueError(f"'soft_limit' ({soft_limit}) must be below 'max_tokens' ({max_tokens})")
    if completions and completion_ids is None:
        raise ValueError("overlong_penalty reads completion lengths from `completion_ids`, which TRL and align's RL "
                         "stages pass; this caller passed none")
    span = max_tokens - soft_limit
    return [0.0 if len(ids) <= soft_limit else -min(1.0, (len(ids) - soft_limit) / span)
            for ids in completion_ids or []]


def no_loops(
    prompts: list[Prompt], completions: list[Completion], *, ngram: int = 6, min_repeats: int = 5, **kwargs: Any
) -> list[float]:
    """-1.0 for a completion that is a repetition loop (some `ngram` consecutive words occur `min_repeats` times or
    more: `reward.degeneration.repetition_loop`, the definition `loop_share` and the built-in data use), else 0.0.
    Applies to every sample."""
    _require_int("ngram", ngram, 1)
    _require_int("min_repeats", min_repeats, 2)
    return [-1.0 if repetition_loop(completion_text(c), ngram, min_repeats) else 0.0 for c in completions]


# Layouts that a trained constraint type asks for and a plain answer never has: the types that ask for each, and how to
# see it in a response. A separator goes between parts: one before the first part is asked for by no type (IFEval's
# paragraph checker lets it pass; it is how the `***` loops on unfamiliar requests begin, docs/RESULTS.md).
SEPARATOR_LINE = re.compile(r"^[ \t]*\*{3,}[ \t]*$", re.MULTILINE)
LAYOUTS: dict[str, tuple[frozenset[str], Callable[[str], bool]]] = {
    "quotation marks around the answer": (frozenset({"startend:quotation"}),
                                          lambda text: text.lstrip().startswith('"')),
    "a separator line of asterisks": (frozenset({"length_constraints:number_paragraphs", "combination:two_responses"}),
                                      lambda text: SEPARATOR_LINE.search(text) is not None),
    "a separator line before the answer": (frozenset(), lambda text: SEPARATOR_LINE.match(text.lstrip()) is not None),
    "a <<title>>": (frozenset({"detectable_format:title"}), lambda text: re.search(r"<<[^\n]*>>", text) is not None),
    "a JSON answer": (frozenset({"detectable_format:json_format"}),
                      lambda text: text.lstrip().startswith(("{", "```"))),
}


def unasked_layouts(response: str, constraint_types: set[str]) -> list[str]:
    """The `LAYOUTS` that `response` shows although none of `constraint_types` asks for them."""
    return [name for name, (asked_by, shows) in LAYOUTS.items() if not asked_by & constraint_types and shows(response)]


def no_unasked_layouts(
    prompts: list[Prompt], completions: list[Completion], *, constraints: list[Any], **kwargs: Any
) -> list[float | None]:
    """-1.0 for a completion that shows a layout its constraints do not ask for (`LAYOUTS`: quotation marks around the
    answer, a separator line of asterisks, one before the answer, a <<title>>, a JSON answer), else 0.0; None for a
    sample without constraints, where nothing says what was asked. A verifier pays for the layout a prompt asks for and
    nothing charges for one it does not: RL that learns a layout on some prompts then carries it to others."""
    unasked = _each_constrained_sample(prompts, completions, constraints, lambda _, completion, parsed: unasked_layouts(
        completion_text(completion), {constraint["type"] for constraint in parsed}))
    return [None if layouts is None else -1.0 if layouts else 0.0 for layouts in unasked]


BUILTIN_REWARD_FUNCTIONS: dict[str, Callable[..., list[float | None]]] = {
    "instruction_following": instruction_following,
    "instruction_following_all": instruction_following_all,
    "instruction_following_loose": instruction_following_loose,
    "no_repetition": no_repetition,
    "length_in_range": length_in_range,
    "overlong_penalty": overlong_penalty,
    "no_loops": no_loops,
    "no_unasked_layouts": no_unasked_layouts,
}
