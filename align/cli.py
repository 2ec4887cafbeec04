"""The `align` command.

    align sft|rm|ppo|dpo|grpo CONFIG [key.path=value ...] [--restart]   run one stage
    align pipeline CONFIG [key.path=value ...] [--restart-from STAGE]   run stages in order, resumably
    align eval CONFIG [key.path=value ...]                              instruction-following accuracy of a model
    align validate CONFIG [key.path=value ...]                          check a config without training
    align runs [ROOT]                                                   list runs and their stages' status
    align report RUN_DIR                                                HTML report of a run

The stages come from align.registry; the benchmark is `python benchmarks/bench.py` (not part of the package).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from align.registry import COMMANDS, STAGES, config_class, stage_module
from align.runtime import configure_environment

def load_stage_config(path: str, overrides: list[str], stage: str | None = None):
    """Load CONFIG for `stage` (or for the stage named by its `stage:` key, for `align validate`)."""
    from align.config import ConfigError, load_config, parse_overrides, read_yaml

    named = read_yaml(path).get("stage") or parse_overrides(overrides).get("stage")
    stage = stage or named
    if stage not in STAGES and stage not in COMMANDS:
        raise ConfigError(f"{path}: key 'stage' must be one of {', '.join([*STAGES, *COMMANDS])} (got {stage!r})")
    if named and named != stage:
        raise ConfigError(f"{path} is a '{named}' config, not '{stage}'; run `align {named} {path}`")
    cfg = load_config(config_class(stage), path, overrides)
    if hasattr(cfg, "reward") and cfg.reward.config_dir is None:
        cfg.reward.config_dir = str(Path(path).resolve().parent)  # user reward files sit next to their config
    return cfg


def validate(cfg, path: str) -> list[str]:
    """Checks beyond keys and types that can be made without training; returns what was checked."""
    from align.data import load_rows

    checked = [f"keys and types of the {cfg.stage} config"]
    if cfg.stage == "pipeline":
        from align.pipeline import stage_configs

        for stage_cfg in stage_configs(cfg, Path(path)):
            checked += [f"{stage_cfg.stage}: {line}" for line in validate(stage_cfg, path)]
        return checked
    sources = [(cfg.prompts, "prompt")] if cfg.stage == "eval" else [
        (s, STAGES[cfg.stage].data_purpose) for s in (cfg.data.train, cfg.data.eval) if s]
    for source, purpose in sources:
        _, report = load_rows(source, purpose, cfg.data)
        checked.append(f"data {source}: {report.rows_kept} rows ({report.format})")
    if hasattr(cfg, "reward"):
        from reward.compose import resolve_reward_function

        for function in cfg.reward.functions:
            resolve_reward_function(function.name, cfg.reward.config_dir)
            checked.append(f"reward function {function.name}")
    return checked


def main(argv: list[str] | None = None) -> int:
    configure_environment()
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="align", description="Align language models to follow instructions.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage, info in STAGES.items():
        sub = commands.add_parser(stage, help=f"run the {stage} stage: {info.summary}")
        sub.add_argument("config", help="YAML config file (see configs/)")
        sub.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=1e-4")
        sub.add_argument("--restart", action="store_true", help="discard this stage's earlier output and start over")
    sub = commands.add_parser("pipeline", help="run a pipeline of stages (resumes; skips finished stages)")
    sub.add_argument("config")
    sub.add_argument("overrides", nargs="*")
    sub.add_argument("--restart-from", metavar="STAGE", help="discard STAGE and every later stage, then run")
    for name, text in (("eval", "instruction-following accuracy of a model"), ("validate", "check a config")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("config")
        sub.add_argument("overrides", nargs="*")
    sub = commands.add_parser("runs", help="list runs and their stages' status")
    sub.add_argument("root", nargs="?", default="runs")
    sub = commands.add_parser("report", help="write an HTML report of a run")
    sub.add_argument("run_dir")
    args = parser.parse_args(argv)

    from align.config import ConfigError
    from align.data import DataError

    from align.loop import exit_code_of, install_stop_handlers
    from align.pipeline import GateError

    install_stop_handlers()  # SIGTERM/SIGINT: checkpoint at the end of the step, close W&B, exit 143/130
    try:
        if args.command == "runs":
            from align.pipeline import list_runs

            print(list_runs(Path(args.root)))
        elif args.command == "report":
            from align.report import write_report

            print(write_report(Path(args.run_dir)))
        elif args.command == "validate":
            cfg = load_stage_config(args.config, args.overrides)
            for line in validate(cfg, args.config):
                print(f"ok: {line}")
        elif args.command == "pipeline":
            from align.pipeline import run_pipeline

            cfg = load_stage_config(args.config, args.overrides, stage="pipeline")
            run_pipeline(cfg, Path(args.config), restart_from=args.restart_from)
        else:
            cfg = load_stage_config(args.config, args.overrides, stage=args.command)
            stage_module(args.command).train(cfg, restart=getattr(args, "restart", False))
        return 0
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"align: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"align: interrupted ({err or 'SIGINT'}); rerun the same command to resume", file=sys.stderr)
        return exit_code_of(err)
    except GateError as err:
        print(f"align: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
