"""Tests for reward.verifiers (constraint checkers) and reward.text_stats (counting, language)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reward.text_stats import (
    SUPPORTED_LANGUAGES,
    capital_words,
    count_sentences,
    count_words,
    detect_language,
    split_sentences,
)
from reward.verifiers import (
    CONSTRAINT_TYPES,
    check,
    check_all,
    constraints_from_ifeval,
    loose_variants,
    parse_constraints,
    validate_constraint,
)

# The IFEval instruction ids listed in the constraints contract (CONSTRAINTS.md), and our two extras.
IFEVAL_TYPE_IDS = [
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "language:response_language", "length_constraints:number_sentences",
    "length_constraints:number_paragraphs", "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word", "detectable_content:number_placeholders",
    "detectable_content:postscript", "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response", "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections", "detectable_format:json_format", "detectable_format:title",
    "combination:two_responses", "combination:repeat_prompt", "startend:end_checker", "startend:quotation",
    "change_case:capital_word_frequency", "change_case:english_capital", "change_case:english_lowercase",
    "punctuation:no_comma",
]  # fmt: skip
EXTRA_TYPE_IDS = ["startend:start_checker", "detectable_format:number_numbered_items"]
# align's own types (reward.extra_verifiers, never trained on by default); tested in test_extra_verifiers.py.
ALIGN_TYPE_IDS = [
    "align:first_word", "align:last_word", "align:max_word_length", "align:max_sentence_words",
    "align:question_count", "align:keyword_order", "align:distinct_sentence_starts", "align:hashtags",
    "align:table_rows", "align:wrapped_in_tag", "align:no_digits", "align:max_paragraph_sentences",
    "align:bullet_max_words", "align:max_characters", "align:line_count", "align:ascii_only",
]  # fmt: skip
VALID_TYPES = ", ".join(sorted(CONSTRAINT_TYPES))

FRENCH = "Le chat dort sur la table de la cuisine. Il est très calme et nous le laissons tranquille."
ENGLISH = "The weather was lovely this morning, so we decided to walk to the market with our friends."


def test_every_contract_type_is_registered_and_nothing_else():
    assert set(IFEVAL_TYPE_IDS) <= set(CONSTRAINT_TYPES)
    assert set(CONSTRAINT_TYPES) == set(IFEVAL_TYPE_IDS) | set(EXTRA_TYPE_IDS) | set(ALIGN_TYPE_IDS)
    assert len(CONSTRAINT_TYPES) == 25 + 2 + 16  # no id is listed twice
    for type_id, spec in CONSTRAINT_TYPES.items():
        assert spec.type == type_id


def test_import_is_light():
    code = (
        "import sys, reward.verifiers\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'datasets') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------------------------------
# Per-type behaviour. Each row: constraint, response, expected strict result, expected loose result.
# Every type has a passing row and a row that fails even loosely; rows with (False, True) show a
# response that only the loose variants (first/last line dropped, '*' removed) rescue.
# --------------------------------------------------------------------------------------------

C = {
    "existence": {"type": "keywords:existence", "keywords": ["apple", "Pear"]},
    "frequency_lt": {"type": "keywords:frequency", "keyword": "apple", "frequency": 2, "relation": "less than"},
    "frequency_al": {"type": "keywords:frequency", "keyword": "apple", "frequency": 2, "relation": "at least"},
    "forbidden": {"type": "keywords:forbidden_words", "forbidden_words": ["cat", "dog"]},
    "letter_lt": {"type": "keywords:letter_frequency", "letter": "z", "let_frequency": 2, "let_relation": "less than"},
    "letter_al": {"type": "keywords:letter_frequency", "letter": "#", "let_frequency": 2, "let_relation": "at least"},
    "french": {"type": "language:response_language", "language": "fr"},
    "sentences_lt": {"type": "length_constraints:number_sentences", "num_sentences": 2, "relation": "less than"},
    "sentences_al": {"type": "length_constraints:number_sentences", "num_sentences": 3, "relation": "at least"},
    "paragraphs": {"type": "length_constraints:number_paragraphs", "num_paragraphs": 2},
    "words_lt": {"type": "length_constraints:number_words", "num_words": 5, "relation": "less than"},
    "words_al": {"type": "length_constraints:number_words", "num_words": 5, "relation": "at least"},
    "first_word": {"type": "length_constraints:nth_paragraph_first_word", "num_paragraphs": 2, "nth_paragraph": 2,
                   "first_word": "Banana"},
    "placeholders": {"type": "detectable_content:number_placeholders", "num_placeholders": 2},
    "ps": {"type": "detectable_content:postscript", "postscript_marker": "P.S."},
    "pps": {"type": "detectable_content:postscript", "postscript_marker": "P.P.S"},
    "note": {"type": "detectable_content:postscript", "postscript_marker": "Note:"},
    "bullets": {"type": "detectable_format:number_bullet_lists", "num_bullets": 2},
    "yes_no": {"type": "detectable_format:constrained_response"},
    "highlights": {"type": "detectable_format:number_highlighted_sections", "num_highlights": 2},
    "sections": {"type": "detectable_format:multiple_sections", "section_spliter": "Section", "num_sections": 2},
    "json": {"type": "detectable_format:json_format"},
    "title": {"type": "detectable_format:title"},
    "two": {"type": "combination:two_responses"},
    "repeat": {"type": "combination:repeat_prompt", "prompt_to_repeat": "Write a poem about rain."},
    "end": {"type": "startend:end_checker", "end_phrase": "Any other questions?"},
    "quote": {"type": "startend:quotation"},
    "caps_lt": {"type": "change_case:capital_word_frequency", "capital_frequency": 2, "capital_relation": "less than"},
    "caps_al": {"type": "change_case:capital_word_frequency", "capital_frequency": 2, "capital_relation": "at least"},
    "upper": {"type": "change_case:english_capital"},
    "lower": {"type": "change_case:english_lowercase"},
    "no_comma": {"type": "punctuation:no_comma"},
    "start": {"type": "startend:start_checker", "start_phrase": "Once upon a time"},
    "numbered": {"type": "detectable_format:number_numbered_items", "num_items": 2},
}  # fmt: skip

CASES = [
    # keywords:existence: case-insensitive substring, every keyword needed.
    ("existence", "An apple and a pear.", True, True),
    ("existence", "Pineapples and PEARS.", True, True),
    ("existence", "Only an apple here.", False, False),
    ("existence", "An ap*ple and a pear.", False, True),
    # keywords:frequency: case-insensitive occurrences; < N or >= N.
    ("frequency_lt", "Apple pie.", True, True),
    ("frequency_lt", "Apple pie and apple juice.", False, False),
    ("frequency_lt", "Sure, apple and apple:\nOne apple.", False, True),
    ("frequency_al", "Apple pie and APPLE juice.", True, True),
    ("frequency_al", "One apple.", False, False),
    ("frequency_al", "One ap*ple and one apple.", False, True),
    # keywords:forbidden_words: whole words only.
    ("forbidden", "Concatenate the dogma.", True, True),
    ("forbidden", "My Cat sleeps.", False, False),
    ("forbidden", "I will not mention the cat:\nBirds sing.", False, True),
    # keywords:letter_frequency: counts one character, case-insensitively; "#" works too.
    ("letter_lt", "Zebra.", True, True),
    ("letter_lt", "Zebras zigzag.", False, False),
    ("letter_lt", "Zz, lazy intro\nA zebra.", False, True),
    ("letter_al", "#ai #ml", True, True),
    ("letter_al", "#ai only", False, False),
    # language:response_language
    ("french", FRENCH, True, True),
    ("french", ENGLISH, False, False),
    ("french", "12345 !!!", False, False),
    ("french", "Sure! Here is what you asked for, it is written in French and I hope that you like it:\n" + FRENCH,
     False, True),
    # length_constraints:number_sentences
    ("sentences_lt", "Just one sentence here.", True, True),
    ("sentences_lt", "One. Two.", False, False),
    ("sentences_lt", "Sure. Here it is.\nJust one sentence here.", False, True),
    ("sentences_al", "One. Two! Three?", True, True),
    ("sentences_al", "Dr. Smith met Mr. Jones. They talked.", False, False),
    ("sentences_al", "Only one.\nAnd two.\nBut a third line without a stop", True, True),
    # length_constraints:number_paragraphs: exactly N pieces between '***' dividers.
    ("paragraphs", "First part.\n***\nSecond part.", True, True),
    ("paragraphs", "***\nFirst part.\n***\nSecond part.\n***", True, True),
    ("paragraphs", "First.\n***\n\n***\nSecond.", False, False),
    ("paragraphs", "One. *** Two. *** Three.", False, False),
    ("paragraphs", "Here it is:\n***\nFirst part.\n***\nSecond part.", False, True),
    # length_constraints:number_words: \w+ runs.
    ("words_lt", "Yes it is.", True, True),
    ("words_lt", "Don't do that, ok?", False, False),
    ("words_lt", "Sure here is my answer\nYes it is.", False, True),
    ("words_al", "state-of-the-art work", True, True),
    ("words_al", "Too short here.", False, False),
    # length_constraints:nth_paragraph_first_word: blank-line paragraphs, first word lower-cased.
    ("first_word", "An apple.\n\n\"Banana,\" she said.", True, True),
    ("first_word", "An apple.\n\nCherry pie.", False, False),
    ("first_word", "An apple.\n\nBanana split.\n\nA third one.\nStill the third.", False, False),
    ("first_word", "An apple.\n\n\n\nBanana split.", False, False),
    ("first_word", "Sure:\n\nAn apple.\n\nBanana split.", False, True),
    # detectable_content:number_placeholders: at least N [..]. Loose variants only remove text, so
    # they can never add a placeholder.
    ("placeholders", "Dear [name], see you at [place].", True, True),
    ("placeholders", "Dear [name], see you soon.", False, False),
    # detectable_content:postscript
    ("ps", "Thanks!\n\nP.S. Bring snacks.", True, True),
    ("ps", "Thanks!\n\np.s. bring snacks.", True, True),
    ("ps", "Thanks! PS bring snacks.", False, False),
    ("ps", "Thanks!\n\nP.*S*. Bring snacks.", False, True),
    ("pps", "Bye.\nP.P.S I forgot.", True, True),
    ("pps", "Bye.\nP.S. I forgot.", False, False),
    ("note", "Done.\nNOTE: it rains.", True, True),
    ("note", "Done.\nNote it rains.", False, False),
    # detectable_format:number_bullet_lists: exactly N lines starting with '* ' or '- '.
    ("bullets", "Fruits:\n* apple\n- pear", True, True),
    ("bullets", "Fruits:\n* apple\n*italic line*\n---\n-5 degrees", False, False),
    ("bullets", "* apple\n* pear\n* plum", False, True),
    # detectable_format:constrained_response
    ("yes_no", "Let me think. My answer is maybe.", True, True),
    ("yes_no", "My answer is: yes.", False, False),
    ("yes_no", "My answer is *yes*.", False, True),
    # detectable_format:number_highlighted_sections: at least N; '**bold**' counts once. Loose
    # variants remove '*' or lines, so they never add a highlight.
    ("highlights", "Use *fresh* and **ripe** fruit.", True, True),
    ("highlights", "Use *fresh* and ** ** fruit.", False, False),
    # detectable_format:multiple_sections: at least N "Section k" headers, case-sensitive.
    ("sections", "Section 1\nIntro.\nSection 2\nBody.", True, True),
    ("sections", "SECTION 1\nIntro.\nSECTION 2\nBody.", False, False),
    ("sections", "**Section** 1\nIntro.\n**Section** 2\nBody.", False, True),
    # detectable_format:json_format: whole response, ``` fences allowed.
    ("json", '```json\n{"a": [1, 2]}\n```', True, True),
    ("json", '{"a": 1} and more', False, False),
    ("json", 'Sure, here is the JSON:\n{"a": 1}', False, True),
    # detectable_format:title
    ("title", "<<Ode to Rain>>\nDrops fall.", True, True),
    ("title", "<< >>\nDrops fall.", False, False),
    ("title", "<*<Ode to Rain>*>\nDrops fall.", False, True),
    # combination:two_responses: two different non-empty answers around '******'.
    ("two", "Answer one.\n******\nAnswer two.", True, True),
    ("two", "Same.\n******\nSame.", False, False),
    ("two", "One.\n******\n\n******\nTwo.", False, False),
    ("two", "Here are two:\n******\nAnswer one.\n******\nAnswer two.", False, True),
    # combination:repeat_prompt: starts with the prompt, case-insensitive after strip.
    ("repeat", "  write a poem about rain. Drops fall.", True, True),
    ("repeat", "A poem about rain: drops fall.", False, False),
    ("repeat", "Sure! Repeating first:\nWrite a poem about rain.\nDrops fall.", False, True),
    # startend:end_checker: case-insensitive, outer quotes ignored.
    ("end", '"Here you go. any other questions?"', True, True),
    ("end", "Any other questions? Bye.", False, False),
    ("end", "Here you go. Any other questions?\nHope this helps!", False, True),
    # startend:quotation
    ("quote", '  "Wrapped."  ', True, True),
    ("quote", '"', False, False),
    ("quote", 'Here you go:\n"Wrapped."', False, True),
    # change_case:capital_word_frequency
    ("caps_lt", "Only ONE shout.", True, True),
    ("caps_lt", "DON'T SHOUT.", False, False),
    ("caps_lt", "NOTE: OK THEN\nOnly ONE shout.", False, True),
    ("caps_al", "WELL-KNOWN and COVID-19.", True, True),
    ("caps_al", "I'm fine, Ok?", False, False),
    # change_case:english_capital / english_lowercase
    ("upper", "THE CAT IS ON THE MAT AND IT IS HAPPY.", True, True),
    ("upper", "LE CHAT EST SUR LA TABLE ET IL DORT DANS LA CUISINE.", False, False),
    ("upper", "THE CAT IS on THE MAT.", False, False),
    ("upper", "Sure, here it is:\nTHE CAT IS ON THE MAT AND IT IS HAPPY.", False, True),
    ("lower", "the cat is on the mat and it is happy.", True, True),
    ("lower", "le chat est sur la table et il dort dans la cuisine.", False, False),
    ("lower", "Sure! here it is:\nthe cat is on the mat and it is happy.", False, True),
    # punctuation:no_comma
    ("no_comma", "No commas here.", True, True),
    ("no_comma", "One, two.", False, False),
    ("no_comma", "Sure, here it is:\nNo commas here.", False, True),
    # startend:start_checker (extra)
    ("start", '"once upon a time there was rain."', True, True),
    ("start", "There was once upon a time.", False, False),
    ("start", "Sure:\nOnce upon a time there was rain.", False, True),
    # detectable_format:number_numbered_items (extra): exactly N lines like "1." or "2)".
    ("numbered", "Steps:\n1. Mix\n2) Bake", True, True),
    ("numbered", "Steps:\n1. Mix\n2.5 cups\n3.Bake", False, False),
    ("numbered", "1. Mix\n2. Bake\n3. Eat", False, True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "response", "strict", "loose"), CASES)
def test_constraint_strict_and_loose(name: str, response: str, strict: bool, loose: bool):
    assert check(C[name], response) is strict
    assert check(C[name], response, loose=True) is loose


def test_every_type_has_a_passing_and_a_failing_case():
    types_by_outcome = {(C[name]["type"], strict) for name, _, strict, _ in CASES}
    for type_id in IFEVAL_TYPE_IDS + EXTRA_TYPE_IDS:
        assert (type_id, True) in types_by_outcome, type_id
        assert (type_id, False) in types_by_outcome, type_id


def test_loose_only_cases_cover_all_types_whose_semantics_allow_it():
    loose_only = {C[name]["type"] for name, _, strict, loose in CASES if not strict and loose}
    # Loose variants only remove text, so "at least N placeholders/highlights" can't be rescued.
    cannot = {"detectable_content:number_placeholders", "detectable_format:number_highlighted_sections"}
    assert loose_only == set(IFEVAL_TYPE_IDS + EXTRA_TYPE_IDS) - cannot


def test_blank_response_follows_nothing():
    # IFEval: an empty response fails even constraints an empty text would satisfy.
    for constraint in (C["no_comma"], C["words_lt"], C["forbidden"], C["caps_lt"]):
        assert check(constraint, "") is False
        assert check(constraint, " \n\t", loose=True) is False


def test_loose_variants_match_ifeval():
    variants = loose_variants("Sure:\n*a*\nbye")
    assert variants == ["Sure:\n*a*\nbye", "*a*\nbye", "Sure:\n*a*", "*a*", "Sure:\na\nbye", "a\nbye", "Sure:\na", "a"]


def test_repeat_prompt_falls_back_to_the_prompt_argument():
    constraint = {"type": "combination:repeat_prompt"}
    assert check(constraint, "Tell me a joke. Why did...", prompt="Tell me a joke.") is True
    assert check(constraint, "Why did...", prompt="Tell me a joke.") is False
    with pytest.raises(ValueError) as error:
        check(constraint, "Tell me a joke.")
    assert str(error.value) == (
        "constraint 'combination:repeat_prompt' has no 'prompt_to_repeat'; "
        "give it one or pass the prompt: check(..., prompt=...)"
    )


def test_check_rejects_non_string_response():
    with pytest.raises(TypeError) as error:
        check(C["no_comma"], None)  # type: ignore[arg-type]
    assert str(error.value) == "response must be a str, got NoneType"


def test_check_validates_before_checking():
    with pytest.raises(ValueError, match="^unknown constraint type 'punctuation:no_commas'"):
        check({"type": "punctuation:no_commas"}, "fine")


# --------------------------------------------------------------------------------------------
# check_all / parse_constraints / constraints_from_ifeval
# --------------------------------------------------------------------------------------------


def test_check_all_keeps_order_and_validates_everything_first():
    constraints = [C["no_comma"], C["words_al"], C["title"]]
    assert check_all(constraints, "A reply with enough words in it.") == [True, True, False]
    assert check_all(constraints, "Sure, here:\n<<T>> a reply with enough words", loose=True) == [True, True, True]
    with pytest.raises(ValueError) as error:
        check_all([C["no_comma"], {"type": "startend:quotation", "x": 1}], "ok")
    assert str(error.value) == (
        "constraints[1]: constraint 'startend:quotation' got unknown argument 'x'; it takes no arguments"
    )
    with pytest.raises(TypeError) as type_error:
        check_all(json.dumps([C["no_comma"]]), "ok")  # type: ignore[arg-type]
    assert str(type_error.value) == (
        "constraints must be a list of constraint dicts, got str (use parse_constraints for a JSON string)"
    )


def test_parse_constraints_accepts_json_string_and_list():
    constraints = [C["no_comma"], C["frequency_lt"]]
    assert parse_constraints(json.dumps(constraints)) == constraints
    parsed = parse_constraints(constraints)
    assert parsed == constraints
    parsed[0]["extra"] = 1  # the caller's dicts are not shared
    assert "extra" not in constraints[0]
    assert parse_constraints("[]") == []


def test_parse_constraints_errors():
    with pytest.raises(ValueError) as error:
        parse_constraints('[{"type": "punctuation:no_comma"')
    assert str(error.value) == (
        "constraints string is not valid JSON (Expecting ',' delimiter at char 32); "
        'expected a JSON list like [{"type": "punctuation:no_comma"}]'
    )
    with pytest.raises(ValueError) as error:
        parse_constraints('{"type": "punctuation:no_comma"}')
    assert str(error.value) == "constraints must be a list of constraint dicts or a JSON string of one, got dict"
    with pytest.raises(ValueError) as error:
        parse_constraints([C["no_comma"], {"type": "length_constraints:number_words", "num_words": 10}])
    assert str(error.value) == (
        "constraints[1]: constraint 'length_constraints:number_words' is missing argument 'relation'; "
        "it takes num_words (int >= 0), relation ('less than' | 'at least')"
    )


def test_constraints_from_ifeval_row():
    # As the Hugging Face copy of IFEval stores it: every key present, unused ones None, ints as floats.
    padding = {"num_words": None, "relation": None, "letter": None, "let_frequency": None, "let_relation": None}
    row_ids = ["keywords:letter_frequency", "length_constraints:number_words", "punctuation:no_comma"]
    row_kwargs = [
        {**padding, "letter": "#", "let_frequency": 4.0, "let_relation": "at least"},
        {**padding, "num_words": 10, "relation": "less than"},
        dict(padding),
    ]
    assert constraints_from_ifeval(row_ids, row_kwargs) == [
        {"type": "keywords:letter_frequency", "letter": "#", "let_frequency": 4, "let_relation": "at least"},
        {"type": "length_constraints:number_words", "num_words": 10, "relation": "less than"},
        {"type": "punctuation:no_comma"},
    ]
    with pytest.raises(ValueError) as error:
        constraints_from_ifeval(row_ids, row_kwargs[:2])
    assert str(error.value) == (
        "IFEval row has 3 instruction ids but 2 kwargs dicts; they must pair up one to one"
    )


# --------------------------------------------------------------------------------------------
# Validation messages
# --------------------------------------------------------------------------------------------

NTH = "length_constraints:nth_paragraph_first_word"
VALIDATION_ERRORS = [
    (["punctuation:no_comma"], 'a constraint must be a dict like {"type": "punctuation:no_comma"}, got list'),
    ({"keywords": ["a"]}, f"constraint needs a 'type' string (keys given: 'keywords'); valid types: {VALID_TYPES}"),
    ({}, f"constraint needs a 'type' string (keys given: none); valid types: {VALID_TYPES}"),
    ({"type": 3}, f"constraint needs a 'type' string (keys given: 'type'); valid types: {VALID_TYPES}"),
    ({"type": "keywords:existance", "keywords": ["a"]},
     f"unknown constraint type 'keywords:existance'; did you mean 'keywords:existence'? valid types: {VALID_TYPES}"),
    ({"type": "sentiment:positive"}, f"unknown constraint type 'sentiment:positive'; valid types: {VALID_TYPES}"),
    ({"type": "keywords:frequency", "keyword": "a"},
     "constraint 'keywords:frequency' is missing arguments 'frequency', 'relation'; "
     "it takes keyword (str), frequency (int >= 0), relation ('less than' | 'at least')"),
    ({"type": "punctuation:no_comma", "num_words": 3},
     "constraint 'punctuation:no_comma' got unknown argument 'num_words'; it takes no arguments"),
    ({"type": "length_constraints:number_paragraphs", "num_paragraph": 3},
     "constraint 'length_constraints:number_paragraphs' got unknown argument 'num_paragraph' "
     "(did you mean 'num_paragraphs'?); it takes num_paragraphs (int >= 1)"),
    ({"type": "startend:end_checker", "end_phrase": "Bye.", "colour": 1, "size": 2},
     "constraint 'startend:end_checker' got unknown arguments 'colour', 'size'; it takes end_phrase (str)"),
    ({"type": "combination:repeat_prompt", "prompt": "Hi"},
     "constraint 'combination:repeat_prompt' got unknown argument 'prompt'; it takes prompt_to_repeat (str, optional)"),
    ({"type": "length_constraints:number_words", "num_words": "100", "relation": "at least"},
     "constraint 'length_constraints:number_words' argument 'num_words' must be an int, got str '100'"),
    ({"type": "length_constraints:number_words", "num_words": True, "relation": "at least"},
     "constraint 'length_constraints:number_words' argument 'num_words' must be an int, got bool True"),
    ({"type": "length_constraints:number_words", "num_words": 10.0, "relation": "at least"},
     "constraint 'length_constraints:number_words' argument 'num_words' must be an int, got float 10.0"),
    ({"type": "length_constraints:number_words", "num_words": -1, "relation": "at least"},
     "constraint 'length_constraints:number_words' argument 'num_words' must be >= 0, got -1"),
    ({"type": "length_constraints:number_paragraphs", "num_paragraphs": 0},
     "constraint 'length_constraints:number_paragraphs' argument 'num_paragraphs' must be >= 1, got 0"),
    ({"type": "length_constraints:number_words", "num_words": 5, "relation": "at most"},
     "constraint 'length_constraints:number_words' argument 'relation' must be 'less than' or 'at least', "
     "got str 'at most'"),
    ({"type": "keywords:letter_frequency", "letter": "z", "let_frequency": 1, "let_relation": "less_than"},
     "constraint 'keywords:letter_frequency' argument 'let_relation' must be 'less than' or 'at least', "
     "got str 'less_than'"),
    ({"type": "change_case:capital_word_frequency", "capital_frequency": 1, "capital_relation": None},
     "constraint 'change_case:capital_word_frequency' argument 'capital_relation' must be 'less than' or "
     "'at least', got NoneType None"),
    ({"type": "language:response_language", "language": "xx"},
     "constraint 'language:response_language' argument 'language' must be a supported ISO 639-1 code "
     f"({', '.join(sorted(SUPPORTED_LANGUAGES))}), got str 'xx'"),
    ({"type": "language:response_language", "language": "French"},
     "constraint 'language:response_language' argument 'language' must be a supported ISO 639-1 code "
     f"({', '.join(sorted(SUPPORTED_LANGUAGES))}), got str 'French'"),
    ({"type": "keywords:letter_frequency", "letter": "ab", "let_frequency": 1, "let_relation": "at least"},
     "constraint 'keywords:letter_frequency' argument 'letter' must be a single character such as 'e' or '#', "
     "got str 'ab'"),
    ({"type": "keywords:existence", "keywords": "cat"},
     "constraint 'keywords:existence' argument 'keywords' must be a non-empty list of non-empty str, got str 'cat'"),
    ({"type": "keywords:forbidden_words", "forbidden_words": []},
     "constraint 'keywords:forbidden_words' argument 'forbidden_words' must be a non-empty list of non-empty str, "
     "got list []"),
    ({"type": "keywords:existence", "keywords": ["cat", ""]},
     "constraint 'keywords:existence' argument 'keywords' must be a non-empty list of non-empty str, "
     "got list ['cat', '']"),
    ({"type": "startend:end_checker", "end_phrase": "  "},
     "constraint 'startend:end_checker' argument 'end_phrase' must be a non-empty str, got str '  '"),
    ({"type": "detectable_content:postscript", "postscript_marker": 1},
     "constraint 'detectable_content:postscript' argument 'postscript_marker' must be a non-empty str, got int 1"),
    ({"type": NTH, "num_paragraphs": 2, "nth_paragraph": 1, "first_word": "two words"},
     f"constraint '{NTH}' argument 'first_word' must be a single word without spaces, got str 'two words'"),
    ({"type": NTH, "num_paragraphs": 2, "nth_paragraph": 3, "first_word": "hi"},
     f"constraint '{NTH}' argument 'nth_paragraph' must be between 1 and num_paragraphs (2), got 3"),
    ({"type": NTH, "num_paragraphs": 2, "nth_paragraph": 0, "first_word": "hi"},
     f"constraint '{NTH}' argument 'nth_paragraph' must be >= 1, got 0"),
    ({"type": "detectable_format:multiple_sections", "section_spliter": "Part", "num_sections": 0},
     "constraint 'detectable_format:multiple_sections' argument 'num_sections' must be >= 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(("constraint", "message"), VALIDATION_ERRORS)
def test_validation_error_messages(constraint, message: str):
    with pytest.raises(ValueError) as error:
        validate_constraint(constraint)
    assert str(error.value) == message
    assert "\n" not in str(error.value)


def test_valid_constraints_pass_validation():
    for constraint in C.values():
        validate_constraint(constraint)
    validate_constraint({"type": "combination:repeat_prompt"})  # prompt_to_repeat may come from check()


# --------------------------------------------------------------------------------------------
# Text statistics
# --------------------------------------------------------------------------------------------


def test_count_words_is_ifevals_word_runs():
    assert count_words("Don't stop: state-of-the-art 3.14!") == 9  # Don t stop state of the art 3 14
    assert count_words("") == 0


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello world. How are you? I'm fine!", ["Hello world.", "How are you?", "I'm fine!"]),
        ("Dr. Smith lives in the U.S. now. He likes it.", ["Dr. Smith lives in the U.S. now.", "He likes it."]),
        ("J. R. R. Tolkien wrote it. So do I. Really.", ["J. R. R. Tolkien wrote it.", "So do I.", "Really."]),
        ("Wait... what?! Yes.", ["Wait...", "what?!", "Yes."]),
        ('He said "stop." Then he left', ['He said "stop."', "Then he left"]),
        ("Pi is 3.14. Version 2.0 is out.", ["Pi is 3.14.", "Version 2.0 is out."]),
        ("Steps:\n1. Mix well.\n2. Bake\n- Serve", ["Steps: Mix well.", "Bake Serve"]),
        ("我很好。你呢？", ["我很好。", "你呢？"]),
        ("...", []),
        ("", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]):
    assert split_sentences(text) == sentences
    assert count_sentences(text) == len(sentences)


def test_capital_words():
    assert capital_words("DON'T panic, I'm OK. A WELL-KNOWN COVID-19 fact, Ok?") == [
        "DON'T", "OK", "A", "WELL-KNOWN", "COVID-19",
    ]  # fmt: skip


# One or two sentences per supported language; none of these is used to pick the word lists' entries.
LANGUAGE_SAMPLES = {
    "en": "Here are three tips for better sleep: keep a regular schedule and avoid coffee after noon.",
    "fr": "Voici trois conseils pour mieux dormir : gardez un horaire régulier et évitez le café après midi.",
    "de": "Hier sind drei Tipps für besseren Schlaf: Halten Sie einen festen Zeitplan ein und trinken Sie "
    "keinen Kaffee am Nachmittag.",
    "es": "Aquí tienes tres consejos para dormir mejor: mantén un horario regular y evita el café por la tarde.",
    "it": "Ecco tre consigli per dormire meglio: mantieni un orario regolare ed evita il caffè nel pomeriggio.",
    "pt": "Aqui estão três dicas para dormir melhor: mantenha um horário regular e evite café à tarde.",
    "nl": "Hier zijn drie tips om beter te slapen: houd een vast schema aan en vermijd koffie in de middag.",
    "pl": "Oto trzy wskazówki, jak lepiej spać: trzymaj się regularnego planu i unikaj kawy po południu.",
    "fi": "Tässä on kolme vinkkiä parempaan uneen: pidä säännöllinen aikataulu ja vältä kahvia iltapäivällä.",
    "sw": "Hapa kuna vidokezo vitatu vya kulala vizuri: fuata ratiba ya kawaida na epuka kahawa mchana.",
    "vi": "Đây là ba mẹo để ngủ ngon hơn: giữ lịch trình đều đặn và tránh cà phê vào buổi chiều.",
    "ru": "Вот три совета для лучшего сна: соблюдайте режим и не пейте кофе после обеда.",
    "uk": "Ось три поради для кращого сну: дотримуйтеся режиму та не пийте каву після обіду.",
    "bg": "Ето три съвета за по-добър сън: спазвайте режим и не пийте кафе следобед.",
    "ar": "إليك ثلاث نصائح لنوم أفضل: حافظ على جدول منتظم وتجنب القهوة بعد الظهر.",
    "fa": "اینجا سه نکته برای خواب بهتر است: یک برنامه منظم داشته باشید و از قهوه بعد از ظهر پرهیز کنید.",
    "ur": "بہتر نیند کے لیے تین مشورے یہ ہیں: باقاعدہ معمول رکھیں اور دوپہر کے بعد کافی سے پرہیز کریں۔",
    "hi": "बेहतर नींद के लिए तीन सुझाव: नियमित दिनचर्या रखें और दोपहर के बाद कॉफ़ी से बचें।",
    "mr": "चांगल्या झोपेसाठी तीन टिप्स आहेत: नियमित वेळापत्रक ठेवा आणि दुपारनंतर कॉफी टाळा.",
    "ne": "राम्रो निद्राका लागि तीन सुझावहरू छन्: नियमित तालिका राख्नुहोस् र दिउँसोपछि कफी नखानुहोस्।",
    "bn": "ভালো ঘুমের জন্য তিনটি পরামর্শ: নিয়মিত সময়সূচি মেনে চলুন এবং বিকেলের পর কফি এড়িয়ে চলুন।",
    "pa": "ਵਧੀਆ ਨੀਂਦ ਲਈ ਤਿੰਨ ਸੁਝਾਅ: ਨਿਯਮਤ ਸਮਾਂ-ਸਾਰਣੀ ਰੱਖੋ ਅਤੇ ਦੁਪਹਿਰ ਤੋਂ ਬਾਅਦ ਕੌਫੀ ਤੋਂ ਬਚੋ।",
    "gu": "સારી ઊંઘ માટે ત્રણ સૂચનો: નિયમિત સમયપત્રક રાખો અને બપોર પછી કોફી ટાળો.",
    "ta": "நல்ல தூக்கத்திற்கு மூன்று குறிப்புகள்: வழக்கமான அட்டவணையைப் பின்பற்றுங்கள்.",
    "te": "మంచి నిద్ర కోసం మూడు చిట్కాలు: క్రమమైన సమయపాలన పాటించండి.",
    "kn": "ಉತ್ತಮ ನಿದ್ರೆಗೆ ಮೂರು ಸಲಹೆಗಳು: ನಿಯಮಿತ ವೇಳಾಪಟ್ಟಿಯನ್ನು ಅನುಸರಿಸಿ.",
    "ml": "നല്ല ഉറക്കത്തിനുള്ള മൂന്ന് നുറുങ്ങുകൾ: കൃത്യമായ സമയക്രമം പാലിക്കുക.",
    "th": "เคล็ดลับสามข้อเพื่อการนอนหลับที่ดีขึ้น: ทำตารางเวลาให้สม่ำเสมอ",
    "ko": "더 나은 수면을 위한 세 가지 팁: 규칙적인 일정을 지키고 오후에는 커피를 피하세요.",
    "ja": "よく眠るための三つのコツ：規則正しい生活を送り、午後はコーヒーを避けましょう。",
    "zh": "改善睡眠的三个建议：保持规律的作息，下午避免喝咖啡。",
    "he": "שלושה טיפים לשינה טובה יותר: שמרו על לוח זמנים קבוע והימנעו מקפה אחר הצהריים.",
    "el": "Τρεις συμβουλές για καλύτερο ύπνο: κρατήστε σταθερό πρόγραμμα και αποφύγετε τον καφέ το απόγευμα.",
}  # fmt: skip


def test_language_samples_cover_every_supported_language():
    assert set(LANGUAGE_SAMPLES) == set(SUPPORTED_LANGUAGES)
    assert {"en", "fr", "de", "es", "it", "pt", "nl"} <= set(SUPPORTED_LANGUAGES)


@pytest.mark.parametrize("code", sorted(LANGUAGE_SAMPLES))
def test_detect_language(code: str):
    assert detect_language(LANGUAGE_SAMPLES[code]) == code
    assert check({"type": "language:response_language", "language": code}, LANGUAGE_SAMPLES[code]) is True
    other = "en" if code != "en" else "fr"
    assert check({"type": "language:response_language", "language": other}, LANGUAGE_SAMPLES[code]) is False


def test_detect_language_is_case_blind_and_honest_about_no_evidence():
    assert detect_language(LANGUAGE_SAMPLES["de"].upper()) == "de"
    assert detect_language("2 + 2 = 4 !!!") is None  # no letters
    assert detect_language("Ok") is None  # letters, but no function words or telling letters
    assert detect_language("la casa") is None  # "la" is as Spanish as it is Italian or French
    english_with_loanwords = "The café on the corner serves a naïve but lovely crème brûlée to its guests."
    assert detect_language(english_with_loanwords) == "en"
