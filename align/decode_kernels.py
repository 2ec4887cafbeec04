"""align's kernels for one decode step of the generation engine (csrc/decode_kernels.cpp), for bf16 tensors on CPUs
with AVX-512, and PyTorch's attention for everything else.

The step's attention over the KV cache, each row's query heads against that row's own keys and values, positions
[0, lengths[b]), has two implementations:
- `kernel`: for bf16 caches on CPUs with AVX-512. Each (row, key head) is one unit of work that reads only its
  row's keys and values, with the sums, the softmax and the weighted sum of values in fp32.
  PyTorch's fused attention pays a fixed overhead per (row, head) that dominates when a head has only a few queries,
  and reads the masked positions too (docs/BENCHMARK.md, "A decode-attention kernel"). It is compiled on first use
  (once per machine and version of the source; torch's extension cache keeps it) with the C++ compiler and ninja
  that `torch.utils.cpp_extension` uses; where either is missing or the build fails, a warning says why and the
  engine uses `reference`. One process builds at a time, under a lock that a build killed mid-way does not leave
  behind (`build_lock`).
- `reference`: PyTorch's fused attention (`scaled_dot_product_attention`) with the positions beyond each row's
  length masked: any dtype, any device.

Where `kernel` runs, the elementwise work between the step's matrix products runs in the same module, one pass
each where PyTorch runs several operations (at a few dozen rows a step pays each operation's fixed cost, not its
arithmetic): `add_rms_norm`, `rotary_into_cache` and `silu_mul`. Each rounds to bf16 where transformers' bf16
arithmetic does (tests/align/test_decode_kernels.py checks them against transformers' Llama modules).

The step's matrix products run through the module's `linear` (`PackedLinear`) where the CPU has AVX512_BF16 and no
AMX: its dot product of bf16 pairs over a weight laid out for it streams each weight once, and at the few rows of a
rollout's decode steps, where reading the weights is most of a step, it reads them faster than oneDNN's packed
products do (docs/BENCHMARK.md, "Products through AVX512_BF16's dot product"). Where the CPU has AMX, oneDNN uses its
tiles.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import fcntl  # the build lock; where there is none (Windows), builds are not serialised by align
except ImportError:
    fcntl = None

SOURCE = Path(__file__).parent / "csrc" / "decode_kernels.cpp"
HEAD_DIMS = (16, 32, 64, 128)  # the head sizes the kernel is built for
MAX_GROUPS = 8  # query heads per key head


def length_mask(lengths: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """lengths [W] -> an additive mask [W, 1, 1, length]: 0 before each row's length, -inf from it on."""
    beyond = torch.arange(length, device=lengths.device)[None] >= lengths[:, None]  # [W, L]
    mask = torch.zeros(len(lengths), 1, 1, length, dtype=dtype, device=lengths.device)
    return mask.masked_fill_(beyond[:, None, None], float("-inf"))


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [W, KV, G, D] (the G query heads that share a key head), keys/values [W, KV, L, D], mask = `length_mask`
    of the rows' lengths (each in [1, L]) -> out [W, KV, G, D]: softmax(q k^T / sqrt(D)) v over positions
    [0, lengths[b]) of row b."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def kernel_runs(dtype: torch.dtype, device: torch.device, head_dim: int, groups: int) -> bool:
    """Whether the kernels serve a cache of this dtype, device and shape on this CPU (they may still fail to
    build)."""
    return (dtype == torch.bfloat16 and device.type == "cpu" and head_dim in HEAD_DIMS and 1 <= groups <= MAX_GROUPS
            and torch.backends.cpu.get_cpu_capability() == "AVX512")


COMPILE_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma"]  # and -fopenmp where it builds
BUILD_WAIT_SECONDS = 600.0  # how long to wait for another process's build before using PyTorch's operations


