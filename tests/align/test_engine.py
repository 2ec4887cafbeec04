"""align's generation engine against transformers on `tiny-random`: the same greedy tokens in fp32 (with more
prompts than rows, so rows are refilled and the width shrinks), log-probs of sampled tokens equal to a training
forward's, weights refreshed by name, and the backend choice. The tests marked with `DEVICES` also run on a GPU
where one is present (never required)."""

import copy

import pytest
import torch

from align.engine import DecoderEngine, unsupported_reason
from align.rollout import GenerationConfig, Sampler, TextGenerator, left_padded

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]

PROMPTS = ["Say hello.", "Name three colours in a list.", "Why is the sky blue?", "Count to five.",
           "Write a haiku about tea, in lowercase.", "What is 2 plus 2?", "Describe a cat.", "Give one tip.",
           "List two rivers.", "Explain rain in one sentence, without commas, and end with a question mark."]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """tiny-random with its weight matrices scaled by 10: its own are so small that every greedy continuation is
    the same newline token; scaled, continuations differ by prompt and the logits are far from ties."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.mul_(10)
    return model


def on(model, device: str):
    """The fixture's model itself on the CPU, a copy of it on another device."""
    return model if device == "cpu" else copy.deepcopy(model).to(device)


def transformers_greedy(model, tokenizer, prompts, max_new_tokens, eos):
    """transformers' own greedy `generate`, one prompt at a time, cut after EOS."""
    out = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=model.device)
        with torch.no_grad():
            row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        row = row[0, ids.shape[1]:].tolist()
        out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def an_eos_some_rows_reach(model, tokenizer, prompts, max_new_tokens):
    """A token that some greedy continuations emit and others never: as "EOS" it makes rows finish at different
    steps (and others run to the budget), so the engine refills rows and shrinks its width."""
    free = transformers_greedy(model, tokenizer, prompts, max_new_tokens, eos=-1)
    rows_with = {}
    for row in free:
        for token in set(row):
            rows_with[token] = rows_with.get(token, 0) + 1
    return max((t for t in rows_with if rows_with[t] < len(prompts)), key=lambda t: rows_with[t])


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_tokens_in_fp32_are_transformers_generate_tokens(model, tokenizer, device):
    model = on(model, device)
    eos = an_eos_some_rows_reach(model, tokenizer, PROMPTS, 24)
    expected = transformers_greedy(model, tokenizer, PROMPTS, 24, eos)
    assert any(len(r) < 24 for r in expected) and any(len(r) == 24 for r in expected)  # both kinds of row
    tok = copy.deepcopy(tokenizer)  # a shallow copy shares the special tokens with the session's tokenizer
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    generator = TextGenerator(model, tok, GenerationConfig(backend="engine", slots=4))  # 10 prompts, 4 rows
    got = generator.generate(PROMPTS, max_new_tokens=24)
    assert got.token_ids == expected
    assert got.finished == [eos in row for row in expected]
    reference = TextGenerator(model, tok, GenerationConfig(backend="hf", slots=4)).generate(PROMPTS, max_new_tokens=24)
    assert reference.token_ids == expected


