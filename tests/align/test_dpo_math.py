"""DPO's implicit rewards and statistics and the reward model's pair metrics, against values derived by hand (the
losses themselves: test_losses.py)."""

import math

import torch

from align.dpo import implicit_rewards, pair_stats, sequence_logps
from align.rm import pair_metrics


def test_implicit_rewards_and_stats():
    """rewards = beta (pi - ref): chosen 0.1*(-1+2)=0.1, rejected 0.1*(-3+2)=-0.1; margin 0.2; accuracy 1."""
    stats = pair_stats(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1)
    expected = {"rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margin": 0.2, "rewards/accuracy": 1.0}
    assert stats.keys() == expected.keys()
    assert all(math.isclose(stats[k], v, abs_tol=1e-6) for k, v in expected.items())
    torch.testing.assert_close(implicit_rewards(torch.tensor([0.0]), torch.tensor([1.0]), 2.0), torch.tensor([-2.0]))


def test_sequence_logps_sum_or_mean():
    tokens = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-4.0])]
    torch.testing.assert_close(sequence_logps(tokens, average=False), torch.tensor([-6.0, -4.0]))
    torch.testing.assert_close(sequence_logps(tokens, average=True), torch.tensor([-2.0, -4.0]))


def test_pair_metrics_count_ties_as_wrong():
    metrics = pair_metrics(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert math.isclose(metrics["accuracy"], 1 / 3, rel_tol=1e-6)
    assert math.isclose(metrics["margin"], 0.0, abs_tol=1e-7)
