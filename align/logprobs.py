"""Per-token log-probabilities, entropies and values of responses, computed on flat packed rows.

A batch of (prompt, response) token sequences is laid out back to back (`align.batching.flat_passes`), each
sequence attending only within itself (`align.attention` segments); the logits that predict response token t of a
sequence are read at the position just before it. Only those positions go through the LM head. Sequences that
start alike can share that prefix (`groups`: a preference pair's prompt, the k completions of one prompt), which is
then computed once.

With LoRA on the top layers only (`model.lora.last_layers`), the layers below are frozen and the same for the
policy, its reference (adapters off) and every update of a PPO iteration: `trunk_states` runs them once per
iteration, and every later pass (`trunk=`) runs only the top layers on the kept hidden states.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from align.attention import require_segments
from align.batching import flat_passes
from align.losses import answer_token_unlikelihood, gathered_logprobs, token_entropy
from align.sharding import pad_passes


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                               with_entropy: bool = True, entropy_grad: bool = True):
    """logits [N, V], targets [N] -> (log p(target) [N], entropy [N] or None), in fp32. log p(y) = z_y -
    logsumexp(z): no [N, V] log-softmax is kept. `entropy_grad` False: the entropy is for logging only, computed
    without gradients (so nothing of it is kept for the backward)."""
    chosen = gathered_logprobs(logits, targets[:, None], temperature)[:, 0]
    if not with_entropy:
        return chosen, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        return chosen, token_entropy(logits, temperature)


# ---- a frozen trunk, run once and shared --------------------------------------------------------------------------


@dataclass
class Trunk:
    """Hidden states after the first `layers` (frozen) layers, per sequence: states[i] is [L_i, hidden]."""

    layers: int
    states: list[torch.Tensor]

    def subset(self, indices) -> "Trunk":
        return Trunk(self.layers, [self.states[int(i)] for i in indices])


def decoder_body(model):
    """The transformer body (the module holding `.layers` and `.norm`) under DDP, TokenValues, peft and
    *ForCausalLM / *ForSequenceClassification wrappers."""
    model = getattr(model, "module", model)  # DDP
    while not hasattr(model, "layers"):
        model = model.get_base_model() if hasattr(model, "get_base_model") else model.model
    return model


@contextmanager
def only_layers(model, layers: slice, final_norm: bool = True):
    """Run `model` through `layers` of its body only (and its final norm only if `final_norm`)."""
    body = decoder_body(model)
    all_layers, norm = body.layers, body.norm
    body.layers = torch.nn.ModuleList(list(all_layers)[layers])
    if not final_norm:
        body.norm = torch.nn.Identity()
    try:
        yield
    finally:
        body.layers, body.norm = all_layers, norm


@torch.no_grad()
def trunk_states(model, sequences: list[list[int]], layers: int, pack_length: int,
                 groups: list[tuple[int, ...]] = ()) -> Trunk:
    """Run every sequence through the first `layers` layers of `model`'s body once: the input of layer `layers`.
    Sequences of a group (`align.batching.flat_passes`) compute their common prefix once, and each keeps its own
    copy of its states."""
    body = decoder_body(model)
    device = next(body.parameters()).device
    states = [None] * len(sequences)
    with only_layers(body, slice(0, layers), final_norm=False):
        for flat in flat_passes(sequences, pack_length, groups):
            hidden = body(input_ids=flat.input_ids.to(device), position_ids=flat.position_ids.to(device),
                          segments=flat.segments, use_cache=False).last_hidden_state[0]  # [T, hidden]
            for k, i in enumerate(flat.sequences):
                states[i] = hidden[flat.token_index[k].to(device)]
    return Trunk(layers, states)


def rollout_trunk(layers: int, states: list[torch.Tensor], sequences: list[list[int]], dtype: torch.dtype) -> Trunk:
    """A `Trunk` from the states the generation engine kept as it sampled (`align.engine.Completion.states`: the
    input of layer `layers` at every position of a sequence but the last, whose token was sampled, never run).
    The last position gets zeros: nothing that is read comes from it, since attention looks only backwards and no
    log-prob or value is read at a sequence's last position (it would predict what follows the response)."""
    kept = []
    for sequence, state in zip(sequences, states, strict=True):
        if len(state) != len(sequence) - 1:
            raise ValueError(f"rollout_trunk: {len(state)} states for a sequence of {len(sequence)} tokens; "
                             f"expected one for each token but the last")
        kept.append(torch.cat([state.to(dtype), state.new_zeros(1, state.shape[-1], dtype=dtype)]))
    return Trunk(layers, kept)


