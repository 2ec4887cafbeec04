"""`align chat`: a model's answers, without writing Python.

    align chat runs/default/ppo --prompt "Name three colours, in lowercase."     # one answer, printed
    align chat tiny-random --prompts prompts.txt --out answers.jsonl              # a file of prompts -> answers
    align chat runs/default/sft                                                   # a conversation over stdin
    printf 'hi\nbye\n' | align chat tiny-random                                   # ... also through a pipe

The model is anything `align eval` takes (an alias, a stage directory, a hub id). It answers through the same
generation engine (`align.rollout.TextGenerator`), chat template and decoding settings as `align eval`: greedy
unless `--temperature` is above 0, `--max-new-tokens` per answer, weights in bf16.

- `--prompts FILE`: a `.txt` file holds one prompt per line (blank lines skipped); any other file is read like a
  dataset (`align.data.load_rows`: `.jsonl`, `.json`, `.parquet`, `.csv`, `builtin:prompts:heldout`), each row's
  `prompt` a string or chat messages. Each answer is written as one JSON line `{"prompt", "completion",
  "finished"}` to `--out` (default: stdout); `finished` is whether the model ended its answer (EOS) within
  `--max-new-tokens`.
- Interactive: each line read from stdin is a user turn; the answer is printed and the conversation so far is
  kept as chat history for the next turn. An empty line or end of input ends the session.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Decoding:
    """How every answer of a chat session is decoded (`align eval`'s settings unless changed on the command line)."""

    max_new_tokens: int | None = None  # None: align eval's max_new_tokens
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None

    def sampling(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


def read_prompts(source: str) -> list:
    """The prompts of `source`: a .txt file's non-blank lines, or the `prompt` of every row of a dataset."""
    from align.data import DataConfig, DataError, load_rows

    path = Path(source).expanduser()
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"{source}: file not found (looked for {path.resolve()})")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{source}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise DataError(f"{source}: no prompts (every line is blank)")
        return prompts
    rows, _ = load_rows(source, "prompt", DataConfig(train=source, eval=None))
    return [row["prompt"] for row in rows]


def as_given(prompt):
    """A prompt for the answers file: a single user turn as its text, a longer conversation as its messages."""
    if isinstance(prompt, list) and len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return prompt


def answer_file(generator, prompts: list, out: TextIO, decoding: Decoding) -> None:
    """Answer every prompt, writing one JSON line per prompt to `out`."""
    generations = generator.generate(prompts, **decoding.sampling())
    for prompt, text, finished in zip(prompts, generations.texts, generations.finished):
        out.write(json.dumps({"prompt": as_given(prompt), "completion": text, "finished": finished},
                             ensure_ascii=False) + "\n")
    out.flush()


def converse(generator, decoding: Decoding, lines: TextIO, out: TextIO, interactive: bool) -> list[dict]:
    """A conversation: every line of `lines` is a user turn, answered in the context of the turns before it,
    until an empty line or the end of input. Returns the conversation as chat messages."""
    history: list[dict] = []
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = lines.readline()
        if not line.strip():  # "" at end of input, "\n" for an empty line
            return history
        history.append({"role": "user", "content": line.strip()})
        answer = generator.generate([history], **decoding.sampling()).texts[0]
        history.append({"role": "assistant", "content": answer})
        out.write(answer + "\n")
        out.flush()


def check_policy(model: str) -> None:
    """A reward-model stage directory cannot chat: say so instead of loading its scalar head as a language model."""
    from align.checkpoint import read_manifest
    from align.models import ModelError
    from align.registry import STAGES

    stage = (read_manifest(Path(model)) or {}).get("stage") if Path(model).is_dir() else None
    if stage in STAGES and STAGES[stage].produces != "policy":
        raise ModelError(f"{model} is a {stage} stage (a reward model); chat with a policy: an alias, the sft, ppo, "
                         "dpo or grpo stage of a run, or a model directory")


def chat(model: str, prompt: str | None, prompts: str | None, out: str | None, decoding: Decoding,
         revision: str | None = None) -> None:
    """The `align chat` command: one answer, a file of answers, or a conversation over stdin."""
    from transformers.utils import logging as transformers_logging

    from align.config import ConfigError
    from align.eval import EvalConfig
    from align.rollout import load_generator
    from align.runtime import set_threads

    if out and not prompts:
        raise ConfigError("--out needs --prompts (the answers of a prompts file go there)")
    check_policy(model)
    questions = read_prompts(prompts) if prompts is not None else None
    set_threads(None)
    transformers_logging.disable_progress_bar()  # no "Loading weights" bar in front of a conversation
    defaults = EvalConfig()
    decoding = dataclasses.replace(decoding, max_new_tokens=decoding.max_new_tokens or defaults.max_new_tokens)
    generator = load_generator(model, defaults.precision, defaults.generation, revision)
    if prompt is not None:
        print(generator.generate([prompt], **decoding.sampling()).texts[0])
    elif questions is not None and out:
        with open(out, "w", encoding="utf-8") as file:
            answer_file(generator, questions, file, decoding)
        print(f"[align] chat: {len(questions)} answers -> {out}", file=sys.stderr)
    elif questions is not None:
        answer_file(generator, questions, sys.stdout, decoding)
    else:
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"[align] chat with {model}: type a message; an empty line or Ctrl-D ends", file=sys.stderr)
        converse(generator, decoding, sys.stdin, sys.stdout, interactive)
