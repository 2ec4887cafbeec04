"""Rejected answers that end badly, for the preference pairs that teach a model where to stop.

Small instruction-tuned models often fail at the end of an answer: they stop mid-sentence, loop (repeat a
sentence or a phrase until the token cap cuts them off) or run on (finish the answer, then keep going).
Each builder turns a chosen answer into such a rejected one, or returns None when it cannot:

* `truncated`: the chosen answer cut after a word, mid-sentence, 35-80% of the way in.
* `looping`: the chosen answer up to one of its sentences, then that sentence (or the few words that end
  it) again and again, cut off mid-copy as a generation stopped by a token cap is; or then a separator line
  (`***`, `---`) over and over, the loop small models fall into after "put *** between the parts". Every
  result loops by `reward.degeneration.repetition_loop`.
* `running_on`: the complete chosen answer, then rambling: more facts about the topic, a sentence restated,
  a second sign-off, the start of another answer or of an imagined next turn. It does not loop.
"""

from __future__ import annotations

import random
import re
import string

from reward.degeneration import repetition_loop
from reward.instruction_bank import Topic

SIGN_OFFS = ("Hope this helps!", "Let me know if you have any other questions.", "Thanks for asking!",
             "I hope this answer was useful to you.", "Good luck and have a great day!")
RESTATE_OPENERS = ("As I said, ", "To repeat, ", "In other words, ", "Again, ")
RESTARTS = ("Here is another answer about {name}.", "Now let me explain {name} again from the start.",
            "Another thing people often ask about {name} is where to begin.",
            "User: Can you tell me more about {name}?", "Question: What else should I know about {name}?")
SEPARATOR_LINES = ("***", "* * *", "---", "**", "***\n")  # "***\n": blank lines between the copies


def truncated(chosen: str, rng: random.Random) -> str | None:
    """`chosen` cut after a word, mid-sentence, 35-80% of the way in."""
    cuts = [m.start() for m in re.finditer(" ", chosen)
            if 0.35 * len(chosen) < m.start() < 0.8 * len(chosen) and chosen[m.start() - 1].isalpha()]
    return chosen[: rng.choice(cuts)] if cuts else None


def _fact_spans(chosen: str, topic: Topic) -> list[tuple[int, int]]:
    """(start, end) of each of the topic's facts written out in `chosen` (in any letter case)."""
    lowered = chosen.lower()
    return [(lowered.find(f.lower()), lowered.find(f.lower()) + len(f)) for f in topic.facts if f.lower() in lowered]


def looping(chosen: str, topic: Topic, rng: random.Random) -> str | None:
    """`chosen` up to one of its facts, then that fact (or its last 2-4 words) looping, cut off mid-copy; or
    then a separator line repeated 16-30 times."""
    spans = _fact_spans(chosen, topic)
    if not spans:
        return None
    start, end = rng.choice(spans)
    kind = rng.random()
    if kind < 0.3:  # a phrase loop: "... the middle of the day of the day of the day of the"
        words = chosen[start : end - 1].split()
        unit, head, copies = " ".join(words[-rng.randint(2, 4) :]), chosen[: end - 1], rng.randint(10, 16)
    elif kind < 0.55:  # a separator loop: no word repeats, the lines do
        text = chosen[:end] + "\n\n" + "\n".join([rng.choice(SEPARATOR_LINES)] * rng.randint(16, 30))
        return text if repetition_loop(text) else None
    else:  # a sentence loop
        unit, head, copies = chosen[start:end], chosen[:end], rng.randint(5, 8)
    unit_words = unit.split()
    if len(unit_words) < 2:
        return None
    partial = " ".join(unit_words[: rng.randint(1, len(unit_words) - 1)]).rstrip(string.punctuation)
    text = head + f" {unit}" * copies + f" {partial or unit_words[0]}"
    return text if repetition_loop(text) else None


def running_on(chosen: str, topic: Topic, rng: random.Random) -> str | None:
    """`chosen` complete, then 2-4 pieces of rambling continuation in the answer's letter case."""
    used = [chosen[start:end] for start, end in _fact_spans(chosen, topic)]
    unused = [fact for fact in topic.facts if fact.lower() not in chosen.lower()]
    rng.shuffle(used)
    pieces = {  # only those this answer can give: "restated" needs a fact written out, "more facts" an unused one
        "more facts": lambda: " ".join(rng.sample(unused, min(len(unused), rng.randint(1, 2)))),
        "restated": lambda: rng.choice(RESTATE_OPENERS) + used[0][:1].lower() + used[0][1:],
        "sign-off": lambda: rng.choice(SIGN_OFFS),
        "another answer": lambda: rng.choice(RESTARTS).format(name=topic.name),
    }
    kinds = [kind for kind in pieces if (kind != "more facts" or unused) and (kind != "restated" or used)]
    continuation = " ".join(pieces[kind]() for kind in rng.sample(kinds, rng.randint(2, len(kinds))))
    if chosen.islower() or chosen.isupper():
        continuation = continuation.lower() if chosen.islower() else continuation.upper()
    text = chosen + ("\n\n" if "\n" in chosen or rng.random() < 0.5 else " ") + continuation
    return None if repetition_loop(text) else text
