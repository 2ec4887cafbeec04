"""Every loss in `align/losses.py` against values derived by hand from its paper's equation (the docstrings work
them out), the PPO losses against plain-loop references on random right-padded batches, and GRPO's advantage and
loss variants by hand."""

import math
import random

import pytest
import torch
from torch.testing import assert_close

from align.losses import (
    ADVANTAGES,
    DPO_LOSSES,
    GRPO_LOSSES,
    POLICY_LOSSES,
    bradley_terry_loss,
    dapo_loss,
    dpo_sigmoid_loss,
    dr_grpo_advantages,
    dr_grpo_loss,
    equal_groups,
    gathered_logprobs,
    group_policy_loss,
    grpo_advantages,
    grpo_loss,
    ipo_loss,
    masked_mean,
    ppo_policy_loss as policy_loss,
    repeated_ngram_tokens,
    rloo_advantages,
    sequence_unlikelihood,
    token_entropy,
    token_unlikelihood,
    value_loss,
)
from tests.align.references import (
    flat,
    mask_of,
    padded,
    random_lengths,
    reference_policy_loss,
    reference_value_loss,
    t,
)

SEEDS = [0, 1, 2, 3, 4]


def test_dpo_sigmoid_loss_by_hand():
    """h = (pi_c - ref_c) - (pi_r - ref_r) = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2; beta = 0.5 -> beta*h = 1;
    loss = -log sigmoid(1) = log(1 + e^-1) = 0.3132617."""
    loss = dpo_sigmoid_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    torch.testing.assert_close(loss, torch.tensor(math.log1p(math.exp(-1))))


def test_dpo_loss_at_the_reference_is_log_2():
    """policy == reference -> h = 0 -> -log sigmoid(0) = log 2 for every beta."""
    x = torch.tensor([-5.0, -1.0])
    torch.testing.assert_close(dpo_sigmoid_loss(x, x + 1, x, x + 1, 3.0), torch.tensor(math.log(2)))


def test_ipo_loss_by_hand():
    """h = 2 (as above), beta = 0.25 -> 1/(2 beta) = 2 -> (2 - 2)^2 = 0; with h = 0: (0 - 2)^2 = 4; mean = 2."""
    pol_c, pol_r = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -2.0])
    ref = torch.tensor([-2.0, -2.0])
    torch.testing.assert_close(ipo_loss(pol_c, pol_r, ref, ref, 0.25), torch.tensor(2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_gathered_logprobs_equal_autograd_through_a_log_softmax(monkeypatch, dtype, temperature):
    """Values and gradients equal those of gather(log_softmax(z.float() / T)), in blocks of rows (3 at a time
    here, over 7 rows) and with a column chosen twice in a row (its gradients add)."""
    import align.losses

    monkeypatch.setattr(align.losses, "ROWS_AT_ONCE", 3)
    torch.manual_seed(0)
    logits = (torch.randn(7, 11) * 3).to(dtype).requires_grad_()
    columns = torch.randint(0, 11, (7, 4))
    columns[:, 1] = columns[:, 0]
    weights = torch.randn(7, 4)
    got = gathered_logprobs(logits, columns, temperature)
    (got * weights).sum().backward()
    ours, logits.grad = logits.grad, None
    expected = (logits.float() / temperature).log_softmax(-1).gather(-1, columns)
    (expected * weights).sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours, logits.grad, rtol=1e-5, atol=1e-6)
    empty = torch.zeros(0, 11, dtype=dtype, requires_grad=True)  # a pass without response tokens
    gathered_logprobs(empty, columns[:0], temperature).sum().backward()
    assert empty.grad.shape == (0, 11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_token_entropy_and_its_gradient_equal_autograd_through_a_softmax(monkeypatch, dtype, temperature):
    """H = -sum_v p_v log p_v of softmax(z.float() / T), in blocks of rows (3 at a time here, over 7 rows): the same
    values, and the same gradient where an entropy bonus trains through it."""
    import align.losses

    monkeypatch.setattr(align.losses, "ROWS_AT_ONCE", 3)
    torch.manual_seed(1)
    logits = (torch.randn(7, 11) * 3).to(dtype).requires_grad_()
    weights = torch.randn(7)
    got = token_entropy(logits, temperature)
    (got * weights).sum().backward()
    ours, logits.grad = logits.grad, None
    logp = (logits.float() / temperature).log_softmax(-1)
    expected = -(logp.exp() * logp).sum(-1)
    (expected * weights).sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, logits.grad, rtol=1e-4, atol=1e-5)


def test_token_unlikelihood_by_hand():
    """targets [0, 1, 0, 2] over a vocabulary of 3: C_0 = {}, C_1 = {0}, C_2 = {0, 1} minus {0} = {1},
    C_3 = {0, 1}; with p_t(c) the step's probabilities below,
        L = -[log(1 - p_1(0)) + log(1 - p_2(1)) + log(1 - p_3(0)) + log(1 - p_3(1))]."""
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.7, 0.2], [0.25, 0.25, 0.5]])
    expected = -(math.log(0.4) + math.log(0.3) + math.log(0.75) + math.log(0.75))
    assert_close(token_unlikelihood(probs.log(), torch.tensor([0, 1, 0, 2])), torch.tensor(expected))
    # a repeated earlier token counts once; a step whose target repeats is not pushed down for its own target
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    assert_close(token_unlikelihood(probs.log(), torch.tensor([0, 0, 0])), torch.tensor(0.0))
    assert_close(token_unlikelihood(probs.log(), torch.tensor([1, 1, 0])), torch.tensor(-math.log(0.9)))
    # the gradient lowers the probability of earlier tokens
    logits = torch.zeros(2, 3, requires_grad=True)
    token_unlikelihood(logits.log_softmax(-1), torch.tensor([2, 0])).backward()
    assert logits.grad[1, 2] > 0 and logits.grad[1, 0] < 0 and logits.grad[0].abs().sum() == 0