def build_directory() -> Path:
    """Where the kernels are built and cached: TORCH_EXTENSIONS_DIR, else torch's extension cache, in a folder of
    this Python and torch version (a module built for another cannot load)."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(root) / f"{python}_torch{torch.__version__}" / "align_decode_kernels"


@contextlib.contextmanager
def build_lock(directory: Path, timeout: float = BUILD_WAIT_SECONDS):
    """Held while this process builds or loads the kernels in `directory`; yields False when another process held
    it for `timeout` seconds. An flock, which the system releases when its holder dies, however it dies.
    torch's own lock (the `lock` file of `directory`) is only a file: a build killed mid-way (Ctrl-C, kill -9, a
    CI timeout) leaves it behind, and every later build waits for it forever, silently. Under this lock no other
    process of align is building, so a `lock` file found is such a leftover, and is removed."""
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # no flock (Windows): torch's lock alone
        yield True
        return
    with open(directory / "align.lock", "w") as handle:
        if not acquire(handle, time.monotonic() + timeout):
            yield False
            return
        (directory / "lock").unlink(missing_ok=True)
        yield True  # the flock goes with the file's closing


def acquire(handle, deadline: float) -> bool:
    """Take an exclusive flock of the open file `handle`, polling until `deadline` (time.monotonic())."""
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


@functools.cache
def load_kernel():
    """The compiled kernels' module, built on first use; None (with a warning) where it cannot be built."""
    directory = build_directory()
    with build_lock(directory) as locked:
        if not locked:
            warnings.warn(f"align's decode kernels: another process has been building them in {directory} for "
                          f"{BUILD_WAIT_SECONDS:.0f} s; generation uses PyTorch's operations", stacklevel=2)
            return None
        return build(directory)


def build(directory: Path):
    """Build (or load the cached build of) the kernels in `directory`; None, with a warning, where that fails."""
    from torch.utils import cpp_extension

    load = functools.partial(cpp_extension.load, "align_decode_kernels", [str(SOURCE)], verbose=False,
                             build_directory=str(directory))
    try:  # with OpenMP, or at::parallel_for runs every loop on one thread
        return load(extra_cflags=COMPILE_FLAGS + ["-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception:  # a compiler without OpenMP: the kernels still beat PyTorch's operations on one thread
        pass
    try:
        module = load(extra_cflags=COMPILE_FLAGS)
        warnings.warn("align's decode kernels were built without OpenMP: each runs on one thread", stacklevel=3)
        return module
    except Exception as error:  # no compiler, no ninja, a failed build: the reference attention still runs
        reason = str(error).strip().splitlines()
        warnings.warn(f"align's decode kernels could not be built ({reason[-1] if reason else error!r}); "
                      f"generation uses PyTorch's operations", stacklevel=3)
        return None


def linear_runs(weight: torch.Tensor) -> bool:
    """Whether `linear` serves products with this weight [N, K] (it may still fail to build): bf16 on a CPU with
    AVX512_BF16's dot product and without AMX, N a multiple of 32 and K even."""
    return (weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and weight.dim() == 2
            and weight.shape[0] % 32 == 0 and weight.shape[1] % 2 == 0
            and torch.backends.cpu.get_cpu_capability() == "AVX512"
            and load_kernel() is not None and load_kernel().linear_serves_cpu())


class PackedLinear:
    """x @ weight^T (+ bias) through the kernels' `linear` (see `linear_runs`): the weight laid out once for it, the
    bias kept in fp32 (the sums are; the output is rounded to bf16 once). Any number of rows; x [..., K] bf16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.packed = load_kernel().pack_linear_weight(weight.detach())
        self.bias = None if bias is None else bias.detach().float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = load_kernel().linear(x.reshape(-1, x.shape[-1]).contiguous(), self.packed, self.bias)
        return out.view(*x.shape[:-1], out.shape[-1])


def kernel(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`reference`'s function, given the rows' lengths [W] (int64) instead of their mask, for bf16 tensors on an
    AVX-512 CPU (see `kernel_runs`); the rows of D values in keys and values must be contiguous (a slice of the
    cache's positions is). Positions from each row's length on are never read."""
    return load_kernel().decode_attention(q, keys, values, lengths)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H] (+ delta [N, H]) -> (that sum, RMSNorm of it times `weight` [H]): the residual stream's add and the
    next layer's norm in one pass, as transformers computes them in bf16 (the norm's arithmetic in fp32)."""
    x, normed = load_kernel().add_rms_norm(x, delta, weight, eps)
    return x, normed


def rotary_into_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                      keys: torch.Tensor, values: torch.Tensor, heads: int) -> torch.Tensor:
    """qkv [W, (heads + 2 KV) * D] (the fused projection's output) -> the rotated queries [W, heads, D]; the rotated
    keys and the values go into the cache keys/values [slots, KV, L, D] at row b, position positions[b]. cos, sin
    [W, D]: the rotary tables at each row's position."""
    return load_kernel().rotary_into_cache(qkv, cos, sin, positions, keys, values, heads)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [N, 2I], the fused [gate, up] projection's output -> SiLU(gate) * up [N, I]."""
    return load_kernel().silu_mul(gate_up)
