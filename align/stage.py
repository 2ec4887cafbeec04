"""What every stage does around its training loop: the run section of its config, its directory, the decision
to start, resume or skip, the printed/saved config, and the manifest that says what produced the output.

Stage directory layout (`runs/<run.name>/<stage>/`):
    config.yaml      the resolved config          manifest.json   status, lineage, versions, times, metrics
    metrics.jsonl    every logged step             checkpoints/    periodic, atomic, newest complete wins
    model files      the stage's final output, loadable with `from_pretrained(stage_dir)`
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from align.checkpoint import newest_complete_checkpoint, now, read_manifest, versions, write_manifest
from align.config import ConfigError, config_hash, diff_configs, is_under, key_parts, to_dict, to_yaml


@dataclass
class RunConfig:
    name: str = "default"  # runs/<name>/<stage>/; also the W&B group, so a pipeline's stages appear together
    root: str = "runs"  # the folder that holds every run
    seed: int = 0  # seeds Python, NumPy and torch at the start, every epoch's shuffle and every rollout's sampling
    threads: int | None = None  # intra-op threads per process; default: available cores / local processes
    data_parallel: Literal["ddp", "fsdp2"] = "ddp"  # with several processes: ddp (each holds every weight, the
        # gradients all-reduced) or fsdp2 (torch's fully_shard: weights, gradients and optimiser state split
        # between the processes; checkpoints hold the gathered weights). README "More than one machine"


def stage_dir(cfg) -> Path:
    return Path(cfg.run.root) / cfg.run.name / cfg.stage


# Keys that can change without changing what a stage computes, so changing them never refuses a rerun:
# reward.config_dir is the config file's folder, an absolute path that changes with the checkout's location;
# run.data_parallel splits the same computation another way, and checkpoints hold the gathered weights.
VOLATILE_KEYS = ("tracking", "reward.config_dir", "run.data_parallel")


def changed_keys(old: dict, cfg) -> list[str]:
    """Dotted keys whose value differs between a stage's saved config and `cfg`, leaving out volatile keys and keys
    a newer version of align added (absent from the saved config) that hold their default."""
    new, defaults = to_dict(cfg), to_dict(type(cfg)())
    return [key for key in diff_configs(old, new) if not is_under(key, VOLATILE_KEYS)
            and not (_lookup(old, key) is _ABSENT and _lookup(new, key) in (_lookup(defaults, key),
                                                                          _field_default(cfg, key)))]


_ABSENT = object()


def _lookup(tree, key: str):
    """The value at dotted `key` (list entries as `name[i]`) of a config as plain data, or _ABSENT."""
    for part in key_parts(key):
        if isinstance(part, int) and isinstance(tree, list) and part < len(tree):
            tree = tree[part]
        elif isinstance(part, str) and isinstance(tree, dict) and part in tree:
            tree = tree[part]
        else:
            return _ABSENT
    return tree


def _field_default(cfg, key: str):
    """The default its dataclass gives the field at dotted `key` of `cfg` (e.g. a key inside a list entry), or
    _ABSENT."""
    *parents, leaf = key_parts(key)
    node = cfg
    for part in parents:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            node = getattr(node, part, None)
    fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
    field = fields.get(leaf)
    if field is not None and field.default is not dataclasses.MISSING:
        return field.default
    if field is not None and field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _ABSENT


def is_complete(cfg) -> bool:
    """Whether the stage's directory holds a finished run of exactly this config (volatile keys aside)."""
    manifest = read_manifest(stage_dir(cfg))
    return bool(manifest) and manifest.get("status") == "complete" and \
        manifest.get("config_sha256") == config_hash(cfg, ignore=VOLATILE_KEYS)


