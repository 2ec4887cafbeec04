"""One definition of a repetition loop, the degenerate output where a model repeats itself until it is cut off.

A text **loops** when some sequence of `ngram` consecutive words occurs at least `min_repeats` times in it.
Words are ``\\w+`` runs, lower-cased (as the verifiers count words), so punctuation, markdown and line breaks
between the copies do not hide a loop. Occurrences may overlap ("a a a a a a a a a a" holds the 6-word
sequence "a a a a a a" five times), so a phrase of p words repeated back to back loops once the copies fill
``ngram + (min_repeats - 1) * p`` words. The text is read a second way too, with runs of other non-space
characters (``***``, ``>``, ``},``) counted as words and sequences twice as long (2 x `ngram`, so that the
recurring punctuation of JSON records or a list is not enough): a model stuck writing a separator line over and
over loops just as one repeating a sentence does. With the defaults (6 words, 5 times), a sentence repeated five
times loops, and so does a three-word phrase repeated six times; ordinary prose, lists, JSON with varying values
and a refrain sung four times do not. Text that legitimately repeats six or more identical words five times or
more (uniform records, a chorus sung five times) is flagged too: raise `ngram` for such data.

Meant for evaluation (`loop_share` of a model's generations) and used by the built-in data, whose "repetitive"
preference pairs are made so that every rejected answer loops by this definition.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"\w+")
_WORD_OR_SYMBOLS = re.compile(r"\w+|[^\w\s]+")


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def repetition_loop(text: str, ngram: int = 6, min_repeats: int = 5) -> bool:
    """True when some `ngram` consecutive words (``\\w+`` runs, lower-cased) occur `min_repeats`+ times in `text`,
    or some 2 x `ngram` consecutive words and symbol runs do."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    _check_int("ngram", ngram, 1)
    _check_int("min_repeats", min_repeats, 2)
    for pattern, length in ((_WORD, ngram), (_WORD_OR_SYMBOLS, 2 * ngram)):
        words = [word.lower() for word in pattern.findall(text)]
        windows = Counter(tuple(words[i : i + length]) for i in range(len(words) - length + 1))
        if any(count >= min_repeats for count in windows.values()):
            return True
    return False


def loop_share(texts: Iterable[str], ngram: int = 6, min_repeats: int = 5) -> float:
    """The fraction of `texts` that loop (see `repetition_loop`); 0.0 for no texts."""
    flags = [repetition_loop(text, ngram, min_repeats) for text in texts]
    return sum(flags) / len(flags) if flags else 0.0
