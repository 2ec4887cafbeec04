"""reward.degeneration: what counts as a repetition loop, on outputs as small models write them."""

from __future__ import annotations

import json

import pytest

from reward.degeneration import loop_share, repetition_loop

SENTENCE = "The water cycle is the continuous movement of water on Earth."  # 11 words

LOOPING = [
    # A sentence repeated until the token cap cuts it off mid-sentence.
    "Here is an overview. " + " ".join([SENTENCE] * 5) + " The water cycle is the",
    # A short phrase stuck in a loop at the end of a list item (period 3 words, 8 copies).
    "Sure! Here are some tips:\n\n* Wear sunscreen.\n* Wear a hat to protect your eyes from"
    + " the sun and" * 8 + " the",
    # One word over and over (10 copies hold "and and and and and and" five times).
    "Bees help flowers grow" + " and" * 10,
    # Case, punctuation and line breaks between the copies do not hide the loop (period 2, 7 copies).
    "Thank you! thank you.\nTHANK YOU, Thank you... thank you! thank you? Thank you",
    # Bullets that keep repeating one item.
    "Tips:\n" + "\n".join(["- Drink a glass of water every morning."] * 5),
    # No words at all: a separator line written over and over, and a symbol alone (as SmolLM2 answers
    # "Split the reply into 2 parts with *** between them" and "Put a title in << >>" when they go wrong).
    "Warm the pot first.\n\n" + "\n".join(["***"] * 20),
    "<<Backyard chickens>" + " >" * 16,
]

NOT_LOOPING = [
    "",
    "   ",
    "hello hello hello",  # fewer words than the n-gram
    "The water cycle moves water between the sea, the air and the land. The sun heats the sea and water "
    "evaporates. The vapour cools, forms clouds and falls as rain. Rain flows back to the sea in rivers.",
    # A recipe: the same little words again and again, but never six in a row twice.
    "1. Mix the flour and the salt.\n2. Add the water and the yeast.\n3. Knead the dough for ten minutes.\n"
    "4. Leave the dough to rise.\n5. Bake the loaf in a hot oven.",
    # JSON records with a repeated structure and varying values.
    json.dumps([{"name": n, "age": a, "city": c}
                for n, a, c in [("Ann", 31, "Oslo"), ("Bo", 42, "Rome"), ("Cy", 25, "Lima"), ("Di", 38, "Pune"),
                                ("Ed", 29, "Kiev"), ("Fay", 51, "Cork")]], indent=2),
    # A markdown table: separator rows hold no words, row labels vary.
    "| Day | Plan |\n| --- | --- |\n" + "\n".join(f"| {day} | rest and stretch |" for day in
                                               ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")),
    # Four parts with *** between them, and bold list labels: the same symbols recur, with words between.
    "\n\n***\n\n".join(["Warm the pot.", "Use fresh water.", "Steep for four minutes.", "Add milk last."]),
    "\n".join(f"* **{label}:** {tip}." for label, tip in [("Light", "keep the coop bright"), ("Food", "feed layers "
               "pellets"), ("Water", "change it daily"), ("Space", "allow room to roam"), ("Care", "check for mites")]),
    # A refrain sung four times: one short of the threshold.
    " ".join(["Row, row, row your boat, gently down the stream."] * 4),
]  # fmt: skip


@pytest.mark.parametrize("text", LOOPING)
def test_real_looping_outputs_are_flagged(text: str):
    assert repetition_loop(text) is True


@pytest.mark.parametrize("text", NOT_LOOPING)
def test_legitimate_text_is_not_flagged(text: str):
    assert repetition_loop(text) is False


def test_the_threshold_is_min_repeats_copies_of_ngram_words():
    assert repetition_loop(" ".join([SENTENCE] * 4)) is False
    assert repetition_loop(" ".join([SENTENCE] * 5)) is True
    six_words = "one two three four five six"
    assert repetition_loop(" ".join([six_words] * 5)) is True  # 5 copies of a 6-word phrase: just enough
    # A loop of period p needs ngram + (min_repeats - 1) * p words: 26 for a 5-word phrase.
    assert repetition_loop(" ".join(["one two three four five"] * 6)) is True  # 30 words
    assert repetition_loop(" ".join(["one two three four five"] * 5)) is False  # 25 words: 4 windows each
    assert repetition_loop(" ".join([SENTENCE] * 4), min_repeats=4) is True
    assert repetition_loop(" ".join([SENTENCE] * 5), ngram=12) is False  # each 12-word window appears 4 times
    assert repetition_loop("a b a", ngram=1, min_repeats=2) is True


def test_bad_arguments():
    with pytest.raises(TypeError, match="^text must be a str, got NoneType$"):
        repetition_loop(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^ngram must be an int >= 1, got 0$"):
        repetition_loop("text", ngram=0)
    with pytest.raises(ValueError, match=r"^min_repeats must be an int >= 2, got 1$"):
        repetition_loop("text", min_repeats=1)


def test_loop_share():
    assert loop_share([LOOPING[0], NOT_LOOPING[3], NOT_LOOPING[4], "Fine."]) == 0.25
    assert loop_share(text for text in LOOPING) == 1.0
    assert loop_share([]) == 0.0
    assert loop_share([" ".join([SENTENCE] * 4)], min_repeats=4) == 1.0
