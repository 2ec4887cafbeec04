"""Every training loss of align, each a small function quoting its equation, the registries that name them, and
the log-probabilities over the vocabulary that the token-level losses read (`gathered_logprobs`).

A registry's keys are the allowed values of the config key that selects from it (`train.loss` of DPO and of GRPO,
`train.policy_loss` of PPO, `train.advantages` of GRPO): a new loss is a new function here plus one registry line.

Shapes: B sequences (or pairs), R response tokens; `mask` [B, R] is 1 on real tokens, 0 on padding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over entries where mask is 1; padding never contributes, even if it holds inf/NaN."""
    return torch.where(mask.bool(), values, 0.0).sum(dim) / mask.sum(dim).clamp(min=1)


# ---- log-probabilities over the vocabulary -------------------------------------------------------------------------

ROWS_AT_ONCE = 256  # rows of [N, V] logits turned into fp32 at once: bounds the copies to ROWS_AT_ONCE x V floats


def scaled_exp(logits: torch.Tensor, shift: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits [n, V] in any float dtype, shift [n, 1] -> exp(z / T - shift): [n, V] in fp32, the scaling and the
    shift in one operation (an add with alpha, which takes bf16 logits as they are) and the exponential in place.
    On a CPU the passes over [n, V], not the arithmetic, are what costs, and this makes fewer than a copy, a
    division, a subtraction and an exponential into new tensors. With the rows' `scaled_logsumexp` as the shift:
    softmax(z / T)."""
    return torch.add(-shift, logits, alpha=1 / temperature).exp_()


def scaled_logsumexp(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits [n, V] in any float dtype -> logsumexp(logits / T) over each row: [n, 1] in fp32, computed as
    m + log sum_v exp(z_v / T - m) with m = max_v z_v / T (`scaled_exp`)."""
    top = logits.amax(-1, keepdim=True).float() / temperature  # [n, 1]
    return scaled_exp(logits, top, temperature).sum(-1, keepdim=True).log() + top


class GatheredLogprobs(torch.autograd.Function):
    """log softmax(z / T) at chosen columns of every row of the logits z [N, V]: [N, C] in fp32, for z in its own
    dtype (bf16 under autocast). Autograd through an fp32 log-softmax would keep an fp32 [N, V] tensor per pass
    until the backward (4 bytes per response token and vocabulary entry); this keeps z as it came and the [N]
    normalisers, works on ROWS_AT_ONCE rows at a time, and recomputes the softmax in the backward:
        d log p_T(c) / d z_v = (1[v = c] - p_T(v)) / T."""

    @staticmethod
    def forward(ctx, logits, columns, temperature):
        normalisers, gathered = [], []
        for block, picked in zip(logits.split(ROWS_AT_ONCE), columns.split(ROWS_AT_ONCE)):
            normalisers.append(scaled_logsumexp(block, temperature))  # [n, 1]
            gathered.append(block.gather(-1, picked).float() / temperature - normalisers[-1])
        normaliser = torch.cat(normalisers)
        ctx.save_for_backward(logits, columns, normaliser)
        ctx.temperature = temperature
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad):  # grad [N, C]
        logits, columns, normaliser = ctx.saved_tensors
        temperature = ctx.temperature
        grad_logits = torch.empty_like(logits)
        for lo in range(0, logits.shape[0], ROWS_AT_ONCE):
            rows = slice(lo, lo + ROWS_AT_ONCE)
            g = grad[rows] / temperature  # the 1 / T of the derivative, on [n, C] instead of [n, V]
            probs = scaled_exp(logits[rows], normaliser[rows], temperature)  # softmax(z / T)
            grad_logits[rows] = probs.mul_(-g.sum(-1, keepdim=True)).scatter_add_(-1, columns[rows], g)
        return grad_logits, None, None


