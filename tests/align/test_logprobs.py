"""Log-probs and values on flat passes, and the frozen trunk that PPO runs once per iteration."""

import torch

from align.logprobs import (
    decoder_body,
    response_logprobs,
    response_values,
    same_trunk,
    token_logprobs_and_entropy,
    trunk_matches,
    trunk_states,
)
from align.models import LoraConfig, ModelConfig, load_model


def test_token_logprobs_and_entropy_by_hand():
    """Logits [0, ln 3] -> p = [1/4, 3/4]: log p(1) = ln(3/4), H = -(1/4 ln 1/4 + 3/4 ln 3/4)."""
    logits = torch.tensor([[0.0, float(torch.log(torch.tensor(3.0)))]])
    lp, entropy = token_logprobs_and_entropy(logits, torch.tensor([1]))
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.75])))
    expected = -(0.25 * torch.log(torch.tensor(0.25)) + 0.75 * torch.log(torch.tensor(0.75)))
    torch.testing.assert_close(entropy, expected.reshape(1))


def test_entropy_without_gradient_keeps_the_log_probs_gradient():
    """entropy_grad False: the same entropies, which carry no gradient, while the log-probs do."""
    logits = torch.randn(5, 9, requires_grad=True)
    targets = torch.tensor([0, 3, 8, 3, 1])
    lp, entropy = token_logprobs_and_entropy(logits, targets, 0.8, entropy_grad=False)
    _, entropy_with_grad = token_logprobs_and_entropy(logits, targets, 0.8)
    assert not entropy.requires_grad and entropy_with_grad.requires_grad and lp.requires_grad
    torch.testing.assert_close(entropy, entropy_with_grad.detach())


def test_response_logprobs_equal_a_plain_forward(tiny_model_dir):
    """Packed, several sequences per pass: each response token's log-prob is the one a lone forward gives."""
    policy, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    with torch.no_grad():
        packed = response_logprobs(policy, prompts, responses, pack_length=64)
        for p, r, lp in zip(prompts, responses, packed):
            logits = policy(input_ids=torch.tensor([p + r])).logits[0]
            expected = torch.log_softmax(logits.float(), -1)[len(p) - 1 : -1].gather(-1, torch.tensor(r)[:, None])
            torch.testing.assert_close(lp, expected.squeeze(-1), rtol=1e-5, atol=1e-5)