@torch.no_grad()
def trunk_matches(model, layers: int, values: bool = False) -> bool:
    """Whether running `model` as trunk + top layers gives what a full run gives (a model whose forward does more
    than embed -> layers -> norm, e.g. scales its embeddings, would not): checked on one short sequence, fp32."""
    prompt, response = [[11, 12, 13, 14]], [[15, 16, 17, 18, 19]]
    run = response_values if values else response_logprobs
    trunk = trunk_states(model, [prompt[0] + response[0]], layers, 64)
    full, split = run(model, prompt, response, 64)[0], run(model, prompt, response, 64, trunk=trunk)[0]
    return torch.allclose(full.float(), split.float(), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def same_trunk(model, other, layers: int) -> bool:
    """Whether the first `layers` layers of two models compute the same thing: the same weights and buffers in their
    embeddings, rotary embedding and those layers, and the same states for one short sequence (which covers what the
    weights do not, such as the norms' epsilon). Then one trunk run serves both: a value model made from the policy,
    or from a reward model trained only above those layers."""
    bodies = decoder_body(model), decoder_body(other)
    if type(bodies[0]) is not type(bodies[1]) or min(len(b.layers) for b in bodies) < layers:
        return False
    parts = [[b.embed_tokens, getattr(b, "rotary_emb", None), *list(b.layers)[:layers]] for b in bodies]
    for mine, theirs in zip(*parts):
        if (mine is None) != (theirs is None):
            return False
        if mine is None:
            continue
        tensors = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in (mine, theirs)]
        if tensors[0].keys() != tensors[1].keys() or not all(
                torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0]):
            return False
    probe = [[11, 12, 13, 14, 15]]
    states = [trunk_states(m, probe, layers, 64).states[0] for m in (model, other)]
    return torch.equal(*states)


def frozen_trunk_layers(lora, model, values: bool = False) -> int | None:
    """How many layers of `model` lie below adapters on its top `lora.last_layers` layers (the model's
    `model.lora` section): frozen, so one run per iteration serves every later pass. None with full fine-tuning,
    adapters on every layer, or a model that cannot be run in two parts (`trunk_matches`; said once)."""
    if not (lora.enabled and lora.last_layers):
        return None
    layers = decoder_body(model).config.num_hidden_layers - lora.last_layers
    if layers < 1:
        return None
    if not trunk_matches(model, layers, values=values):
        print(f"[align] {type(decoder_body(model)).__name__} cannot be run in two parts; every pass runs all its "
              f"layers")
        return None
    return layers


def _inputs(flat, device, trunk: Trunk | None) -> dict:
    """Model inputs of one flat pass: token ids, or the trunk's hidden states of its sequences laid out as the pass
    lays them out (a sequence that shares a prefix with its group's first contributes only the tokens after it)."""
    inputs = {"position_ids": flat.position_ids.to(device), "segments": flat.segments, "use_cache": False}
    if trunk is None:
        return {**inputs, "input_ids": flat.input_ids.to(device)}
    states = [trunk.states[i][shared:] for i, shared in zip(flat.sequences, flat.shared)]
    return {**inputs, "inputs_embeds": torch.cat(states)[None]}


def _top_layers(model, trunk: Trunk | None):
    """With a trunk: run only the layers above it."""
    return only_layers(model, slice(trunk.layers, None)) if trunk is not None else nullcontext()


# ---- log-probs and values ------------------------------------------------------------------------------------------


