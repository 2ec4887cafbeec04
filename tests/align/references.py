"""Plain-loop references for the RL maths, and random right-padded batches to compare the batched code with.

The references are obviously-correct per-sequence, per-token Python written from the papers' equations; they never
see the padding at all. The batches hold large garbage after each row's end, so any leak across a sequence's end
shows up in a comparison."""

import math
import random
import statistics

import torch

F64 = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list, list]:
    """Eq. 16 as the finite sum A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V_T = 0."""
    T = len(rewards)
    next_values = values[1:] + [0.0]
    deltas = [rewards[i] + gamma * next_values[i] - values[i] for i in range(T)]
    advantages = [sum((gamma * lam) ** k * deltas[i + k] for k in range(T - i)) for i in range(T)]
    returns = [advantages[i] + values[i] for i in range(T)]
    return advantages, returns


def reference_whiten(entries: list[float], shift_mean: bool = True) -> list[float]:
    mean = sum(entries) / len(entries)
    std = math.sqrt(statistics.variance(entries) + 1e-8)  # unbiased (n - 1)
    return [(x - mean) / std + (0.0 if shift_mean else mean) for x in entries]


def reference_kl(logprob: float, ref_logprob: float, estimator: str) -> float:
    r = math.exp(ref_logprob - logprob)  # p_ref(x) / p_policy(x)
    return {"k1": -math.log(r), "k2": 0.5 * math.log(r) ** 2, "k3": (r - 1) - math.log(r)}[estimator]


def reference_policy_loss(logprobs, old_logprobs, advantages, eps) -> tuple[float, float, float]:
    """-mean_t min(rho A, clip(rho, 1-eps, 1+eps) A) over all tokens; clip fraction = tokens where the clipped
    term is the strictly smaller (active) one; approx KL = mean (rho - 1) - log rho."""
    objectives, clipped, kls = [], 0, []
    for lp, old, a in zip(logprobs, old_logprobs, advantages):
        rho = math.exp(lp - old)
        plain, clip = rho * a, min(max(rho, 1 - eps), 1 + eps) * a
        objectives.append(min(plain, clip))
        clipped += clip < plain
        kls.append((rho - 1) - math.log(rho))
    n = len(objectives)
    return -sum(objectives) / n, clipped / n, sum(kls) / n


def reference_value_loss(values, old_values, returns, eps) -> tuple[float, float]:
    losses, clipped = [], 0
    for v, old, g in zip(values, old_values, returns):
        v_clip = old + min(max(v - old, -eps), eps)
        losses.append(max((v - g) ** 2, (v_clip - g) ** 2))
        clipped += (v_clip - g) ** 2 > (v - g) ** 2
    return 0.5 * sum(losses) / len(losses), clipped / len(losses)


def random_lengths(rng: random.Random, batch: int = 7, width: int = 9) -> list[int]:
    """Always an empty row, a length-1 row and a full row, plus random lengths, in random order."""
    lengths = [0, 1, width] + [rng.randint(1, width) for _ in range(batch - 3)]
    rng.shuffle(lengths)
    return lengths


def padded(rng: random.Random, lengths: list[int], width: int, scale: float = 1.0, garbage: float = 1e3):
    """(rows of real values, [B, width] tensor) with large garbage after each row's end."""
    rows = [[rng.gauss(0, scale) for _ in range(n)] for n in lengths]
    full = [row + [rng.gauss(0, garbage) for _ in range(width - len(row))] for row in rows]
    return rows, t(full)


def mask_of(lengths: list[int], width: int) -> torch.Tensor:
    return t([[1.0] * n + [0.0] * (width - n) for n in lengths])


def real(tensor: torch.Tensor, lengths: list[int]) -> list[list[float]]:
    return [tensor[i, :n].tolist() for i, n in enumerate(lengths)]


def flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]
