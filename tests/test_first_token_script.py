"""scripts/first_token.py: the prompts it reads, reworded, and the first-token figures of a real tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from first_token import first_token, load, prompts_asking  # noqa: E402

PARAGRAPHS = "length_constraints:number_paragraphs"
WORDING = "Write exactly {num_paragraphs} paragraphs and separate them with ***."


def test_the_prompts_ask_for_the_type_in_the_held_out_wording_or_the_one_given():
    held_out = prompts_asking(PARAGRAPHS, None, 100)
    reworded = prompts_asking(PARAGRAPHS, WORDING, 100)
    assert held_out and len(reworded) == len(held_out)
    for before, after in zip(held_out, reworded):
        assert "put a line with *** between neighbouring parts" in before
        assert "put a line with ***" not in after and "paragraphs and separate them with ***." in after


def test_the_rl_split_asks_in_either_of_its_own_wordings():
    rl = prompts_asking(PARAGRAPHS, None, 300, "rl")
    reworded = prompts_asking(PARAGRAPHS, WORDING, 300, "rl")
    assert rl and len(reworded) == len(rl)
    own = ("using *** on its own line as the divider", "with a row of *** between consecutive blocks")
    assert {next(i for i, phrase in enumerate(own) if phrase in prompt) for prompt in rl} == {0, 1}
    assert all(not any(phrase in prompt for phrase in own) and "paragraphs and separate them with ***." in prompt
               for prompt in reworded)


def test_first_token_figures_match_what_generation_samples_first(tiny_model_dir):
    """The mean probability and the argmax count, against transformers' own greedy `generate` of one token and its
    raw logits: the token is the first one greedy decoding writes for the first prompt, so it counts at least once."""
    model, tokenizer = load(str(tiny_model_dir))
    prompts = ["Name a colour.", "Write two lines.", "Say hello."]
    first_ids, first_probabilities = [], []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        out = model.generate(ids, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id)
        first_ids.append(int(out.sequences[0, -1]))
        first_probabilities.append(out.logits[0][0].float().softmax(-1))
    token = tokenizer.decode([first_ids[0]])
    token_id = tokenizer(token, add_special_tokens=False)["input_ids"][0]
    assert token_id == first_ids[0]  # the tokenizer reads the token back as itself
    mean, most_likely = first_token(model, tokenizer, prompts, token)
    assert most_likely == sum(first == token_id for first in first_ids) >= 1
    assert mean == pytest.approx(sum(float(p[token_id]) for p in first_probabilities) / 3, rel=1e-5)
