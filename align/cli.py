"""The `align` command.

    align sft|rm|ppo|dpo|grpo CONFIG [key.path=value ...] [--restart]   run one stage
    align pipeline CONFIG [key.path=value ...] [--restart-from STAGE]   run stages in order, resumably
    align eval CONFIG [key.path=value ...]                              instruction-following accuracy of a model
    align validate CONFIG [key.path=value ...]                          check a config without training
    align chat MODEL [--prompt TEXT | --prompts FILE [--out FILE]]      a model's answers (stdin: a conversation)
    align runs [ROOT]                                                   list runs and their stages' status
    align report RUN_DIR                                                HTML report of a run

The stages come from align.registry; the benchmark is `python benchmarks/bench.py` (not part of the package).

Exit codes: 0 done; 2 a user error (a config key or value, YAML, a data row, a model path, a reward function that
cannot be resolved or failed, a stage run with another config): one `align: error: ...` line on stderr, at most
one hint line, no traceback unless ALIGN_DEBUG=1; 3 a failed quality gate; 130/143 SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from align.registry import COMMANDS, STAGES, config_class, stage_module
from align.runtime import configure_environment, die_with_parent, keep_freed_memory

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
    if getattr(getattr(cfg, "train", None), "preference_pairs", None):  # PPO's DPO term (align.preference_term)
        sources.append((cfg.train.preference_pairs, "preference"))
    loaded = []
    for source, purpose in sources:
        rows, report = load_rows(source, purpose, cfg.data)
        loaded.append(rows)
        checked.append(f"data {report.source}: {report.rows_kept} rows ({report.format})")
    if hasattr(cfg, "reward"):  # checked as the stage checks them: with its training data's columns
        from align.rewards import check_functions, dataset_columns

        names = check_functions(cfg.reward, dataset_columns(loaded[0]))
        for function, name in zip(cfg.reward.functions, names):
            factory = " (a factory, built)" if function.factory_kwargs is not None else ""
            checked.append(f"reward function {function.name}{factory}: component '{name}'")
    return checked


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported like every other user error: one line and a hint, exit code 2."""

    def error(self, message: str):
        print(f"align: error: {message}", file=sys.stderr)
        print(f"align: hint: `{self.prog} --help` shows how to call it", file=sys.stderr)
        sys.exit(2)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the input is wrong (not align): reported as one line, exit code 2."""
    from align.config import ConfigError
    from align.data import DataError
    from align.models import ModelError
    from reward.compose import RewardFunctionError

    return ConfigError, DataError, FileNotFoundError, ModelError, RewardFunctionError


def report_user_error(err: BaseException) -> int:
    """`align: error: <the message on one line>`, and a hint line where the user's own code raised."""
    close_progress_bars()
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    print(f"align: error: {message}", file=sys.stderr)
    if err.__cause__ is not None and not isinstance(err.__cause__, user_errors()):
        print("align: hint: run with ALIGN_DEBUG=1 to see the traceback", file=sys.stderr)
    return 2


def close_progress_bars() -> None:
    """Close the progress bars a failed stage left open (align's loop, TRL's trainer), so that they end their line
    now and the error that follows stands on a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def run_command(args) -> None:
    """Carry out the parsed command line."""
    if args.command == "runs":
        from align.pipeline import list_runs

        print(list_runs(Path(args.root)))
    elif args.command == "report":
        from align.report import write_report

        print(write_report(Path(args.run_dir)))
    elif args.command == "chat":
        from align.chat import Decoding, chat

        decoding = Decoding(args.max_new_tokens, args.temperature, args.top_p, args.seed)
        chat(args.model, args.prompt, args.prompts, args.out, decoding, args.revision)
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


def add_chat_command(commands) -> None:
    sub = commands.add_parser("chat", help="a model's answers: one prompt, a file of prompts, or a conversation")
    sub.add_argument("model", help="an alias (tiny-random), a stage directory (runs/default/ppo) or a hub id")
    source = sub.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="answer this prompt and print the answer")
    source.add_argument("--prompts", metavar="FILE",
                        help="answer every prompt of FILE (.txt: one a line; .jsonl etc.: a `prompt` field)")
    sub.add_argument("--out", metavar="FILE", help="with --prompts: write the answers here as JSON lines")
    sub.add_argument("--revision", help="hub revision of MODEL (a branch, tag or commit), for hub ids only")
    sub.add_argument("--max-new-tokens", type=int, default=None,
                     help="token budget of each answer (default: align eval's max_new_tokens)")
    sub.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy, as align eval")
    sub.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling when --temperature > 0")
    sub.add_argument("--seed", type=int, default=None, help="seed of the sampling (with --temperature > 0)")


def keeps_freed_memory(args: list[str]) -> bool:
    """Whether the command `args` (argv without the program) restarts itself with glibc's tunables that keep freed
    memory (`align.runtime.keep_freed_memory`): the training stages, whose steps free and take back the same large
    blocks. Generation allocates its cache once and gains nothing, and `align pipeline` lets each stage's process
    decide (its own setting would reach them all)."""
    return bool(args) and args[0] in STAGES


def main(argv: list[str] | None = None) -> int:
    if argv is None and keeps_freed_memory(sys.argv[1:]):  # the process's own command line, not a call from Python
        keep_freed_memory()
    die_with_parent()
    configure_environment()
    argv = sys.argv[1:] if argv is None else argv
    parser = Parser(prog="align", description="Align language models to follow instructions.")
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
    add_chat_command(commands)
    sub = commands.add_parser("runs", help="list runs and their stages' status")
    sub.add_argument("root", nargs="?", default="runs")
    sub = commands.add_parser("report", help="write an HTML report of a run")
    sub.add_argument("run_dir")
    args = parser.parse_args(argv)

    from align.loop import exit_code_of, install_stop_handlers
    from align.pipeline import GateError, StepFailed

    install_stop_handlers()  # SIGTERM/SIGINT: checkpoint at the end of the step, close W&B, exit 143/130
    try:
        run_command(args)
        return 0
    except user_errors() as err:
        if os.environ.get("ALIGN_DEBUG") == "1":
            raise
        return report_user_error(err)
    except KeyboardInterrupt as err:
        print(f"align: interrupted ({err or 'SIGINT'}); rerun the same command to resume", file=sys.stderr)
        return exit_code_of(err)
    except GateError as err:
        print(f"align: {err}", file=sys.stderr)
        return 3
    except StepFailed as err:
        if err.exit_code not in (2, 130, 143):  # those the stage's own process has reported in its words
            print(f"align: pipeline: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
