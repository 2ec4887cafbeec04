"""Segment attention: packed sequences give exactly what each sequence gives alone, a shared prefix included."""

import pytest
import torch

from align import attention
from align.attention import (
    IMPLEMENTATION,
    Segment,
    attend_by_segments,
    require_segments,
    segments_from_lengths,
    segments_from_position_ids,
    uses_segments,
)
from align.batching import flat_passes, shared_prefix_length


def llama(vocab: int = 97):
    """A 2-layer Llama with grouped-query attention (4 query heads over 2 key/value heads), fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return attend_by_segments(LlamaForCausalLM(config).eval())


def sequence(n: int, seed: int) -> list[int]:
    return torch.randint(1, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def alone(model, ids: list[int]) -> torch.Tensor:
    """Logits of one sequence in a batch of its own: [L, V] (plain sdpa, no segments)."""
    return model(input_ids=torch.tensor([ids])).logits[0]


def test_segments_from_position_ids_split_where_positions_restart():
    assert segments_from_position_ids(torch.tensor([0, 1, 2, 0, 1, 0])) == [Segment(0, 3), Segment(3, 5),
                                                                             Segment(5, 6)]
    assert segments_from_lengths([3, 2]) == [Segment(0, 3), Segment(3, 5)]
    with pytest.raises(ValueError, match="must start with position id 0"):
        segments_from_position_ids(torch.tensor([1, 2, 0]))


@pytest.fixture(params=[512, 0, 8], ids=["explicit-scores", "fused-kernel", "both"])
def attention_path(request, monkeypatch):
    """Segments up to SCORES_MAX_KEYS keys use explicit scores, longer ones SDPA's fused kernel: all of one, all
    of the other, and a mix in one pass (sequences here are 5-19 tokens)."""
    monkeypatch.setattr(attention, "SCORES_MAX_KEYS", request.param)
    return request.param


def test_packed_segments_equal_each_sequence_alone_forward_and_backward(attention_path):
    """Three sequences back to back with segments: every logit matches the sequence run alone, and so does the
    gradient of a loss on them (attention never crosses a segment boundary, in either direction)."""
    model = llama()
    seqs = [sequence(7, 1), sequence(12, 2), sequence(5, 3)]
    ids = torch.tensor([sum(seqs, [])])
    positions = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    packed = model(input_ids=ids, position_ids=positions, segments=segments_from_lengths([7, 12, 5])).logits[0]
    packed[:7].sum().backward()
    packed_grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    alone(model, seqs[0]).sum().backward()
    torch.testing.assert_close(packed_grad, model.model.layers[0].self_attn.q_proj.weight.grad)
    expected = torch.cat([alone(model, s) for s in seqs])
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)


def test_a_segment_with_a_shared_prefix_sees_the_prefix_and_itself(attention_path):
    """Layout [prompt | tail a | tail b]: tail b's logits equal those of prompt+b run alone, and the prompt's
    gradient collects both tails' contributions, as two separate sequences would give."""
    model = llama()
    prompt, tail_a, tail_b = sequence(6, 4), sequence(5, 5), sequence(8, 6)
    ids = torch.tensor([prompt + tail_a + tail_b])
    positions = torch.tensor([list(range(11)) + list(range(6, 14))])
    segments = [Segment(0, 11), Segment(11, 19, 0, 6)]
    logits = model(input_ids=ids, position_ids=positions, segments=segments).logits[0]
    torch.testing.assert_close(logits[:11], alone(model, prompt + tail_a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[11:], alone(model, prompt + tail_b)[6:], rtol=1e-5, atol=1e-5)

    embeddings = model.model.embed_tokens.weight
    (logits[:11].sum() + logits[11:].sum()).backward()
    shared = embeddings.grad.clone()
    model.zero_grad()
    (alone(model, prompt + tail_a).sum() + alone(model, prompt + tail_b)[6:].sum()).backward()
    torch.testing.assert_close(shared, embeddings.grad, rtol=1e-4, atol=1e-5)


def test_explicit_scores_in_bf16_match_the_fused_kernel_to_bf16_precision():
    """bf16 q/k/v of a 300-token segment with a 40-token prefix, grouped-query (6 query heads over 2 key heads):
    explicit scores (bf16 scores, fp32 softmax inside the kernel) against SDPA's fused kernel with the same mask,
    which keeps scores in fp32. The difference is bf16 rounding: within 2% of the output's largest value."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 300, 64, generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(1, 2, 340, 64, generator=gen).to(torch.bfloat16) for _ in range(2))
    mask = torch.ones(300, 340, dtype=torch.bool).tril(40)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    explicit = attention.scores_attention(q, k, v, prefix=40, scaling=None)
    assert explicit.dtype == torch.bfloat16
    torch.testing.assert_close(explicit.float(), fused.float(), rtol=0, atol=0.02 * fused.abs().max().item())


def test_segments_must_cover_the_row_and_need_a_batch_of_one():
    model = llama()
    with pytest.raises(ValueError, match="segments cover 4 of the row's 6 positions"):
        model(input_ids=torch.ones(1, 6, dtype=torch.long), segments=[Segment(0, 4)])
    with pytest.raises(ValueError, match="batch of one packed row, got a batch of 2"):
        model(input_ids=torch.ones(2, 6, dtype=torch.long), segments=[Segment(0, 6)])
    with pytest.raises(ValueError, match="in order without gaps"):
        model(input_ids=torch.ones(1, 6, dtype=torch.long), segments=[Segment(2, 6), Segment(0, 2)])
    with pytest.raises(ValueError, match="prefix must lie in the row before the segment"):
        model(input_ids=torch.ones(1, 6, dtype=torch.long), segments=[Segment(0, 3), Segment(3, 6, 2, 5)])


def test_without_segments_the_model_is_plain_sdpa():
    """Generation and left-padded batches: no segments given, the same logits as an sdpa model."""
    model = llama()
    ids = torch.tensor([sequence(9, 7)])
    with_segments_impl = model(input_ids=ids).logits
    model.set_attn_implementation("sdpa")
    assert not uses_segments(model)
    torch.testing.assert_close(with_segments_impl, model(input_ids=ids).logits)
    with pytest.raises(ValueError, match="attn_implementation='align_varlen'"):
        require_segments(model)


def test_the_choice_is_not_saved_with_the_model(tmp_path):
    import json

    model = llama()
    assert uses_segments(model) and model.config._attn_implementation == IMPLEMENTATION
    model.save_pretrained(tmp_path)
    assert IMPLEMENTATION not in (tmp_path / "config.json").read_text()
    assert "_attn_implementation" not in json.loads((tmp_path / "config.json").read_text())


def test_shared_prefix_length_leaves_each_sequence_a_token_of_its_own():
    assert shared_prefix_length([1, 2, 3, 4], [1, 2, 5]) == 2
    assert shared_prefix_length([1, 2, 3], [1, 2, 3, 4]) == 2  # a is a prefix of b: a keeps its last token
    assert shared_prefix_length([1, 2], [1, 2]) == 1
    assert shared_prefix_length([7], [7, 8]) == 0


def test_flat_passes_lay_out_every_sequence_and_share_pair_prefixes():
    """Five sequences, (0, 3) a pair with a 4-token common prefix: every sequence's tokens and positions are
    recovered through its token_index, and the pair costs 4 tokens less than laid out twice."""
    seqs = [[5, 6, 7, 8, 1, 2], [9, 9, 9], [4, 4], [5, 6, 7, 8, 3], [2, 2, 2, 2]]
    passes = flat_passes(seqs, pack_length=8, groups=[(0, 3)], rows_per_pass=2)
    seen = {}
    for flat in passes:
        assert flat.input_ids.shape == flat.position_ids.shape and flat.input_ids.shape[0] == 1
        covered = sum(s.end - s.start for s in flat.segments)
        assert covered == flat.input_ids.shape[1]
        for i, index in zip(flat.sequences, flat.token_index):
            assert flat.input_ids[0, index].tolist() == seqs[i]
            assert flat.position_ids[0, index].tolist() == list(range(len(seqs[i])))
            seen[i] = flat
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert sum(f.input_ids.shape[1] for f in passes) == sum(map(len, seqs)) - 4
    pair_pass = seen[0]
    assert seen[3] is pair_pass
    first, second = (pair_pass.token_index[pair_pass.sequences.index(i)] for i in (0, 3))
    assert second[:4].tolist() == first[:4].tolist()  # the prefix is laid out once
    tail = [s for s in pair_pass.segments if s.prefix_end > s.prefix_start]
    assert tail == [Segment(int(second[4]), int(second[4]) + 1, int(first[0]), int(first[0]) + 4)]


def test_response_logprobs_and_rewards_with_shared_prompts_equal_separate_passes(tiny_model_dir):
    """align's log-prob and reward readers: pairs sharing their prompt give what unshared sequences give."""
    from transformers import AutoModelForSequenceClassification

    from align.logprobs import response_logprobs
    from align.models import ModelConfig, load_model
    from align.values import TokenValues, packed_rewards

    policy, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    prompts = [sequence(9, 10), sequence(4, 11)] * 2
    responses = [sequence(6, 12), sequence(3, 13), sequence(7, 14), sequence(2, 15)]
    pairs = [(0, 2), (1, 3)]
    with torch.no_grad():
        shared = response_logprobs(policy, prompts, responses, pack_length=16, groups=pairs)
        separate = response_logprobs(policy, prompts, responses, pack_length=16)
        for a, b in zip(shared, separate):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        scorer = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
        values = TokenValues(attend_by_segments(scorer))
        sequences = [p + r for p, r in zip(prompts, responses)]
        torch.testing.assert_close(packed_rewards(values, sequences, 16, pairs=pairs),
                                   packed_rewards(values, sequences, 16), rtol=1e-5, atol=1e-5)
