"""FSDP2 for `run.data_parallel: fsdp2`: torch's own `fully_shard` on CPU (gloo) or GPU (nccl).

accelerate (1.15) builds DDP on CPU whatever its FSDP config says, so align shards the models itself:

- **Sharding.** Every decoder layer, then the whole model, is a `fully_shard` unit over all processes: each process
  keeps 1/N of every weight (trained and frozen), of every gradient and of the optimiser's state. A unit's weights
  are gathered at its first forward pass of an optimiser step and stay gathered until its backward pass
  (`reshard_after_forward=False`, ZeRO-2's schedule: the passes of one step gather once); the backward pass
  reduce-scatters the gradients, averaged over the processes as DDP averages them, so every loss normalisation of
  `align.distributed` holds unchanged.
- **Equal passes.** FSDP2 reduces a unit's gradients once per forward pass that reached it, as a collective: every
  process must run as many forward passes with gradients before a backward pass as every other. A process whose
  packed passes are fewer repeats its first ones at weight 0 (`padding_passes`).
- **Passes without gradients** (frozen trunks, reference log-probs, values for GAE, evaluations, the rollout copy's
  weights) run inside `gathered(...)`: every unit gathered once, by every process together; inside, each process
  runs as many passes as it needs, with no collective.
- **Checkpoints hold gathered weights** (`full_tensors`, `full_optimizer_state`): the same files as one process
  writes, so a run resumes on any number of processes, with DDP or FSDP2 (`shard_like`, `shard_optimizer_state`).

Every function here that gathers is a collective: call it on every process, in the same order.
"""

from __future__ import annotations

from contextlib import contextmanager
from itertools import cycle, islice

import torch

def shard(model, layers) -> None:
    """Split `model` (in place) between every process: each of its decoder `layers` a unit, then the rest
    (embeddings, final norm, heads). Call before building the optimiser: the parameters become DTensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from align.distributed import processes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (processes(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)


def units(*models) -> list:
    """The FSDP2 units inside `models` (none for a model that is not sharded)."""
    from torch.distributed.fsdp import FSDPModule

    return [module for model in models for module in model.modules() if isinstance(module, FSDPModule)]


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gathered(*models):
    """Every unit of `models` gathered (a collective) for the passes inside, which then run with no collective and
    any number of passes per process; sharded again on exit. Nothing to do for models that are not sharded."""
    sharded = units(*models)
    for unit in sharded:
        unit.unshard()
    try:
        yield
    finally:
        for unit in sharded:
            unit.reshard()


def padding_passes(model, passes: int) -> int:
    """How many forward passes with gradients this process must add to its `passes` so that it runs as many as the
    process with the most (FSDP2 reduces a unit's gradients once per pass that reached it); 0 when `model` is not
    sharded or no gradients are recorded."""
    if not (torch.is_grad_enabled() and is_sharded(model)):
        return 0
    import torch.distributed as dist

    most = torch.tensor([passes], dtype=torch.int64)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most) - passes


def pad_passes(model, passes: list, forward, outputs: list) -> None:
    """Under FSDP2 with gradients, run the forward passes this process lacks (`padding_passes`): `forward(pass)` on
    its own passes again, in turn, their outputs' sum joined at weight 0 to the output (in `outputs`, by sequence
    index) of the first sequence of its first pass, so that the backward pass reaches them."""
    missing = padding_passes(model, len(passes))
    if missing:
        first = passes[0].sequences[0]
        outputs[first] = outputs[first] + sum(forward(flat).float().sum()
                                              for flat in islice(cycle(passes), missing)) * 0.0


def state_of(model) -> dict[str, torch.Tensor]:
    """What `model.state_dict()` holds (parameters and persistent buffers, by the same names), read from the
    modules as they are: inside `gathered`, a sharded model's whole weights. (FSDP2's state-dict hooks would put
    its shards back first.)"""
    state = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        named = [*module._parameters.items(),
                 *((n, b) for n, b in module._buffers.items() if n not in module._non_persistent_buffers_set)]
        for name, tensor in named:
            if tensor is not None:
                state.setdefault(f"{prefix}.{name}" if prefix else name, tensor.detach())
    return state


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (gathered: a collective), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_tensors(named) -> dict[str, torch.Tensor]:
    """{name: whole tensor} of (name, tensor) pairs, detached."""
    return {name: full_tensor(tensor.detach()) for name, tensor in named}


def shard_like(tensors: dict[str, torch.Tensor], parameters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors cut as the same-named DTensor parameters are (each process keeps its own part; no
    communication); tensors of other parameters unchanged."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    out = {}
    for name, tensor in tensors.items():
        p = parameters.get(name)
        if isinstance(p, DTensor):
            tensor = distribute_tensor(tensor.detach().to(p.dtype), p.device_mesh, p.placements, src_data_rank=None)
        out[name] = tensor
    return out


def full_optimizer_state(optimizer) -> dict:
    """`optimizer.state_dict()` with every DTensor state gathered: what one process's optimiser would save."""
    state = optimizer.state_dict()
    return {**state, "state": {index: {key: full_tensor(value) for key, value in entry.items()}
                               for index, entry in state["state"].items()}}


def shard_optimizer_state(state: dict, optimizer) -> dict:
    """A saved optimiser state (whole tensors) cut as `optimizer`'s DTensor parameters are, to load into it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    cut = {}
    for index, entry in state["state"].items():
        p = parameters[int(index)]
        cut[index] = {key: distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)
                      if isinstance(p, DTensor) and torch.is_tensor(value) and value.shape == p.shape else value
                      for key, value in entry.items()}
    return {**state, "state": cut}
