"""align's decode kernels. The attention kernel against attention computed in fp64 from its definition, and against
PyTorch's fused attention (the reference the engine uses elsewhere); the elementwise kernels against transformers'
Llama modules in bf16. The kernels' tests run where they do: bf16 on a CPU with AVX-512, with a C++ compiler to
build them."""

import math
import os
import signal
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from align import decode_kernels
from tests.align.launch import finish, kill_launch, launch, printed

needs_kernel = pytest.mark.skipif(
    not decode_kernels.kernel_runs(torch.bfloat16, torch.device("cpu"), 64, 3) or decode_kernels.load_kernel()
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
    out = decode_kernels.kernel(q, keys, values, lengths)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    kernel_error = (out.double() - expected).abs().max().item()
    fused = decode_kernels.reference(q, keys, values, decode_kernels.length_mask(lengths, 48, torch.bfloat16))
    assert kernel_error <= 1e-2 * expected.abs().max().item()  # bf16 keeps 8 bits: one rounding of the output
    assert kernel_error <= (fused.double() - expected).abs().max().item() + 1e-3


@needs_kernel
def test_the_kernel_never_reads_past_a_rows_length():
    """Positions from a row's length on may hold anything (a finished answer's keys, or NaN): the output is the
    same as with them zeroed."""
    lengths = torch.tensor([3, 20, 40])
    q, keys, values = cache(3, 3, 3, 64, capacity=64, seed=1)
    out = decode_kernels.kernel(q, keys, values, lengths)
    for b, n in enumerate(lengths.tolist()):
        keys[b, :, n:], values[b, :, n:] = float("nan"), float("inf")
    torch.testing.assert_close(decode_kernels.kernel(q, keys, values, lengths), out, rtol=0, atol=0)


@needs_kernel
def test_the_kernel_names_what_it_cannot_serve():
    q, keys, values = cache(2, 1, 3, 48, capacity=8)
    with pytest.raises(RuntimeError, match="head_dim 16, 32, 64 or 128"):
        decode_kernels.kernel(q, keys, values, torch.tensor([4, 4]))
    q, keys, values = cache(2, 1, 3, 64, capacity=8)
    with pytest.raises(RuntimeError, match="lengths within"):
        decode_kernels.kernel(q, keys, values, torch.tensor([4, 9]))


def test_the_reference_masks_positions_from_each_rows_length_on():
    """PyTorch's fused attention with `length_mask`: the definition's result, in fp32 (on any machine)."""
    lengths = torch.tensor([1, 7, 12])
    q, keys, values = (t.float() for t in cache(3, 2, 3, 16, capacity=12, seed=2))
    out = decode_kernels.reference(q, keys, values, decode_kernels.length_mask(lengths, 12, torch.float32))
    torch.testing.assert_close(out.double(), by_definition(q, keys, values, lengths), rtol=1e-5, atol=1e-5)


# ---- the elementwise kernels, against transformers' Llama modules in bf16 -------------------------------------------


@needs_kernel
@pytest.mark.parametrize("hidden", [576, 100])  # 100: a last group of 4 lanes
def test_add_rms_norm_is_the_residual_add_then_transformers_rms_norm(hidden):
    """The sum exactly as bf16's add; the norm as LlamaRMSNorm, within one bf16 rounding (its fp32 sum of squares
    adds in another order); with no delta, x itself."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    generator = torch.Generator().manual_seed(3)
    x, delta = (torch.randn(37, hidden, generator=generator).bfloat16() for _ in range(2))
    norm = LlamaRMSNorm(hidden, eps=1e-5).to(torch.bfloat16)
    norm.weight.data = torch.randn(hidden, generator=generator).bfloat16()
    total, normed = decode_kernels.add_rms_norm(x, delta, norm.weight.data, 1e-5)
    assert torch.equal(total, x + delta)
    with torch.no_grad():
        expected = norm(x + delta)
    torch.testing.assert_close(normed, expected, rtol=2**-8, atol=0)
    assert (normed != expected).float().mean() < 0.01
    same, normed = decode_kernels.add_rms_norm(x, None, norm.weight.data, 1e-5)
    assert torch.equal(same, x)
    with torch.no_grad():
        torch.testing.assert_close(normed, norm(x), rtol=2**-8, atol=0)


@needs_kernel
@pytest.mark.parametrize("head_dim", [64, 16])
def test_rotary_into_cache_rotates_as_transformers_and_writes_only_each_rows_position(head_dim):
    """Queries and keys as apply_rotary_pos_emb rotates them, to the bit; keys and values land at (row b,
    positions[b]) of the cache and nowhere else."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    generator = torch.Generator().manual_seed(4)
    width, heads, kv_heads, capacity = 5, 6, 2, 40
    qkv = torch.randn(width, (heads + 2 * kv_heads) * head_dim, generator=generator).bfloat16()
    cos, sin = (torch.randn(width, head_dim, generator=generator).bfloat16() for _ in range(2))
    positions = torch.tensor([0, 3, 39, 7, 7])
    keys = torch.randn(8, kv_heads, capacity, head_dim, generator=generator).bfloat16()
    values = torch.randn(8, kv_heads, capacity, head_dim, generator=generator).bfloat16()
    expected_keys, expected_values = keys.clone(), values.clone()
    q = decode_kernels.rotary_into_cache(qkv, cos, sin, positions, keys, values, heads)
    q_in, k_in, v_in = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    rotated_q, rotated_k = apply_rotary_pos_emb(q_in.unflatten(-1, (heads, head_dim)),
                                                k_in.unflatten(-1, (kv_heads, head_dim)), cos, sin, unsqueeze_dim=1)
    rows = torch.arange(width)
    expected_keys[rows, :, positions] = rotated_k
    expected_values[rows, :, positions] = v_in.unflatten(-1, (kv_heads, head_dim))
    assert torch.equal(q, rotated_q)
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)


