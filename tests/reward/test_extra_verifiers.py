"""reward.extra_verifiers: align's own constraint types, checked strictly and loosely, with argument validation."""

from __future__ import annotations

import json
import re

import pytest

from reward.extra_verifiers import ALIGN_SPECS, ALIGN_TYPES, is_question, table_row_counts
from reward.verifiers import CONSTRAINT_TYPES, check, check_all, parse_constraints, validate_constraint

C = {
    "first": {"type": "align:first_word", "word": "Sure"},
    "last": {"type": "align:last_word", "word": "tomorrow"},
    "word_length": {"type": "align:max_word_length", "max_letters": 6},
    "sentence_words": {"type": "align:max_sentence_words", "max_words": 5},
    "questions": {"type": "align:question_count", "num_questions": 2},
    "no_questions": {"type": "align:question_count", "num_questions": 0},
    "order": {"type": "align:keyword_order", "first": "flour", "second": "water"},
    "starts": {"type": "align:distinct_sentence_starts"},
    "hashtags": {"type": "align:hashtags", "num_hashtags": 2},
    "table": {"type": "align:table_rows", "num_rows": 2},
    "tag": {"type": "align:wrapped_in_tag", "tag": "answer"},
    "no_digits": {"type": "align:no_digits"},
    "paragraphs": {"type": "align:max_paragraph_sentences", "max_sentences": 2},
    "bullets": {"type": "align:bullet_max_words", "max_words": 4},
    "chars": {"type": "align:max_characters", "max_chars": 20},
    "lines": {"type": "align:line_count", "num_lines": 3},
    "ascii": {"type": "align:ascii_only"},
}

TABLE = "| Fruit | Colour |\n| --- | --- |\n| Apple | Red |\n| Pear | Green |"

