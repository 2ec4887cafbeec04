"""Our decoding loop (rows leave the batch at EOS) against transformers' `generate` on `tiny-random`, fp32."""

import pytest
import torch

from align.rollout import decode_batch, generate, next_token_sampler


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def left_padded(rows: list[list[int]], pad: int):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
    return ids, mask


def reference_greedy(model, ids, mask, max_new_tokens, eos, pad):
    """transformers' greedy generate, each row cut after its first EOS."""
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=pad)[:, ids.shape[1]:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


def test_greedy_rows_that_stop_early_leave_the_batch_and_the_others_match_generate(model, tokenizer):
    pad = tokenizer.pad_token_id
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17], [18, 19]], pad)
    # Make the first new kind of token in row 0's own greedy continuation the "EOS": row 0 then stops there, and
    # the other rows keep decoding from a cache that has lost row 0 (and any other row that emits that token).
    free_run = reference_greedy(model, ids, mask, 12, eos=pad, pad=pad)
    stop = next(i for i, token in enumerate(free_run[0]) if token != free_run[0][0])
    eos = free_run[0][stop]
    expected = reference_greedy(model, ids, mask, 12, eos=eos, pad=pad)
    with torch.no_grad():
        got = decode_batch(model, ids, mask, 12, eos, next_token_sampler(0.0, 1.0, 0))
    assert got == expected
    assert len(got[0]) == stop + 1 < 12 and got[0][-1] == eos
    assert any(len(row) == 12 and eos not in row for row in got)  # someone ran to max_new_tokens


def test_sampling_is_reproducible_from_the_seed_and_top_k_1_is_greedy(model, tokenizer):
    prompts = ["Say hello.", "Name three colours in a list.", "Why is the sky blue?"]
    greedy = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=2)
    top1 = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=2, temperature=0.7, top_k=1,
                    generator_seed=3)
    assert top1.token_ids == greedy.token_ids
    a = generate(model, tokenizer, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, generator_seed=7)
    b = generate(model, tokenizer, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, generator_seed=7)
    c = generate(model, tokenizer, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, generator_seed=8)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    assert a.new_tokens == sum(map(len, a.token_ids)) and all(len(t) <= 10 for t in a.token_ids)
    assert a.finished == [tokenizer.eos_token_id in t for t in a.token_ids]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    torch.manual_seed(0)
    sample = next_token_sampler(1.0, 0.8, 0)
    drawn = {int(sample(logits)) for _ in range(200)}
    assert drawn == {0, 1}  # 0.6 + 0.3 covers 0.8; tokens 2 and 3 are outside the nucleus