@pytest.mark.parametrize("attention,products", [("auto", "auto"), ("reference", "auto"), ("auto", "reference")])
@pytest.mark.parametrize("device", DEVICES)
def test_sampled_tokens_log_probs_equal_a_training_forward_in_bf16(model, tokenizer, device, attention, products):
    """The engine's bf16 log-probs of its sampled tokens against align.logprobs.response_logprobs (the training
    forward pass, packed, bf16 weights): equal within bf16 precision, so PPO may take its behaviour log-probs from
    the rollout. With either decode attention ("auto" is align's kernel on an AVX-512 CPU) and either products
    ("auto" is align's kernel on a CPU with AVX512_BF16)."""
    from align.attention import attend_by_segments
    from align.logprobs import response_logprobs
    from align.rollout import render_prompt

    bf16 = attend_by_segments(copy.deepcopy(model).to(device, torch.bfloat16))
    config = GenerationConfig(backend="engine", slots=3, attention=attention, products=products)
    out = TextGenerator(bf16, tokenizer, config).generate(PROMPTS[:6], max_new_tokens=16, temperature=0.9, seed=1)
    prompts = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:6]]
    with torch.no_grad():
        trained = response_logprobs(bf16, prompts, out.token_ids, 1024, temperature=0.9)
    for engine_lp, forward_lp in zip(out.logprobs, trained):
        torch.testing.assert_close(torch.tensor(engine_lp), forward_lp.float().cpu(), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_log_probs_equal_the_training_forward_to_float_precision(model, tokenizer, device):
    from align.attention import attend_by_segments
    from align.logprobs import response_logprobs
    from align.rollout import render_prompt

    fp32 = attend_by_segments(copy.deepcopy(model).to(device))
    out = TextGenerator(fp32, tokenizer, GenerationConfig(slots=2)).generate(PROMPTS[:4], max_new_tokens=12,
                                                                                temperature=1.0, seed=5)
    prompts = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:4]]
    with torch.no_grad():
        trained = response_logprobs(fp32, prompts, out.token_ids, 1024)
    for engine_lp, forward_lp in zip(out.logprobs, trained):
        torch.testing.assert_close(torch.tensor(engine_lp), forward_lp.cpu(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prefill_tokens", [1024, 64])
def test_the_states_kept_at_a_layer_are_that_layers_input_in_a_training_pass(model, tokenizer, monkeypatch,
                                                                             prefill_tokens):
    """`states_at` keeps the input of a layer at every position a completion ran: its prompt's (a shared system
    prompt copied into every row; prompts prefilled in chunks with 64) and each generated token's but the last.
    With 10 prompts in 6 rows, rows are refilled and moved as the width shrinks. In fp32 they equal the states
    `align.logprobs.trunk_states` computes for prompt + completion, and layer 0's input is the embedding."""
    import align.engine as engine_module
    from align.attention import attend_by_segments
    from align.logprobs import trunk_states

    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", prefill_tokens)
    fp32 = attend_by_segments(copy.deepcopy(model))
    tok = copy.deepcopy(tokenizer)  # an EOS some rows reach, so that rows finish at different steps
    tok.eos_token = tok.convert_ids_to_tokens(an_eos_some_rows_reach(fp32, tokenizer, PROMPTS, 12))
    generator = TextGenerator(fp32, tok, GenerationConfig(backend="engine", slots=6))
    assert generator.keeps_states
    out = generator.generate(PROMPTS, max_new_tokens=12, states_at=1)
    plain = generator.generate(PROMPTS, max_new_tokens=12)
    assert out.token_ids == plain.token_ids and plain.states is None  # keeping states changes nothing else
    sequences = [p + r for p, r in zip(out.prompt_ids, out.token_ids)]
    assert len({len(r) for r in out.token_ids}) > 1  # rows finished at different steps
    expected = trunk_states(fp32, sequences, 1, 1024).states
    for sequence, kept, states in zip(sequences, out.states, expected):
        assert kept.shape == (len(sequence) - 1, states.shape[-1])
        torch.testing.assert_close(kept, states[:-1], rtol=1e-5, atol=1e-5)
    embedded = generator.generate(PROMPTS[:2], max_new_tokens=4, states_at=0).states
    for sequence, kept in zip(sequences, embedded):
        torch.testing.assert_close(kept, fp32.model.embed_tokens.weight[sequence[: len(kept)]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="states_at must name one of the 2 layers"):
        generator.generate(PROMPTS[:1], max_new_tokens=2, states_at=2)
    with pytest.raises(ValueError, match="only the engine backend"):
        TextGenerator(fp32, tok, GenerationConfig(backend="hf")).generate(PROMPTS[:1], states_at=1)


def mean_logit_errors_against_the_last(engines):
    """Each engine but the last prefills the same four prompts of different lengths and decodes one step: the mean
    absolute difference of its next-token logits from the last engine's. The mean over every logit of the batch, not
    the largest: one logit's bf16 rounding moves the largest error by a tenth from one prefill's products to
    another's, with a kernel's own error unchanged."""
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13] * 40, [14, 15]]
    positions, logits = torch.tensor([len(p) for p in prompts]), []
    for engine in engines:
        engine._ensure_cache(80)
        first = engine._prefill([0, 1, 2, 3], prompts)
        logits.append(engine._decode(first.argmax(-1), positions, 64).float())
    return [(lg - logits[-1]).abs().mean() for lg in logits[:-1]]


def test_bf16_engines_decode_with_the_kernel_where_it_runs_as_close_to_fp32_as_the_reference_attention(model):
    """On an AVX-512 CPU a bf16 engine decodes through align's kernel by default (fp32 engines and other CPUs use
    the reference attention): its next-token logits for a batch of prompts of different lengths are on average no
    further from an fp32 engine's than a bf16 engine's with the reference attention."""
    from align import decode_kernels

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    engines = [DecoderEngine(bf16, slots=4), DecoderEngine(bf16, slots=4, attention="reference"),
               DecoderEngine(model, slots=4)]
    groups = engines[0].heads // engines[0].kv_heads
    runs = decode_kernels.kernel_runs(torch.bfloat16, torch.device("cpu"), engines[0].head_dim, groups)
    assert engines[0].use_kernel == (runs and decode_kernels.load_kernel() is not None)
    assert not engines[1].use_kernel and not engines[2].use_kernel
    kernel_error, reference_error = mean_logit_errors_against_the_last(engines)
    assert kernel_error <= 1.1 * reference_error


def test_bf16_engines_run_their_products_through_the_kernel_where_it_runs_as_close_to_fp32_as_pytorchs(model):
    """A bf16 engine's products run through align's kernel where it serves the weights (AVX512_BF16, no AMX),
    PyTorch's with `products="reference"` and in fp32: the next-token logits after a prefill and a decode step are
    on average no further from an fp32 engine's with the kernel's products than with PyTorch's."""
    from align import decode_kernels

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    engines = [DecoderEngine(bf16, slots=4), DecoderEngine(bf16, slots=4, products="reference"),
               DecoderEngine(model, slots=4)]
    runs = decode_kernels.linear_runs(engines[0].embed)
    assert all((p.kernel is not None) == runs for layer in engines[0].layers for p in (layer.qkv, layer.down))
    assert all(p.kernel is None for e in engines[1:] for layer in e.layers for p in (layer.qkv, layer.down))
    kernel_error, reference_error = mean_logit_errors_against_the_last(engines)
    assert kernel_error <= 1.1 * reference_error


def test_prompts_prefilled_in_chunks_give_the_logits_and_cache_of_one_pass(model, tokenizer, monkeypatch):
    """`_prefill` splits its prompts into chunks of at most PREFILL_TOKENS padded tokens (here two prompts each,
    and a prompt longer than the limit alone): the same logits and cached keys and values as one pass."""
    import align.engine as engine_module
    from align.rollout import render_prompt

    prompts = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:5]]
    prompts.append(prompts[0] * 3)  # longer than any chunk may be
    rows = [5, 0, 3, 1, 4, 2]
    whole = DecoderEngine(model, slots=6)
    whole._ensure_cache(len(prompts[-1]))
    expected = whole._prefill(rows, prompts)
    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", 2 * max(len(p) for p in prompts[:5]))
    chunked = DecoderEngine(model, slots=6)
    chunked._ensure_cache(len(prompts[-1]))
    torch.testing.assert_close(chunked._prefill(rows, prompts), expected)
    for row, prompt in zip(rows, prompts):
        torch.testing.assert_close(chunked.keys[:, row, :, : len(prompt)], whole.keys[:, row, :, : len(prompt)])
        torch.testing.assert_close(chunked.values[:, row, :, : len(prompt)], whole.values[:, row, :, : len(prompt)])


