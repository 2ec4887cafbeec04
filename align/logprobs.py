"""Per-token log-probabilities, entropies and values of responses, computed on flat packed rows.

A batch of (prompt, response) token sequences is laid out back to back (`align.batching.flat_passes`), each
sequence attending only within itself (`align.attention` segments); the logits that predict response token t of a
sequence are read at the position just before it. Only those positions go through the LM head. A preference
pair's two sequences can share their prompt (`pairs`), which is then computed once.
"""

from __future__ import annotations

import torch

from align.batching import flat_passes, require_segments


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                               with_entropy: bool = True):
    """logits [N, V], targets [N] -> (log p(target) [N], entropy [N] or None), in fp32.

    log p(y) = z_y - logsumexp(z): no [N, V] log-softmax is materialised unless the entropy is asked for."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    normaliser = torch.logsumexp(logits, dim=-1)
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    if not with_entropy:
        return chosen, None
    probs = torch.softmax(logits, dim=-1)
    entropy = normaliser - (probs * logits).sum(-1)  # H = logsumexp(z) - sum_v p_v z_v
    return chosen, entropy


def response_logprobs(model, prompts, responses, pack_length: int, temperature: float = 1.0, with_entropy=False,
                      pairs: list[tuple[int, int]] = ()):
    """Per-token log-probs (and entropies) of each response under `model`: lists of [R_i] tensors.
    `pairs` (index pairs, e.g. chosen and rejected of one prompt) share their common prefix."""
    require_segments(model)
    device = next(model.parameters()).device
    sequences = [p + r for p, r in zip(prompts, responses)]
    logprobs, entropies = [None] * len(prompts), [None] * len(prompts)
    for flat in flat_passes(sequences, pack_length, pairs):
        # response token j of sequence i sits at token_index[P_i + j] and is predicted one position earlier
        predict_at = [flat.token_index[k][len(prompts[i]) - 1 : -1] for k, i in enumerate(flat.sequences)]
        keep, where = torch.unique(torch.cat(predict_at), return_inverse=True)  # [K] sorted positions
        logits = model(input_ids=flat.input_ids.to(device), position_ids=flat.position_ids.to(device),
                       segments=flat.segments, use_cache=False, logits_to_keep=keep.to(device)).logits  # [1, K, V]
        targets = torch.cat([torch.tensor(responses[i]) for i in flat.sequences])
        lp, ent = token_logprobs_and_entropy(logits[0, where.to(device)], targets.to(device), temperature,
                                             with_entropy)
        sizes = [len(responses[i]) for i in flat.sequences]
        for i, value in zip(flat.sequences, lp.split(sizes)):
            logprobs[i] = value
        if with_entropy:
            for i, value in zip(flat.sequences, ent.split(sizes)):
                entropies[i] = value
    return (logprobs, entropies) if with_entropy else logprobs


def response_values(value_model, prompts, responses, pack_length: int):
    """Per-token values V(s_t) of each response (the state before token t): lists of [R_i] tensors.

    `value_model` is a `reward.model.TokenValues` (a transformer with a scalar head at every position).
    """
    require_segments(value_model)
    device = next(value_model.parameters()).device
    values = [None] * len(prompts)
    for flat in flat_passes([p + r for p, r in zip(prompts, responses)], pack_length):
        per_position = value_model(flat.input_ids.to(device), flat.position_ids.to(device), flat.segments)  # [1, T]
        for k, i in enumerate(flat.sequences):
            values[i] = per_position[0, flat.token_index[k][len(prompts[i]) - 1 : -1].to(device)]
    return values


class FrozenReference:
    """Log-probs of the frozen reference policy: with LoRA, the policy itself with its adapters switched off (no
    second copy in memory); with full fine-tuning, a frozen copy of the initial weights."""

    def __init__(self, policy, lora: bool):
        import copy

        self.policy = policy
        self.copy = None if lora else copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, *args, **kwargs):
        if self.copy is not None:
            return response_logprobs(self.copy, *args, **kwargs)
        with self.policy.disable_adapter():
            return response_logprobs(self.policy, *args, **kwargs)
