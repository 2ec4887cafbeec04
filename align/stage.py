"""What every stage does around its training loop: the run section of its config, its directory, the decision
to start, resume or skip, the printed/saved config, and the manifest that says what produced the output.

Stage directory layout (`runs/<run.name>/<stage>/`):
    config.yaml      the resolved config          manifest.json   status, lineage, versions, times, metrics
    metrics.jsonl    every logged step             checkpoints/    periodic, atomic, newest complete wins
    model files      the stage's final output, loadable with `from_pretrained(stage_dir)`
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from align.checkpoint import newest_complete_checkpoint, now, read_manifest, versions, write_manifest
from align.config import ConfigError, config_hash, diff_configs, is_under, to_dict, to_yaml


@dataclass
class RunConfig:
    name: str = "default"  # runs/<name>/<stage>/; also the W&B group, so a pipeline's stages appear together
    root: str = "runs"
    seed: int = 0
    threads: int | None = None  # intra-op threads per process; default: available cores / local processes


def stage_dir(cfg) -> Path:
    return Path(cfg.run.root) / cfg.run.name / cfg.stage


# Keys that can change without changing what a stage computes, so changing them never refuses a rerun:
# reward.config_dir is the config file's folder, an absolute path that changes with the checkout's location.
VOLATILE_KEYS = ("tracking", "reward.config_dir")


def begin_stage(cfg, *, restart: bool = False) -> tuple[Path, Path | None, bool]:
    """Decide how a stage starts. Returns (stage_dir, checkpoint to resume from or None, already_complete).

    - a finished stage with the same config is skipped (`already_complete`);
    - a finished or interrupted stage whose config changed is refused, naming the changed keys, unless `restart`;
    - an interrupted stage with the same config resumes from its newest complete checkpoint.
    """
    out = stage_dir(cfg)
    manifest = read_manifest(out)
    digest = config_hash(cfg, ignore=VOLATILE_KEYS)
    if manifest and not restart:
        if manifest.get("config_sha256") != digest:
            old = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
            changed = [k for k in diff_configs(old or {}, to_dict(cfg)) if not is_under(k, VOLATILE_KEYS)]
            if changed or not old:  # no change outside volatile keys: a hash from a version that hashed more keys
                raise ConfigError(
                    f"stage '{cfg.stage}' in {out} was run with a different config (changed: "
                    f"{', '.join(changed or ['(unknown)'])}); rerun with --restart to discard it, or choose another "
                    f"run.name"
                )
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
    )
    return out, resume_from, False


STAGE_NAMES = ("sft", "rm", "ppo", "dpo", "grpo")


def resolve_stage_model(name: str, run: RunConfig) -> str:
    """`model.name` may name an earlier stage of the same run (`sft` -> runs/<run.name>/sft), which must be
    complete; anything else is an alias, a directory or a hub id (see align.models.resolve_model_path)."""
    from align.models import resolve_model_path

    if name in STAGE_NAMES and not Path(name).exists():
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


@dataclass
class StageStart:
    accelerator: object  # accelerate.Accelerator
    out: Path
    resume_from: Path | None  # the checkpoint to resume from
    done: bool  # the stage is already complete with this config: nothing to do
    threads: int


def start_stage(cfg, restart: bool = False) -> StageStart:
    """The common opening of every stage's `train`: processes, the start/resume/skip decision (made on the main
    process and shared), the printed config, threads and seeds."""
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
        return StageStart(accelerator, out, None, True, 0)
    if accelerator.is_main_process:
        print_config(cfg)
    threads = set_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    return StageStart(accelerator, out, resume_from, False, threads)


def close_failed_stage(out: Path, error: BaseException, steps: int, tracker) -> None:
    """Record why a stage stopped (interrupted by a signal, or failed) and close its tracker with the exit code."""
    from align.loop import exit_code_of

    finish_stage(out, "interrupted" if isinstance(error, KeyboardInterrupt) else "failed", steps=steps)
    if tracker:
        tracker.finish(exit_code_of(error))