def test_the_system_prompt_every_prompt_starts_with_is_prefilled_once_with_the_logits_and_cache_of_whole_prompts(
        model, tokenizer, monkeypatch):
    """The chat template's system prompt (24 tokens here) runs once, into the first row, and is copied into the
    others: the same logits and cached keys and values as prefilling every prompt whole (fp32)."""
    import align.engine as engine_module
    from align.rollout import render_prompt

    prompts = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:5]]
    rows = [4, 0, 3, 1, 2]
    shared = DecoderEngine(model, slots=5)
    shared._ensure_cache(max(map(len, prompts)))
    assert shared._shared_start(rows, prompts) == 24
    got = shared._prefill(rows, prompts)
    monkeypatch.setattr(engine_module, "SHARED_PREFIX_MIN", 10**6)  # never shared
    whole = DecoderEngine(model, slots=5)
    whole._ensure_cache(max(map(len, prompts)))
    assert whole._shared_start(rows, prompts) == 0
    torch.testing.assert_close(got, whole._prefill(rows, prompts), rtol=1e-5, atol=1e-5)
    for row, prompt in zip(rows, prompts):
        for cache in ("keys", "values"):
            torch.testing.assert_close(getattr(shared, cache)[:, row, :, : len(prompt)],
                                       getattr(whole, cache)[:, row, :, : len(prompt)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_load_weights_by_name_equals_an_engine_built_from_those_weights(model, tokenizer, device):
    model = on(model, device)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, sample = [[5, 6, 7, 8], [9, 10, 11]], Sampler()
    expected = [c.token_ids for c in DecoderEngine(moved, slots=2).generate(ids, 8, sample, eos_token_id=-1)]
    engine = DecoderEngine(copy.deepcopy(model), slots=2)
    engine.load_weights(moved.state_dict())
    assert [c.token_ids for c in engine.generate(ids, 8, sample, eos_token_id=-1)] == expected
    # only some layers (what PPO passes when adapters sit on the top layers): the others keep their weights
    engine = DecoderEngine(moved, slots=2)
    engine.load_weights({k: v for k, v in model.state_dict().items() if k.startswith("model.layers.1.")})
    engine.load_weights({k: v for k, v in moved.state_dict().items() if k.startswith("model.layers.1.")})
    assert [c.token_ids for c in engine.generate(ids, 8, sample, eos_token_id=-1)] == expected
    with pytest.raises(ValueError, match="layer 0 comes in part"):
        engine.load_weights({"model.layers.0.self_attn.q_proj.weight": moved.model.layers[0].self_attn.q_proj.weight})


def test_an_engine_that_releases_the_model_keeps_its_own_copy_and_the_same_tokens(model, tokenizer):
    """`release_model` (what `load_generator` asks: the model was loaded only to generate) empties the model's
    layers as the engine copies them, so the weights are not held twice; the tokens do not change."""
    ids, sample = [[5, 6, 7, 8], [9, 10, 11]], Sampler()
    expected = [c.token_ids for c in DecoderEngine(model, slots=2).generate(ids, 8, sample, eos_token_id=-1)]
    released = copy.deepcopy(model)
    engine = DecoderEngine(released, slots=2, release_model=True)
    assert all(p.numel() == 0 for p in released.model.layers.parameters())
    assert all(p.numel() > 0 for p in model.model.layers.parameters())  # the fixture's model is untouched
    assert [c.token_ids for c in engine.generate(ids, 8, sample, eos_token_id=-1)] == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_engine_shares_no_storage_with_the_model(model, tokenizer, dtype):
    """Every tensor the engine keeps is its own: a view of the model's weights would keep their storage alive
    (for a model loaded from safetensors, the whole memory-mapped file) and follow the model's later changes. In
    bf16 on a CPU without bf16 kernels (and on a GPU) the products keep plain weights rather than a packed copy."""
    ids, sample = [[5, 6, 7, 8], [9, 10, 11]], Sampler()
    changed = copy.deepcopy(model).to(dtype)
    engine = DecoderEngine(changed, slots=2)
    expected = [c.token_ids for c in engine.generate(ids, 8, sample, eos_token_id=-1)]
    with torch.no_grad():
        for p in changed.parameters():
            p.mul_(-3.0)
    assert [c.token_ids for c in engine.generate(ids, 8, sample, eos_token_id=-1)] == expected
    model_storages = {p.untyped_storage().data_ptr() for p in changed.parameters()}
    products = [engine.lm_head] + [p for layer in engine.layers for p in (layer.qkv, layer.out, layer.gate_up,
                                                                          layer.down)]
    kept = [engine.embed, engine.final_norm] + [t for layer in engine.layers
                                                for t in (layer.input_norm, layer.post_norm)]
    kept += [p.weight for p in products if p.weight is not None]
    kept += [p.kernel.packed for p in products if p.kernel is not None]
    assert not model_storages & {t.untyped_storage().data_ptr() for t in kept}


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_is_reproducible_from_the_seed_and_top_k_1_is_greedy(model, tokenizer, device):
    model = on(model, device)
    for backend in ("engine", "hf"):
        generator = TextGenerator(model, tokenizer, GenerationConfig(backend=backend, slots=2))
        greedy = generator.generate(PROMPTS[:3], max_new_tokens=10)
        assert generator.generate(PROMPTS[:3], max_new_tokens=10, temperature=0.7, top_k=1, seed=3).token_ids == \
            greedy.token_ids
        a = generator.generate(PROMPTS[:3], max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
        b = generator.generate(PROMPTS[:3], max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
        c = generator.generate(PROMPTS[:3], max_new_tokens=10, temperature=1.0, top_p=0.9, seed=8)
        assert a.token_ids == b.token_ids and a.token_ids != c.token_ids, backend
        assert a.new_tokens == sum(map(len, a.token_ids)) and all(len(t) <= 10 for t in a.token_ids)
        assert a.finished == [tokenizer.eos_token_id in t for t in a.token_ids]


def test_sampled_tokens_follow_the_distribution():
    """Inverse-CDF draws, one per request: 4000 requests over probabilities 0.5 / 0.3 / 0.2 / 0 land within 4
    standard deviations of their expected counts, and a token of probability 0 is never drawn."""
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    tokens, _ = Sampler(1.0, seed=3)(probs.log().expand(4000, 4), list(range(4000)))
    counts = torch.bincount(tokens, minlength=4).float()
    expected = 4000 * probs
    assert ((counts - expected).abs() <= 4 * (expected * (1 - probs)).sqrt()).all() and counts[3] == 0


@pytest.mark.parametrize("device", DEVICES)
def test_a_request_samples_the_same_tokens_whatever_it_shares_its_batch_with(model, tokenizer, device):
    """Each prompt samples from its own stream (seed, request index): the second half of a batch generated on
    its own with `first_request` set (what one of two processes does with its shard), with fewer rows, or on the
    other backend, samples exactly what it sampled inside the whole batch."""
    model = on(model, device)
    whole = TextGenerator(model, tokenizer, GenerationConfig(slots=8))
    sampling = dict(max_new_tokens=10, temperature=1.0, top_k=20, seed=11)
    together = whole.generate(PROMPTS[:8], **sampling).token_ids
    assert len({tuple(t) for t in together}) > 1
    half = TextGenerator(model, tokenizer, GenerationConfig(slots=2)).generate(PROMPTS[4:8], first_request=4,
                                                                                **sampling)
    reference = TextGenerator(model, tokenizer, GenerationConfig(backend="hf", slots=3)).generate(PROMPTS[:8],
                                                                                                  **sampling)
    assert half.token_ids == together[4:] and reference.token_ids == together
    assert whole.generate(PROMPTS[4:8], **sampling).token_ids != together[4:]  # request 0 is not request 4


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]] * 400))
    tokens, logprobs = Sampler(1.0, 0.8, 0, seed=0)(logits, list(range(400)))
    assert set(tokens.tolist()) == {0, 1}  # 0.6 + 0.3 covers 0.8; tokens 2 and 3 are outside the nucleus
    torch.testing.assert_close(logprobs, torch.log(torch.tensor([0.6, 0.3]))[tokens])  # before the truncation