@needs_kernel
@pytest.mark.parametrize("size", [1536, 100])
def test_silu_mul_is_transformers_gated_activation(size):
    """SiLU(gate) * up as the Llama MLP computes it in bf16, to the bit, large gates of either sign included."""
    generator = torch.Generator().manual_seed(5)
    gate_up = (torch.randn(9, 2 * size, generator=generator) * 8).bfloat16()
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0]).bfloat16()
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.equal(decode_kernels.silu_mul(gate_up), F.silu(gate) * up)


@needs_kernel
def test_the_elementwise_kernels_name_what_they_cannot_serve():
    x = torch.randn(2, 8).bfloat16()
    with pytest.raises(RuntimeError, match="delta like x"):
        decode_kernels.add_rms_norm(x, torch.randn(2, 4).bfloat16(), torch.ones(8).bfloat16(), 1e-5)
    keys = torch.zeros(2, 1, 4, 8).bfloat16()
    with pytest.raises(RuntimeError, match="positions within the cache"):
        decode_kernels.rotary_into_cache(torch.randn(2, 3 * 8).bfloat16(), torch.ones(2, 8).bfloat16(),
                                         torch.ones(2, 8).bfloat16(), torch.tensor([0, 4]), keys, keys.clone(), 1)


needs_linear = pytest.mark.skipif(
    not decode_kernels.linear_runs(torch.zeros(32, 2, dtype=torch.bfloat16)),
    reason="the product kernel runs on CPUs with AVX512_BF16 and no AMX, with a C++ compiler")


@needs_linear
@pytest.mark.parametrize("rows", [1, 5, 12, 13, 30])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_is_the_product_summed_in_fp32_and_rounded_to_bf16_once(rows, with_bias):
    """x W^T + b for 1 to 30 rows (one pass over the weights serves up to 12; more take further passes, the last
    partial): each output is the fp32 sum rounded to bf16 once, so it is within half a bf16 step of the exact
    product, plus the fp32 sums' own rounding."""
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(96, 160, generator=generator).bfloat16()
    bias = torch.randn(96, generator=generator).bfloat16() if with_bias else None
    x = torch.randn(rows, 160, generator=generator).bfloat16()
    exact = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    out = decode_kernels.PackedLinear(weight, bias)(x)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 96)
    assert ((out.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-4).all()  # half a step: 2^-8 relative
    three_d = decode_kernels.PackedLinear(weight, bias)(x[None])  # any leading dims, as F.linear
    assert torch.equal(three_d[0], out)


@needs_linear
def test_linear_serves_only_what_its_layout_can_hold():
    assert decode_kernels.linear_runs(torch.zeros(64, 576, dtype=torch.bfloat16))
    assert not decode_kernels.linear_runs(torch.zeros(40, 576, dtype=torch.bfloat16))  # N not a multiple of 32
    assert not decode_kernels.linear_runs(torch.zeros(64, 575, dtype=torch.bfloat16))  # K odd
    assert not decode_kernels.linear_runs(torch.zeros(64, 576))  # fp32: PyTorch's products
    with pytest.raises(RuntimeError, match="multiple of 32"):
        decode_kernels.load_kernel().pack_linear_weight(torch.zeros(40, 576, dtype=torch.bfloat16))


@needs_kernel
def test_the_kernels_loops_run_on_every_thread_torch_has():
    """at::parallel_for in an extension is parallel only where the extension is compiled with OpenMP; without it
    every kernel ran on one thread of two."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert decode_kernels.load_kernel().parallel_threads() == 2
    finally:
        torch.set_num_threads(threads)


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from align.decode_kernels import build_lock
with build_lock(Path(sys.argv[1])) as locked:
    print("holding", locked, flush=True)
    time.sleep(600)
"""


def wait_for(process, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in printed(process):
        assert process.poll() is None and time.monotonic() < deadline, printed(process)
        time.sleep(0.1)


@pytest.mark.skipif(decode_kernels.fcntl is None, reason="the build lock is an flock")
def test_a_build_killed_mid_way_leaves_no_lock_that_a_later_build_waits_for(tmp_path):
    """torch's own lock is a file that a killed build leaves behind; align's flock dies with its holder, and the
    file torch left is then removed. While the holder lives, another process waits and then gives up."""
    holder = launch([sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)])
    try:
        wait_for(holder, "holding True")
        (tmp_path / "lock").touch()  # torch's lock, as the holder's build would have made it
        with decode_kernels.build_lock(tmp_path, timeout=0.5) as locked:
            assert not locked
        assert (tmp_path / "lock").exists()  # the live holder's lock is left alone
        os.kill(holder.pid, signal.SIGKILL)  # killed mid-build: torch's file stays, the flock goes
        holder.wait()
        assert (tmp_path / "lock").exists()
        with decode_kernels.build_lock(tmp_path, timeout=5.0) as locked:
            assert locked and not (tmp_path / "lock").exists()
    finally:
        kill_launch(holder.token)


@needs_kernel
def test_a_stale_torch_lock_does_not_hang_loading_the_kernels():
    """What a build killed mid-way leaves: torch's `lock` file in the build directory. Before align's lock, every
    later load waited for it forever (in a process of its own here, so that such a wait fails the test)."""
    script = ("from align import decode_kernels\n"
              "decode_kernels.build_directory().joinpath('lock').touch()\n"
              "assert decode_kernels.load_kernel() is not None\n"
              "assert not decode_kernels.build_directory().joinpath('lock').exists()\n"
              "print('loaded')")
    result = finish(launch([sys.executable, "-c", script]), timeout=600)
    assert result.returncode == 0 and "loaded" in result.stdout, result.stdout
