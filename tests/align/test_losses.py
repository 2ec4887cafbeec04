"""Every loss in `align/losses.py` against values derived by hand from its paper's equation (the docstrings work
them out), and the PPO losses against plain-loop references on random right-padded batches."""

import math
import random

import pytest
import torch
from torch.testing import assert_close

from align.losses import (
    DPO_LOSSES,
    POLICY_LOSSES,
    bradley_terry_loss,
    dpo_sigmoid_loss,
    ipo_loss,
    masked_mean,
    ppo_policy_loss as policy_loss,
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

    assert set(DPO_LOSSES) == {"sigmoid", "ipo"} and set(POLICY_LOSSES) == {"clipped"}
    for name in DPO_LOSSES:
        assert load_config(DPOConfig, None, [f"train.loss={name}"]).train.loss == name
    with pytest.raises(ConfigError, match="train.loss' = 'hinge' is not one of 'sigmoid', 'ipo'"):
        load_config(DPOConfig, None, ["train.loss=hinge"])
    with pytest.raises(ConfigError, match="train.policy_loss' = 'x' is not one of 'clipped'"):
        load_config(PPOConfig, None, ["train.policy_loss=x"])
