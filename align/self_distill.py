"""Training conversations written by the model itself: rejection sampling for SFT.

Before an SFT stage trains, the model it starts from answers training prompts itself: `samples_per_prompt`
sampled answers per prompt, of which those that follow every constraint of the prompt (`reward.verifiers`,
strict), end with EOS within `max_new_tokens` and are not repetition loops (`reward.degeneration`) become training
conversations (at most `keep_per_prompt` per prompt, the shortest first). The answers keep the model's own style,
so training on them teaches which of its answers follow instructions and end, without replacing how it writes with
the built-in data's few templated sentences (what made SFT lower accuracy on unseen constraint types).

The conversations are written to `<stage dir>/self_distilled.jsonl` once (atomically); a resumed stage reads them
back instead of generating again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SelfDistillConfig:
    """The `self_distill:` section of the SFT stage."""

    enabled: bool = False  # add the starting model's own verified answers to the training conversations
    prompts: str = "builtin:prompts:train"  # prompts with verifiable constraints the model answers
    max_prompts: int = 256  # the first N of them
    samples_per_prompt: int = 4  # sampled answers per prompt, before filtering
    keep_per_prompt: int = 1  # accepted answers kept per prompt (the shortest)
    temperature: float = 0.8  # sampling temperature of the answers
    max_new_tokens: int = 256  # an answer must end with EOS within this many tokens


def accepted(text: str, finished: bool, constraints: list[dict], prompt: str) -> bool:
    """Whether a sampled answer becomes a training conversation: it ended with EOS, follows every constraint
    (strict) and is not a repetition loop."""
    from reward.degeneration import repetition_loop
    from reward.verifiers import check_all

    return finished and bool(text.strip()) and all(check_all(constraints, text, prompt=prompt)) \
        and not repetition_loop(text)


def select(rows: list[dict], texts: list[str], finished: list[bool], samples: int, keep: int) -> list[dict]:
    """Conversations from the accepted answers: `texts[i * samples + j]` is answer j to `rows[i]`."""
    from reward.functions import prompt_text
    from reward.verifiers import parse_constraints

    conversations = []
    for i, row in enumerate(rows):
        constraints, prompt = parse_constraints(row["constraints"]), prompt_text(row["prompt"])
        answers = [(text, done) for text, done in zip(texts[i * samples:(i + 1) * samples],
                                                      finished[i * samples:(i + 1) * samples])]
        good = sorted({text for text, done in answers if accepted(text, done, constraints, prompt)}, key=len)
        messages = list(row["prompt"]) if isinstance(row["prompt"], list) else [{"role": "user", "content": prompt}]
        conversations += [{"messages": messages + [{"role": "assistant", "content": text}],
                           "constraints": row["constraints"]} for text in good[:keep]]
    return conversations


def self_distilled_conversations(cfg: SelfDistillConfig, model_path: str, data_cfg, out: Path, seed: int,
                                 generation=None) -> list[dict]:
    """The accepted conversations, generated once and cached in `out/self_distilled.jsonl`."""
    from align.data import load_rows
    from align.rollout import load_generator

    cache = out / "self_distilled.jsonl"
    if cache.is_file():
        return [json.loads(line) for line in cache.read_text().splitlines()]
    # max_prompts, not data.max_rows (which limits the conversations), decides how many prompts are sampled for
    rows = load_rows(cfg.prompts, "prompt", dataclasses.replace(data_cfg, max_rows=None))[0][: cfg.max_prompts]
    started = time.perf_counter()
    generator = load_generator(model_path, "auto", generation)
    prompts = [row["prompt"] for row in rows for _ in range(cfg.samples_per_prompt)]
    out_ = generator.generate(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    conversations = select(rows, out_.texts, out_.finished, cfg.samples_per_prompt, cfg.keep_per_prompt)
    del generator
    tmp = cache.with_name(".self_distilled.jsonl.tmp")
    tmp.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    tmp.replace(cache)
    print(f"[align] sft: self-distilled {len(conversations)} conversations from {len(rows)} prompts x "
          f"{cfg.samples_per_prompt} samples ({sum(out_.finished) / max(1, len(prompts)):.0%} ended with EOS) in "
          f"{time.perf_counter() - started:.0f}s")
    return conversations
