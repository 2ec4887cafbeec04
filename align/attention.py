"""Attention over packed sequences without a [T, T] mask ("variable-length" attention), on any device.

A packed forward pass holds many sequences back to back in one row. Given only restarting position ids,
transformers' `sdpa` builds a block-diagonal mask over the whole row, so attention costs (sum of lengths)^2 and
the CPU kernel reads a T x T mask. Here each sequence (a *segment*) runs its own causal
`scaled_dot_product_attention` call instead (FlashAttention's kernel on CPU): sum(L_i^2) / 2, no mask at all
(README, Speed: what it bought each stage).

A segment may also see a *shared prefix* earlier in the row: the chosen and rejected answers of a preference pair
share their prompt, which is then computed once, laid out as [prompt | chosen tail | rejected tail]; the rejected
tail attends to the prompt and, causally, to itself (its position ids continue from the prompt's end).

    model = attend_by_segments(AutoModelForCausalLM.from_pretrained(path))
    model(input_ids=ids[None], position_ids=pos[None], segments=[Segment(0, 300), Segment(300, 420, 0, 80)])

Without `segments` the implementation is plain `sdpa` (generation, left-padded batches), so one loaded model
serves both. `segments` needs a batch of one row; `uses_segments` says whether a model can take them.
The choice is not saved with the model: a saved checkpoint loads anywhere with transformers' defaults.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IMPLEMENTATION = "align_varlen"


class Segment(NamedTuple):
    """Queries [start, end) attend causally to themselves and fully to keys [prefix_start, prefix_end)."""

    start: int
    end: int
    prefix_start: int = 0
    prefix_end: int = 0


def segments_from_lengths(lengths: list[int]) -> list[Segment]:
    """Back-to-back independent sequences of the given lengths."""
    segments, offset = [], 0
    for n in lengths:
        segments.append(Segment(offset, offset + n))
        offset += n
    return segments


def segments_from_position_ids(position_ids: torch.Tensor) -> list[Segment]:
    """Segments of a flattened row whose position ids restart at 0 for every sequence: [T] -> segments."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("a packed row must start with position id 0")
    return [Segment(s, e) for s, e in zip(starts, starts[1:] + [len(position_ids)])]


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      segments: list[Segment] | None = None, **kwargs):
    """transformers attention interface: query [1, H, T, D], key/value [1, H_kv, T, D] -> ([1, T, H, D], None)."""
    if segments is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"segments need a batch of one packed row, got a batch of {query.shape[0]}")
    if query.shape[1] != key.shape[1]:  # grouped-query attention: every query head group reads one key head
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    covered = sum(s.end - s.start for s in segments)
    if covered != query.shape[2]:
        raise ValueError(f"segments cover {covered} of the row's {query.shape[2]} positions")
    dropout = dropout if module.training else 0.0
    outputs = []
    for s in segments:
        q, k, v = query[:, :, s.start : s.end], key[:, :, s.start : s.end], value[:, :, s.start : s.end]
        if s.prefix_end > s.prefix_start:
            prefix = s.prefix_end - s.prefix_start
            k = torch.cat([key[:, :, s.prefix_start : s.prefix_end], k], dim=2)
            v = torch.cat([value[:, :, s.prefix_start : s.prefix_end], v], dim=2)
            # [L, prefix + L]: every prefix key, then causal within the segment
            rows = torch.arange(s.end - s.start, device=q.device)[:, None]
            cols = torch.arange(prefix + s.end - s.start, device=q.device)[None, :]
            mask = cols <= rows + prefix
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling)
        outputs.append(out)
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, segment_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)  # used only without segments


_register()


def uses_segments(model) -> bool:
    """Whether `model` (a transformers model, possibly wrapped by peft, DDP or align's TokenValues) attends with
    `segment_attention`."""
    while model is not None:
        config = getattr(model, "config", None)
        if config is not None:
            return getattr(config, "_attn_implementation", None) == IMPLEMENTATION
        model = getattr(model, "module", None) or getattr(model, "model", None)  # DDP, TokenValues
    return False


def require_segments(model) -> None:
    if not uses_segments(model):
        raise ValueError("this forward pass needs a model loaded with attn_implementation='align_varlen' "
                         "(align.attention.IMPLEMENTATION; align's model loaders set it)")


def attend_by_segments(model):
    """Switch a loaded transformers model (before any peft wrapping) to segment attention, in place. A model whose
    code cannot switch (e.g. remote code without the attention interface) keeps its own, and says so."""
    try:
        model.set_attn_implementation(IMPLEMENTATION)
    except (ValueError, AttributeError, NotImplementedError) as error:
        print(f"[align] {type(model).__name__} keeps its own attention ({error}); packed passes will be slower")
    return model
