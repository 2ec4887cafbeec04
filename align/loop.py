"""The training-loop shell every stage runs its steps in, and the small pieces it is made of.

`Training` holds a stage's optimiser and does, once for every stage, what surrounds the algorithm's own steps:
planning (steps, learning-rate schedule, resume), the optimiser step (finite checks, clipping, fp32 masters) and
the end-of-step duties (log, evaluate, save, stop on a signal, wait for the other processes):

    training = Training(stage, {"model": model}, cfg.train, total_steps, throughput="tokens")
    while training.step < training.total_steps:
        loss = ...                                   # the stage's own step
        training.backward(loss)
        training.optimizer_step(loss.item())
        training.end_step(log=lambda: {"loss": ...}, evaluate=held_out)

Precision (what `weights` are): align.precision. Checkpoints: align.checkpoint. Several processes: DDP through
accelerate, or FSDP2 (`run.data_parallel: fsdp2`, align.sharding).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from align.checkpoint import save_checkpoint
from align.config import ConfigError
from align.distributed import global_sum
from align.precision import Precision, training_weights
from align.sharding import (full_optimizer_state, full_tensor, full_tensors, gathered, shard, shard_like,
                            shard_optimizer_state, units)


@dataclass
class TrainConfig:
    """The `train:` keys every training stage has; each stage's own class adds its keys and may change a
    default."""

    learning_rate: float = 2.0e-4  # peak learning rate of AdamW, reached after warmup
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    warmup_ratio: float = 0.05  # linear warmup over this fraction of the steps
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup, to 0 (or none)
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm before every optimiser step
    precision: Precision = "auto"  # auto: bf16 where bf16 products are native, else fp32; bf16: bf16 weights +
        # fp32 masters; bf16-autocast: fp32 weights under bf16 autocast (what TRL's bf16=True does); fp32
        # (align.precision)
    log_every: int = 5  # log training metrics every N steps (and at the last)
    save_every: int = 50  # checkpoint every N steps, for resuming after a crash or a signal
    keep_checkpoints: int = 2  # newest checkpoints kept; older ones are deleted


@dataclass
class DatasetTrainConfig(TrainConfig):
    """The `train:` keys of the stages that pass over a fixed dataset in epochs (SFT, RM, DPO)."""

    epochs: int = 1  # passes over the training data (each reshuffled with its own seed)
    max_steps: int | None = None  # stop after this many optimiser steps, even inside an epoch; null: epochs decide
    pack_length: int = 1024  # tokens per packed row (sequences are laid out back to back, never padded)
    eval_every: int = 50  # evaluate on the held-out data every N steps (and at the last; before the first too)


@dataclass
class RLTrainConfig(TrainConfig):
    """The `train:` keys of the stages that learn from their own samples, in iterations (PPO, GRPO)."""

    learning_rate: float = 5.0e-5
    warmup_ratio: float = 0.0
    lr_schedule: Literal["cosine", "linear", "constant"] = "constant"  # over the iterations
    precision: Precision = "auto"  # auto: bf16 (bf16 weights, fp32 masters of the trained ones: the adapters, PPO's
        # value head; the reference and the frozen trunk compute in bf16 too) where bf16 products are native, else
        # fp32 | bf16-autocast (fp32 weights under bf16 autocast: slower, the same accuracy on the validation splits,
        # docs/RESULTS.md) | fp32
    log_every: int = 1
    save_every: int = 10
    iterations: int = 30  # sample -> score -> update cycles
    max_new_tokens: int = 128  # longest completion; one that reaches it unfinished loses missing_eos_penalty
    temperature: float = 1.0  # sampling temperature (also used for the log-probs)
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this much probability
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    old_logprobs: Literal["recompute", "rollout"] = "recompute"  # the log-probs of the policy that sampled, in the
        # clipped ratio and the KL: recompute (a pass of the trained policy before the update) or rollout (those the
        # generating copy computed as it sampled: one pass less; in bf16 they differ from the training pass's by
        # rounding, and the ratio then corrects for that too). With fp32 rollouts both give the same numbers, and
        # the rollout's are used
    trunk_states: Literal["recompute", "rollout"] = "recompute"  # with adapters on the top layers only
        # (model.lora.last_layers): where the frozen layers' output that every pass of an iteration starts from
        # comes from: recompute (one run of those layers over the prompts and responses after sampling) or rollout
        # (what the generation engine's copy computed there as it sampled: that run is saved; in bf16 it differs
        # from the training pass's by rounding). Needs generation.backend engine; with hf the layers run after sampling
    demonstration_column: str | None = None  # a prompt column holding a reference answer (the built-in prompts'
        # "demonstration"): a prompt whose k responses all fail it (train.demonstrate_when) has its last response
        # replaced by that answer, trained on as if sampled (off-policy guidance, align.rl.demonstrate_failed_prompts);
        # such iterations recompute the old log-probs and trunk states. null: only the policy's own responses
    demonstrate_when: Literal["none_follows_all", "a_constraint_none_follows"] = "none_follows_all"  # which prompts
        # get a demonstration: none of whose responses follows every constraint, or with a constraint none follows
    greedy_member: bool = False  # each prompt's first response is the policy's greedy decode of it, the answer
        # evaluation sees, judged against the other k - 1 (align.rl.with_greedy_members): sampled responses seldom
        # loop where greedy decoding does. Such iterations recompute the old log-probs and trunk states


def plan_steps(steps_per_epoch: int, cfg: DatasetTrainConfig, too_few: str) -> int:
    """Optimiser steps of the whole run: `epochs` passes, cut at `max_steps`; `too_few` says why none fit."""
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if total < 1:
        raise ConfigError(too_few)
    return total


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


def check_finite_parameters(named, stage: str, step: int) -> None:
    """Refuse to save weights that hold a NaN/inf (a loss can be finite one step before the weights blow up).
    `named`: (name, tensor) pairs of the trained weights."""
    for name, p in named:
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"{stage}: parameter {name} is not finite at step {step}; stopped before saving")


def save_training_state(out: Path, step: int, weights, optimizer, state: dict, keep: int,
                        write: bool = True) -> Path | None:
    """Checkpoint the trainable parameters (LoRA adapters, or all weights), optimizer and RNG at `step`.
    `weights`: the model, or align.precision's training weights (fp32 masters under `precision: bf16`). Sharded
    weights and optimizer state (FSDP2) are gathered first, by every process (call it on every process): only
    those with `write` write."""
    trainable = full_tensors((name, p) for name, p in weights.named_parameters() if p.requires_grad)
    optimizer_state = full_optimizer_state(optimizer)
    if not write:
        return None
    check_finite_parameters(trainable.items(), out.name, step)
    return save_checkpoint(
        out / "checkpoints", step, trainable,
        state={"step": step, **state},
        objects={"optimizer": optimizer_state, "rng": torch.get_rng_state()},
        keep_last=keep,
    )


def restore_training_state(checkpoint: Path, weights, optimizer) -> dict:
    """Load what `save_training_state` wrote back into `weights` (as there) and `optimizer`; return its state."""
    from align.checkpoint import load_checkpoint

    tensors, state, objects = load_checkpoint(checkpoint)
    parameters = dict(weights.named_parameters())
    missing = set(tensors) - set(parameters)
    if missing:
        raise ConfigError(f"checkpoint {checkpoint} has parameters this model does not train: {sorted(missing)[:5]}; "
                          "rerun with --restart to discard it")
    # sharded parameters (FSDP2) take their part of the gathered tensors
    weights.load_state_dict(shard_like(tensors, parameters), strict=False)
    optimizer.load_state_dict(shard_optimizer_state(objects["optimizer"], optimizer))
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


def stop_requested() -> int | None:
    """The stop signal this process has received, if any (None: none)."""
    return _stop_signal[0] if _stop_signal else None


def stop_if_requested(save_checkpoint) -> None:
    """At a step boundary: if a stop signal arrived at any process, call `save_checkpoint()` and raise
    `Interrupted` (on every process: call it on every process, it agrees through a collective)."""
    import signal

    if global_sum(float(bool(_stop_signal))) > 0:
        save_checkpoint()
        raise Interrupted(_stop_signal[0] if _stop_signal else signal.SIGTERM)


def exit_code_of(error: BaseException) -> int:
    return getattr(error, "exit_code", 130 if isinstance(error, KeyboardInterrupt) else 1)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator of one epoch's shuffle, seeded by the run's seed and the epoch alone: a resumed run
    (and the benchmark replaying a run's batches) sees the same order."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """One epoch's shuffled order of n items (every process computes the same one, then takes its share of each
    step: align.distributed.step_share)."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch)).tolist()