# Each row: constraint, response, expected strict result, expected loose result. Loose checking tries the
# response with its first and/or last line dropped and with '*' removed; (False, True) rows are rescued so.
CASES = [
    # align:first_word: the first \w+ run, case-insensitive; a longer word does not count.
    ("first", "Sure! Here is the plan.", True, True),
    ("first", '"sure," she said.', True, True),
    ("first", "Surely not.", False, False),
    ("first", "Okay.\nSure, here it is.", False, True),
    # align:last_word: the last \w+ run; punctuation and markdown after it do not matter.
    ("last", "See you tomorrow!", True, True),
    ("last", "**Tomorrow**", True, True),
    ("last", "Tomorrow we meet.", False, False),
    ("last", "See you tomorrow.\nP.S. Bring snacks.", False, True),
    # align:max_word_length: every \w+ run has at most N characters (digits count too).
    ("word_length", "Keep it short and plain.", True, True),
    ("word_length", "Nothing extraordinary here.", False, False),
    ("word_length", "Call 5551234.", False, False),
    ("word_length", "Wonderful:\nall short words here.", False, True),
    # align:max_sentence_words: every sentence has at most N words; a line break does not end a sentence.
    ("sentence_words", "Short one. Another short one! Fine?", True, True),
    ("sentence_words", "This sentence has far too many words in it. Short.", False, False),
    ("sentence_words", "Here is a line that runs on and on\nTiny. Also tiny.", False, True),
    # align:question_count: exactly N sentences whose closing punctuation holds a '?'.
    ("questions", "Ready? Set? Go.", True, True),
    ("questions", "What now?! Why? How?", False, False),
    ("questions", "Is it safe? Yes.", False, False),
    ("questions", "Any questions?\nWhy? Why not?", False, True),
    ("no_questions", "No questions here.", True, True),
    ("no_questions", "Why not?", False, False),
    # align:keyword_order: both whole words present, the first occurrence of `first` before that of `second`.
    ("order", "Mix the flour, then add water.", True, True),
    ("order", "Add water to the flour.", False, False),
    ("order", "Flour is key.", False, False),
    ("order", "Flourish with water and flour.", False, False),
    ("order", "Water first.\nSift the flour, then pour the water.", False, True),
    # align:distinct_sentence_starts: consecutive sentences never open with the same word (case-insensitive).
    ("starts", "The sun rose. A bird sang. The day began.", True, True),
    ("starts", "Just one sentence.", True, True),
    ("starts", "The sun rose. the bird sang.", False, False),
    ("starts", "Sure.\nSure thing, the plan is ready. It starts now.", False, True),
    # align:hashtags: exactly N; not C#, #1, an URL fragment, an HTML entity or a markdown heading.
    ("hashtags", "Great day! #sunny #beach", True, True),
    ("hashtags", "**#sunny** and #beach", True, True),
    ("hashtags", "Use C# and #1, see me.com#ref, &#39; and\n## Heading", False, False),
    ("hashtags", "#draft\nGreat day! #sunny #beach", False, True),
    # align:table_rows: exactly one table (header, |---| separator, rows); N rows below the separator.
    ("table", TABLE, True, True),
    ("table", "Here:\n\nFruit | Colour\n:---|---:\nApple | Red\nPear | Green\n\nEnjoy.", True, True),
    ("table", "| Fruit | Colour |\n| Apple | Red |\n| Pear | Green |", False, False),
    ("table", "Two tables:\n" + TABLE + "\n\n" + TABLE + "\nDone.", False, False),
    ("table", TABLE + "\n| Plum | Purple |", False, True),
    # align:wrapped_in_tag: the whole (stripped) response is <tag>...</tag> with something inside.
    ("tag", "<answer>Paris</answer>", True, True),
    ("tag", "  <ANSWER>\nParis\n</Answer>\n", True, True),
    ("tag", "<answer>  </answer>", False, False),
    ("tag", "<response>Paris</response>", False, False),
    ("tag", "<answer>Paris</answer> Hope this helps.", False, False),
    ("tag", "Here it is:\n<answer>Paris</answer>", False, True),
    # align:no_digits: no decimal digit of any script.
    ("no_digits", "Twenty-five apples.", True, True),
    ("no_digits", "25 apples.", False, False),
    ("no_digits", "٣ apples.", False, False),
    ("no_digits", "Step 1:\nMix twenty apples.", False, True),
    # align:max_paragraph_sentences: paragraphs are split by blank lines (whitespace-only lines too).
    ("paragraphs", "One. Two.\n  \nThree. Four.", True, True),
    ("paragraphs", "One. Two. Three.", False, False),
    ("paragraphs", "One. Two.\nThree.\n\nFour.", False, True),
    # align:bullet_max_words: at least one '* ' / '- ' bullet, none with more than N words.
    ("bullets", "Tips:\n* Drink water.\n- Sleep well tonight.", True, True),
    ("bullets", "No bullets here at all.", False, False),
    ("bullets", "**Bold** is not a bullet.", False, False),
    ("bullets", "* Short.\n* This bullet point has far too many words.\n* Short too.", False, False),
    ("bullets", "* This bullet point has far too many words.\n* Short one.", False, True),
    # align:max_characters: outer whitespace is not counted.
    ("chars", "  12345678901234567890\n", True, True),
    ("chars", "This reply is far too long for the limit.", False, False),
    ("chars", "Sure, here you go:\nShort and sweet.", False, True),
    # align:line_count: exactly N non-blank lines.
    ("lines", "Roses are red\n\n  \nViolets are blue\r\nSugar is sweet\n", True, True),
    ("lines", "One line only.", False, False),
    ("lines", "Here is a poem:\nRoses are red\nViolets are blue\nSugar is sweet", False, True),
    # align:ascii_only
    ("ascii", 'Plain text, with "straight" quotes.', True, True),
    ("ascii", "Café au lait.", False, False),
    ("ascii", "It’s done 🎉", False, False),
    ("ascii", "Voilà!\nPlain text here.", False, True),
]  # fmt: skip


def test_every_case_checks_as_expected_strictly_and_loosely():
    """All of CASES at once, so a change in a shared rule (words, sentences) lists every case it breaks."""
    outcomes = [(name, response, check(C[name], response), check(C[name], response, loose=True))
                for name, response, _, _ in CASES]
    assert [case for case in outcomes if case not in CASES] == []


