"""scripts/first_token.py: the prompts it reads, reworded, and the first-token figures of a real tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from first_token import first_token, prompts_asking  # noqa: E402

PARAGRAPHS = "length_constraints:number_paragraphs"
WORDING = "Write exactly {num_paragraphs} paragraphs and separate them with ***."


def test_the_prompts_ask_for_the_type_in_the_held_out_wording_or_the_one_given():
    held_out = prompts_asking(PARAGRAPHS, None, 100)
    reworded = prompts_asking(PARAGRAPHS, WORDING, 100)
    assert held_out and len(reworded) == len(held_out)
    for before, after in zip(held_out, reworded):
        assert "put a line with *** between neighbouring parts" in before
        assert "put a line with ***" not in after and "paragraphs and separate them with ***." in after


def test_first_token_probability_matches_the_models_own_softmax(tiny_model_dir):
    """The mean and the argmax count, computed again by hand from the tiny model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = ["Name a colour.", "Write two lines."]
    mean, most_likely = first_token(str(tiny_model_dir), prompts, "the")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    token = tokenizer("the", add_special_tokens=False)["input_ids"][0]
    by_hand, argmax = [], 0
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1].float()
        by_hand.append(logits.softmax(-1)[token].item())
        argmax += int(logits.argmax() == token)
    assert mean == pytest.approx(sum(by_hand) / 2, rel=1e-5) and most_likely == argmax