def test_repeated_ngram_tokens_flags_every_token_of_a_repeated_ngram():
    """n = 2 over [5, 6, 5, 6, 7, 5, 6]: the bigram (5, 6) at 0 recurs at 2 and 5, so tokens 2, 3, 5, 6 are
    candidates; (6, 5), (6, 7) and (7, 5) occur once."""
    assert repeated_ngram_tokens([5, 6, 5, 6, 7, 5, 6], n=2) == [False, False, True, True, False, True, True]
    # overlapping occurrences: 1 1 1 1 holds (1, 1, 1) twice, at 0 and 1 -> tokens 1..3
    assert repeated_ngram_tokens([1, 1, 1, 1], n=3) == [False, True, True, True]
    assert repeated_ngram_tokens([1, 2, 3], n=4) == [False, False, False]


def test_sequence_unlikelihood_by_hand():
    """Candidates at tokens 1 and 2 with p = 0.5 and 0.9: L = -(log 0.5 + log 0.1) / 2; token 0 (p = 0.2) is not a
    candidate; no candidates -> 0; the gradient lowers the candidates' log-probs only."""
    logprobs = torch.tensor([0.2, 0.5, 0.9]).log().requires_grad_()
    candidates = torch.tensor([False, True, True])
    loss = sequence_unlikelihood(logprobs, candidates)
    assert_close(loss, torch.tensor(-(math.log(0.5) + math.log(0.1)) / 2))
    loss.backward()
    assert logprobs.grad[0] == 0 and (logprobs.grad[1:] > 0).all()  # descending the loss lowers them
    assert_close(sequence_unlikelihood(logprobs, torch.zeros(3, dtype=torch.bool)), torch.tensor(0.0))


def test_bradley_terry_loss_by_hand():
    """r_c - r_r = 1 - (-1) = 2, margin 1 -> -log sigmoid(1) = log(1 + e^-1); second pair 0 - 0 - 1 = -1 ->
    -log sigmoid(-1) = log(1 + e); mean of the two."""
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]), margin=1.0)
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_masked_mean_by_hand():
    """x = [[1, 2, 3], [4, 5, 6]] with the last two of row 1 and the last one of row 0 masked out:
    all real tokens: (1 + 2 + 4) / 3 = 7/3; per row: (1 + 2) / 2 = 1.5 and 4 / 1 = 4."""
    x, mask = t([[1, 2, 3], [4, 5, 6]]), t([[1, 1, 0], [1, 0, 0]])
    assert_close(masked_mean(x, mask), t(7 / 3))
    assert_close(masked_mean(x, mask, dim=1), t([1.5, 4.0]))


