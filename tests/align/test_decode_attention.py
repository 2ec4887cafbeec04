"""align's decode-attention kernel against attention computed in fp64 from its definition, and against PyTorch's
fused attention (the reference the engine uses elsewhere). The kernel's tests run where it does: bf16 on a CPU
with AVX-512, with a C++ compiler to build it."""

import math

import pytest
import torch

from align import decode_attention

needs_kernel = pytest.mark.skipif(
    not decode_attention.kernel_runs(torch.bfloat16, torch.device("cpu"), 64, 3) or decode_attention.load_kernel()
    is None, reason="the decode-attention kernel runs on AVX-512 CPUs with a C++ compiler")


def by_definition(q, keys, values, lengths):
    """softmax(q k^T / sqrt(D)) v over each row's first lengths[b] positions, in fp64, one row at a time."""
    out = torch.empty(q.shape, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        k, v = keys[b, :, :n].double(), values[b, :, :n].double()  # [KV, n, D]
        scores = q[b].double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [KV, G, n]
        out[b] = scores.softmax(-1) @ v
    return out


def cache(width, kv_heads, groups, head_dim, capacity, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(width, kv_heads, groups, head_dim, generator=generator).bfloat16()
    keys = torch.randn(width, kv_heads, capacity, head_dim, generator=generator).bfloat16()
    values = torch.randn(width, kv_heads, capacity, head_dim, generator=generator).bfloat16()
    return q, keys, values


@needs_kernel
@pytest.mark.parametrize("head_dim,groups", [(16, 2), (32, 1), (64, 3), (128, 4), (64, 8)])
def test_the_kernel_is_attention_over_each_rows_own_positions(head_dim, groups):
    """Rows of lengths 1, 15, 16, 17, 33 and the whole slice (the kernel takes keys sixteen at a time, then one
    by one): within bf16 rounding of the fp64 result, and no further from it than PyTorch's fused attention."""
    lengths = torch.tensor([1, 15, 16, 17, 33, 48])
    q, keys, values = cache(len(lengths), 2, groups, head_dim, capacity=64)
    keys, values = keys[:, :, :48], values[:, :, :48]  # a slice of the cache's positions, as the engine passes
    expected = by_definition(q, keys, values, lengths)
    out = decode_attention.kernel(q, keys, values, lengths)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    kernel_error = (out.double() - expected).abs().max().item()
    fused = decode_attention.reference(q, keys, values, decode_attention.length_mask(lengths, 48, torch.bfloat16))
    assert kernel_error <= 1e-2 * expected.abs().max().item()  # bf16 keeps 8 bits: one rounding of the output
    assert kernel_error <= (fused.double() - expected).abs().max().item() + 1e-3


@needs_kernel
def test_the_kernel_never_reads_past_a_rows_length():
    """Positions from a row's length on may hold anything (a finished answer's keys, or NaN): the output is the
    same as with them zeroed."""
    lengths = torch.tensor([3, 20, 40])
    q, keys, values = cache(3, 3, 3, 64, capacity=64, seed=1)
    out = decode_attention.kernel(q, keys, values, lengths)
    for b, n in enumerate(lengths.tolist()):
        keys[b, :, n:], values[b, :, n:] = float("nan"), float("inf")
    torch.testing.assert_close(decode_attention.kernel(q, keys, values, lengths), out, rtol=0, atol=0)


@needs_kernel
def test_the_kernel_names_what_it_cannot_serve():
    q, keys, values = cache(2, 1, 3, 48, capacity=8)
    with pytest.raises(RuntimeError, match="head_dim 16, 32, 64 or 128"):
        decode_attention.kernel(q, keys, values, torch.tensor([4, 4]))
    q, keys, values = cache(2, 1, 3, 64, capacity=8)
    with pytest.raises(RuntimeError, match="lengths within"):
        decode_attention.kernel(q, keys, values, torch.tensor([4, 9]))


def test_the_reference_masks_positions_from_each_rows_length_on():
    """PyTorch's fused attention with `length_mask`: the definition's result, in fp32 (on any machine)."""
    lengths = torch.tensor([1, 7, 12])
    q, keys, values = (t.float() for t in cache(3, 2, 3, 16, capacity=12, seed=2))
    out = decode_attention.reference(q, keys, values, decode_attention.length_mask(lengths, 12, torch.float32))
    torch.testing.assert_close(out.double(), by_definition(q, keys, values, lengths), rtol=1e-5, atol=1e-5)
