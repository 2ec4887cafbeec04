"""`align pipeline`: SFT -> reward model -> PPO/DPO as one resumable command.

    align pipeline configs/pipeline.yaml [key.path=value ...] [--restart-from STAGE]

A pipeline config lists stage configs in order. Every stage runs in `runs/<run.name>/<stage>/` and refers to
earlier stages by name (`model.name: sft`, `reward.reward_model: rm`), so each stage's output is the next one's
input. Rerunning the same command skips finished stages and resumes an interrupted one from its newest complete
checkpoint; a finished stage whose config changed is refused unless `--restart-from` names it (or an earlier
stage). After the reward model, a quality gate stops the pipeline before RL if its held-out accuracy is too low.
After every stage, `align eval` measures instruction following on held-out prompts; all results go into one table.

Every stage and every evaluation runs in a process of its own, started afresh, as `align <stage> CONFIG` would run
it: what one stage leaves behind in a process (its Python objects, accelerate's and W&B's state, the allocator's
fragments) cannot slow or change the next, and each stage is exactly what the same command run alone gives. The
resolved configs are written to `runs/<run.name>/configs/` first, so any stage can be rerun on its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from align.config import ConfigError, load_config, read_yaml, to_yaml
from align.registry import STAGES, config_class
from align.rollout import GenerationConfig
from align.stage import RunConfig


@dataclass
class PipelineStage:
    config: str  # the stage's YAML, relative to the pipeline file
    overrides: list[str] = field(default_factory=list)  # dotted overrides applied on top of it


@dataclass
class GatesConfig:
    reward_model_min_accuracy: float | None = 0.9  # held-out pairwise accuracy needed before RL; null = no gate


@dataclass
class PipelineEvalConfig:
    enabled: bool = True  # evaluate the base model and every policy stage's output on held-out prompts
    prompts: str = "builtin:prompts:heldout"  # in-distribution evaluation prompts (align eval's `prompts`)
    unseen_prompts: str | None = "builtin:unseen:heldout"  # prompts with constraint types never trained on
    max_prompts: int | None = None  # evaluate the first N prompts of each split; null: all
    max_new_tokens: int = 256  # the budget answers are scored at (greedy decoding)
    long_budget: int | None = 384  # also score at this longer budget, from the same generation
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # the decoding backend and its rows
    include_base: bool = True  # also evaluate the model the first stage starts from, as the baseline


@dataclass
class PipelineConfig:
    stage: Literal["pipeline"] = "pipeline"  # this file configures `align pipeline`
    run: RunConfig = field(default_factory=RunConfig)
    stages: list[PipelineStage] = field(default_factory=list)  # the stages in order: {config, overrides}
    gates: GatesConfig = field(default_factory=GatesConfig)
    eval: PipelineEvalConfig = field(default_factory=PipelineEvalConfig)
    tracking_backend: Literal["wandb", "none"] | None = None  # overrides every stage's tracking.backend if set


class GateError(RuntimeError):
    """A quality gate failed: the pipeline stops before the stages that depend on it."""


class StepFailed(RuntimeError):
    """A stage's or an evaluation's process ended with an error or a signal: the pipeline stops there, with the
    child's exit code (2 a user error, 130/143 interrupted, which the child has reported itself)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def stage_configs(cfg: PipelineConfig, pipeline_file: Path) -> list:
    """Load every stage's config with the pipeline's run name, root, seed and threads."""
    configs = []
    for i, stage in enumerate(cfg.stages):
        path = (pipeline_file.parent / stage.config).resolve()
        name = read_yaml(path).get("stage")
        if name not in STAGES:
            raise ConfigError(f"{pipeline_file}: stages[{i}].config {stage.config} is not a stage config "
                              f"(its 'stage' is {name!r})")
        run = [f"run.{k}={json.dumps(v)}" for k, v in dataclasses.asdict(cfg.run).items()]
        tracking = [f"tracking.backend={cfg.tracking_backend}"] if cfg.tracking_backend else []
        stage_cfg = load_config(config_class(name), path, [*stage.overrides, *run, *tracking])
        if hasattr(stage_cfg, "reward") and stage_cfg.reward.config_dir is None:
            stage_cfg.reward.config_dir = str(path.parent)
        configs.append(stage_cfg)
    names = [c.stage for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{pipeline_file}: a stage appears twice in stages ({', '.join(names)})")
    return configs


def _eval_config(cfg: PipelineConfig, model: str, out: Path, revision: str | None = None):
    from align.eval import EvalConfig

    e = cfg.eval
    return EvalConfig(model=model, revision=revision, prompts=e.prompts, unseen_prompts=e.unseen_prompts,
                      max_prompts=e.max_prompts, max_new_tokens=e.max_new_tokens, long_budget=e.long_budget,
                      generation=e.generation, threads=cfg.run.threads, out=str(out))


def evaluate_once(cfg: PipelineConfig, model: str, out: Path, revision: str | None = None) -> dict:
    """`align eval` of `model` (at hub `revision`) into `out` (in a process of its own), unless the same evaluation
    is already there."""
    eval_cfg = _eval_config(cfg, model, out, revision)
    key = dataclasses.asdict(eval_cfg)
    results_file = out / "results.json"
    if results_file.is_file():
        results = json.loads(results_file.read_text())
        if results.get("config") == key:
            return results
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "eval.yaml"
    config_file.write_text(to_yaml(eval_cfg))
    run_child(["eval", str(config_file)], f"evaluation of {model}")
    results = json.loads(results_file.read_text())
    results["config"] = key
    results_file.write_text(json.dumps(results, indent=2))
    return results


def run_child(arguments: list[str], what: str) -> None:
    """Run `python -m align ARGUMENTS` in a fresh process and wait for it.

    The child has a session of its own, so a Ctrl-C at the terminal reaches only this process, which passes each
    SIGINT/SIGTERM on to the child once: the child finishes its step, checkpoints and exits as a stage run alone
    does (a second signal stops it at once). If this process is killed outright, the child is killed with it
    (`ALIGN_PARENT_PID`, see align.runtime.die_with_parent): no stage goes on writing into a run nobody waits for.
    """
    from align.loop import Interrupted, stop_requested

    if stop_requested():  # a signal that arrived between two children: stop before starting another
        raise Interrupted(stop_requested())
    print(f"[align] pipeline: python -m align {' '.join(arguments)}", flush=True)
    environment = {**os.environ, "ALIGN_PARENT_PID": str(os.getpid())}
    child = subprocess.Popen([sys.executable, "-m", "align", *arguments], env=environment, start_new_session=True)
    forward = {signum: signal.signal(signum, lambda signum, frame: child.send_signal(signum))  # noqa: ARG005
               for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for signum, handler in forward.items():
            signal.signal(signum, handler)
    if code != 0:
        code = 128 - code if code < 0 else code  # killed by a signal: the shell's convention
        raise StepFailed(f"the {what} failed (exit code {code})", code)


def check_gates(cfg: PipelineConfig, stage_cfg, stage_dir: Path) -> None:
    """After a stage that produces a reward model: its held-out accuracy must reach the gate."""
    if STAGES[stage_cfg.stage].produces != "reward_model" or cfg.gates.reward_model_min_accuracy is None:
        return
    metrics = json.loads((stage_dir / "manifest.json").read_text()).get("metrics", {})
    name = stage_cfg.stage
    accuracy = metrics.get(f"{name}/eval/accuracy", metrics.get(f"{name}/eval_accuracy"))  # the latter: align 0.1
    if accuracy is None or accuracy < cfg.gates.reward_model_min_accuracy:
        raise GateError(
            f"quality gate: the reward model's held-out pairwise accuracy is {accuracy} < "
            f"gates.reward_model_min_accuracy={cfg.gates.reward_model_min_accuracy}; the RL stages were not started. "
            f"Train it longer or on more pairs ({stage_dir}), or lower the gate."
        )


def run_stage_once(stage_cfg, config_file: Path) -> Path:
    """`align <stage> CONFIG` in a process of its own, with the stage's resolved config written to `config_file`;
    a stage already complete with this config is skipped without starting one."""
    from align.stage import is_complete, stage_dir

    if is_complete(stage_cfg):
        print(f"[align] {stage_cfg.stage}: {stage_dir(stage_cfg)} is already complete with this config; skipping")
        return stage_dir(stage_cfg)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(to_yaml(stage_cfg))
    run_child([stage_cfg.stage, str(config_file)], f"stage {stage_cfg.stage}")
    return stage_dir(stage_cfg)


def run_pipeline(cfg: PipelineConfig, pipeline_file: Path, restart_from: str | None = None) -> Path:
    from align.eval import markdown_table, summary_table
    from align.stage import stage_dir

    configs = stage_configs(cfg, pipeline_file)
    names = [c.stage for c in configs]
    if restart_from and restart_from not in names:
        raise ConfigError(f"--restart-from {restart_from}: not a stage of this pipeline ({', '.join(names)})")
    run_dir = Path(cfg.run.root) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text(Path(pipeline_file).read_text())
    started = time.perf_counter()
    restart = set(names[names.index(restart_from):]) if restart_from else set()
    results: dict[str, dict] = {}

    if cfg.eval.enabled and cfg.eval.include_base:
        base = configs[0].model  # at the revision the first stage pins, the weights it starts from
        print(f"[align] pipeline: evaluating the base model {base.name}")
        results["base"] = evaluate_once(cfg, base.name, run_dir / "eval" / "base", base.revision)

    for stage_cfg in configs:
        name = stage_cfg.stage
        print(f"\n[align] pipeline: stage {name} -> {stage_dir(stage_cfg)}")
        if name in restart and stage_dir(stage_cfg).exists():
            shutil.rmtree(stage_dir(stage_cfg))
        out = run_stage_once(stage_cfg, run_dir / "configs" / f"{name}.yaml")
        check_gates(cfg, stage_cfg, out)
        if cfg.eval.enabled and STAGES[name].produces == "policy":
            results[name] = evaluate_once(cfg, str(out), out / "eval")

    minutes = (time.perf_counter() - started) / 60
    print(f"\n[align] pipeline '{cfg.run.name}' finished in {minutes:.1f} min -> {run_dir}")
    if results:
        warnings = generalisation_warnings(results, {c.stage: c.model.name for c in configs})
        table = summary_table(results) + "\n\n" + markdown_table(results)
        (run_dir / "eval" / "summary.md").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "eval" / "summary.md").write_text(table + "\n" + "".join(f"\n> {w}\n" for w in warnings))
        print("\nInstruction following on held-out prompts (IFEval-style accuracy; unseen: constraint types never "
              "trained on):\n" + table)
        for warning in warnings:
            print(f"[align] pipeline: warning: {warning}")
    try:
        from align.report import write_report

        print(f"\n[align] report: {write_report(run_dir)}")
    except ImportError:
        pass
    return run_dir


def generalisation_warnings(results: dict[str, dict], parents: dict[str, str]) -> list[str]:
    """A warning for every evaluated stage that follows unseen constraint types worse than the model it started
    from (its `model.name`: an earlier stage, else the base model), by prompt-level loose accuracy."""
    from align.eval import split_metrics

    warnings = []
    for stage, result in results.items():
        parent = parents.get(stage)
        parent = parent if parent in results else "base" if stage != "base" and "base" in results else None
        ours, theirs = split_metrics(result, "unseen"), parent and split_metrics(results[parent], "unseen")
        if ours and theirs and ours["prompt_level_loose"] < theirs["prompt_level_loose"]:
            error = paired_standard_error(ours.get("per_prompt"), theirs.get("per_prompt"))
            noise = f"; a standard error of {error:.3f} on these prompts" if error is not None else ""
            warnings.append(f"{stage} follows unseen constraint types worse than {parent}, the model it started from "
                            f"(prompt-level loose {ours['prompt_level_loose']:.3f} < {theirs['prompt_level_loose']:.3f}"
                            f"{noise})")
    return warnings


def paired_standard_error(ours: list[dict] | None, theirs: list[dict] | None) -> float | None:
    """The standard error of the difference in prompt-level loose accuracy between two evaluations of the same
    prompts (`per_prompt` of each: {"loose": [followed, ...]} per prompt), from the per-prompt differences d_i:
    sd(d) / sqrt(n). None unless both cover the same number (> 1) of prompts."""
    if not ours or not theirs or len(ours) != len(theirs) or len(ours) < 2:
        return None
    differences = [float(all(a["loose"])) - float(all(b["loose"])) for a, b in zip(ours, theirs)]
    n = len(differences)
    mean = sum(differences) / n
    return (sum((d - mean) ** 2 for d in differences) / (n - 1) / n) ** 0.5


def list_runs(root: Path) -> str:
    """`align runs`: every run under `root` with its stages' status."""
    lines = []
    for run_dir in sorted(p for p in Path(root).glob("*") if p.is_dir()):
        stages = []
        for manifest_file in sorted(run_dir.glob("*/manifest.json")):
            manifest = json.loads(manifest_file.read_text())
            stages.append(f"{manifest.get('stage', manifest_file.parent.name)}:{manifest.get('status')}")
        if stages:
            lines.append(f"{run_dir.name:24s} {'  '.join(stages)}")
    return "\n".join(lines) if lines else f"no runs under {root}"