def begin_stage(cfg, *, restart: bool = False) -> tuple[Path, Path | None, bool]:
    """Decide how a stage starts. Returns (stage_dir, checkpoint to resume from or None, already_complete).

    - a finished stage with the same config is skipped (`already_complete`);
    - a finished or interrupted stage whose config changed is refused, naming the changed keys, unless `restart`;
      an earlier attempt that stopped before its first step (nothing trained, nothing to resume) is discarded
      instead, so a corrected config just runs;
    - an interrupted stage with the same config resumes from its newest complete checkpoint.
    """
    out = stage_dir(cfg)
    manifest = read_manifest(out)
    digest = config_hash(cfg, ignore=VOLATILE_KEYS)
    if manifest and not restart:
        if manifest.get("config_sha256") != digest:
            old = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
            changed = changed_keys(old or {}, cfg)
            if changed or not old:  # (no change outside volatile keys: a hash from a version that hashed more)
                if made_progress(out, manifest):
                    raise ConfigError(
                        f"stage '{cfg.stage}' in {out} was run with a different config (changed: "
                        f"{', '.join(changed or ['(unknown)'])}); rerun with --restart to discard it, or choose "
                        f"another run.name"
                    )
                print(f"[align] {cfg.stage}: the earlier attempt in {out} stopped before its first step; starting "
                      f"afresh with the new config")
                restart = True
        if manifest.get("status") == "complete":
            return out, None, True
    if restart and out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = newest_complete_checkpoint(out / "checkpoints")
    (out / "config.yaml").write_text(to_yaml(cfg))
    write_manifest(
        out,
        stage=cfg.stage,
        status="running",
        config_sha256=digest,
        versions=versions(),
        started=(manifest or {}).get("started") if resume_from else now(),
        resumed_from=str(resume_from) if resume_from else None,
        pid=os.getpid(),
        malloc_tunables=os.environ.get("GLIBC_TUNABLES"),  # align.runtime.keep_freed_memory
    )
    return out, resume_from, False


def made_progress(out: Path, manifest: dict) -> bool:
    """Whether an earlier attempt in `out` got anywhere worth protecting: it completed, it recorded a completed
    step, or it left a checkpoint (any file under checkpoints/, align's or TRL's, even a half-written one: a
    checkpoint is only written after a step). An attempt killed before its first step has none of these."""
    if manifest.get("status") == "complete" or (manifest.get("steps") or 0) > 0:
        return True
    checkpoints = out / "checkpoints"
    return checkpoints.is_dir() and any(path.is_file() for path in checkpoints.rglob("*"))


def resolve_stage_model(name: str, run: RunConfig) -> str:
    """`model.name` may name an earlier stage of the same run (`sft` -> runs/<run.name>/sft), which must be
    complete; anything else is an alias, a directory or a hub id (see align.models.resolve_model_path)."""
    from align.models import resolve_model_path

    from align.registry import STAGES

    if name in STAGES and not Path(name).exists():
        path = Path(run.root) / run.name / name
        manifest = read_manifest(path)
        if not manifest or manifest.get("status") != "complete":
            state = manifest.get("status") if manifest else "missing"
            raise FileNotFoundError(
                f"model.name '{name}' refers to the {name} stage of run '{run.name}', but {path} is {state}; "
                f"run `align {name}` with run.name={run.name} first, or set model.name to a model directory"
            )
        return str(path)
    return resolve_model_path(name)


def finish_stage(out: Path, status: str, **fields) -> dict:
    return write_manifest(out, status=status, finished=now(), **fields)


def print_config(cfg) -> None:
    print(f"[align] {cfg.stage} config (resolved):")
    for line in to_yaml(cfg).rstrip().splitlines():
        print("    " + line)


