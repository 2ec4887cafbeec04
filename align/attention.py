"""Attention over packed sequences without a [T, T] mask ("variable-length" attention), on any device.

A packed forward pass holds many sequences back to back in one row. Given only restarting position ids,
transformers' `sdpa` builds a block-diagonal mask over the whole row, so attention costs (sum of lengths)^2 and
the CPU kernel reads a T x T mask. Here each sequence (a *segment*) attends on its own, causally: sum(L_i^2) / 2,
no row-wide mask (docs/SPEED.md: what it bought each stage). A segment of up to SCORES_MAX_KEYS keys writes its
scores out (`scores_attention`, one batched matmul per segment, as transformers' eager attention computes them); a
longer one runs `scaled_dot_product_attention`'s fused kernel, whose memory stays linear in its length.

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

import functools
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
    check_segments(segments, query.shape[2])
    dropout = dropout if module.training else 0.0
    # One split per tensor, not a slice per segment: a slice's backward writes a zero-filled gradient as large as
    # the whole row, so per-segment slicing cost (segments x row) in zero fills and adds; a split's backward is one cat.
    sizes = [s.end - s.start for s in segments]
    queries, keys, values = query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2)
    outputs = []
    for i, s in enumerate(segments):
        q, k, v = queries[i], keys[i], values[i]
        prefix = s.prefix_end - s.prefix_start
        if prefix:
            k = torch.cat([_prefix(s, segments, keys, key), k], dim=2)
            v = torch.cat([_prefix(s, segments, values, value), v], dim=2)
        if k.shape[2] <= SCORES_MAX_KEYS and not dropout:
            outputs.append(scores_attention(q, k, v, prefix, scaling))
            continue
        if prefix:  # [L, prefix + L]: every prefix key, then causal within the segment
            mask = _bias(q.shape[2], prefix, 1, q.dtype, str(q.device)) == 0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                 enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling,
                                                 enable_gqa=True)
        outputs.append(out)
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


# Segments with at most this many keys (prefix included) attend with explicit scores, longer ones with SDPA's
# fused kernel, whose memory stays linear in length. On a 2-core AVX-512 CPU the fused forward+backward was level
# with explicit scores at 64 tokens, slower from 128 to 512 and faster from 768 on (timings: docs/SPEED.md).
SCORES_MAX_KEYS = 512


def scores_attention(q, k, v, prefix: int, scaling: float | None):
    """Causal attention of one segment with its scores written out, as transformers' eager attention does.

    q [1, H, L, D]; k, v [1, H_kv, prefix + L, D] -> [1, H, L, D]. Grouped-query attention without repeating keys:
    the query heads that read one key head are stacked, [H_kv, groups * L, D], so scores are one batched matmul
    [H_kv, groups * L, prefix + L] with the mask added in the same call. Softmax of bf16 scores runs in fp32 inside
    the kernel."""
    _, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    stacked = q.reshape(kv_heads, groups * length, dim)
    bias = _bias(length, prefix, groups, q.dtype, str(q.device))  # [groups * L, prefix + L]: 0 or -inf
    scores = torch.baddbmm(bias, stacked, k[0].transpose(1, 2), alpha=dim**-0.5 if scaling is None else scaling)
    out = torch.bmm(torch.softmax(scores, dim=-1), v[0])  # [H_kv, groups * L, D]
    return out.reshape(1, heads, length, dim)


@functools.lru_cache(maxsize=256)
def _bias(length: int, prefix: int, groups: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """[groups * L, prefix + L] additive mask: query i sees every prefix key and segment keys up to i."""
    rows = torch.arange(length, device=device)[:, None]
    cols = torch.arange(prefix + length, device=device)[None, :]
    bias = torch.zeros(length, prefix + length, dtype=dtype, device=device)
    return bias.masked_fill(cols > rows + prefix, float("-inf")).repeat(groups, 1)


def check_segments(segments: list[Segment], length: int) -> None:
    """Segments must tile the row [0, length) in order, each prefix lying before its segment."""
    position = 0
    for s in segments:
        if s.start != position or s.end <= s.start:
            raise ValueError(f"segments must cover the row's {length} positions in order without gaps; "
                             f"{s} follows position {position}")
        if s.prefix_end > s.prefix_start and not 0 <= s.prefix_start < s.prefix_end <= s.start:
            raise ValueError(f"{s}: its prefix must lie in the row before the segment")
        position = s.end
    if position != length:
        raise ValueError(f"segments cover {position} of the row's {length} positions")


def _prefix(s: Segment, segments: list[Segment], pieces: tuple[torch.Tensor, ...], whole: torch.Tensor):
    """Keys (or values) [1, H_kv, prefix, D] of s's prefix: sliced from the split piece that holds it (a gradient
    the size of that piece), else from the whole row."""
    for other, piece in zip(segments, pieces):
        if other.start <= s.prefix_start and s.prefix_end <= other.end:
            return piece[:, :, s.prefix_start - other.start : s.prefix_end - other.start]
    return whole[:, :, s.prefix_start : s.prefix_end]


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