def gathered_logprobs(logits: torch.Tensor, columns: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits [N, V], columns [N, C] (token ids) -> log softmax(logits / T)[n, columns[n, c]]: [N, C] in fp32."""
    return GatheredLogprobs.apply(logits, columns, temperature)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits [N, V] -> the entropy of softmax(logits / T) at every row [N], in fp32, ROWS_AT_ONCE rows at a time:
    H = logsumexp(z / T) - sum_v p_v z_v / T."""
    entropies = []
    for block in logits.split(ROWS_AT_ONCE):
        if block.requires_grad:  # an entropy bonus: one fp32 copy, so that the gradient is rounded to bf16 only once
            block = block.float()
        normaliser = scaled_logsumexp(block, temperature)  # [n, 1]
        weighted = (scaled_exp(block, normaliser, temperature) * block).sum(-1)  # sum_v p_v z_v: [n]
        entropies.append(normaliser[:, 0] - weighted / temperature)
    return torch.cat(entropies)


# ---- supervised fine-tuning --------------------------------------------------------------------------------------


def token_unlikelihood(logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-level unlikelihood of one answer (Welleck et al. 2020, "Neural Text Generation with Unlikelihood
    Training", eq. 4): at every step, lower the probability of the tokens the answer has already used (other than
    the step's own target), the training signal against repetition that likelihood alone lacks:
        L_UL = - sum_t sum_{c in C_t} log(1 - p(c | y_<t, x)),    C_t = {y_1, ..., y_{t-1}} minus {y_t}
    (each earlier token counted once). logprobs: [n, V] log-probs at the answer's n steps; targets: [n] its
    tokens. Returns the sum over steps (a scalar)."""
    n = targets.shape[0]
    return answer_token_unlikelihood(logprobs.gather(1, targets[None, :].expand(n, n)), targets)


def answer_token_unlikelihood(answer_logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`token_unlikelihood` from the log-probs of the answer's own tokens only: answer_logprobs [t, j] =
    log p(y_j | y_<t, x), [n, n] (the only entries of the [n, V] log-probs that C_t can name)."""
    n = targets.shape[0]
    earlier = torch.ones(n, n, dtype=torch.bool, device=targets.device).tril(-1)  # [t, j]: j < t
    same = targets[:, None] == targets[None, :]  # [t, j]: y_t == y_j
    first_use = ~(same & earlier).any(dim=1)  # [j]: y_j does not occur before j
    candidates = earlier & first_use[None, :] & ~same  # [t, j]: y_j is in C_t
    p = answer_logprobs.exp()  # [t, j]: p(y_j | y_<t, x)
    return -torch.where(candidates, torch.log1p(-p.clamp(max=1.0 - 1e-6)), 0.0).sum()


def repeated_ngram_tokens(tokens: list[int], n: int = 4) -> list[bool]:
    """The candidates of sequence-level unlikelihood (Welleck et al. 2020, section 5.2, eq. 7 with "repeat-n"):
    True at every token of an n-gram of `tokens` that already occurred earlier in `tokens` (occurrences may
    overlap), False elsewhere. [0, 1, 2, 3, 0, 1, 2, 3] with n=4 -> the second 0 1 2 3 is True."""
    flagged, seen = [False] * len(tokens), set()
    for start in range(len(tokens) - n + 1):
        ngram = tuple(tokens[start : start + n])
        if ngram in seen:
            flagged[start : start + n] = [True] * n
        seen.add(ngram)
    return flagged


def sequence_unlikelihood(logprobs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Sequence-level unlikelihood (Welleck et al. 2020, eq. 7) of the model's own continuations: push down the
    probability of each token that repeats an earlier n-gram (`repeated_ngram_tokens`),
        L_ULS = - sum_t [y_t is a candidate] log(1 - p(y_t | y_<t, x)),
    averaged over the candidates. logprobs: [N] the model's log-probs of the continuations' tokens (with
    gradients); candidates: [N] bool. 0 without candidates."""
    p = logprobs.exp().clamp(max=1.0 - 1e-6)
    return -torch.where(candidates, torch.log1p(-p), 0.0).sum() / candidates.sum().clamp(min=1)


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


# ---- KL to a reference policy -----------------------------------------------------------------------------------


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimates of KL(policy || reference) from samples of the policy (Schulman 2020, "Approximating
    KL divergence"), with log r = log p_ref - log p_policy:
        k1 = -log r              (unbiased, can be negative)
        k2 = (log r)^2 / 2       (biased, low variance)
        k3 = (r - 1) - log r     (unbiased, always >= 0; GRPO's penalty, Shao et al. 2024, eq. 4)
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_estimator must be k1, k2 or k3, got {estimator!r}")


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


# ---- policy gradient without a critic: GRPO and its variants ---------------------------------------------------
# k completions are sampled for each of P prompts; a completion's advantage is its reward relative to the other
# completions of its prompt (its group), and every token of the completion shares it. Rewards: [P, k] ->
# advantages [P, k]. A group whose rewards are all equal gets advantages of exactly 0 (no rounding residue).


def _centred(rewards: torch.Tensor) -> torch.Tensor:
    """r_i - mean(r) within each group (row); exactly 0 in a group whose rewards are all equal."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return torch.where(equal_groups(rewards)[:, None], torch.zeros_like(centred), centred)


def equal_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[P] True where every reward of the group equals the first: such a group carries no learning signal."""
    return (rewards == rewards[:, :1]).all(dim=1)


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath, section 4.1.2, outcome supervision): the group-normalised reward
        A_i = (r_i - mean(r)) / (std(r) + eps)
    with std the sample standard deviation of the group (divisor k - 1, as TRL's GRPOTrainer computes it)."""
    return _centred(rewards) / (rewards.std(dim=1, keepdim=True) + eps)


def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"): GRPO without the
    division by the group's std, which weights groups with little spread (too easy, too hard) up:
        A_i = r_i - mean(r)"""
    return _centred(rewards)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs"; the leave-one-out baseline of Kool et al. 2019): each completion against the mean of the
    other k - 1 of its group,
        A_i = r_i - 1/(k-1) sum_{j != i} r_j  =  k/(k-1) * (r_i - mean(r))"""
    k = rewards.shape[1]
    return _centred(rewards) * (k / (k - 1))


ADVANTAGES = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages}
AdvantageName = Literal[tuple(ADVANTAGES)]  # the values `train.advantages` of GRPO accepts

# How per-token losses l_{i,t} [B, R] (completion i, token t; `mask` 1 on its |o_i| real tokens) add up to the
# loss of a minibatch of B completions. l_{i,t} is the clipped surrogate (`clipped_surrogate`) plus, with the KL in
# the loss, beta * KL_t; `max_new_tokens` is the generation budget L_max.


def grpo_loss(per_token: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """GRPO (Shao et al. 2024, eq. 3): the mean over tokens of each completion, then over completions,
        L = 1/B sum_i 1/|o_i| sum_t l_{i,t}
    (a token of a short completion weighs more than one of a long completion)."""
    return masked_mean(per_token, mask, dim=1).mean()


def dr_grpo_loss(per_token: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): the token sum over a constant, the batch's completions times the generation
    budget, so no completion's tokens are weighted by its own length:
        L = 1/(B * L_max) sum_i sum_t l_{i,t}"""
    return torch.where(mask.bool(), per_token, 0.0).sum() / (per_token.shape[0] * max_new_tokens)


def dapo_loss(per_token: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """DAPO (Yu et al. 2025, section 3.3, token-level policy gradient loss): the mean over every token of the batch,
        L = 1/(sum_i |o_i|) sum_i sum_t l_{i,t}
    (every token weighs the same); DAPO pairs it with clip-higher, eps_high > eps_low (`clip_range_high`)."""
    return masked_mean(per_token, mask)


GRPO_LOSSES = {"grpo": grpo_loss, "dr_grpo": dr_grpo_loss, "dapo": dapo_loss}
GRPO_TOKEN_MEANS = {"dapo"}  # losses that are means over the tokens (not the completions) of a minibatch
GRPOLossName = Literal[tuple(GRPO_LOSSES)]  # the values `train.loss` of GRPO accepts


def group_policy_loss(logprobs, old_logprobs, advantages, mask, loss: str, clip_range: float,
                      clip_range_high: float | None, max_new_tokens: int, penalty: torch.Tensor | None = None):
    """The loss of a minibatch of completions: per token the clipped surrogate with the completion's advantage,
        l_{i,t} = max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - eps_low, 1 + eps_high))  (+ penalty_{i,t}),
    added up by GRPO_LOSSES[loss]. logprobs, old_logprobs, mask, penalty: [B, R]; advantages: [B].
    Returns (loss, {clip_fraction, approx_kl})."""
    per_token, stats = clipped_surrogate(logprobs, old_logprobs, advantages[:, None].expand_as(logprobs), mask,
                                         clip_range, clip_range_high)
    if penalty is not None:
        per_token = per_token + penalty
    return GRPO_LOSSES[loss](per_token, mask, max_new_tokens), stats