def response_logprobs(model, prompts, responses, pack_length: int, temperature: float = 1.0, with_entropy=False,
                      groups: list[tuple[int, ...]] = (), trunk: Trunk | None = None, with_unlikelihood=False,
                      entropy_grad=True):
    """Per-token log-probs (and entropies) of each response under `model`: lists of [R_i] tensors; with
    `with_unlikelihood`, also each response's token-level unlikelihood (a scalar tensor each, at temperature 1:
    align.losses.token_unlikelihood), after the entropies where those are asked for; `entropy_grad` False: the
    entropies carry no gradient (for logging).
    Each group of indices (chosen and rejected of one prompt; the completions of one prompt) computes its common
    prefix once (`align.batching.flat_passes`); `trunk` (states of these sequences from `trunk_states`) skips the
    layers below it."""
    require_segments(model)
    device = next(model.parameters()).device
    sequences = [p + r for p, r in zip(prompts, responses)]
    logprobs, entropies, unlikelihoods = [None] * len(prompts), [None] * len(prompts), [None] * len(prompts)

    def forward(flat, keep=1):  # keep: the positions whose logits the LM head computes (a padding pass: one)
        with _top_layers(model, trunk):
            return model(**_inputs(flat, device, trunk), logits_to_keep=keep).logits

    passes = flat_passes(sequences, pack_length, groups)
    for flat in passes:
        # response token j of sequence i sits at token_index[P_i + j] and is predicted one position earlier
        predict_at = [flat.token_index[k][len(prompts[i]) - 1 : -1] for k, i in enumerate(flat.sequences)]
        keep, where = torch.unique(torch.cat(predict_at), return_inverse=True)  # [K] sorted positions
        # index_select, not logits[0, where]: positions predicting several tokens (a shared prefix's last) repeat
        # in `where`, and the backward of advanced indexing adds their gradients in a thread-dependent order
        predicting = forward(flat, keep.to(device))[0].index_select(0, where.to(device))  # [N, V]
        targets = torch.cat([torch.tensor(responses[i]) for i in flat.sequences])
        lp, ent = token_logprobs_and_entropy(predicting, targets.to(device), temperature, with_entropy,
                                             entropy_grad)
        sizes = [len(responses[i]) for i in flat.sequences]
        for i, value in zip(flat.sequences, lp.split(sizes)):
            logprobs[i] = value
        if with_entropy:
            for i, value in zip(flat.sequences, ent.split(sizes)):
                entropies[i] = value
        if with_unlikelihood:  # each answer's tokens' log-probs at each of its steps, at temperature 1
            for i, steps in zip(flat.sequences, predicting.split(sizes)):
                answer = torch.tensor(responses[i], device=device)
                columns = answer[None].expand(len(answer), -1)
                unlikelihoods[i] = answer_token_unlikelihood(gathered_logprobs(steps, columns), answer)
    pad_passes(model, passes, forward, logprobs)  # FSDP2: as many passes as every other process (align.sharding)
    extras = [entropies] * with_entropy + [unlikelihoods] * with_unlikelihood
    return (logprobs, *extras) if extras else logprobs


def response_values(value_model, prompts, responses, pack_length: int, groups: list[tuple[int, ...]] = (),
                    trunk: Trunk | None = None):
    """Per-token values V(s_t) of each response (the state before token t): lists of [R_i] tensors. `groups` and
    `trunk` as in `response_logprobs`.

    `value_model` is a `reward.model.TokenValues` (a transformer with a scalar head at every position).
    """
    require_segments(value_model)
    device = next(value_model.parameters()).device
    values = [None] * len(prompts)

    def forward(flat):
        with _top_layers(value_model, trunk):
            return value_model(**_inputs(flat, device, trunk))  # [1, T]

    passes = flat_passes([p + r for p, r in zip(prompts, responses)], pack_length, groups)
    for flat in passes:
        per_position = forward(flat)
        for k, i in enumerate(flat.sequences):
            values[i] = per_position[0, flat.token_index[k][len(prompts[i]) - 1 : -1].to(device)]
    pad_passes(value_model, passes, forward, values)  # FSDP2: as many passes as every other process
    return values


class FrozenReference:
    """Log-probs of the frozen reference policy: with LoRA, the policy itself with its adapters switched off (no
    second copy in memory); with full fine-tuning, a frozen copy of the initial weights, in the precision the
    policy will compute in (`align.precision.weights_dtype`), taken before any training or resumed weights."""

    def __init__(self, policy, lora: bool, precision: str = "fp32"):
        import copy

        from align.precision import weights_dtype

        self.policy = policy
        self.copy = None
        if not lora:
            self.copy = copy.deepcopy(policy).eval().requires_grad_(False)
            for p in self.copy.parameters():  # parameters only: buffers (rotary frequencies) keep their fp32
                p.data = p.data.to(weights_dtype(precision))

    @torch.no_grad()
    def logprobs(self, *args, **kwargs):
        if self.copy is not None:
            return response_logprobs(self.copy, *args, **kwargs)
        with self.policy.disable_adapter():
            return response_logprobs(self.policy, *args, **kwargs)