def test_masked_mean_of_an_all_padding_row_is_zero_not_nan():
    x, mask = t([[1, 2], [float("1e30"), -3]]), t([[1, 1], [0, 0]])
    assert_close(masked_mean(x, mask, dim=1), t([1.5, 0.0]))
    assert_close(masked_mean(x, torch.zeros_like(mask)), t(0.0))


def test_policy_loss_clips_on_both_sides_for_both_signs_of_the_advantage():
    """eps = 0.2; loss_t = max(-A rho, -A clip(rho, 0.8, 1.2)), i.e. minus eq. 7's pessimistic min.
        a: A = +1, rho = 1.5: max(-1.5, -1.2) = -1.2   clip active (no credit beyond 1 + eps)
        b: A = +1, rho = 0.5: max(-0.5, -0.8) = -0.5   unclipped (a worse ratio is never hidden)
        c: A = -1, rho = 0.5: max( 0.5,  0.8) =  0.8   clip active (no credit beyond 1 - eps)
        d: A = -1, rho = 1.5: max( 1.5,  1.2) =  1.5   unclipped
    Token mean over the batch's 4 real tokens (a, b, c | d; the padding token has rho = e^5, A = 100):
        loss = (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15; clip fraction = 2 / 4 = 0.5;
        approx KL = mean (rho - 1) - log rho = [2 (0.5 - log 1.5) + 2 (log 2 - 0.5)] / 4 = log(4/3) / 2.
    Gradients w.r.t. log pi (d rho / d log pi = rho): clipped tokens a, c get 0; b gets -A rho / 4 = -0.125;
    d gets -A rho / 4 = +0.375; padding gets 0."""
    old = t([[-1.0, -2.0, -0.5], [-1.5, -3.0, -3.0]])
    ratios = t([[1.5, 0.5, 0.5], [1.5, math.exp(5.0), 1.0]])
    logprobs = (old + torch.log(ratios)).requires_grad_(True)
    advantages = t([[1.0, 1.0, -1.0], [-1.0, 100.0, 100.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])

    loss, stats = policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    assert_close(loss, t(0.15))
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert stats["approx_kl"] == pytest.approx(math.log(4 / 3) / 2)
    loss.backward()
    assert_close(logprobs.grad, t([[0.0, -0.125, 0.0], [0.375, 0.0, 0.0]]))


def test_policy_loss_inside_the_trust_region_is_the_plain_surrogate():
    """rho = 1 everywhere (the first minibatch of an epoch): loss = -mean A = -(2 - 1 + 0.5) / 3 = -0.5,
    nothing clipped, approx KL 0. rho = 1.1 with A = 2 is inside [0.8, 1.2]: loss = -2.2, still nothing clipped."""
    logprobs, mask = t([[-1.0, -2.0, -3.0]]), t([[1, 1, 1]])
    loss, stats = policy_loss(logprobs, logprobs.clone(), t([[2.0, -1.0, 0.5]]), mask, 0.2)
    assert_close(loss, t(-0.5))
    assert stats == {"clip_fraction": 0.0, "approx_kl": 0.0}
    loss, stats = policy_loss(t([[math.log(1.1)]]), t([[0.0]]), t([[2.0]]), t([[1]]), 0.2)
    assert_close(loss, t(-2.2))
    assert stats["clip_fraction"] == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_loss_matches_plain_loop(seed):
    rng, width, eps = random.Random(seed), 9, 0.2
    lengths = random_lengths(rng, width=width)
    old_rows, old = padded(rng, lengths, width)
    # log-ratios: about half the real ones fall outside 1 +- eps; padding ones up to ~e^60 (finite; inf is tested below)
    shift_rows, shift = padded(rng, lengths, width, scale=0.3, garbage=20.0)
    advantage_rows, advantages = padded(rng, lengths, width)
    mask = mask_of(lengths, width)
    loss, stats = policy_loss(old + shift, old, advantages, mask, eps)

    new_rows = [[o + s for o, s in zip(ro, rs)] for ro, rs in zip(old_rows, shift_rows)]
    expected_loss, expected_clip, expected_kl = reference_policy_loss(
        flat(new_rows), flat(old_rows), flat(advantage_rows), eps)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-9)
    assert stats["clip_fraction"] == pytest.approx(expected_clip)
    assert stats["approx_kl"] == pytest.approx(expected_kl, rel=1e-9)
    assert 0.0 < stats["clip_fraction"] < 1.0  # the batch exercised both branches


