"""Programmatic checkers for instruction-following constraints (IFEval's, two extras, and align's own).

A constraint is plain data, ``{"type": <type id>, **arguments}``; type ids and argument names are
IFEval's (Zhou et al. 2023), so IFEval rows can be checked directly. `CONSTRAINT_TYPES` is the
registry; `check` / `check_all` answer "does this response follow it?". It also holds align's own
``align:*`` types from `reward.extra_verifiers` (never used for training by default), which are
validated, checked and loosened exactly like IFEval's.

Semantics follow IFEval's ``instructions.py`` and ``evaluation_lib.py``:

* A blank (empty or whitespace-only) response follows no constraint.
* ``relation`` arguments: "less than" means count < N, "at least" means count >= N.
* Loose checking (``loose=True``): the response passes if any of these variants passes strictly:
  the response; it with the first line, the last line, or both removed (then stripped); and each of
  those four with every ``*`` removed. Blank variants are skipped.

Where this module differs from IFEval's code, on purpose:

* Keywords, forbidden words, postscript markers and section splitters are matched literally
  (IFEval pastes them into a regex unescaped); for ordinary words the result is the same.
* Words, sentences and capital words are counted by the rules in `reward.text_stats`
  (no NLTK); words are IFEval's ``\\w+`` runs exactly.
* Bullets are lines starting with ``* `` or ``- `` (a marker then a space), not any line starting
  with ``-`` (IFEval counted ``---`` rules and ``*italic*`` lines as bullets).
* Language is judged by `reward.text_stats.detect_language` (no langdetect, no downloads). For
  ``language:response_language`` a response whose language cannot be determined fails (IFEval
  passed responses langdetect could not read); for ``change_case:english_*`` it passes unless the
  text is positively identified as another language, since the case is what those ask for.
* ``keywords:letter_frequency`` counts the character given, also "#" or "!" (IFEval's code
  silently replaced a non-letter with a random letter).
* ``combination:repeat_prompt`` may omit ``prompt_to_repeat``; `check` then uses its ``prompt``.
"""

from __future__ import annotations

import collections
import difflib
import json
import re
from typing import Any

from reward.constraint_spec import RELATIONS, ArgSpec, ConstraintSpec
from reward.constraint_spec import spec as _spec
from reward.extra_verifiers import ALIGN_SPECS
from reward.text_stats import (
    SUPPORTED_LANGUAGES,
    capital_words,
    count_sentences,
    count_words,
    detect_language,
)

CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


# --------------------------------------------------------------------------------------------
# Checkers: one per constraint type, each (response, **arguments) -> bool, strict semantics.
# --------------------------------------------------------------------------------------------


def _keywords_existence(response: str, *, keywords: list[str]) -> bool:
    return all(re.search(re.escape(word), response, flags=re.IGNORECASE) for word in keywords)


def _keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    occurrences = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return _compare(occurrences, relation, frequency)


def _forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    return not any(
        re.search(r"\b" + re.escape(word) + r"\b", response, flags=re.IGNORECASE)
        for word in forbidden_words
    )


def _letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    occurrences = collections.Counter(response.lower())[letter.lower()]
    return _compare(occurrences, let_relation, let_frequency)


def _response_language(response: str, *, language: str) -> bool:
    return detect_language(response) == language


def _number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(response), relation, num_sentences)


