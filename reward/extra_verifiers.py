"""align's own constraint types beyond IFEval's: by default never used for training.

IFEval's 25 types (plus start phrase and numbered items) are what the built-in training data
teaches. The types here are kinds of instruction IFEval lacks (in the spirit of IFBench): a first or
last word, word and sentence length limits, questions, keyword order, hashtags, a table, a wrapping
tag, no digits, short paragraphs and bullets, a character budget, a line count, ASCII only. They
form the "unseen types" evaluation (`reward.instructions.UNSEEN_TYPES`): a model that learned to
follow instructions, not just the trained types, should do better on them than the base model.

Ids share the ``align:`` prefix. `ALIGN_SPECS` is registered into `reward.verifiers.CONSTRAINT_TYPES`,
so `check`, `check_all`, `validate_constraint` and the loose variants work on them as on IFEval's.
Each checker takes (response, **arguments) and applies strict semantics; the blank-response rule
and loose checking are applied by `reward.verifiers.check`.

Words are ``\\w+`` runs and sentences are `reward.text_stats.split_sentences`'s, as for IFEval's types.
"""

from __future__ import annotations

import re

from reward.constraint_spec import ArgSpec, ConstraintSpec, spec
from reward.text_stats import count_sentences, count_words, split_sentences

FIRST_WORD, LAST_WORD = "align:first_word", "align:last_word"
MAX_WORD_LENGTH, MAX_SENTENCE_WORDS = "align:max_word_length", "align:max_sentence_words"
QUESTIONS, KEYWORD_ORDER = "align:question_count", "align:keyword_order"
DISTINCT_STARTS, HASHTAGS = "align:distinct_sentence_starts", "align:hashtags"
TABLE, WRAPPED = "align:table_rows", "align:wrapped_in_tag"
NO_DIGITS, PARAGRAPH_SENTENCES = "align:no_digits", "align:max_paragraph_sentences"
BULLET_WORDS, MAX_CHARS = "align:bullet_max_words", "align:max_characters"
LINES, ASCII = "align:line_count", "align:ascii_only"

_WORD = re.compile(r"\w+")
# "#" then a letter, not glued to a word, another "#", an "&" (HTML entity) or a "/" (URL fragment).
_HASHTAG = re.compile(r"(?<![\w#&/])#[^\W\d_]\w*")
_BULLET = re.compile(r"^[ \t]*[*-][ \t]+(\S.*)$", flags=re.MULTILINE)  # as number_bullet_lists counts them
_TABLE_SEPARATOR = re.compile(r"\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?")
_QUESTION_END = re.compile(r"[.!?。！？]+[\"'”’)\]」』]*$")