def test_non_finite_padding_does_not_leak_into_means_or_the_policy_loss():
    """Real tokens 1 and 3 have mean 2 whatever sits on padding. Policy loss with rho = 1 on real tokens and
    A = 1, -3: -(1 - 3) / 2 = 1, with log-probs padded with -inf."""
    mask = t([[1, 1, 0]])
    assert_close(masked_mean(t([[1.0, 3.0, -math.inf]]), mask), t(2.0))
    logprobs = t([[-1.0, -2.0, -math.inf]])
    loss, _ = policy_loss(logprobs, logprobs.clone(), t([[1.0, -3.0, 0.0]]), mask, 0.2)
    assert_close(loss, t(1.0))


def test_value_loss_by_hand():
    """eps = 0.2, old values all 0, so V_clip = clip(V, -0.2, 0.2); loss_t = max((V - G)^2, (V_clip - G)^2).
        a: V = 0.5,  G = 1:  (0.5)^2 = 0.25 vs (0.2 - 1)^2 = 0.64   -> 0.64, clipped term active
        b: V = 0.1,  G = 1:  V_clip = V, both 0.81                   -> 0.81, not clipped
        c: V = 0.5,  G = 0:  0.25 vs 0.04                            -> 0.25, not clipped
        d: V = -0.5, G = -1: 0.25 vs (-0.2 + 1)^2 = 0.64             -> 0.64, clipped term active
    loss = 0.5 (0.64 + 0.81 + 0.25 + 0.64) / 4 = 0.2925; value clip fraction = 2 / 4 = 0.5.
    Gradients: a, d: 0 (V_clip is constant there); b: 0.5 * 2 (0.1 - 1) / 4 = -0.225; c: 0.5 * 2 * 0.5 / 4 = 0.125."""
    values = t([[0.5, 0.1, 0.0], [0.5, -0.5, 9.0]]).requires_grad_(True)
    returns = t([[1.0, 1.0, 0.0], [0.0, -1.0, -9.0]])
    mask = t([[1, 1, 0], [1, 1, 0]])
    loss, stats = value_loss(values, torch.zeros_like(returns), returns, mask, clip_range=0.2)
    assert_close(loss, t(0.2925))
    assert stats["value_clip_fraction"] == pytest.approx(0.5)
    loss.backward()
    assert_close(values.grad, t([[0.0, -0.225, 0.0], [0.125, 0.0, 0.0]]))


@pytest.mark.parametrize("seed", SEEDS)
def test_value_loss_matches_plain_loop(seed):
    rng, width, eps = random.Random(seed), 9, 0.2
    lengths = random_lengths(rng, width=width)
    old_rows, old = padded(rng, lengths, width)
    step_rows, step = padded(rng, lengths, width, scale=0.3)
    return_rows, returns = padded(rng, lengths, width)
    mask = mask_of(lengths, width)
    loss, stats = value_loss(old + step, old, returns, mask, eps)

    new_rows = [[o + s for o, s in zip(ro, rs)] for ro, rs in zip(old_rows, step_rows)]
    expected_loss, expected_clip = reference_value_loss(flat(new_rows), flat(old_rows), flat(return_rows), eps)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-9)
    assert stats["value_clip_fraction"] == pytest.approx(expected_clip)
    assert 0.0 < stats["value_clip_fraction"] < 1.0


