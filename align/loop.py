"""Small pieces every training stage's loop uses: the learning-rate schedule, the optimiser, checkpointing the
trainable state, and sharing a value from the main process with the others. (Precision: align.precision.)"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from align.checkpoint import save_checkpoint


def learning_rate_at(step: int, total_steps: int, peak: float, warmup_ratio: float, schedule: str) -> float:
    """Linear warmup to `peak` over warmup_ratio * total_steps, then cosine/linear decay to 0 (or constant)."""
    warmup = max(1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return peak * max(0.0, 1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def adamw(groups, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (a list, or param groups with their own lr), fused: one kernel per step
    instead of a chain of operations per tensor, which on CPU cost several times more."""
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)


def set_learning_rate(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def check_finite(value: float, stage: str, step: int, what: str = "loss") -> None:
    """Stop a stage on a NaN/inf before anything derived from it is saved."""
    if not math.isfinite(value):
        raise FloatingPointError(f"{stage}: {what} is {value} at step {step}; stopped before saving anything")


def check_finite_parameters(model, stage: str, step: int) -> None:
    """Refuse to save weights that hold a NaN/inf (a loss can be finite one step before the weights blow up)."""
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise FloatingPointError(f"{stage}: parameter {name} is not finite at step {step}; stopped before saving")


def save_training_state(out: Path, step: int, weights, optimizer, state: dict, keep: int) -> Path:
    """Checkpoint the trainable parameters (LoRA adapters, or all weights), optimizer and RNG at `step`.
    `weights`: the model, or align.precision's training weights (fp32 masters under `precision: bf16`)."""
    check_finite_parameters(weights, out.name, step)
    trainable = {name: p for name, p in weights.named_parameters() if p.requires_grad}
    return save_checkpoint(
        out / "checkpoints", step, trainable,
        state={"step": step, **state},
        objects={"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()},
        keep_last=keep,
    )


def restore_training_state(checkpoint: Path, weights, optimizer) -> dict:
    """Load what `save_training_state` wrote back into `weights` (as there) and `optimizer`; return its state."""
    from align.checkpoint import load_checkpoint

    tensors, state, objects = load_checkpoint(checkpoint)
    missing = set(tensors) - {name for name, _ in weights.named_parameters()}
    if missing:
        raise ValueError(f"checkpoint {checkpoint} has parameters this model does not train: {sorted(missing)[:5]}")
    weights.load_state_dict(tensors, strict=False)
    optimizer.load_state_dict(objects["optimizer"])
    torch.set_rng_state(objects["rng"])
    return state


def broadcast(values: tuple, accelerator) -> tuple:
    """The main process's `values`, on every process."""
    if accelerator.num_processes == 1:
        return values
    from accelerate.utils import broadcast_object_list

    return tuple(broadcast_object_list(list(values)))


# ---- graceful stop on SIGTERM / SIGINT ---------------------------------------------------------------------------
# The signal only sets a flag; the loop notices it at the end of a step, where the state is consistent, writes a
# checkpoint there and raises `Interrupted`. A second signal stops at once.

_stop_signal: list[int] = []


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum  # 143 for SIGTERM, 130 for SIGINT, as shells report them


def install_stop_handlers() -> None:
    import signal

    def request_stop(signum, frame):  # noqa: ARG001
        if _stop_signal:
            raise Interrupted(signum)
        _stop_signal.append(signum)
        print(f"\n[align] {signal.Signals(signum).name}: finishing this step, then checkpointing and stopping "
              f"(send it again to stop at once)", flush=True)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)


def stop_if_requested(save_checkpoint) -> None:
    """At a step boundary: if a stop signal arrived, call `save_checkpoint()` and raise `Interrupted`."""
    if _stop_signal:
        save_checkpoint()
        raise Interrupted(_stop_signal[0])


def exit_code_of(error: BaseException) -> int:
    return getattr(error, "exit_code", 130 if isinstance(error, KeyboardInterrupt) else 1)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator of one epoch's shuffle, seeded by the run's seed and the epoch alone: a resumed run
    (and the benchmark replaying a run's batches) sees the same order."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """One epoch's shuffled order of n items (every process computes the same one, then takes its `shard`)."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch)).tolist()


def shard(items: list, accelerator) -> list:
    """This process's share of `items`: every process gets the same number (the remainder is left out), so all
    processes run the same number of steps and none waits forever in a collective."""
    world = accelerator.num_processes
    usable = len(items) - len(items) % world
    return items[:usable][accelerator.process_index :: world]