def test_every_align_type_has_passing_failing_and_loose_only_cases():
    outcomes = {(C[name]["type"], strict, loose) for name, _, strict, loose in CASES}
    for type_id in ALIGN_TYPES:
        assert (type_id, True, True) in outcomes, type_id
        assert (type_id, False, False) in outcomes, type_id
        assert (type_id, False, True) in outcomes, type_id


def test_align_types_are_registered_under_their_own_prefix():
    assert len(ALIGN_TYPES) == len(set(ALIGN_TYPES)) >= 12
    for spec in ALIGN_SPECS:
        assert spec.type.startswith("align:")
        assert CONSTRAINT_TYPES[spec.type] is spec


def test_blank_response_follows_no_align_constraint():
    # Even the ones an empty text would trivially satisfy (no digits, short, ASCII...).
    for name in ("no_digits", "chars", "ascii", "starts", "word_length", "no_questions"):
        assert check(C[name], "") is False
        assert check(C[name], "  \n ", loose=True) is False


def test_check_all_and_parse_constraints_take_align_types():
    constraints = parse_constraints(json.dumps([C["first"], C["no_digits"], C["hashtags"]]))
    assert check_all(constraints, "Sure, twenty. #a #b") == [True, True, True]
    assert check_all(constraints, "Sure, 20. #a") == [True, False, False]


def test_helpers():
    assert is_question("Really?!") and is_question('He asked "why?"') and not is_question("Why not.")
    assert not is_question("What if")
    assert table_row_counts(TABLE + "\n\ntext\n\n| a | b |\n|---|---|") == [2, 0]
    assert table_row_counts("a | b\n---\nc | d") == []  # a rule without "|" is no separator


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({"type": "align:first_word"},
         "constraint 'align:first_word' is missing argument 'word'; it takes word (str, letters and digits only)"),
        ({"type": "align:first_word", "word": "two words"},
         "constraint 'align:first_word' argument 'word' must be one word of letters and digits only "
         "(no spaces or punctuation), got str 'two words'"),
        ({"type": "align:wrapped_in_tag", "tag": "<answer>"},
         "constraint 'align:wrapped_in_tag' argument 'tag' must be one word of letters and digits only "
         "(no spaces or punctuation), got str '<answer>'"),
        ({"type": "align:max_word_length", "max_letters": 0},
         "constraint 'align:max_word_length' argument 'max_letters' must be >= 1, got 0"),
        ({"type": "align:hashtags", "num_hashtags": "2"},
         "constraint 'align:hashtags' argument 'num_hashtags' must be an int, got str '2'"),
        ({"type": "align:question_count", "num_questions": -1},
         "constraint 'align:question_count' argument 'num_questions' must be >= 0, got -1"),
        ({"type": "align:keyword_order", "first": "bees", "second": " Bees"},
         "constraint 'align:keyword_order' arguments 'first' and 'second' must be different words, "
         "got 'bees' and ' Bees'"),
        ({"type": "align:keyword_order", "first": "bees", "second": ""},
         "constraint 'align:keyword_order' argument 'second' must be a non-empty str, got str ''"),
        ({"type": "align:table_rows", "num_rows": 2, "rows": 3},
         "constraint 'align:table_rows' got unknown argument 'rows' (did you mean 'num_rows'?); "
         "it takes num_rows (int >= 1)"),
        ({"type": "align:ascii_only", "strict": True},
         "constraint 'align:ascii_only' got unknown argument 'strict'; it takes no arguments"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_clear_errors(constraint: dict, message: str):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        validate_constraint(constraint)
    with pytest.raises(ValueError, match=re.escape(message)):
        check(constraint, "Some response.")


def test_unknown_align_type_suggests_the_close_one():
    expected = r"^unknown constraint type 'align:first_words'; did you mean 'align:first_word'\?"
    with pytest.raises(ValueError, match=expected):
        validate_constraint({"type": "align:first_words", "word": "Sure"})