def test_the_backend_falls_back_to_transformers_for_a_model_the_engine_does_not_run(model, tokenizer):
    other = copy.deepcopy(model)
    other.config.hidden_act = "gelu"
    assert "hidden_act" in unsupported_reason(other)
    assert TextGenerator(other, tokenizer).backend == "hf"
    assert TextGenerator(model, tokenizer).backend == "engine"
    with pytest.raises(ValueError, match="generation.backend is 'engine' but the engine cannot run this model"):
        TextGenerator(other, tokenizer, GenerationConfig(backend="engine"))


def test_reference_decode_rows_left_padded_match_one_at_a_time(model, tokenizer):
    from align.rollout import reference_decode

    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]
    ids, mask = left_padded(prompts, tokenizer.pad_token_id)
    together = reference_decode(model, ids, mask, 8, -1, Sampler())
    alone = [reference_decode(model, *left_padded([p], tokenizer.pad_token_id), 8, -1, Sampler())[0] for p in prompts]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


def test_load_generator_runs_the_engine_where_the_weights_are_fastest(tiny_model_dir):
    """`align eval`'s generator: the engine, on the GPU where one is present, else on the CPU; the model it loaded
    only to copy from is emptied."""
    from align.rollout import load_generator

    generator = load_generator(str(tiny_model_dir), precision="fp32")
    assert generator.backend == "engine" and generator.engine.dtype == torch.float32
    assert generator.engine.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    out = generator.generate(PROMPTS[:3], max_new_tokens=6, temperature=1.0, seed=2)
    assert [len(t) for t in out.token_ids] == [len(t) for t in out.logprobs] and out.new_tokens > 0


def test_what_a_request_samples_does_not_depend_on_an_earlier_call_growing_the_cache(model):
    """A resumed run must sample what the uninterrupted run sampled, although the uninterrupted run's engine may
    have grown its cache for longer prompts before: in bf16 the attention's sums depend on the attention length,
    so that length must not depend on the cache's size."""
    bf16, ids, sample = copy.deepcopy(model).to(torch.bfloat16), [[5, 6, 7, 8, 9], [10, 11, 12]], Sampler
    fresh = DecoderEngine(bf16, slots=4).generate(ids, 40, sample(1.0, seed=3), eos_token_id=-1)
    grown = DecoderEngine(bf16, slots=4)
    grown.generate([[1] * 200], 10, sample(), eos_token_id=-1)
    assert [c.logprobs for c in grown.generate(ids, 40, sample(1.0, seed=3), eos_token_id=-1)] == \
        [c.logprobs for c in fresh]