def shard_models(models: dict, precision: str) -> None:
    """FSDP2 (align.sharding.shard) on every model, in place; bf16 masters are not implemented for it."""
    from align.logprobs import decoder_body

    if precision == "bf16":
        raise ConfigError("run.data_parallel=fsdp2 does not keep fp32 master weights yet: set train.precision to "
                          "fp32 or bf16-autocast, or run.data_parallel=ddp")
    for model in models.values():
        shard(model, decoder_body(model).layers)


# ---- the shell --------------------------------------------------------------------------------------------------


class Training:
    """A stage's optimiser over the trainable weights of its `models`, and the duties around each step.

    `models`: name -> model. With one model, checkpoints name its parameters as the model does; with several (PPO's
    policy and value model), `<name>.<parameter>`. `learning_rates`: a peak learning rate per model name where it
    differs from `cfg.learning_rate`. `state`: what else a checkpoint holds (a function returning a JSON-able dict,
    e.g. PPO's KL coefficient); after a resume, `resumed_state` is that dict as saved. `throughput`: the unit of
    `<stage>/<unit>_per_s`, counted with `count()`.

    With several processes and `run.data_parallel: fsdp2` the models are sharded here (align.sharding); the stage
    then runs its passes without gradients inside `align.sharding.gathered`."""

    def __init__(self, stage, models: dict, cfg: TrainConfig, total_steps: int, *, learning_rates: dict = None,
                 state: Callable[[], dict] | None = None, throughput: str | None = None, manifest: dict = None):
        accelerator = stage.accelerator
        self.stage, self.cfg, self.total_steps = stage, cfg, total_steps
        self.sharded = stage.data_parallel == "fsdp2"
        if self.sharded:
            shard_models(models, stage.precision)
            print(f"[align] {stage.name}: FSDP2 over {stage.processes} processes: each holds 1/{stage.processes} of "
                  f"every weight, gradient and optimiser state")
        self.weights = {name: training_weights(model, stage.precision, accelerator.num_processes)
                        for name, model in models.items()}
        self.peaks = [(learning_rates or {}).get(name, cfg.learning_rate) for name in models]
        self.optimizer = adamw([{"params": w.parameters(), "lr": peak} for w, peak in
                                zip(self.weights.values(), self.peaks)], cfg.learning_rate, cfg.weight_decay)
        if self.sharded:  # fully_shard took the place of DDP
            self.models = dict(models)
        else:
            *prepared, self.optimizer = accelerator.prepare(*models.values(), self.optimizer)
            self.models = dict(zip(models, prepared))  # wrapped for the processes (DDP) where there are several
        for name, weights in self.weights.items():
            if weights.reduces_own_gradients:  # bf16 masters on several processes: they all-reduce in fp32, and
                self.models[name].require_backward_grad_sync = False  # DDP does not (what its no_sync() sets)
        self.raw = {name: accelerator.unwrap_model(m) for name, m in self.models.items()}
        self.finished = False  # after `finish`, sharded models stay gathered: later passes run on one process
        self.extra_state, self.throughput = state or dict, throughput
        self.step, self.resumed_state, resume_id = 0, {}, None
        if stage.resume_from:
            self.resumed_state = restore_training_state(stage.resume_from, self, self.optimizer)
            self.step, resume_id = self.resumed_state["step"], self.resumed_state.get("wandb_id")
            print(f"[align] {stage.name}: resuming from {stage.resume_from} at step {self.step}")
        stage.steps = self.step
        stage.start_tracking(resume_id, **(manifest or {}))
        self.grad_norm = self.learning_rate = float("nan")
        self.evaluated: tuple[int, dict] | None = None  # (step, result) of the latest evaluation
        self._window_items, self._window_start = 0, time.perf_counter()
        from tqdm import tqdm

        self.progress = tqdm(total=total_steps, initial=self.step, desc=stage.name, disable=not stage.main)

    # -- the weights, as one set (what checkpoints store) --------------------------------------------------------

    def named_parameters(self):
        """Trainable weights (fp32 masters under `precision: bf16`) by checkpoint name."""
        single = len(self.weights) == 1
        for model_name, weights in self.weights.items():
            for name, p in weights.named_parameters():
                yield (name if single else f"{model_name}.{name}"), p

    def parameters(self) -> list[torch.Tensor]:
        return [p for _, p in self.named_parameters()]

    def load_state_dict(self, tensors: dict[str, torch.Tensor], strict: bool = False) -> None:
        if len(self.weights) == 1:
            next(iter(self.weights.values())).load_state_dict(tensors, strict=strict)
            return
        for model_name, weights in self.weights.items():
            prefix = model_name + "."
            weights.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                    strict=strict)

    # -- one step ------------------------------------------------------------------------------------------------

    def plan_learning_rate(self) -> float:
        """Set this step's learning rate of every parameter group (warmup, then the schedule); return the first."""
        rates = [learning_rate_at(self.step, self.total_steps, peak, self.cfg.warmup_ratio, self.cfg.lr_schedule)
                 for peak in self.peaks]
        for group, lr in zip(self.optimizer.param_groups, rates):
            group["lr"] = lr
        self.learning_rate = rates[0]
        return self.learning_rate

    def backward(self, loss: torch.Tensor) -> None:
        self.stage.accelerator.backward(loss)

    def optimizer_step(self, loss: float) -> float:
        """Check the loss, reduce the gradients the processes' weights hold themselves, clip the gradients, step,
        round the masters into the model; returns the gradient norm."""
        name = self.stage.name
        check_finite(loss, name, self.step)
        for weights in self.weights.values():
            weights.reduce_gradients()
        norm = self.stage.accelerator.clip_grad_norm_(self.parameters(), self.cfg.max_grad_norm)
        self.grad_norm = float(full_tensor(norm))  # over every process's shards under FSDP2
        check_finite(self.grad_norm, name, self.step, "gradient norm")
        self.optimizer.step()
        for weights in self.weights.values():
            weights.step_done()
        self.optimizer.zero_grad(set_to_none=True)
        return self.grad_norm

    def count(self, items: int) -> None:
        """Items (tokens, pairs) this process trained on since the last log: `<stage>/<unit>_per_s`."""
        self._window_items += items

    def end_step(self, log: Callable[[], dict] | None = None, evaluate: Callable[[], dict] | None = None,
                 eval_every: int | None = None) -> None:
        """After a step: log every `log_every` steps, evaluate every `eval_every`, checkpoint every `save_every`
        (and on a stop signal, then stop), and wait for the other processes. `log()` and `evaluate()` return
        metrics named without the stage prefix. `log()` runs on every process, so that it can gather what the
        other processes hold (align.distributed: the logged numbers describe the global batch); the main process
        records them. `evaluate()` runs on the main process only."""
        self.step += 1
        self.stage.steps = self.step
        self.progress.update(1)
        last, cfg, main = self.step == self.total_steps, self.cfg, self.stage.main
        if log is not None and (self.step % cfg.log_every == 0 or last):
            metrics = log()
            if self.throughput:  # items of every process since the last log
                seconds = time.perf_counter() - self._window_start
                metrics[f"{self.throughput}_per_s"] = global_sum(self._window_items) / seconds
                self._window_items, self._window_start = 0, time.perf_counter()
            if main:
                self.stage.log({f"{self.stage.name}/{k}": v for k, v in metrics.items()}, self.step)
            if "loss" in metrics:
                self.progress.set_postfix(loss=f"{metrics['loss']:.3f}")
        if evaluate is not None and eval_every and (self.step % eval_every == 0 or last):
            self.evaluate(evaluate)
        if self.step % cfg.save_every == 0 and not last:
            self.save()
        stop_if_requested(self.save)
        self.stage.accelerator.wait_for_everyone()

    def gathered(self):
        """The context the passes of every process run in outside the update (align.sharding.gathered)."""
        return nullcontext() if self.finished else gathered(*self.raw.values())

    def evaluate(self, evaluate: Callable[[], dict]) -> dict | None:
        """Run a held-out evaluation now, on the main process, and log its numbers as `<stage>/eval/<name>` at this
        step; returns them there, None elsewhere. Call it on every process during training (sharded weights are
        gathered for it); after `finish`, on the main process alone."""
        with self.gathered():
            result = evaluate() if self.stage.main else None
        if result is None:
            return None
        self.evaluated = (self.step, result)
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.stage.log({f"{self.stage.name}/eval/{k}": v for k, v in numbers.items()}, self.step)
        return result

    def latest_evaluation(self, evaluate: Callable[[], dict]) -> dict:
        """The evaluation of the current weights: the loop's last one, or a new one (a run resumed at its end)."""
        if self.evaluated is None or self.evaluated[0] != self.step:
            return self.evaluate(evaluate)
        return self.evaluated[1]

    def save(self) -> Path | None:
        """Checkpoint the trainable weights, optimiser, RNG and the stage's own state at this step (call it on every
        process: the main process writes what every process gathered)."""
        main = self.stage.main
        if not (main or self.sharded):  # with DDP the main process holds every weight itself
            return None
        state = {"wandb_id": self.stage.tracker.run_id, **self.extra_state()} if main else {}
        return save_training_state(self.stage.out, self.step, self, self.optimizer, state, self.cfg.keep_checkpoints,
                                   write=main)

    def finish(self, tokenizer, model: str | None = None, output: Callable = lambda model: model) -> None:
        """The loop is done: save `output(<model with fp32 weights>)` (LoRA merged) as the stage's output, after
        checking that every trained weight is finite. `model`: which of `models` (default: the first)."""
        self.progress.close()
        if self.sharded:  # gathered for good: what follows (saving, evaluations, checks) runs on one process
            for unit in units(*self.raw.values()):
                unit.unshard()
            self.finished = True
        if self.stage.main:
            from align.models import save_model

            check_finite_parameters(self.named_parameters(), self.stage.name, self.step)
            weights = self.weights[model or next(iter(self.weights))]
            save_model(output(weights.fp32_model()), tokenizer, self.stage.out)
