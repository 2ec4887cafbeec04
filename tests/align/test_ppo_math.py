"""The pure PPO maths in `align/ppo.py` (its losses: test_losses.py), two ways:

1. hand-derived values: each docstring works the expected numbers out from the paper's equation, with numbers small
   enough to check in your head (GAE: Schulman et al. 2016, eq. 16; clipped surrogate: Schulman et al. 2017, eq. 7;
   adaptive KL: Ziegler et al. 2019, eq. 2; k1/k2/k3: Schulman 2020, "Approximating KL divergence");
2. plain-loop references: obviously-correct per-sequence, per-token Python written from the same equations, which
   never see the padding at all, compared with the batched tensor code on random right-padded batches whose padding
   holds large garbage, so any leak across a sequence's end shows up.
"""

import math
import random
import statistics

import pytest
import torch
from torch.testing import assert_close

from align.losses import ppo_policy_loss as policy_loss
from align.losses import value_loss
from align.ppo import (
    adaptive_kl_coef,
    explained_variance,
    gae_advantages,
    kl_per_token,
    leave_one_out_scores,
    masked_whiten,
    pad_right,
    shaped_rewards,
)
from tests.align.references import (
    flat,
    mask_of,
    padded,
    random_lengths,
    real,
    reference_gae,
    reference_kl,
    reference_whiten,
    t,
)

SEEDS = [0, 1, 2, 3, 4]
F64 = torch.float64