def test_a_registry_names_the_values_its_config_key_accepts(tmp_path):
    """The allowed values of `train.loss` (DPO) and `train.policy_loss` (PPO) are the registries' keys: a new loss
    is a function plus a registry line, and a name not in the registry is refused with the valid ones."""
    from align.config import ConfigError, load_config
    from align.dpo import DPOConfig
    from align.ppo import PPOConfig

    from align.grpo import GRPOConfig

    assert set(DPO_LOSSES) == {"sigmoid", "ipo"} and set(POLICY_LOSSES) == {"clipped"}
    assert set(GRPO_LOSSES) == {"grpo", "dr_grpo", "dapo"} and set(ADVANTAGES) == {"grpo", "dr_grpo", "rloo"}
    for name in DPO_LOSSES:
        assert load_config(DPOConfig, None, [f"train.loss={name}"]).train.loss == name
    for loss, advantages in zip(GRPO_LOSSES, ADVANTAGES):
        train = load_config(GRPOConfig, None, [f"train.loss={loss}", f"train.advantages={advantages}"]).train
        assert (train.loss, train.advantages) == (loss, advantages)
    with pytest.raises(ConfigError, match="train.loss' = 'hinge' is not one of 'sigmoid', 'ipo'"):
        load_config(DPOConfig, None, ["train.loss=hinge"])
    with pytest.raises(ConfigError, match="train.policy_loss' = 'x' is not one of 'clipped'"):
        load_config(PPOConfig, None, ["train.policy_loss=x"])
    with pytest.raises(ConfigError, match="train.loss' = 'ppo' is not one of 'grpo', 'dr_grpo', 'dapo'"):
        load_config(GRPOConfig, None, ["train.loss=ppo"])
    with pytest.raises(ConfigError, match="train.advantages' = 'gae' is not one of 'grpo', 'dr_grpo', 'rloo'"):
        load_config(GRPOConfig, None, ["train.advantages=gae"])


# ---- GRPO: group-relative advantages and how token losses add up ------------------------------------------------

GROUPS = t([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.1, 0.1, 0.1]])  # P = 3 prompts x k = 3 completions


def test_grpo_advantages_by_hand():
    """Group 1 (1, 2, 3): mean 2, sample variance ((-1)^2 + 0 + 1^2) / (3 - 1) = 1, std 1: A = (-1, 0, 1) / (1 +
    eps). Group 2 (2, 4, 6): mean 4, variance (4 + 0 + 4) / 2 = 4, std 2: A = (-2, 0, 2) / (2 + eps), the same as
    group 1 up to eps (the std normalises the scale away). Group 3, all equal: exactly 0 (std 0 would give 0 / eps)."""
    expected = t([[-1 / 1.0001, 0.0, 1 / 1.0001], [-2 / 2.0001, 0.0, 2 / 2.0001], [0.0, 0.0, 0.0]])
    assert_close(grpo_advantages(GROUPS), expected)
    assert torch.equal(grpo_advantages(GROUPS)[2], torch.zeros(3))


