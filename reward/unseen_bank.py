"""Shipped content for the "unseen types" prompts (`reward.unseen_prompts`): align's own constraint types.

These types (`reward.extra_verifiers`) are never trained on, so they have one set of phrasings, used by
the held-out and validation splits alike, plus the words and sentences that the builder puts into the
reference answer it checks every prompt against. Like `reward.instruction_bank`, nothing here holds a
digit, a comma in a sentence the answer may need without one, or non-ASCII text.
"""

from __future__ import annotations

from reward import extra_verifiers as ev

# Type id -> templates; fields are the constraint's argument names. Numbers that can be 1 (num_questions)
# only appear in wordings that read well in the singular and the plural.
PHRASINGS: dict[str, tuple[str, ...]] = {
    ev.FIRST_WORD: ("Make '{word}' the very first word of your reply.",
                    "Your answer must begin with the word '{word}'.",
                    "Open your response with the single word '{word}'."),
    ev.LAST_WORD: ("The last word of your reply must be '{word}'.",
                   "End your answer with the word '{word}'.",
                   "Make sure '{word}' is the final word you write."),
    ev.MAX_WORD_LENGTH: ("Do not use any word longer than {max_letters} letters.",
                         "Keep every word to {max_letters} letters or fewer.",
                         "Avoid long words: no word may have more than {max_letters} letters."),
    ev.MAX_SENTENCE_WORDS: ("Keep every sentence to at most {max_words} words.",
                            "No sentence should be longer than {max_words} words.",
                            "Write short sentences of {max_words} words or fewer each."),
    ev.QUESTIONS: ("Make sure the number of questions you ask in your reply is exactly {num_questions}.",
                   "Include questions for the reader: exactly {num_questions} in total, no more and no fewer.",
                   "Ask the reader something: the total number of questions in your reply must be {num_questions}."),
    ev.KEYWORD_ORDER: ("Mention '{first}' before you mention '{second}'.",
                       "Use both '{first}' and '{second}', with '{first}' appearing first.",
                       "Bring up '{second}' only after you have mentioned '{first}'."),
    ev.DISTINCT_STARTS: ("Do not start two sentences in a row with the same word.",
                         "Vary your sentence openings: no two consecutive sentences may begin with the same word.",
                         "Each sentence must start with a different word than the sentence right before it."),
    ev.HASHTAGS: ("Finish with exactly {num_hashtags} hashtags, like #example.",
                  "Add {num_hashtags} hashtags to your reply, no more and no fewer.",
                  "Include exactly {num_hashtags} hashtags (words starting with #)."),
    ev.TABLE: ("Present the key points as a markdown table with exactly {num_rows} rows below the header.",
               "Include one markdown table that has {num_rows} rows, not counting the header row.",
               "Put the information in a markdown table with a header row and exactly {num_rows} data rows."),
    ev.WRAPPED: ("Wrap your entire reply in <{tag}> and </{tag}> tags.",
                 "Put your whole answer between <{tag}> and </{tag}>, with nothing outside the tags.",
                 "Enclose the full response in <{tag}></{tag}> tags."),
    ev.NO_DIGITS: ("Do not use any digits; write every number out in words.",
                   "Your reply must not contain a single digit.",
                   "Spell out all numbers in words instead of using digits."),
    ev.PARAGRAPH_SENTENCES: ("Keep each paragraph to at most {max_sentences} sentences.",
                             "No paragraph may contain more than {max_sentences} sentences; separate paragraphs "
                             "with a blank line.",
                             "Use short paragraphs of {max_sentences} sentences or fewer."),
    ev.BULLET_WORDS: ("Use bullet points and keep each one to at most {max_words} words.",
                      "Answer in a bulleted list where no bullet is longer than {max_words} words.",
                      "Write bullet points of {max_words} words or fewer each."),
    ev.MAX_CHARS: ("Keep the whole reply to at most {max_chars} characters.",
                   "Your answer must fit in {max_chars} characters, spaces included.",
                   "Write no more than {max_chars} characters in total."),
    ev.LINES: ("Your reply must be exactly {num_lines} lines long (blank lines do not count).",
               "Write exactly {num_lines} non-empty lines.",
               "Use exactly {num_lines} lines of text, no more and no fewer."),
    ev.ASCII: ("Use plain ASCII characters only: no emoji, accented letters or curly quotes.",
               "Stick to basic keyboard characters (ASCII), with no emoji or special symbols.",
               "Make sure every character you write is plain ASCII."),
}  # fmt: skip

# Words a reply can naturally open with; the reference answer puts "<word>!" before the answer.
OPENING_WORDS = ("Sure", "Certainly", "Absolutely", "Okay", "Alright", "Gladly")
# Last word -> a closing sentence that ends with it (comma-free, so it suits no-comma prompts too).
CLOSINGS = {
    "luck": "Good luck.",
    "reading": "Thanks for reading.",
    "day": "Have a great day.",
    "fun": "Have fun.",
    "soon": "Talk to you soon.",
    "questions": "Feel free to ask more questions.",
}
# Questions for the reader (question_count); none repeats another's first word.
READER_QUESTIONS = ("Have you tried any of this yourself?", "What do you think?", "Would you like to know more?",
                    "Which point surprised you most?", "Is there a part you would like explained further?")
WRAPPING_TAGS = ("answer", "response", "reply", "final")
TABLE_HEADER = ("Point", "What to know")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ORDINALS = ("First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth", "Ninth")
