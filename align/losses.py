"""Every training loss of align, each a small function quoting its equation, and the registries that name them.

A registry's keys are the allowed values of the config key that selects from it (`train.loss` of DPO,
`train.policy_loss` of PPO): a new loss is a new function here plus one registry line.

Shapes: B sequences (or pairs), R response tokens; `mask` [B, R] is 1 on real tokens, 0 on padding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over entries where mask is 1; padding never contributes, even if it holds inf/NaN."""
    return torch.where(mask.bool(), values, 0.0).sum(dim) / mask.sum(dim).clamp(min=1)


# ---- reward model -------------------------------------------------------------------------------------------------


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Bradley-Terry loss of a reward model (Ouyang et al. 2022, eq. 1; the margin m as in Llama 2, Touvron et al.
    2023, eq. 2):
        L = -mean_i log sigmoid(r(x_i, y_i^chosen) - r(x_i, y_i^rejected) - m)
    chosen, rejected: [B] rewards. Returns a scalar."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


# ---- direct preference optimisation -----------------------------------------------------------------------------
# Inputs are [B] sequence log-probs of the policy and the reference for the chosen (c) and rejected (r) answers:
#     h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x))


def dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): L = -mean log sigmoid(beta * h), log-probs summed over tokens."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * h).mean()


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17): L = mean (h - 1 / (2 beta))^2, with h built from log-probs *averaged* per
    token (`DPO_AVERAGES_TOKENS`)."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return ((h - 1.0 / (2.0 * beta)) ** 2).mean()


DPO_LOSSES = {"sigmoid": dpo_sigmoid_loss, "ipo": ipo_loss}
DPO_AVERAGES_TOKENS = {"ipo"}  # losses whose sequence log-probs are per-token means rather than sums
DPOLossName = Literal[tuple(DPO_LOSSES)]  # the values `train.loss` of DPO accepts


# ---- policy gradient: PPO ---------------------------------------------------------------------------------------


def clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_range: float,
                      clip_range_high: float | None = None):
    """Per-token clipped surrogate of PPO (Schulman et al. 2017, eq. 7), as a loss to minimise:
        l_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high)),   rho_t = exp(logp_t - logp_old_t)
    (eps_high = eps_low unless given: DAPO's asymmetric clip). Returns (l [B, R], {clip_fraction, approx_kl})
    where approx_kl is the masked mean of (rho - 1) - log rho (k3)."""
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    with torch.no_grad():
        stats = {
            "clip_fraction": float(masked_mean((clipped > unclipped).float(), mask)),
            "approx_kl": float(masked_mean(torch.expm1(log_ratio) - log_ratio, mask)),
        }
    return torch.maximum(unclipped, clipped), stats


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped policy loss, averaged over every real token of the batch:
        L = mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps))"""
    per_token, stats = clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_range)
    return masked_mean(per_token, mask), stats


POLICY_LOSSES = {"clipped": ppo_policy_loss}
PolicyLossName = Literal[tuple(POLICY_LOSSES)]  # the values `train.policy_loss` of PPO accepts


def value_loss(values, old_values, returns, mask, clip_range: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (as in OpenAI baselines' PPO2):
        V_clip = V_old + clip(V - V_old, -eps, eps);  L = 0.5 * mean_t max((V - G)^2, (V_clip - G)^2)"""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": float(masked_mean(((clipped_values - returns) ** 2 > (values - returns) ** 2)
                                                          .float(), mask))}
    return loss, stats