def test_dr_grpo_advantages_by_hand():
    """No std: A = r - mean: (-1, 0, 1), (-2, 0, 2) (the wider group keeps its larger advantages), (0, 0, 0)."""
    assert_close(dr_grpo_advantages(GROUPS), t([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))


def test_rloo_advantages_by_hand():
    """Each reward minus the mean of the other two of its group. Group 2: 2 - (4 + 6) / 2 = -3, 4 - (2 + 6) / 2 = 0,
    6 - (2 + 4) / 2 = 3; group 1: 1 - 2.5 = -1.5, 2 - 2 = 0, 3 - 1.5 = 1.5 (= k / (k - 1) = 3/2 times r - mean);
    all equal: 0."""
    assert_close(rloo_advantages(GROUPS), t([[-1.5, 0.0, 1.5], [-3.0, 0.0, 3.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_all_equal_groups_get_exactly_zero_advantages_and_are_flagged(name):
    """Rewards 0.1 three times: their float mean is not exactly 0.1, but an all-equal group carries no signal, so
    every variant gives exact zeros (no rounding residue blown up by GRPO's 1 / eps). A group of one differing
    reward is not all-equal."""
    rewards = t([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [0.3, 0.3, 0.4]])
    assert torch.equal(ADVANTAGES[name](rewards)[:2], torch.zeros(2, 3))
    assert ADVANTAGES[name](rewards)[2].abs().sum() > 0
    assert equal_groups(rewards).tolist() == [True, True, False]


def test_group_advantages_sum_to_zero_in_every_group():
    """r - mean sums to 0 over a group, and so do its scalings (GRPO's 1 / (std + eps), RLOO's k / (k - 1))."""
    rewards = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, fn in ADVANTAGES.items():
        assert_close(fn(rewards).sum(1), torch.zeros(5, dtype=torch.float64), msg=name)


# Per-token losses of two completions: 1, 2, 3 (three tokens) and 4 (one token); padding holds 100.
PER_TOKEN, TOKEN_MASK = t([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]]), t([[1, 1, 1], [1, 0, 0]])


def test_grpo_loss_is_the_mean_of_per_completion_token_means():
    """Completion means (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4; their mean 3 (the single token weighs as much as three)."""
    assert_close(grpo_loss(PER_TOKEN, TOKEN_MASK, max_new_tokens=4), t(3.0))


def test_dr_grpo_loss_divides_the_token_sum_by_completions_times_the_budget():
    """Sum of real tokens 1 + 2 + 3 + 4 = 10 over B * L_max = 2 * 4 = 8: 1.25, whatever the completions' lengths."""
    assert_close(dr_grpo_loss(PER_TOKEN, TOKEN_MASK, max_new_tokens=4), t(1.25))


def test_dapo_loss_is_the_mean_over_every_token_of_the_batch():
    """10 over the batch's 4 real tokens: 2.5 (every token weighs the same)."""
    assert_close(dapo_loss(PER_TOKEN, TOKEN_MASK, max_new_tokens=4), t(2.5))


def test_group_policy_loss_with_clip_higher_by_hand():
    """Completion 0 (A = +1) has tokens a, b, e; completion 1 (A = -1) has token c, then padding. eps_low 0.2,
    eps_high 0.28, so rho is clipped to [0.8, 1.28]; l = max(-A rho, -A clip(rho)):
        a: rho 1.5:  max(-1.5, -1.28) = -1.28   clipped (no credit past 1 + eps_high)
        b: rho 1.25: -1.25                      inside [0.8, 1.28]; symmetric eps 0.2 would clip it to -1.2
        e: rho 1:    -1
        c: rho 0.5:  max(0.5, 0.8) = 0.8        clipped (A < 0: no credit below 1 - eps_low)
    dapo: (-1.28 - 1.25 - 1 + 0.8) / 4 = -0.6825; grpo: ((-3.53 / 3) + 0.8) / 2 = -0.188333...;
    dr_grpo (L_max 4): -2.73 / 8 = -0.34125. A penalty of 0.1 on every token adds 0.1 to the two means and
    4 * 0.1 / 8 = 0.05 to dr_grpo.
    Clip fraction 2 / 4. dapo's gradients w.r.t. log pi (d rho / d log pi = rho): b: -A rho / 4 = -0.3125,
    e: -0.25, clipped a and c and the padding: 0. With eps_high = eps_low = 0.2, a and b -> -1.2:
    dapo = (-1.2 - 1.2 - 1 + 0.8) / 4 = -0.65."""
    old = t([[-1.0, -2.0, -0.5], [-1.5, -3.0, -3.0]])
    ratios = t([[1.5, 1.25, 1.0], [0.5, math.exp(4.0), 1.0]])
    logprobs = (old + torch.log(ratios)).requires_grad_(True)
    advantages, mask = t([1.0, -1.0]), t([[1, 1, 1], [1, 0, 0]])

    expected = {"dapo": -0.6825, "grpo": (-3.53 / 3 + 0.8) / 2, "dr_grpo": -0.34125}
    added = {"dapo": 0.1, "grpo": 0.1, "dr_grpo": 0.05}
    for name, value in expected.items():
        loss, stats = group_policy_loss(logprobs, old, advantages, mask, name, 0.2, 0.28, max_new_tokens=4)
        assert loss.item() == pytest.approx(value), name
        assert stats["clip_fraction"] == pytest.approx(0.5)
        penalised, _ = group_policy_loss(logprobs, old, advantages, mask, name, 0.2, 0.28, 4,
                                         penalty=torch.full_like(old, 0.1))
        assert penalised.item() == pytest.approx(value + added[name]), name
    loss, _ = group_policy_loss(logprobs, old, advantages, mask, "dapo", 0.2, 0.28, max_new_tokens=4)
    loss.backward()
    assert_close(logprobs.grad, t([[0.0, -0.3125, -0.25], [0.0, 0.0, 0.0]]))
    symmetric, _ = group_policy_loss(logprobs, old, advantages, mask, "dapo", 0.2, None, max_new_tokens=4)
    assert symmetric.item() == pytest.approx(-0.65)