def _number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    # Paragraphs are separated by "***"; an empty piece is allowed only at either end.
    pieces = re.split(r"\s?\*\*\*\s?", response)
    count = len(pieces)
    for index, piece in enumerate(pieces):
        if not piece.strip():
            if index in (0, len(pieces) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def _number_words(response: str, *, num_words: int, relation: str) -> bool:
    return _compare(count_words(response), relation, num_words)


def _nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    # IFEval: split on "\n\n", blank pieces do not count, the nth piece must not be blank, and its
    # first word is compared lower-cased after dropping leading quotes and anything from the first
    # . , ? ! ' " on.
    pieces = response.split("\n\n")
    count = sum(1 for piece in pieces if piece.strip())
    if nth_paragraph > count:
        return False
    paragraph = pieces[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    word = re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()
    return count == num_paragraphs and word == first_word.lower()


def _number_placeholders(response: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def _postscript(response: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return re.search(pattern, response.lower(), flags=re.MULTILINE) is not None


def _number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    return len(re.findall(r"^[ \t]*[*-][ \t]+\S", response, flags=re.MULTILINE)) == num_bullets


def _number_numbered_items(response: str, *, num_items: int) -> bool:
    return len(re.findall(r"^[ \t]*\d+[.)][ \t]+\S", response, flags=re.MULTILINE)) == num_items


def _constrained_response(response: str) -> bool:
    return any(option in response.strip() for option in CONSTRAINED_RESPONSE_OPTIONS)


def _number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    single = [h for h in re.findall(r"\*[^\n*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def _multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    # "Section 1", "SECTION 2", ...: case-sensitive, at least num_sections of them (IFEval).
    splitter = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(splitter, response)) - 1 >= num_sections


def _json_format(response: str) -> bool:
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _title(response: str) -> bool:
    return any(title[2:-2].strip() for title in re.findall(r"<<[^\n]+>>", response))


def _two_responses(response: str) -> bool:
    pieces = response.split("******")
    answers = []
    for index, piece in enumerate(pieces):
        if piece.strip():
            answers.append(piece.strip())
        elif index not in (0, len(pieces) - 1):
            return False
    return len(answers) == 2 and answers[0] != answers[1]


def _repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end_checker(response: str, *, end_phrase: str) -> bool:
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _start_checker(response: str, *, start_phrase: str) -> bool:
    return response.strip().strip('"').lower().startswith(start_phrase.strip().lower())


def _quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def _capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    return _compare(len(capital_words(response)), capital_relation, capital_frequency)


def _english_capital(response: str) -> bool:
    return response.isupper() and detect_language(response) in ("en", None)


def _english_lowercase(response: str) -> bool:
    return response.islower() and detect_language(response) in ("en", None)


def _no_comma(response: str) -> bool:
    return "," not in response


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _nth_paragraph_in_range(constraint: dict) -> str | None:
    if constraint["nth_paragraph"] > constraint["num_paragraphs"]:
        return (f"constraint 'length_constraints:nth_paragraph_first_word' argument 'nth_paragraph' must be between 1 "
                f"and num_paragraphs ({constraint['num_paragraphs']}), got {constraint['nth_paragraph']}")
    return None


_RELATION = ArgSpec("relation", "relation")

CONSTRAINT_TYPES: dict[str, ConstraintSpec] = {spec.type: spec for spec in (
    _spec("keywords:existence", _keywords_existence, "includes every keyword (case-insensitive substring)",
          ArgSpec("keywords", "str_list")),
    _spec("keywords:frequency", _keyword_frequency, "keyword occurs <relation> `frequency` times",
          ArgSpec("keyword", "str"), ArgSpec("frequency", "int"), _RELATION),
    _spec("keywords:forbidden_words", _forbidden_words, "none of the words appears as a whole word",
          ArgSpec("forbidden_words", "str_list")),
    _spec("keywords:letter_frequency", _letter_frequency, "letter occurs <let_relation> `let_frequency` times",
          ArgSpec("letter", "letter"), ArgSpec("let_frequency", "int"), ArgSpec("let_relation", "relation")),
    _spec("language:response_language", _response_language, "whole response is in `language`",
          ArgSpec("language", "language")),
    _spec("length_constraints:number_sentences", _number_sentences, "sentence count <relation> `num_sentences`",
          ArgSpec("num_sentences", "int"), _RELATION),
    _spec("length_constraints:number_paragraphs", _number_paragraphs, "exactly N paragraphs split by ***",
          ArgSpec("num_paragraphs", "int", minimum=1)),
    _spec("length_constraints:number_words", _number_words, "word count <relation> `num_words`",
          ArgSpec("num_words", "int"), _RELATION),
    _spec("length_constraints:nth_paragraph_first_word", _nth_paragraph_first_word,
          "exactly N blank-line paragraphs; paragraph n starts with `first_word`",
          ArgSpec("num_paragraphs", "int", minimum=1), ArgSpec("nth_paragraph", "int", minimum=1),
          ArgSpec("first_word", "word"), check_arguments=_nth_paragraph_in_range),
    _spec("detectable_content:number_placeholders", _number_placeholders, "at least N [placeholders]",
          ArgSpec("num_placeholders", "int")),
    _spec("detectable_content:postscript", _postscript, "has a postscript starting with the marker",
          ArgSpec("postscript_marker", "str")),
    _spec("detectable_format:number_bullet_lists", _number_bullet_lists, "exactly N '* ' / '- ' bullets",
          ArgSpec("num_bullets", "int")),
    _spec("detectable_format:constrained_response", _constrained_response,
          "contains 'My answer is yes.' / 'no.' / 'maybe.'"),
    _spec("detectable_format:number_highlighted_sections", _number_highlighted_sections,
          "at least N *highlighted* sections", ArgSpec("num_highlights", "int")),
    _spec("detectable_format:multiple_sections", _multiple_sections, "at least N '<spliter> k' section headers",
          ArgSpec("section_spliter", "word"), ArgSpec("num_sections", "int", minimum=1)),
    _spec("detectable_format:json_format", _json_format, "whole response is JSON (``` fences allowed)"),
    _spec("detectable_format:title", _title, "contains a <<title>>"),
    _spec("combination:two_responses", _two_responses, "two different responses split by ******"),
    _spec("combination:repeat_prompt", _repeat_prompt, "starts by repeating the prompt (case-insensitive)",
          ArgSpec("prompt_to_repeat", "str", required=False)),
    _spec("startend:end_checker", _end_checker, "ends with `end_phrase` (case-insensitive)",
          ArgSpec("end_phrase", "str")),
    _spec("startend:quotation", _quotation, "wrapped in double quotes"),
    _spec("change_case:capital_word_frequency", _capital_word_frequency,
          "all-capital words occur <capital_relation> `capital_frequency` times",
          ArgSpec("capital_frequency", "int"), ArgSpec("capital_relation", "relation")),
    _spec("change_case:english_capital", _english_capital, "English, all capital letters"),
    _spec("change_case:english_lowercase", _english_lowercase, "English, all lowercase letters"),
    _spec("punctuation:no_comma", _no_comma, "no commas"),
    _spec("startend:start_checker", _start_checker, "starts with `start_phrase` (case-insensitive)",
          ArgSpec("start_phrase", "str")),
    _spec("detectable_format:number_numbered_items", _number_numbered_items,
          "exactly N numbered lines ('1.' or '1)')", ArgSpec("num_items", "int")),
    *ALIGN_SPECS,
)}  # fmt: skip

_VALID_TYPES = ", ".join(sorted(CONSTRAINT_TYPES))


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _argument_error(type_id: str, arg: ArgSpec, value: Any) -> str | None:
    """Why `value` is not a valid `arg`, or None when it is."""
    where = f"constraint {type_id!r} argument {arg.name!r}"
    got = f"got {type(value).__name__} {value!r}"
    if arg.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{where} must be an int, {got}"
        if value < arg.minimum:
            return f"{where} must be >= {arg.minimum}, got {value}"
    elif arg.kind == "relation":
        if value not in RELATIONS:
            return f"{where} must be 'less than' or 'at least', {got}"
    elif arg.kind == "str_list":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            return f"{where} must be a non-empty list of non-empty str, {got}"
    elif not isinstance(value, str) or not value.strip():
        return f"{where} must be a non-empty str, {got}"
    elif arg.kind == "word" and len(value.split()) != 1:
        return f"{where} must be a single word without spaces, {got}"
    elif arg.kind == "token" and not re.fullmatch(r"\w+", value):
        return f"{where} must be one word of letters and digits only (no spaces or punctuation), {got}"
    elif arg.kind == "letter" and len(value) != 1:
        return f"{where} must be a single character such as 'e' or '#', {got}"
    elif arg.kind == "language" and value not in SUPPORTED_LANGUAGES:
        return f"{where} must be a supported ISO 639-1 code ({', '.join(sorted(SUPPORTED_LANGUAGES))}), {got}"
    return None


def validate_constraint(constraint: dict) -> None:
    """Raise ValueError (one line, naming what is valid) unless `constraint` is well formed."""
    if not isinstance(constraint, dict):
        raise ValueError(
            f'a constraint must be a dict like {{"type": "punctuation:no_comma"}}, got {type(constraint).__name__}'
        )
    type_id = constraint.get("type")
    if "type" not in constraint or not isinstance(type_id, str):
        keys = ", ".join(repr(key) for key in constraint) or "none"
        raise ValueError(f"constraint needs a 'type' string (keys given: {keys}); valid types: {_VALID_TYPES}")
    spec = CONSTRAINT_TYPES.get(type_id)
    if spec is None:
        close = difflib.get_close_matches(type_id, CONSTRAINT_TYPES, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown constraint type {type_id!r}; {hint}valid types: {_VALID_TYPES}")

    given = {key for key in constraint if key != "type"}
    known = {arg.name for arg in spec.args}
    unknown = sorted(given - known, key=str)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        close = difflib.get_close_matches(str(unknown[0]), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        noun = "argument" if len(unknown) == 1 else "arguments"
        raise ValueError(f"constraint {type_id!r} got unknown {noun} {names}{hint}; {spec.signature()}")
    missing = [arg.name for arg in spec.args if arg.required and arg.name not in given]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        noun = "argument" if len(missing) == 1 else "arguments"
        raise ValueError(f"constraint {type_id!r} is missing {noun} {names}; {spec.signature()}")
    for arg in spec.args:
        if arg.name in constraint:
            error = _argument_error(type_id, arg, constraint[arg.name])
            if error:
                raise ValueError(error)
    if spec.check_arguments is not None and (error := spec.check_arguments(constraint)):
        raise ValueError(error)


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants of a response: line-trimmed and asterisk-free versions."""
    lines = response.split("\n")
    trimmed = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    return trimmed + [variant.replace("*", "") for variant in trimmed]


def _arguments(constraint: dict, prompt: str | None) -> dict[str, Any]:
    arguments = {key: value for key, value in constraint.items() if key != "type"}
    if constraint["type"] == "combination:repeat_prompt" and "prompt_to_repeat" not in arguments:
        if prompt is None or not prompt.strip():
            raise ValueError(
                "constraint 'combination:repeat_prompt' has no 'prompt_to_repeat'; "
                "give it one or pass the prompt: check(..., prompt=...)"
            )
        arguments["prompt_to_repeat"] = prompt
    return arguments


def check(constraint: dict, response: str, *, prompt: str | None = None, loose: bool = False) -> bool:
    """Whether `response` follows `constraint` (validated first; ValueError if malformed).

    `prompt` is only used by combination:repeat_prompt without a prompt_to_repeat. With
    `loose=True`, IFEval's loose variants (see `loose_variants`) are tried too.
    """
    validate_constraint(constraint)
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    checker = CONSTRAINT_TYPES[constraint["type"]].checker
    arguments = _arguments(constraint, prompt)
    candidates = loose_variants(response) if loose else [response]
    return any(candidate.strip() and checker(candidate, **arguments) for candidate in candidates)


def check_all(
    constraints: list[dict], response: str, *, prompt: str | None = None, loose: bool = False
) -> list[bool]:
    """`check` for each constraint, in order. All are validated before any is checked."""
    if not isinstance(constraints, list):
        raise TypeError(
            f"constraints must be a list of constraint dicts, got {type(constraints).__name__}"
            " (use parse_constraints for a JSON string)"
        )
    for index, constraint in enumerate(constraints):
        try:
            validate_constraint(constraint)
        except ValueError as error:
            raise ValueError(f"constraints[{index}]: {error}") from None
    return [check(c, response, prompt=prompt, loose=loose) for c in constraints]


def parse_constraints(value: str | list) -> list[dict]:
    """A validated list of constraint dicts from a list, or from a JSON string of one.

    Datasets store the ``constraints`` column as a JSON string; this turns it back.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"constraints string is not valid JSON ({error.msg} at char {error.pos}); "
                'expected a JSON list like [{"type": "punctuation:no_comma"}]'
            ) from None
    if not isinstance(value, list):
        raise ValueError(
            f"constraints must be a list of constraint dicts or a JSON string of one, got {type(value).__name__}"
        )
    for index, constraint in enumerate(value):
        try:
            validate_constraint(constraint)
        except ValueError as error:
            raise ValueError(f"constraints[{index}]: {error}") from None
    return [dict(constraint) for constraint in value]


def constraints_from_ifeval(instruction_id_list: list[str], kwargs: list[dict]) -> list[dict]:
    """Constraint dicts from an IFEval row (``instruction_id_list`` + ``kwargs``).

    The Hugging Face copy of IFEval pads every kwargs dict with all argument names set to None,
    and Arrow may hand integers back as floats (2.0). None-valued arguments are dropped (as IFEval's
    own evaluation does) and whole-number floats become ints before validation.
    """
    if len(instruction_id_list) != len(kwargs):
        raise ValueError(
            f"IFEval row has {len(instruction_id_list)} instruction ids but {len(kwargs)} kwargs dicts; "
            "they must pair up one to one"
        )
    constraints = []
    for type_id, arguments in zip(instruction_id_list, kwargs):
        constraint = {"type": type_id}
        for key, value in (arguments or {}).items():
            if value is not None:
                is_whole_float = isinstance(value, float) and value.is_integer()
                constraint[key] = int(value) if is_whole_float else value
        constraints.append(constraint)
    return parse_constraints(constraints)
