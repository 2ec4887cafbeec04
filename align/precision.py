"""Training precision: bf16 weights with fp32 master copies (the default), bf16 autocast over fp32 weights, or fp32.

`precision: auto` (the default) picks `bf16` where the hardware multiplies bf16 natively (`fast_bf16`: a GPU, or a
CPU with AVX-512/AMX) and `fp32` elsewhere: on an AVX2-only CPU bf16 products are emulated and many times slower.

`precision: bf16` — the model holds bf16 weights; every trainable one also has an fp32 *master* copy, which the
optimiser updates and into which each micro-batch's gradient is added (in fp32, as soon as backward produces it);
after each optimiser step the masters are rounded into the model's bf16 weights. Frozen weights (a LoRA run's whole
base model, a frozen reference) are bf16 only. This is mixed precision as Megatron-LM and DeepSpeed's bf16
optimiser do it.

`precision: bf16-autocast` — fp32 weights and `torch.autocast(bf16)`, which is what TRL's `bf16=True` does: every
forward pass casts every weight to bf16 again and every backward pass casts every weight gradient back to fp32 — for
LoRA, the whole frozen model in every micro-batch. bf16 weights save those casts (measured with
scripts/profile_sft_step.py: docs/SPEED.md). Activations (the residual stream included) are bf16 in both
modes' matmuls; with bf16 weights the residual stream between layers is bf16 too.

With more than one process DistributedDataParallel would all-reduce the model's own (bf16) gradients, which the
masters have already taken; so under `bf16` the processes run backward without DDP's all-reduce (`no_sync`) and
all-reduce the fp32 master gradients themselves before each optimiser step (`MasterWeights.reduce_gradients`).

    weights = training_weights(model, "bf16", processes=1)   # before building the optimiser
    optimizer = adamw(weights.parameters(), lr)
    with autocast(device, "bf16"): loss = ...
    loss.backward(); clip_grad_norm_(weights.parameters(), 1.0); optimizer.step(); weights.step_done()
    save_training_state(out, step, weights, optimizer, ...)   # masters, by the model's parameter names
    save_model(weights.fp32_model(), tokenizer, out)           # fp32 weights (LoRA merged in fp32)
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Precision = Literal["auto", "bf16", "bf16-autocast", "fp32"]
PRECISIONS = tuple(p for p in get_args(Precision) if p != "auto")  # what "auto" resolves to, and the explicit ones


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r} "
                         "('auto' is resolved by the stage)")


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products are native on `device`: a GPU that supports bf16, or a CPU whose oneDNN has bf16
    kernels (AVX-512 or AMX). Elsewhere (an AVX2 CPU) they are emulated and run many times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, fast: bool, accepted: tuple[str, ...] = PRECISIONS) -> str:
    """`auto` -> where bf16 is fast (`fast_bf16`) the first bf16 mode the stage lists in `accepted` (its config's
    Literal, in order: `Precision` puts bf16 masters first), else `fp32`. Explicit choices are kept."""
    if precision != "auto":
        check_precision(precision)
        return precision
    return next((p for p in accepted if fast and p.startswith("bf16")), "fp32")


def autocast(device: torch.device, precision: str):
    """bf16 autocast for both bf16 modes (with bf16 weights it still keeps losses and softmaxes in fp32), or
    nothing for fp32."""
    check_precision(precision)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision != "fp32")


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the trainable parameters, a tied one once under its first name."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


class ModelWeights:
    """`bf16-autocast` and `fp32`: the optimiser updates the model's own fp32 parameters (DDP all-reduces their
    gradients)."""

    reduces_own_gradients = False  # DDP's all-reduce after backward does it

    def __init__(self, model):
        self.model = model

    def reduce_gradients(self) -> None:
        pass

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in _trainable(self.model)]

    def named_parameters(self):
        return iter(_trainable(self.model))

    def load_state_dict(self, tensors: dict[str, torch.Tensor], strict: bool = False):
        return self.model.load_state_dict(tensors, strict=strict)

    def step_done(self) -> None:
        pass

    def fp32_model(self):
        return self.model


class MasterWeights:
    """`bf16`: the model computes with bf16 weights; the optimiser updates fp32 masters of the trainable ones.
    With several processes the masters' gradients are all-reduced here, in fp32, not by DDP."""

    def __init__(self, model, processes: int = 1):
        self.model = model
        self.reduces_own_gradients = processes > 1  # backward must then run without DDP's all-reduce (no_sync)
        self.named = _trainable(model)
        self.masters = [torch.nn.Parameter(p.detach().float().clone()) for _, p in self.named]
        self.master_of = {id(p): m for (_, p), m in zip(self.named, self.masters)}
        for p in {id(p): p for p in model.parameters()}.values():  # parameters only: buffers such as the
            p.data = p.data.to(torch.bfloat16)  # rotary inverse frequencies keep their fp32
        for _, p in self.named:
            p.register_post_accumulate_grad_hook(self._add_to_master)

    def _add_to_master(self, param: torch.nn.Parameter) -> None:
        """Move a micro-batch's bf16 gradient into the master's fp32 gradient, where micro-batches add up."""
        master = self.master_of[id(param)]
        if master.grad is None:
            master.grad = param.grad.float()
        else:
            master.grad.add_(param.grad)
        param.grad = None

    def reduce_gradients(self) -> None:
        """With several processes: every master's gradient becomes its mean over the processes (as DDP would
        make the model's own), in fp32. A master without a gradient on this process counts as 0."""
        if not self.reduces_own_gradients:
            return
        import torch.distributed as dist

        for master in self.masters:
            if master.grad is None:
                master.grad = torch.zeros_like(master)
        grads = [master.grad for master in self.masters]
        flat = torch.cat([grad.flatten() for grad in grads])  # one all-reduce for every gradient, as DDP's buckets
        dist.all_reduce(flat)
        flat.div_(dist.get_world_size())
        for grad, reduced in zip(grads, flat.split([grad.numel() for grad in grads])):
            grad.copy_(reduced.view_as(grad))

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.masters

    def named_parameters(self):
        """The masters under the model's parameter names: what training checkpoints store."""
        return zip((name for name, _ in self.named), self.masters)

    def load_state_dict(self, tensors: dict[str, torch.Tensor], strict: bool = False) -> None:
        """Restore masters saved by name (a resumed run), then the model's bf16 weights from them."""
        names = {name: i for i, (name, _) in enumerate(self.named)}
        unknown = sorted(set(tensors) - set(names))
        if unknown:
            raise ValueError(f"tensors for parameters this model does not train: {unknown[:5]}")
        with torch.no_grad():
            for name, tensor in tensors.items():
                self.masters[names[name]].copy_(tensor)
        self.step_done()

    @torch.no_grad()
    def step_done(self) -> None:
        """After optimizer.step(): the updated masters, rounded, become the model's weights."""
        for (_, p), master in zip(self.named, self.masters):
            p.copy_(master)

    def fp32_model(self):
        """The model with fp32 weights again, for saving: masters for the trained ones, and the frozen ones as the
        model's own safetensors held them (`restore_frozen_weights`), so that a LoRA merge happens in fp32 over the
        parent's weights, not over their bf16 rounding. Training cannot go on after this."""
        for (_, p), master in zip(self.named, self.masters):
            p.data = master.data
        restore_frozen_weights(self.model, {id(p) for _, p in self.named})
        for p in self.model.parameters():
            if p.dtype != torch.float32:
                p.data = p.data.float()
        return self.model