def test_masked_whiten_by_hand():
    """Real entries 1, 3, 5 (the 100 and the 0s are padding): mean 3, unbiased variance ((-2)^2 + 0 + 2^2) / (3 - 1)
    = 4, std 2, so (x - 3) / 2 = -1, 0, 1; padding becomes 0. With shift_mean=False the mean is added back: 2, 3, 4."""
    x, mask = t([[1, 3, 100], [5, 0, 0]]), t([[1, 1, 0], [1, 0, 0]])
    assert_close(masked_whiten(x, mask), t([[-1, 0, 0], [1, 0, 0]]))
    assert_close(masked_whiten(x, mask, shift_mean=False), t([[2, 3, 0], [4, 0, 0]]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_plain_loop(seed, shift_mean):
    """Only real tokens count towards the mean and the (unbiased) variance; padding is garbage of size ~1e3."""
    rng, width = random.Random(seed), 9
    lengths = random_lengths(rng, width=width)
    rows, x = padded(rng, lengths, width, scale=3.0)
    mask = mask_of(lengths, width)
    whitened = masked_whiten(x, mask, shift_mean=shift_mean)

    expected = reference_whiten(flat(rows), shift_mean=shift_mean)
    assert_close(t(flat(real(whitened, lengths))), t(expected))
    assert_close(whitened * (1 - mask), torch.zeros_like(x))
    if shift_mean:  # whitened real entries: mean 0, unbiased std 1
        entries = t(flat(real(whitened, lengths)))
        assert_close(entries.mean(), t(0.0), atol=1e-12, rtol=0)
        assert_close(entries.std(), t(1.0))


def test_masked_whiten_single_token_and_no_token_give_zeros_not_nan():
    """One real token: it is its own mean, variance 0 (n - 1 clamped to 1), so (x - mean) = 0. No real token: zeros."""
    x = t([[7.0, 50.0], [-9.0, 3.0]])
    assert_close(masked_whiten(x, t([[1, 0], [0, 0]])), torch.zeros_like(x))
    assert_close(masked_whiten(x, torch.zeros_like(x)), torch.zeros_like(x))


def test_kl_estimators_by_hand():
    """log r = log p_ref(x) - log p(x). Token 0: p = 1/4, p_ref = 1/2, so r = 2: k1 = -log 2 (one k1 sample can be
    negative), k2 = (log 2)^2 / 2, k3 = (2 - 1) - log 2 = 1 - log 2. Token 1: p = 1/2, p_ref = 1/4, r = 1/2:
    k1 = log 2, k2 = (log 2)^2 / 2, k3 = -1/2 + log 2. Token 2: p = p_ref, r = 1: all three are 0."""
    logp = t([math.log(1 / 4), math.log(1 / 2), math.log(1 / 3)])
    ref = t([math.log(1 / 2), math.log(1 / 4), math.log(1 / 3)])
    ln2 = math.log(2)
    assert_close(kl_per_token(logp, ref, "k1"), t([-ln2, ln2, 0.0]))
    assert_close(kl_per_token(logp, ref, "k2"), t([ln2**2 / 2, ln2**2 / 2, 0.0]))
    assert_close(kl_per_token(logp, ref, "k3"), t([1 - ln2, ln2 - 0.5, 0.0]))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_plain_loop(estimator):
    rng = random.Random(3)
    logp = [[-abs(rng.gauss(0, 3)) for _ in range(6)] for _ in range(4)]
    ref = [[-abs(rng.gauss(0, 3)) for _ in range(6)] for _ in range(4)]
    expected = [[reference_kl(a, b, estimator) for a, b in zip(ra, rb)] for ra, rb in zip(logp, ref)]
    assert_close(kl_per_token(t(logp), t(ref), estimator), t(expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_and_k2_are_never_negative(dtype):
    """k3 = (r - 1) - log r >= 0 because log r <= r - 1; also for tiny log-ratios, where (r - 1) and log r nearly
    cancel and rounding could go below 0, and for large ones."""
    g = torch.Generator().manual_seed(0)
    log_ratios = torch.cat([torch.randn(20000, generator=g, dtype=dtype) * scale
                            for scale in (1e-9, 1e-6, 1e-3, 1.0, 10.0, 40.0)])
    zeros = torch.zeros_like(log_ratios)
    assert (kl_per_token(zeros, log_ratios, "k3") >= 0).all()
    assert (kl_per_token(zeros, log_ratios, "k2") >= 0).all()
    assert (kl_per_token(zeros, log_ratios, "k1") < 0).any()  # k1 alone is not a non-negative estimator


# Two categorical distributions over 3 outcomes: the policy p and the reference q.
P = [0.5, 0.3, 0.2]
Q = [0.2, 0.3, 0.5]
# KL(p || q) = 0.5 log(0.5/0.2) + 0.3 log(1) + 0.2 log(0.2/0.5) = 0.5 log 2.5 - 0.2 log 2.5 = 0.3 log 2.5 ~= 0.2749
EXACT_KL = 0.3 * math.log(2.5)


def test_k1_and_k3_expectations_under_the_policy_equal_the_true_kl_exactly():
    """E_{x~p}[k1] = sum_x p(x) log(p(x)/q(x)) = KL(p||q) by definition. E_{x~p}[k3] = E[r - 1] + E[k1] with
    E_p[r] = sum_x p(x) q(x)/p(x) = 1, so also KL. k2 is biased: E[k2] = 0.5 (0.5 + 0.2) (log 2.5)^2 ~= 0.2939."""
    logp, ref = t([math.log(p) for p in P]), t([math.log(q) for q in Q])
    weights = t(P)
    assert (weights * kl_per_token(logp, ref, "k1")).sum().item() == pytest.approx(EXACT_KL, rel=1e-12)
    assert (weights * kl_per_token(logp, ref, "k3")).sum().item() == pytest.approx(EXACT_KL, rel=1e-12)
    assert (weights * kl_per_token(logp, ref, "k2")).sum().item() == pytest.approx(0.35 * math.log(2.5) ** 2)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimator_mean_over_policy_samples_approximates_the_true_kl(estimator):
    """Monte Carlo: N samples x ~ p, the mean estimate is within 5 standard errors of KL(p||q) = 0.3 log 2.5.
    The standard error sqrt(Var_p[k] / N) uses the exact variance of k under p (not the samples'). For k1:
    E[k1^2] = (0.5 + 0.2)(log 2.5)^2, Var = 0.7 (log 2.5)^2 - KL^2 ~= 0.512, so with N = 200000 the tolerance is
    5 * sqrt(0.512 / 200000) ~= 0.008 (about 3% of the KL). A fixed seed keeps the test deterministic."""
    n = 200_000
    per_outcome = [reference_kl(math.log(p), math.log(q), estimator) for p, q in zip(P, Q)]
    variance = sum(p * k**2 for p, k in zip(P, per_outcome)) - EXACT_KL**2
    tolerance = 5 * math.sqrt(variance / n)

    samples = torch.multinomial(t(P), n, replacement=True, generator=torch.Generator().manual_seed(1234))
    logp, ref = torch.log(t(P))[samples], torch.log(t(Q))[samples]
    estimate = kl_per_token(logp, ref, estimator).mean().item()
    assert abs(estimate - EXACT_KL) < tolerance


def test_unknown_kl_estimator_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"k1, k2 or k3.*'k4'"):
        kl_per_token(t([0.0]), t([0.0]), "k4")


def test_shaped_rewards_by_hand():
    """r_t = -beta KL_t, plus the score on the sequence's last real token; beta = 0.5.
    Row 0 (3 tokens, KL 0.2, 0.4, 0.6, score 1): -0.1, -0.2, -0.3 + 1 = 0.7.
    Row 1 (2 tokens, KL 0.2, -0.4, then padding with KL 9, score -2): -0.1, 0.2 - 2 = -1.8, 0.
    Row 2 (1 token, KL 0.8, score 3): -0.4 + 3 = 2.6, 0, 0."""
    kl = t([[0.2, 0.4, 0.6], [0.2, -0.4, 9.0], [0.8, 9.0, 9.0]])
    mask = t([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    rewards = shaped_rewards(t([1.0, -2.0, 3.0]), kl, mask, kl_coef=0.5)
    assert_close(rewards, t([[-0.1, -0.2, 0.7], [-0.1, -1.8, 0.0], [2.6, 0.0, 0.0]]))


def test_leave_one_out_scores_by_hand():
    """k = 3: prompt 0 scores 1, 2, 6 -> 1 - (2 + 6)/2 = -3, 2 - (1 + 6)/2 = -1.5, 6 - (1 + 2)/2 = 4.5;
    prompt 1 scores 5, 5, 5 -> 0, 0, 0 (equal scores carry no signal)."""
    scores = t([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])
    assert_close(leave_one_out_scores(scores, 3), t([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]))


def test_leave_one_out_scores_match_plain_loop():
    rng = random.Random(0)
    k, scores = 4, [rng.uniform(-2, 2) for _ in range(12)]
    expected = [s - (sum(scores[i // k * k:i // k * k + k]) - s) / (k - 1) for i, s in enumerate(scores)]
    assert_close(leave_one_out_scores(t(scores), k), t(expected))


def test_shaped_rewards_of_an_empty_sequence_are_zero():
    """A sequence with no real token has no last token: its rewards must be 0 everywhere (all padding)."""
    kl, mask = t([[0.2, 0.4], [0.0, 0.0]]), t([[1, 1], [0, 0]])
    rewards = shaped_rewards(t([1.0, 5.0]), kl, mask, kl_coef=0.5)
    assert_close(rewards, t([[-0.1, -0.2 + 1.0], [0.0, 0.0]]))


def test_gae_by_hand_with_a_padded_length_one_row():
    """gamma = lambda = 0.5 (so gamma lambda = 0.25). Row 0: r = 1, 0, 2; V = 0.5, 1, 1; V after the end = 0.
        delta_2 = 2 + 0.5 * 0 - 1 = 1;  delta_1 = 0 + 0.5 * 1 - 1 = -0.5;  delta_0 = 1 + 0.5 * 1 - 0.5 = 1
        A_2 = 1;  A_1 = -0.5 + 0.25 * 1 = -0.25;  A_0 = 1 + 0.25 * (-0.25) = 0.9375
        returns = A + V = 1.4375, 0.75, 2
    Row 1 has one real token (r = 3, V = 1) followed by padding holding r = 7, V = 100, which must not leak:
        A_0 = delta_0 = 3 + 0.5 * 0 - 1 = 2, return 3; zeros on padding."""
    rewards = t([[1, 0, 2], [3, 7, 7]])
    values = t([[0.5, 1, 1], [1, 100, 100]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.5, lam=0.5)
    assert_close(advantages, t([[0.9375, -0.25, 1.0], [2.0, 0.0, 0.0]]))
    assert_close(returns, t([[1.4375, 0.75, 2.0], [3.0, 0.0, 0.0]]))


def test_gae_lambda_one_is_monte_carlo_return_minus_baseline_and_lambda_zero_is_td_error():
    """Same row (r = 1, 0, 2; V = 0.5, 1, 1; gamma = 0.5).
    lambda = 1: A_t = sum_l gamma^l r_{t+l} - V_t. G = 1 + 0 + 0.25 * 2 = 1.5, 0 + 0.5 * 2 = 1, 2,
                so A = 1.0, 0.0, 1.0 and returns = G = 1.5, 1, 2.
    lambda = 0: A_t = delta_t = 1, -0.5, 1 and returns = delta + V = 1.5, 0.5, 2."""
    rewards, values, mask = t([[1, 0, 2]]), t([[0.5, 1, 1]]), t([[1, 1, 1]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.5, lam=1.0)
    assert_close(advantages, t([[1.0, 0.0, 1.0]]))
    assert_close(returns, t([[1.5, 1.0, 2.0]]))
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.5, lam=0.0)
    assert_close(advantages, t([[1.0, -0.5, 1.0]]))
    assert_close(returns, t([[1.5, 0.5, 2.0]]))


def test_gae_terminal_reward_with_the_default_gamma_one():
    """gamma = 1, lambda = 0.95, V = 0, reward 1 at the last of 3 tokens only: delta = 0, 0, 1, so
    A = 0.95^2, 0.95, 1 = 0.9025, 0.95, 1."""
    advantages, returns = gae_advantages(t([[0, 0, 1]]), t([[0, 0, 0]]), t([[1, 1, 1]]), gamma=1.0, lam=0.95)
    assert_close(advantages, t([[0.9025, 0.95, 1.0]]))
    assert_close(returns, advantages)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_plain_loop_on_right_padded_batches(seed, gamma, lam):
    """Random lengths (including 0, 1 and the full width); rewards and values after each sequence's end are
    garbage of size ~1e3. The reference never sees them, so any leak into a sequence breaks the match."""
    rng, width = random.Random(seed), 9
    lengths = random_lengths(rng, width=width)
    reward_rows, rewards = padded(rng, lengths, width)
    value_rows, values = padded(rng, lengths, width)
    mask = mask_of(lengths, width)
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)

    for i, (r, v) in enumerate(zip(reward_rows, value_rows)):
        expected_advantages, expected_returns = reference_gae(r, v, gamma, lam)
        n = len(r)
        assert_close(advantages[i, :n], t(expected_advantages))
        assert_close(returns[i, :n], t(expected_returns))
    assert_close(advantages * (1 - mask), torch.zeros_like(advantages))
    assert_close(returns * (1 - mask), torch.zeros_like(returns))


@pytest.mark.parametrize("seed", SEEDS)
def test_shaped_rewards_then_gae_match_plain_loop(seed):
    """The rollout path: KL-shaped rewards (garbage KL on padding) then GAE, against a per-sequence loop."""
    rng, width, beta, gamma, lam = random.Random(seed), 9, 0.1, 1.0, 0.95
    # empty rows: see test_shaped_rewards_of_an_empty_sequence_are_zero
    lengths = [n for n in random_lengths(rng, width=width) if n > 0]
    kl_rows, kl = padded(rng, lengths, width)
    value_rows, values = padded(rng, lengths, width)
    scores = [rng.gauss(0, 1) for _ in lengths]
    mask = mask_of(lengths, width)
    advantages, returns = gae_advantages(shaped_rewards(t(scores), kl, mask, beta), values, mask, gamma, lam)

    for i, (k, v, score) in enumerate(zip(kl_rows, value_rows, scores)):
        rewards = [-beta * x for x in k]
        rewards[-1] += score
        expected_advantages, expected_returns = reference_gae(rewards, v, gamma, lam)
        assert_close(advantages[i, : len(k)], t(expected_advantages))
        assert_close(returns[i, : len(k)], t(expected_returns))


def test_empty_rows_give_finite_zero_advantages_losses_and_statistics():
    """An all-padding row (and a batch that is all padding) goes through rewards, GAE, whitening and both losses
    without a NaN, and contributes nothing."""
    mask = t([[1, 1, 0], [0, 0, 0]])
    garbage = t([[0.3, -0.2, 1e3], [1e3, -1e3, 1e3]])
    rewards = shaped_rewards(t([1.0, 2.0]), garbage, mask, 0.1)
    advantages, returns = gae_advantages(rewards, garbage, mask, 1.0, 0.95)
    assert_close(advantages[1], t([0.0, 0.0, 0.0]))
    assert_close(returns[1], t([0.0, 0.0, 0.0]))
    whitened = masked_whiten(advantages, mask)
    loss, stats = policy_loss(garbage, garbage * 0.5, whitened, mask, 0.2)
    v_loss, v_stats = value_loss(garbage, garbage * 0.5, returns, mask, 0.2)
    for value in [*whitened.flatten().tolist(), loss.item(), v_loss.item(), *stats.values(), *v_stats.values(),
                  explained_variance(garbage, returns, mask)]:
        assert math.isfinite(value)

    nothing = torch.zeros_like(mask)
    advantages, returns = gae_advantages(garbage, garbage, nothing, 1.0, 0.95)
    assert_close(advantages, torch.zeros_like(mask))
    assert_close(masked_whiten(advantages, nothing), torch.zeros_like(mask))
    loss, stats = policy_loss(garbage, garbage * 0.5, garbage, nothing, 0.2)
    assert loss.item() == 0.0 and stats == {"clip_fraction": 0.0, "approx_kl": 0.0}
    assert math.isfinite(explained_variance(garbage, garbage, nothing))


def test_explained_variance_by_hand():
    """Returns 1, 2, 3 (variance 2/3; the 50 is padding).
    V = G: residual 0 -> 1.   V = 2, 2, 2 (a constant): residual -1, 0, 1 has the returns' variance -> 0.
    V = 1, 2, 4: residual 0, 0, -1, mean -1/3, variance (1/9 + 1/9 + 4/9) / 3 = 2/9 -> 1 - (2/9) / (2/3) = 2/3."""
    returns, mask = t([[1, 2, 3, 50]]), t([[1, 1, 1, 0]])
    assert explained_variance(t([[1, 2, 3, -7]]), returns, mask) == pytest.approx(1.0)
    assert explained_variance(t([[2, 2, 2, -7]]), returns, mask) == pytest.approx(0.0, abs=1e-12)
    assert explained_variance(t([[1, 2, 4, -7]]), returns, mask) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_explained_variance_matches_plain_loop(seed):
    rng, width = random.Random(seed), 9
    lengths = random_lengths(rng, width=width)
    return_rows, returns = padded(rng, lengths, width, scale=2.0)
    noise_rows, noise = padded(rng, lengths, width, scale=1.0)
    mask = mask_of(lengths, width)
    g = flat(return_rows)
    residual = flat(noise_rows)  # values = returns - noise
    expected = 1 - statistics.pvariance(residual) / statistics.pvariance(g)
    assert explained_variance(returns - noise, returns, mask) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("observed_kl", "expected"), [
    (6.0, 0.1),      # on target: e = 0, beta unchanged
    (6.6, 0.1001),   # e = 6.6 / 6 - 1 = 0.1: beta (1 + 0.1 * 100 / 10000) = 0.1 * 1.001
    (12.0, 0.1002),  # e = 1 clipped to 0.2: 0.1 * 1.002
    (5.4, 0.0999),   # e = -0.1: 0.1 * 0.999
    (0.0, 0.0998),   # e = -1 clipped to -0.2: 0.1 * 0.998
])
def test_adaptive_kl_coef_by_hand(observed_kl, expected):
    """beta <- beta (1 + K_beta e), e = clip(KL / target - 1, -0.2, 0.2), K_beta = n_steps / horizon; here
    beta = 0.1, target = 6, horizon = 10000, n_steps = 100."""
    assert adaptive_kl_coef(0.1, observed_kl, target=6.0, horizon=10000, n_steps=100) == pytest.approx(expected)


def test_adaptive_kl_coef_compounds_and_moves_towards_the_target():
    """KL stuck at twice the target: each update multiplies beta by 1 + 0.2 * 100 / 1000 = 1.02, so after 10
    updates beta = 0.05 * 1.02^10; stuck at 0 it shrinks by 0.98 each time."""
    up = down = 0.05
    for _ in range(10):
        up = adaptive_kl_coef(up, 12.0, target=6.0, horizon=1000, n_steps=100)
        down = adaptive_kl_coef(down, 0.0, target=6.0, horizon=1000, n_steps=100)
    assert up == pytest.approx(0.05 * 1.02**10)
    assert down == pytest.approx(0.05 * 0.98**10)


def test_pad_right_pads_to_the_longest_and_masks_real_tokens():
    out, mask = pad_right([torch.tensor([1.0, 2.0, 3.0], dtype=F64), torch.tensor([4.0]), torch.tensor([])],
                          value=-1.0)
    assert out.dtype == torch.float32 and mask.dtype == torch.float32
    assert_close(out, torch.tensor([[1.0, 2.0, 3.0], [4.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]))
    assert_close(mask, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_pad_right_detaches_and_keeps_width_one_for_all_empty():
    out, mask = pad_right([torch.tensor([0.5], requires_grad=True) * 2])
    assert not out.requires_grad
    assert_close(out, torch.tensor([[1.0]]))
    out, mask = pad_right([torch.tensor([]), torch.tensor([])])
    assert out.shape == mask.shape == (2, 1)
    assert mask.sum() == 0
