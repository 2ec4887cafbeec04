"""What makes N data-parallel processes compute what one process with the whole batch would.

Three kinds of pieces, each a small function that is the identity with one process:

- **Shares.** An optimiser step's global batch is split between the processes item by item (`step_share`): process p
  takes items p, p + N, p + 2N, ... A process whose share is short (the last, uneven batch of an epoch) fills it
  with zero-weight copies, so every process runs the same number of forward and backward passes: DDP all-reduces
  the gradients in every backward pass, and a process that skipped one would leave the others waiting forever.
- **Loss normalisation.** DDP *averages* gradients over the processes. A loss that is a mean over the global batch
  (items, or tokens) is therefore computed on each process as its own sum times `N / global count`
  (`ddp_scale`), with the count summed over every process (`global_sum`), never this process's own count.
- **Statistics.** Means, variances and whitening over the global batch (`global_mean`, `global_masked_mean`,
  `global_masked_whiten`), and per-sample lists gathered in process order (`gather_list`), so the logged metrics
  of N processes are those of the whole batch, not of the main process's share.

Every collective here must be called by every process, in the same order: call them outside `if main:` blocks.
Sums are all-reduced in float64, so their rounding differs from one process's float32 sum by far less than the
float32 noise of the values summed.
"""

from __future__ import annotations

import torch


def processes() -> int:
    """Processes of this run (1 without torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def process_index() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# ---- shares of a step -----------------------------------------------------------------------------------------


def step_share(items: list, process: int, world: int) -> tuple[list, int]:
    """This process's share of one optimiser step's `items` (the global batch): every `world`-th item from
    `process` on, then copies of the step's first item up to ceil(len(items) / world) entries. Returns (share,
    real): the first `real` entries are this process's items; the copies after them must get weight 0."""
    mine = items[process::world]
    slots = -(-len(items) // world)
    return mine + [items[0]] * (slots - len(mine)), len(mine)


def share_loss_sum(mean_loss, real: int, *outputs: torch.Tensor) -> torch.Tensor:
    """This process's *sum* of per-item losses, from `mean_loss(*outputs)` (a mean over the items of the outputs,
    e.g. align.losses.bradley_terry_loss) on the first `real` items. The padding copies after them stay in the
    graph at weight 0, so that even a process with nothing of its own runs a backward pass through every
    parameter, as DDP's all-reduce expects."""
    connected = sum(output.sum() for output in outputs) * 0.0
    if real == 0:
        return connected
    return mean_loss(*(output[:real] for output in outputs)) * real + connected


def epoch_steps(items: int, per_step: int) -> int:
    """Optimiser steps that see each of `items` once: the last step takes the remainder (every row once per
    epoch; none dropped, none repeated)."""
    return -(-items // per_step)


def epoch_step(order: list, per_step: int, position: int) -> list:
    """The items of step `position` of an epoch whose items come in `order`: `per_step` of them (the last step
    may have fewer)."""
    return order[position * per_step : (position + 1) * per_step]


# ---- sums, means, whitening over every process --------------------------------------------------------------------


def global_sum(value) -> float:
    """`value` (a number or a tensor, summed over its entries) summed over every process, in float64."""
    total = torch.as_tensor(value, dtype=torch.float64).sum().reshape(1)
    if processes() > 1:
        from accelerate.utils import reduce

        total = reduce(total, "sum")
    return float(total)


def global_sums(*values) -> list[float]:
    """Several `global_sum`s in one all-reduce."""
    totals = torch.stack([torch.as_tensor(v, dtype=torch.float64).sum() for v in values])
    if processes() > 1:
        from accelerate.utils import reduce

        totals = reduce(totals, "sum")
    return totals.tolist()


def ddp_scale(global_count: float) -> float:
    """The factor that turns this process's *sum* of per-item (or per-token) losses into its part of the global
    mean, given that DDP averages gradients over the processes: N / global count (0 with nothing to count)."""
    return processes() / global_count if global_count else 0.0


def count_share(local: float) -> float:
    """This process's part of a mean over the items (tokens, samples) of every process: its `local` count x N /
    every process's count. A loss (or statistic) that is a mean over this process's items, times this, is after
    DDP's average over the processes (or `mean_over_processes`) the mean over every process's items; 1 with one
    process."""
    if processes() == 1:
        return 1.0
    total = global_sum(local)
    return local * processes() / total if total else 0.0


def token_share(mask: torch.Tensor) -> float:
    """`count_share` of this process's tokens (the 1s of `mask`): a token mean times this averages right over
    the processes."""
    return count_share(float(mask.sum()))


def process_part(minibatch: torch.Tensor, offset: int, count: int) -> torch.Tensor:
    """The positions, among this process's `count` samples, of the samples of `minibatch` (indices into the
    samples of every process) that this process holds: those in [offset, offset + count). Empty when it holds
    none; the processes' parts of a minibatch are disjoint and together make it up."""
    return minibatch[(minibatch >= offset) & (minibatch < offset + count)] - offset


def global_offset(count: int) -> tuple[int, int]:
    """(the number of items the processes before this one hold, every process's items together), for a batch of
    which each process holds `count` items, contiguous in process order."""
    counts = gather_each(int(count))
    return sum(counts[: process_index()]), sum(counts)


def global_mean(values: torch.Tensor) -> float:
    """The mean of every process's `values` together (as one process holding them all would compute it)."""
    total, count = global_sums(values.detach().double(), values.numel())
    return total / count if count else float("nan")


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`align.losses.masked_mean` (no `dim`) over every process's entries: sum of the masked values / their count,
    both summed over the processes. A 0-d tensor of `values`' dtype."""
    total, count = global_sums(torch.where(mask.bool(), values.detach().double(), 0.0), mask)
    return torch.tensor(total / max(count, 1.0), dtype=values.dtype)


def global_masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) with the mean and the unbiased variance of the masked entries of every
    process (align.ppo.masked_whiten over the global batch); the mean is kept if not `shift_mean`."""
    mean = global_masked_mean(values, mask)
    deviation, count = global_sums(((values.double() - mean.double()) ** 2 * mask), mask)
    var = torch.tensor(deviation / max(count - 1.0, 1.0), dtype=values.dtype)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---- gathering per-sample values ----------------------------------------------------------------------------------


def gather_list(values: list) -> list:
    """Every process's `values` (picklable), concatenated in process order: with each process holding a
    contiguous part of the global batch, the global batch in its own order."""
    if processes() == 1:
        return list(values)
    from accelerate.utils import gather_object

    return gather_object(list(values))


def gather_each(value) -> list:
    """[process 0's `value`, process 1's, ...] (any picklable object)."""
    return gather_list([value])


def mean_over_processes(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over the processes that have it (metrics that are already this process's share of a
    global mean, e.g. scaled by `token_share`, add up to the global one)."""
    every = gather_each(metrics)
    names = list(dict.fromkeys(name for part in every for name in part))
    return {name: sum(p[name] for p in every if name in p) / sum(name in p for p in every) for name in names}