def restore_frozen_weights(model, trained: set[int]) -> int:
    """Give the bf16 weights not in `trained` (parameter ids) back the values of the safetensors files the model was
    loaded from (`config._name_or_path`: a directory, or a hub id in the local Hugging Face cache at the revision
    align loaded it at, `hub_revision`), each only where it rounds to what the model holds (so a weight that changed
    since is kept); names as a PEFT wrapper gives them are mapped to the file's. Returns how many were restored (0
    where no such files are on this machine)."""
    from safetensors import safe_open

    source = getattr(getattr(model, "config", None), "_name_or_path", "") or ""  # "" for a model made in memory
    revision = getattr(model, "hub_revision", None)  # the hub revision align loaded it at (align.models.load_model)
    frozen = {name.removeprefix("base_model.model.").replace(".base_layer.", "."): p
              for name, p in model.named_parameters() if id(p) not in trained and p.dtype == torch.bfloat16}
    restored = 0
    for file in _safetensors_files(source, revision):
        with safe_open(str(file), framework="pt") as weights:
            for key in set(weights.keys()) & set(frozen):
                tensor, p = weights.get_tensor(key), frozen[key]
                if tensor.shape == p.shape and torch.equal(tensor.to(p.device, torch.bfloat16), p.data):
                    p.data = tensor.to(p.device, torch.float32)
                    restored += 1
    return restored


def _safetensors_files(source: str, revision: str | None = None) -> list:
    """The safetensors files of a model directory, or of a hub id's snapshot at `revision` (None: `main`) in the
    local Hugging Face cache (never downloaded: a model trained here was loaded from that cache); [] where there are
    none."""
    from pathlib import Path

    if not source:
        return []
    if Path(source).is_dir():
        return sorted(Path(source).glob("*.safetensors"))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(source, revision=revision, allow_patterns=["*.safetensors"],
                                     local_files_only=True)
    except (HFValidationError, LocalEntryNotFoundError):  # not a hub id, or not in this machine's cache
        return []
    return sorted(Path(snapshot).glob("*.safetensors"))


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype of a model's weights while it trains with `precision` (bf16 only where masters are kept)."""
    check_precision(precision)
    return torch.bfloat16 if precision == "bf16" else torch.float32


def training_weights(model, precision: str, processes: int = 1):
    """What the optimiser, gradient clipping and training checkpoints work on: masters for `bf16`, else the
    model's own parameters. Call before building the optimiser (and before accelerator.prepare)."""
    check_precision(precision)
    return MasterWeights(model, processes) if precision == "bf16" else ModelWeights(model)