class Stage:
    """One run of a stage, from its start to its manifest's last word: processes, directory, tracker, manifest.

        def train(cfg, *, restart=False) -> Path:
            return run_stage(cfg, restart, algorithm)     # algorithm(stage) holds the stage's numbered steps

    `start_tracking` opens the W&B run (the same one again on resume) and marks the manifest running;
    `complete` writes the final manifest and closes the tracker; a failure or a signal is recorded by `run_stage`.
    """

    def __init__(self, cfg, accelerator, out: Path, resume_from: Path | None, done: bool, threads: int):
        self.cfg, self.accelerator, self.out = cfg, accelerator, out
        self.resume_from, self.done, self.threads = resume_from, done, threads
        self.name: str = cfg.stage
        self.main: bool = accelerator.is_main_process
        self.processes: int = accelerator.num_processes
        # how several processes split the training (align.sharding); none with one
        self.data_parallel: str = cfg.run.data_parallel if self.processes > 1 else "none"
        self.tracker = None
        self.steps = 0  # completed steps (iterations), for the manifest of a stage that stops early
        self.precision = stage_precision(cfg, accelerator.device)  # train.precision with `auto` resolved

    def start_tracking(self, resume_id: str | None = None, **manifest) -> None:
        """Open the tracker (main process; `resume_id`: the run to continue) and mark the manifest running with
        what the stage wants recorded (base model, data, lineage)."""
        from align.config import to_dict
        from align.tracking import start_tracker

        if not self.main:
            return
        run = self.cfg.run.name
        self.tracker = start_tracker(self.cfg.tracking, out_dir=self.out, run_name=f"{run}-{self.name}", group=run,
                                     job_type=self.name, config=to_dict(self.cfg), resume_id=resume_id)
        finish_stage(self.out, "running", processes=self.processes, data_parallel=self.data_parallel,
                     precision=self.precision, **manifest)

    def log(self, metrics: dict, step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(metrics, step=step)

    def complete(self, metrics: dict, steps: int, lines: list[str] = (), **fields) -> None:
        """The stage finished: summary and manifest written (with `fields`), tracker closed, a short summary
        printed."""
        if not self.main:
            return
        self.tracker.summary(metrics)
        finish_stage(self.out, "complete", metrics=metrics, steps=steps, wandb_run=self.tracker.run_id, **fields)
        self.tracker.finish(0)
        print(f"\n[align] {self.name} finished -> {self.out}")
        for line in lines:
            print(f"    {line}")
        if self.tracker.sync_hint:
            print(f"    W&B: {self.tracker.sync_hint}")

    def fail(self, error: BaseException) -> None:
        """Record why the stage stopped (interrupted by a signal, or failed) and close the tracker."""
        from align.loop import exit_code_of

        if not self.main:
            return
        finish_stage(self.out, "interrupted" if isinstance(error, KeyboardInterrupt) else "failed", steps=self.steps)
        if self.tracker is not None:
            self.tracker.finish(exit_code_of(error))


def stage_precision(cfg, device) -> str | None:
    """The precision a stage trains in: its `train.precision`, with `auto` resolved for this device (said once)."""
    from align.precision import fast_bf16

    fast = fast_bf16(device)
    resolved = resolved_precision(cfg, fast)
    if getattr(getattr(cfg, "train", None), "precision", None) == "auto":
        why = "bf16 products are native here" if fast else "this device has no native bf16 products"
        print(f"[align] {cfg.stage}: precision auto -> {resolved} ({why})")
    return resolved


def resolved_precision(cfg, fast_bf16: bool) -> str | None:
    """`train.precision` with `auto` resolved in the order of the stage's own config type (what it accepts, first
    choice first), on a device with or without native bf16 products; None for a stage without the field."""
    import typing

    from align.precision import resolve_precision

    chosen = getattr(getattr(cfg, "train", None), "precision", None)
    if chosen is None:
        return None
    accepted = typing.get_args(typing.get_type_hints(type(cfg.train))["precision"])  # what this stage supports
    if getattr(getattr(cfg, "run", None), "data_parallel", None) == "fsdp2":  # FSDP2 keeps no fp32 masters yet
        accepted = tuple(p for p in accepted if p != "bf16")  # (align.loop.shard_models): auto skips them
    return resolve_precision(chosen, fast_bf16, accepted)


def start_stage(cfg, restart: bool = False) -> Stage:
    """The common opening of every stage: processes, the start/resume/skip decision (made on the main process
    and shared), the printed config, threads and seeds."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from align.loop import broadcast
    from align.runtime import seed_everything, set_threads

    # Packed batches need a different number of forward passes on different processes; with DDP's default
    # buffer broadcast every forward pass is a collective and the processes would wait on each other forever.
    # The only buffers (rotary frequencies) are identical everywhere, so there is nothing to broadcast.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    decision = begin_stage(cfg, restart=restart) if accelerator.is_main_process else (None, None, None)
    out, resume_from, done = broadcast(decision, accelerator)
    if done:
        print(f"[align] {cfg.stage}: {out} is already complete with this config; skipping")
        return Stage(cfg, accelerator, out, None, True, 0)
    if accelerator.is_main_process:
        print_config(cfg)
    threads = set_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    return Stage(cfg, accelerator, out, resume_from, False, threads)


def run_stage(cfg, restart: bool, algorithm) -> Path:
    """Run `algorithm(stage)` (a stage's numbered steps) inside what every stage does around them: start, resume
    or skip; on any error or signal, a manifest that says so and a closed tracker; processes shut down."""
    stage = start_stage(cfg, restart)
    if stage.done:
        return stage.out
    try:
        algorithm(stage)
    except BaseException as error:
        stage.fail(error)
        raise
    else:
        # end_training destroys the processes' group: all of them finish their collectives first, so that none
        # tears the group down while another still talks to it (after an error the others may never arrive)
        stage.accelerator.wait_for_everyone()
    finally:
        stage.accelerator.end_training()
    return stage.out