def test_response_unlikelihood_is_each_responses_token_unlikelihood_under_a_plain_forward(tiny_model_dir):
    """with_unlikelihood: per response, align.losses.token_unlikelihood of a lone forward's log-probs at its steps
    (a response that repeats a token has candidates; one of distinct tokens too, from its earlier tokens)."""
    from align.losses import token_unlikelihood

    policy, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11, 10, 11], [12, 13, 14]]
    with torch.no_grad():
        logprobs, entropies, unlikelihoods = response_logprobs(policy, prompts, responses, pack_length=64,
                                                               with_entropy=True, with_unlikelihood=True)
        assert len(entropies) == 2 and len(unlikelihoods) == 2
        only_ul = response_logprobs(policy, prompts, responses, pack_length=64, with_unlikelihood=True)[1]
        for p, r, ul, alone in zip(prompts, responses, unlikelihoods, only_ul):
            logits = policy(input_ids=torch.tensor([p + r])).logits[0]
            expected = token_unlikelihood(torch.log_softmax(logits.float(), -1)[len(p) - 1 : -1], torch.tensor(r))
            assert expected > 0
            torch.testing.assert_close(ul, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(alone, expected, rtol=1e-5, atol=1e-5)


def lora_policy(tiny_model_dir):
    """tiny-random (2 layers) with adapters on its last layer only; adapters nudged off zero so they matter."""
    policy, _ = load_model(ModelConfig(name=str(tiny_model_dir), lora=LoraConfig(enabled=True, last_layers=1)))
    torch.manual_seed(0)
    for name, param in policy.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    return policy


def test_a_frozen_trunk_gives_the_same_log_probs_values_and_gradients(tiny_model_dir):
    """The bottom layer run once (trunk_states) + the top layer per pass == every layer per pass: log-probs,
    reference log-probs (adapters off), values, and the adapters' gradients."""
    from transformers import AutoModelForSequenceClassification

    from align.attention import attend_by_segments
    from align.models import attach_lora
    from align.values import TokenValues

    policy = lora_policy(tiny_model_dir)
    prompts, responses = [[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14, 15, 16, 17]]
    sequences = [p + r for p, r in zip(prompts, responses)]
    trunk = trunk_states(policy, sequences, layers=1, pack_length=64)
    assert [s.shape for s in trunk.states] == [torch.Size([7, 64]), torch.Size([6, 64])]

    def lora_grads(use_trunk: bool):
        policy.zero_grad()
        lps = response_logprobs(policy, prompts, responses, 64, trunk=trunk if use_trunk else None)
        torch.cat(lps).sum().backward()
        return {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    with_trunk, without = lora_grads(True), lora_grads(False)
    assert with_trunk.keys() == without.keys() and len(with_trunk) > 0
    for name in with_trunk:
        torch.testing.assert_close(with_trunk[name], without[name], rtol=1e-5, atol=1e-6)
    with torch.no_grad(), policy.disable_adapter():
        for a, b in zip(response_logprobs(policy, prompts, responses, 64, trunk=trunk),
                        response_logprobs(policy, prompts, responses, 64)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a subset of the sequences (a PPO minibatch) reads its own states
    with torch.no_grad():
        subset = response_logprobs(policy, prompts[1:], responses[1:], 64, trunk=trunk.subset([1]))[0]
        torch.testing.assert_close(subset, response_logprobs(policy, prompts[1:], responses[1:], 64)[0],
                                   rtol=1e-5, atol=1e-5)

    scorer = attend_by_segments(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1))
    values = TokenValues(attach_lora(scorer, LoraConfig(enabled=True, last_layers=1), task_type="SEQ_CLS"))
    value_trunk = trunk_states(values, sequences, layers=1, pack_length=64)
    with torch.no_grad():
        for a, b in zip(response_values(values, prompts, responses, 64, trunk=value_trunk),
                        response_values(values, prompts, responses, 64)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert trunk_matches(policy, 1) and trunk_matches(values, 1, values=True)
    assert len(decoder_body(policy).layers) == 2  # the layers are back in place after every pass


def test_a_value_model_from_the_policys_weights_shares_its_trunk_and_any_difference_below_the_adapters_is_seen(
        tiny_model_dir):
    """same_trunk: the value model made from the policy's own checkpoint (adapters on the top layer of both) has the
    policy's bottom layer; one changed weight in it, a changed norm epsilon (not a weight), or a trunk deeper than
    the model are not the same trunk. The adapters above the trunk may differ."""
    from align.values import TokenValues, load_reward_backbone

    cfg = ModelConfig(name=str(tiny_model_dir), lora=LoraConfig(enabled=True, last_layers=1))
    policy = lora_policy(tiny_model_dir)  # adapters moved off zero: they are above the trunk
    values = TokenValues(load_reward_backbone(cfg, str(tiny_model_dir))[0])
    assert same_trunk(policy, values, 1) and same_trunk(values, policy, 1)
    assert not same_trunk(policy, values, 3)  # the tiny model has 2 layers
    norm = decoder_body(values).layers[0].input_layernorm
    norm.variance_epsilon, eps = 0.5, norm.variance_epsilon
    assert not same_trunk(policy, values, 1)
    norm.variance_epsilon = eps
    with torch.no_grad():
        decoder_body(values).layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    assert not same_trunk(policy, values, 1)


def test_a_trunk_run_on_the_wrong_layers_is_caught(tiny_model_dir):
    """trunk_matches is what keeps a model whose forward cannot be split from silently using a trunk: states
    taken after the wrong number of layers do not match a full run."""
    policy = lora_policy(tiny_model_dir)
    prompts, responses = [[5, 6, 7, 8]], [[11, 12, 13]]
    wrong = trunk_states(policy, [prompts[0] + responses[0]], layers=1, pack_length=64)
    wrong.layers = 0  # pretend the states were taken before layer 0: layer 0 would then run twice
    with torch.no_grad():
        assert not torch.allclose(response_logprobs(policy, prompts, responses, 64, trunk=wrong)[0],
                                  response_logprobs(policy, prompts, responses, 64)[0], atol=1e-4)


def test_completions_sharing_their_prompt_give_the_log_probs_and_gradients_of_separate_sequences(tiny_model_dir):
    """Two prompts x three completions (GRPO's layout), each prompt computed once (`groups`), through a trunk
    computed the same way or through every layer: the log-probs and the adapters' gradients of laying every
    sequence out whole, and fewer tokens in the passes. One completion starts like its first sibling beyond the
    prompt, so its shared prefix reaches into the completions."""
    from align.batching import flat_passes

    policy = lora_policy(tiny_model_dir)
    prompts = [[5, 6, 7, 8, 9]] * 3 + [[20, 21, 22]] * 3
    responses = [[11, 12, 13], [11, 12, 30, 31], [14], [40, 41], [42, 43, 44, 45], [46]]
    groups = [(0, 1, 2), (3, 4, 5)]
    sequences = [p + r for p, r in zip(prompts, responses)]
    laid_out = sum(f.input_ids.shape[1] for f in flat_passes(sequences, 64, groups))
    assert laid_out == sum(map(len, sequences)) - (2 * 5 + 2) - 2 * 3  # prompts once; 2 more tokens of 0 and 1

    def grads_and_logprobs(shared, trunk_groups):
        policy.zero_grad()
        trunk = None if trunk_groups is None else trunk_states(policy, sequences, 1, 64, trunk_groups)
        lps = response_logprobs(policy, prompts, responses, 64, groups=shared, trunk=trunk)
        torch.cat(lps).sum().backward()
        return lps, {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    expected_lps, expected_grads = grads_and_logprobs((), None)
    for shared, trunk_groups in [(groups, None), (groups, groups), ((), groups), (groups, ())]:
        lps, grads = grads_and_logprobs(shared, trunk_groups)
        for a, b in zip(lps, expected_lps):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for name in grads:
            torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-5, atol=1e-6)


def test_sequences_under_one_system_prompt_compute_it_once_and_get_what_lone_forwards_get(tiny_model_dir):
    """No groups: three conversations that start with the same 10 tokens (a chat template's system prompt) lay it
    out once (`align.batching.prefix_units`), and each response's log-probs, the adapters' gradients and each
    sequence's value are those of running every sequence alone."""
    from align.batching import flat_passes
    from align.values import TokenValues, load_reward_backbone

    policy = lora_policy(tiny_model_dir)
    system = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    prompts, responses = [system + [20, 21], system + [30], system + [40, 41, 42]], [[50, 51], [52], [53, 54, 55]]
    sequences = [p + r for p, r in zip(prompts, responses)]
    assert sum(f.input_ids.shape[1] for f in flat_passes(sequences, 64)) == sum(map(len, sequences)) - 2 * 10

    def lone(p, r):
        return torch.log_softmax(policy(input_ids=torch.tensor([p + r])).logits[0].float(), -1)[
            len(p) - 1 : -1].gather(-1, torch.tensor(r)[:, None]).squeeze(-1)

    policy.zero_grad()
    torch.cat(response_logprobs(policy, prompts, responses, 64)).sum().backward()
    shared_lps = [lp.detach() for lp in response_logprobs(policy, prompts, responses, 64)]
    shared_grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    policy.zero_grad()
    lone_lps = [lone(p, r) for p, r in zip(prompts, responses)]
    torch.cat(lone_lps).sum().backward()
    for a, b in zip(shared_lps, lone_lps):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
    for name, grad in shared_grads.items():
        torch.testing.assert_close(grad, dict(policy.named_parameters())[name].grad, rtol=1e-4, atol=1e-5)

    values = TokenValues(load_reward_backbone(ModelConfig(name=str(tiny_model_dir)), str(tiny_model_dir))[0])
    with torch.no_grad():
        shared_values = response_values(values, prompts, responses, 64)
        for p, r, v in zip(prompts, responses, shared_values):
            torch.testing.assert_close(v, response_values(values, [p], [r], 64)[0], rtol=1e-5, atol=1e-5)


def test_gradients_through_shared_prompts_are_the_same_bits_every_time(tiny_model_dir):
    """Positions that predict several sequences' tokens (the last token of a shared prompt) must add their gradients
    in a fixed order: resuming a run bit for bit depends on it. (Fresh adapters: lora_B is 0.)"""
    torch.manual_seed(0)
    policy, _ = load_model(ModelConfig(name=str(tiny_model_dir), lora=LoraConfig(enabled=True, last_layers=1)))
    g = torch.Generator().manual_seed(1)
    prompts = [p for n in (12, 9) for p in [torch.randint(1, 90, (n,), generator=g).tolist()] * 4]
    responses = [torch.randint(1, 90, (int(n),), generator=g).tolist() for n in torch.randint(1, 9, (8,), generator=g)]
    groups = [(0, 1, 2, 3), (4, 5, 6, 7)]

    def gradients() -> torch.Tensor:
        policy.zero_grad()
        trunk = trunk_states(policy, [p + r for p, r in zip(prompts, responses)], 1, 64, groups)
        lps, entropies = response_logprobs(policy, prompts, responses, 64, 0.9, with_entropy=True, groups=groups,
                                           trunk=trunk)
        (torch.cat(lps).sum() + torch.cat(entropies).sum()).backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters() if p.requires_grad])

    first = gradients()
    for _ in range(10):
        assert torch.equal(gradients(), first)