def _words(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def _first_word(response: str, *, word: str) -> bool:
    words = _words(response)
    return bool(words) and words[0] == word.lower()


def _last_word(response: str, *, word: str) -> bool:
    words = _words(response)
    return bool(words) and words[-1] == word.lower()


def _max_word_length(response: str, *, max_letters: int) -> bool:
    return all(len(word) <= max_letters for word in _WORD.findall(response))


def _max_sentence_words(response: str, *, max_words: int) -> bool:
    return all(count_words(sentence) <= max_words for sentence in split_sentences(response))


def is_question(sentence: str) -> bool:
    """Whether a sentence's closing run of terminators holds a question mark ("Really?!" counts)."""
    end = _QUESTION_END.search(sentence)
    return end is not None and ("?" in end.group() or "？" in end.group())


def _question_count(response: str, *, num_questions: int) -> bool:
    return sum(map(is_question, split_sentences(response))) == num_questions


def keyword_position(text: str, keyword: str) -> int | None:
    """Where `keyword` first occurs as a whole word or phrase (case-insensitive), or None."""
    found = re.search(r"(?<!\w)" + re.escape(keyword.strip()) + r"(?!\w)", text, flags=re.IGNORECASE)
    return found.start() if found else None


def _keyword_order(response: str, *, first: str, second: str) -> bool:
    before, after = keyword_position(response, first), keyword_position(response, second)
    return before is not None and after is not None and before < after


def _distinct_sentence_starts(response: str) -> bool:
    starts = [(_words(sentence) or [""])[0] for sentence in split_sentences(response)]
    return all(a != b for a, b in zip(starts, starts[1:]))


def _hashtags(response: str, *, num_hashtags: int) -> bool:
    return len(_HASHTAG.findall(response)) == num_hashtags


def table_row_counts(response: str) -> list[int]:
    """Data rows of each markdown table: a line with "|", a |---| separator line, then lines with "|"."""
    lines = response.splitlines()
    counts, index = [], 0
    while index < len(lines) - 1:
        separator = lines[index + 1].strip()
        if "|" in lines[index] and "|" in separator and _TABLE_SEPARATOR.fullmatch(separator):
            end = index + 2
            while end < len(lines) and "|" in lines[end]:
                end += 1
            counts.append(end - index - 2)
            index = end
        else:
            index += 1
    return counts


def _table_rows(response: str, *, num_rows: int) -> bool:
    return table_row_counts(response) == [num_rows]


def _wrapped_in_tag(response: str, *, tag: str) -> bool:
    escaped = re.escape(tag)
    inside = re.fullmatch(rf"<{escaped}>(.*)</{escaped}>", response.strip(), flags=re.DOTALL | re.IGNORECASE)
    return inside is not None and bool(inside.group(1).strip())


def _no_digits(response: str) -> bool:
    return re.search(r"\d", response) is None


def _max_paragraph_sentences(response: str, *, max_sentences: int) -> bool:
    paragraphs = re.split(r"\n[ \t]*\n", response)
    return all(count_sentences(paragraph) <= max_sentences for paragraph in paragraphs)


def _bullet_max_words(response: str, *, max_words: int) -> bool:
    bullets = _BULLET.findall(response)
    return bool(bullets) and all(count_words(bullet) <= max_words for bullet in bullets)


def _max_characters(response: str, *, max_chars: int) -> bool:
    return len(response.strip()) <= max_chars


def _line_count(response: str, *, num_lines: int) -> bool:
    return sum(1 for line in response.splitlines() if line.strip()) == num_lines


def _ascii_only(response: str) -> bool:
    return response.isascii()


def _different_keywords(constraint: dict) -> str | None:
    first, second = constraint["first"], constraint["second"]
    if first.strip().lower() == second.strip().lower():
        return (f"constraint {KEYWORD_ORDER!r} arguments 'first' and 'second' must be different words, "
                f"got {first!r} and {second!r}")
    return None


ALIGN_SPECS: tuple[ConstraintSpec, ...] = (
    spec(FIRST_WORD, _first_word, "the first word is `word` (case-insensitive)", ArgSpec("word", "token")),
    spec(LAST_WORD, _last_word, "the last word is `word` (case-insensitive; punctuation after it is fine)",
         ArgSpec("word", "token")),
    spec(MAX_WORD_LENGTH, _max_word_length, "no word is longer than `max_letters` characters",
         ArgSpec("max_letters", "int", minimum=1)),
    spec(MAX_SENTENCE_WORDS, _max_sentence_words, "no sentence has more than `max_words` words",
         ArgSpec("max_words", "int", minimum=1)),
    spec(QUESTIONS, _question_count, "exactly `num_questions` sentences are questions (end in '?')",
         ArgSpec("num_questions", "int")),
    spec(KEYWORD_ORDER, _keyword_order, "both keywords appear and `first` comes before `second`",
         ArgSpec("first", "str"), ArgSpec("second", "str"), check_arguments=_different_keywords),
    spec(DISTINCT_STARTS, _distinct_sentence_starts, "no two consecutive sentences start with the same word"),
    spec(HASHTAGS, _hashtags, "exactly `num_hashtags` hashtags (#word)", ArgSpec("num_hashtags", "int")),
    spec(TABLE, _table_rows, "exactly one markdown table, with `num_rows` rows below its header",
         ArgSpec("num_rows", "int", minimum=1)),
    spec(WRAPPED, _wrapped_in_tag, "the whole response is <tag>...</tag> (tag case-insensitive)",
         ArgSpec("tag", "token")),
    spec(NO_DIGITS, _no_digits, "no digits at all (numbers written in words)"),
    spec(PARAGRAPH_SENTENCES, _max_paragraph_sentences,
         "no blank-line paragraph has more than `max_sentences` sentences", ArgSpec("max_sentences", "int", minimum=1)),
    spec(BULLET_WORDS, _bullet_max_words, "has '* ' / '- ' bullets, none longer than `max_words` words",
         ArgSpec("max_words", "int", minimum=1)),
    spec(MAX_CHARS, _max_characters, "at most `max_chars` characters (outer whitespace not counted)",
         ArgSpec("max_chars", "int", minimum=1)),
    spec(LINES, _line_count, "exactly `num_lines` non-blank lines", ArgSpec("num_lines", "int", minimum=1)),
    spec(ASCII, _ascii_only, "ASCII characters only (no emoji, accents or curly quotes)"),
)  # fmt: skip

ALIGN_TYPES: tuple[str, ...] = tuple(s.type for s in ALIGN_SPECS)
