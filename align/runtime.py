"""Process-wide settings that must be chosen deliberately on CPU: threads, OpenMP waiting, seeds.

torch's OpenMP worker threads spin for a while after each parallel region before they sleep; with another process
busy on the same cores (a second rank, the test runner's other worker) spinning slows both many times over, so
the ranks of a launch wait passively (`OMP_WAIT_POLICY=PASSIVE`: sleep at once). A process alone
keeps OpenMP's default, brief spinning: between the many small operations of a decode or training step a sleeping
thread has to be woken again each time, which made single-process stages markedly slower (docs/SPEED.md). The
policy must be in the environment before torch is imported, so the CLI calls `configure_environment()` first
thing; a user's own setting wins.
"""

from __future__ import annotations

import os
import random
import sys


def configure_environment(threads: int | None = None) -> None:
    """Set OpenMP/tokenizer environment defaults (before importing torch). The user's own settings win."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:  # ranks of one launch share the machine's cores
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fork-safety warnings otherwise
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


# glibc's malloc hands every block of 32 MiB or more back to the kernel when it is freed (mmap/munmap), and shrinks
# its heap when the top is free: the logits, activations and gradients of every training step are then faulted in
# again page by page, and a stage spends much of its CPU time in the kernel (docs/SPEED.md, "Freed memory kept").
# These tunables keep freed memory in the heap for the next step: no mmap for large blocks, no trimming.
MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def freed_memory_tunables() -> str | None:
    """`MALLOC_TUNABLES` where they apply and nobody chose otherwise; None where the C library is not glibc, or where
    GLIBC_TUNABLES is set already (the user's own setting wins, an empty one keeps glibc's defaults)."""
    import platform

    if "GLIBC_TUNABLES" in os.environ or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    return MALLOC_TUNABLES


def keep_freed_memory() -> None:
    """Restart this process (same PID, arguments and environment) with `freed_memory_tunables()`, where glibc reads
    them: at start-up. Nothing is done where they do not apply (the restarted process finds GLIBC_TUNABLES set)."""
    tunables = freed_memory_tunables()
    if tunables is None:
        return
    os.environ["GLIBC_TUNABLES"] = tunables
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def die_with_parent() -> None:
    """In a process `align pipeline` started (`ALIGN_PARENT_PID` set): ask Linux to SIGKILL this process when the
    pipeline's process dies, so that a pipeline killed outright (kill -9, out of memory) takes its running stage with
    it rather than leave it writing into the run directory beside the rerun. Elsewhere (no prctl) nothing is done."""
    parent = os.environ.pop("ALIGN_PARENT_PID", None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):  # the pipeline died before the request was made
        os.kill(os.getpid(), signal.SIGKILL)


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads (default: the cores this process may use, split across local ranks)."""
    import torch

    if not threads:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, cores // local_ranks)
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
