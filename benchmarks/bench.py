"""The benchmark: every stage of `align` next to its comparators, on the same model, data, seed, threads and
precision, each measured run in its own process. It is not part of the installed package.

    python benchmarks/bench.py --quick              # tiny-random, every case, a few steps: checks the harness
    python benchmarks/bench.py                      # --full: smollm2-135m-instruct, realistic sizes
    python benchmarks/bench.py --cases sft,dpo --out bench/out

Writes `<out>/bench.json` (every measurement, the comparisons against the targets, the machine) and
`<out>/bench.md` (the table the README shows); each run's own output goes to `<out>/logs/<case>.log`.

Why a process per run: peak memory (VmHWM) and warm-up (allocator, oneDNN kernels, imports) are per process, so
one run can never inherit another's. The parent re-invokes this module as `--one CASE` (benchmarks/cases.py);
how runs are measured is in benchmarks/measure.py, the cases in benchmarks/{sft,preference,generation,rl}_cases.py.
Each stage runs with its shipped config (configs/<stage>.yaml) at the benchmark's sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable (benchmarks/, align/, reward/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("sft", "rm", "dpo", "ppo", "eval", "grpo")
# case -> what it is; "machine" (the matmul peaks) always runs first.
CASES = {
    "machine": "torch.matmul peak, fp32 and bf16",
    "sft/align": "align sft (align.sft.train)",
    "sft/trl": "TRL SFTTrainer, its defaults",
    "sft/hand": "hand-written packed bf16 AdamW loop",
    "rm/align": "align rm (align.rm.train)",
    "rm/trl": "TRL RewardTrainer, its defaults",
    "rm/hand": "hand-written padded bf16 Bradley-Terry loop",
    "dpo/align": "align dpo (align.dpo.train)",
    "dpo/trl": "TRL DPOTrainer, its defaults",
    "dpo/hand": "hand-written padded bf16 DPO loop, reference precomputed",
    "ppo/align": "align ppo (align.ppo.train), the generation engine",
    "ppo/align-hf": "align ppo with the previous decoding loop (generation.backend hf)",
    "ppo/raw": "raw model.generate + hand-written policy/value training",
    "eval/align": "align eval (align.eval.evaluate), the generation engine",
    "eval/hf": "align eval with the previous decoding loop (generation.backend hf)",
    "eval/raw": "raw batched model.generate, bf16 weights",
    "eval/raw-fp32": "raw batched model.generate, fp32 weights",
    "eval/exact": "fp32 greedy tokens: the engine against transformers' generate",
    "grpo/align": "align grpo (align.grpo.train)",
    "grpo/trl": "TRL GRPOTrainer, set to the same work",
}
# The cases that run align's training stages: they get the malloc settings the `align` command gives itself there
# (align.cli.keeps_freed_memory); the others, align's evaluation included, run with glibc's defaults.
ALIGN_COMMAND_CASES = ("sft/align", "rm/align", "dpo/align", "ppo/align", "ppo/align-hf", "grpo/align")


@dataclass
class BenchSettings:
    """Sizes of every case. `warmup_steps` steps (iterations) run first in every training case and are not timed."""

    mode: str
    model: str
    threads: int
    seed: int = 0
    lora: bool = False  # False: full fine-tuning on every side (TRL's default); True: LoRA r=16 on every side
    last_layers: int | None = None  # with lora: adapters on the last N layers only, on every side
    warmup_steps: int = 1
    sft_conversations: int = 200
    sft_steps: int = 6  # measured optimiser steps of align sft and the hand-written loop (2 rows of pack_length)
    sft_trl_steps: int = 6  # measured TRL steps (8 padded conversations each: TRL's default batch)
    pack_length: int = 1024
    pairs: int = 64
    pairs_per_batch: int = 8  # ours, TRL (its default per_device_train_batch_size is 8 too) and hand-written
    pair_steps: int = 5
    ppo_prompts: int = 16  # prompts per iteration = generation batch = the whole prompt set, one response each
    # (configs/ppo.yaml: 4 prompts x 4 responses, the same 16 rows)
    ppo_iterations: int = 3
    ppo_minibatch: int = 8
    ppo_max_new_tokens: int = 128
    eval_prompts: int = 128  # twice the engine's rows, so rows are refilled as answers end, as `align eval` runs
    eval_batch_size: int = 16  # raw generate's batch (the generation issue's comparator)
    eval_slots: int = 64  # the engine's rows: align's default (GenerationConfig.slots)
    eval_max_new_tokens: int = 256
    exact_prompts: int = 20  # prompts whose fp32 greedy tokens are compared with transformers'
    exact_max_new_tokens: int = 128
    grpo_prompts: int = 4  # prompts per iteration = the whole prompt set (configs/grpo.yaml's size)
    grpo_completions: int = 4  # k completions per prompt
    grpo_iterations: int = 3
    grpo_max_new_tokens: int = 128
    matmul_size: int = 2048
    matmul_seconds: float = 2.0


def quick_settings(threads: int) -> BenchSettings:
    return BenchSettings(
        mode="quick", model="tiny-random", threads=threads, sft_conversations=16, sft_steps=1, sft_trl_steps=1,
        pack_length=512, pairs=12, pairs_per_batch=2, pair_steps=1, ppo_prompts=4, ppo_iterations=1,
        ppo_minibatch=2, ppo_max_new_tokens=8, eval_prompts=4, eval_batch_size=4, eval_slots=4, eval_max_new_tokens=8,
        exact_prompts=3, exact_max_new_tokens=8, grpo_prompts=2, grpo_completions=2, grpo_iterations=1,
        grpo_max_new_tokens=8, matmul_size=256, matmul_seconds=0.2,
    )


def full_settings(threads: int) -> BenchSettings:
    return BenchSettings(mode="full", model="smollm2-135m-instruct", threads=threads)


# ---- targets: (name, ours case, ours metric, comparator case, comparator metric, direction, target) ----------------
# The ratio is ours / comparator (ours alone where there is no comparator). ">=": the ratio must reach the target;
# "<=": it must not exceed it; None: shown for information, no target.
TARGETS = [
    ("SFT real tokens/s vs TRL defaults", "sft/align", "tokens_per_s", "sft/trl", "tokens_per_s", ">=", 2.5),
    ("SFT real tokens/s vs hand-written loop", "sft/align", "tokens_per_s", "sft/hand", "tokens_per_s", ">=", 0.9),
    ("SFT real-token fraction of its batches", "sft/align", "real_fraction", None, None, ">=", 0.95),
    ("RM pairs/s vs TRL defaults", "rm/align", "pairs_per_s", "rm/trl", "pairs_per_s", ">=", 2.0),
    ("DPO pairs/s (reference cost included) vs TRL defaults", "dpo/align", "pairs_per_s", "dpo/trl", "pairs_per_s",
     ">=", 2.0),
    ("PPO rollout new tokens/s vs raw generate (the stage's precision, batch of the iteration's prompts)", "ppo/align",
     "rollout_tokens_per_s", "ppo/raw", "rollout_tokens_per_s", ">=", 4.0),
    ("PPO iteration s vs the previous decoding loop's", "ppo/align", "iteration_s", "ppo/align-hf", "iteration_s",
     "<=", 0.5),
    ("PPO iteration s / (raw generate + raw training s)", "ppo/align", "iteration_s", "ppo/raw", "raw_iteration_s",
     "<=", 1.25),
    ("PPO update tokens/s vs raw training (no target)", "ppo/align", "update_tokens_per_s", "ppo/raw",
     "update_tokens_per_s", None, None),
    ("eval new tokens/s vs raw generate (bf16, batch 16)", "eval/align", "new_tokens_per_s", "eval/raw",
     "new_tokens_per_s", ">=", 4.0),
    ("eval new tokens/s vs raw generate in fp32 (no target)", "eval/align", "new_tokens_per_s", "eval/raw-fp32",
     "new_tokens_per_s", None, None),
    ("eval new tokens/s vs the previous decoding loop (no target)", "eval/align", "new_tokens_per_s", "eval/hf",
     "new_tokens_per_s", None, None),
    ("fp32 greedy prompts whose tokens equal transformers' (of exact_prompts)", "eval/exact", "matches", None, None,
     ">=", 19),
    ("SFT peak memory vs hand-written", "sft/align", "peak_rss_mib", "sft/hand", "peak_rss_mib", "<=", 1.5),
    ("RM peak memory vs hand-written", "rm/align", "peak_rss_mib", "rm/hand", "peak_rss_mib", "<=", 1.5),
    ("DPO peak memory vs hand-written", "dpo/align", "peak_rss_mib", "dpo/hand", "peak_rss_mib", "<=", 1.5),
    ("PPO peak memory vs raw generate + training", "ppo/align", "peak_rss_mib", "ppo/raw", "peak_rss_mib", "<=", 1.5),
    ("eval peak memory vs raw generate", "eval/align", "peak_rss_mib", "eval/raw", "peak_rss_mib", "<=", 1.5),
    ("GRPO step s: align / TRL GRPOTrainer, same work", "grpo/align", "step_s", "grpo/trl", "step_s", "<=", 1 / 3),
]

ASSUMPTIONS = [
    "Throughput is steady state: the first step/iteration of every training run is run but not timed; eval and "
    "raw generate run one short warm-up generation first.",
    "Real tokens are non-padding tokens (attention mask / packed lengths); padding fraction = 1 - real / slots.",
    "Model FLOPs: 6*N per real token for training, 2*N per processed token (prompt + generated) for inference; "
    "N counts the parameters a token passes through in a matmul (a tied embedding once, as the LM head; no LM "
    "head for reward/value models). Attention-score FLOPs, recomputation (gradient checkpointing) and LoRA's "
    "smaller backward are not counted, so the figure is the same for every side of a comparison (with --last-layers "
    "it is a full-model equivalent, and can pass the matmul peak).",
    "Peak memory is the run process's VmHWM (peak resident set), imports included; baseline_rss_mib is the "
    "resident set after importing torch and transformers.",
    "Precision: TRL and the hand-written loops train with bf16 autocast over fp32 weights (TRL's default "
    "bf16=True); align's stages with their default precision, `auto`, which resolves to bf16 where bf16 products "
    "are native (bf16 weights, fp32 master weights in the optimiser, align.precision; each run's precision column "
    "says what it ran): matmuls in bf16 and fp32 optimiser state on every side. Generation with bf16 weights on "
    "every side.",
    "The same parameterisation on every side: full fine-tuning (TRL's default), or LoRA r=16 on the same modules "
    "everywhere with --lora (on the last N layers only with --last-layers N, as configs/ppo.yaml does).",
    "Sampled lengths differ between align's PPO rollouts and raw generate once align's policy has moved, so the "
    "raw PPO iteration time is rescaled to align's generated and trained tokens per iteration.",
    "GRPO: align's stage and TRL's GRPOTrainer do the same work per iteration (prompts, k, max_new_tokens, sampling, "
    "LoRA, loss, KL, reward) in the precision align's stage resolves for this machine (fp32 where bf16 products are "
    "emulated); their sampled lengths differ, so completions/s and s per optimiser step are compared, with the new "
    "tokens of each side shown.",
]


# ---- the parent: run every case in its own process -----------------------------------------------------------------


def selected_cases(names: list[str]) -> list[str]:
    """Stages (every case of each) or single cases ("eval/align"), in CASES order; the machine's peak first."""
    unknown = [n for n in names if n not in STAGES and (n not in CASES or n == "machine")]
    if unknown:
        raise ValueError(f"--cases: unknown stage(s) or case(s) {', '.join(unknown)}; valid: {', '.join(STAGES)}, "
                         "or a single case such as eval/align")
    return ["machine"] + [case for case in CASES if case.split("/")[0] in names or case in names]


def child_environment(threads: int, jobs: int = 1, case: str | None = None) -> dict[str, str]:
    """The same thread and logging settings for every run (recorded in bench.json). OpenMP's threads wait
    passively only when runs share the cores (`jobs` > 1), as align does for the ranks of a multi-process launch
    (align.runtime): a run alone keeps OpenMP's default, or the caller's own OMP_WAIT_POLICY. A case of
    `ALIGN_COMMAND_CASES` runs with the `align` command's malloc settings where it would have them."""
    from align.runtime import freed_memory_tunables

    env = dict(os.environ)
    if jobs > 1:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if case in ALIGN_COMMAND_CASES and (tunables := freed_memory_tunables()) is not None:
        env["GLIBC_TUNABLES"] = tunables
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1",
    })
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_case(case: str, settings: BenchSettings, out: Path, timeout_s: float, jobs: int = 1) -> dict:
    """Run one case in a fresh process; return its measurement, or {"error": ...} when it failed."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / (case.replace("/", "_") + ".log")
    with tempfile.TemporaryDirectory(prefix="align-bench-") as work:
        settings_path, result_path = Path(work) / "settings.json", Path(work) / "result.json"
        settings_path.write_text(json.dumps(dataclasses.asdict(settings)))
        command = [sys.executable, "-m", "benchmarks.bench", "--one", case, "--settings", str(settings_path),
                   "--result", str(result_path), "--workdir", work]
        started = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_environment(
                    settings.threads, jobs, case), timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                code = None
        process_s = time.perf_counter() - started
        if code == 0 and result_path.is_file():
            result = json.loads(result_path.read_text())
            result["process_s"] = round(process_s, 2)
            return result
    tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
    why = f"timed out after {timeout_s:.0f}s" if code is None else f"exited with code {code}"
    return {"case": case, "error": f"{why}; see {log_path}", "log_tail": tail, "process_s": round(process_s, 2)}


def compare(runs: dict[str, dict]) -> list[dict]:
    """Every target that the selected runs allow, with the ratio and whether it is met (None when a run failed)."""
    rows = []
    for name, ours_case, ours_metric, other_case, other_metric, direction, target in TARGETS:
        if ours_case not in runs or (other_case and other_case not in runs):
            continue
        ours, other = runs[ours_case], runs.get(other_case) if other_case else None
        row = {"target_name": name, "ours_case": ours_case, "ours_metric": ours_metric,
               "comparator_case": other_case, "comparator_metric": other_metric, "direction": direction,
               "target": target, "ours": ours.get(ours_metric),
               "comparator": other.get(other_metric) if other else None,
               "ratio": None, "met": None}
        if other is None:
            row["ratio"] = row["ours"]
        elif row["ours"] is not None and row["comparator"]:
            row["ratio"] = row["ours"] / row["comparator"]
        if row["ratio"] is not None and target is not None:
            row["met"] = row["ratio"] >= target if direction == ">=" else row["ratio"] <= target
        rows.append(row)
    return rows


def rescale_raw_ppo(runs: dict[str, dict]) -> None:
    """Sampling makes raw generation produce other lengths than align's rollouts; rescale the raw iteration time
    to align's tokens per iteration (raw seconds per generated token and per trained token, times align's)."""
    ours, raw = runs.get("ppo/align"), runs.get("ppo/raw")
    if not ours or not raw or "error" in ours or "error" in raw:
        return
    raw["raw_iteration_s"] = (raw["generate_s_per_new_token"] * ours["new_tokens_per_iteration"]
                              + raw["train_s_per_token"] * ours["update_tokens_per_iteration"])


def environment(settings: BenchSettings, jobs: int) -> dict:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    env = {"OMP_WAIT_POLICY": "default", **child_environment(settings.threads, jobs)}
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "cores_visible": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "threads": settings.threads, "load_average_at_start": list(os.getloadavg()),
        "versions": {name: version(name) for name in ("torch", "transformers", "trl", "peft", "accelerate")},
        "child_env": {k: env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                          "TOKENIZERS_PARALLELISM")},
        "glibc_tunables": {"align's cases": child_environment(settings.threads, jobs, ALIGN_COMMAND_CASES[0]).get(
            "GLIBC_TUNABLES"), "the others": os.environ.get("GLIBC_TUNABLES")},
    }


def median_of_repeats(results: list[dict]) -> dict:
    """One case's repeated runs as one: every numeric field is the median over the runs (the fields of the first
    run otherwise), and `repeats` keeps each run's value of every field that differs between runs. A failed run
    makes the case failed: a median over the runs that happened to finish would hide it."""
    failed = [r for r in results if "error" in r]
    if failed or len(results) == 1:
        return failed[0] if failed else results[0]
    combined = dict(results[0])
    combined["repeats"] = {}
    for key, value in results[0].items():
        values = [r.get(key) for r in results]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and all(
                isinstance(v, (int, float)) for v in values):
            combined[key] = statistics.median(values)
            if len(set(values)) > 1:
                combined["repeats"][key] = values
    return combined


def run_benchmark(settings: BenchSettings, cases: list[str], out: Path, timeout_s: float,
                  jobs: int = 1, repeats: int = 1) -> dict:
    """Run `cases`, `jobs` at a time: 1 for measurements; more only to check the harness (`--quick`), since runs
    side by side slow each other. With `repeats` > 1 every case runs that many times, the cases taking turns (so a
    slow spell of the machine falls on all of them), and each reports its median run."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"schema": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": dataclasses.asdict(settings),
              "environment": {**environment(settings, jobs), "jobs": jobs, "repeats": repeats},
              "assumptions": ASSUMPTIONS, "runs": {}}
    started = time.perf_counter()

    def measured(case: str) -> dict:
        print(f"[bench] {case}: {CASES[case]} ...", flush=True)
        load_before = os.getloadavg()[0]  # other work on the machine makes timings noisy: recorded per run
        result = run_case(case, settings, out, timeout_s, jobs)
        result["load_average_1min_before"] = load_before
        print(f"[bench] {case}: " + (result["error"] if "error" in result else _one_line(result)), flush=True)
        return result

    results: dict[str, list[dict]] = {case: [] for case in cases}
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each case is a process of its own: threads only wait
        for _ in range(repeats):
            for case, result in zip(cases, pool.map(measured, cases)):
                results[case].append(result)
    report["runs"] = {case: median_of_repeats(runs) for case, runs in results.items()}
    report["machine"] = report["runs"].pop("machine", None)
    rescale_raw_ppo(report["runs"])
    report["comparisons"] = compare(report["runs"])
    report["failed"] = sorted(case for case, r in report["runs"].items() if "error" in r)
    if report["machine"] and "error" in report["machine"]:
        report["failed"].insert(0, "machine")
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["environment"]["load_average_at_end"] = list(os.getloadavg())
    _add_peak_fractions(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
    return report


def _add_peak_fractions(report: dict) -> None:
    """Achieved model FLOP/s as a fraction of the measured matmul peak of the run's precision."""
    machine = report.get("machine") or {}
    for run in report["runs"].values():
        peak = machine.get(f"matmul_{run.get('peak_dtype', 'bf16')}_flop_per_s")
        if run.get("flop_per_s") and peak:
            run["fraction_of_peak"] = run["flop_per_s"] / peak


def _one_line(result: dict) -> str:
    keys = ("tokens_per_s", "pairs_per_s", "rollout_tokens_per_s", "new_tokens_per_s", "step_s", "completions_per_s",
            "peak_rss_mib",
            "matmul_fp32_flop_per_s", "matmul_bf16_flop_per_s")
    return ", ".join(f"{k}={result[k]:.4g}" for k in keys if isinstance(result.get(k), (int, float)))


# ---- markdown --------------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def parameterisation(settings: dict) -> str:
    if not settings["lora"]:
        return "full fine-tuning"
    layers = settings.get("last_layers")
    return f"LoRA r=16 on the last {layers} layers" if layers else "LoRA r=16"


def _side_by_side(jobs: int) -> str:
    return f"; {jobs} runs at a time: these timings check the harness, they measure nothing" if jobs > 1 else ""


def _repeated(repeats: int) -> str:
    return f"; every case ran {repeats} times, taking turns, and shows its median run" if repeats > 1 else ""


def _malloc(tunables: dict | None) -> str:
    if not tunables:
        return ""
    ours, others = (f"GLIBC_TUNABLES={value}" if value is not None else "glibc's malloc defaults"
                    for value in tunables.values())
    return (f" Align's training cases ran with {ours} (as the `align` command runs its training stages), the others "
            f"(align's evaluation included) with {others}.")


def markdown(report: dict) -> str:
    s, env, machine = report["settings"], report["environment"], report.get("machine") or {}
    lines = [
        f"# align benchmark ({s['mode']}: {s['model']}, {parameterisation(s)}, "
        f"{env['threads']} threads)",
        "",
        f"Machine: {machine.get('cpu', '?')}, {env['cores_usable']} usable cores, torch {env['versions']['torch']}, "
        f"transformers {env['versions']['transformers']}, trl {env['versions']['trl']}; measured matmul peak "
        f"fp32 {_gflops(machine.get('matmul_fp32_flop_per_s'))}, bf16 {_gflops(machine.get('matmul_bf16_flop_per_s'))} "
        f"(n={machine.get('matmul_size', '?')}). Load average (1, 5, 15 min) at start "
        f"{_loads(env['load_average_at_start'])}, at end {_loads(env.get('load_average_at_end'))}; "
        f"{report['total_s']} s in all{_side_by_side(env.get('jobs', 1))}{_repeated(env.get('repeats', 1))}."
        f"{_malloc(env.get('glibc_tunables'))}",
        "",
        "| case | ours | comparator | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["comparisons"]:
        other = f"{_fmt(row['comparator'])} ({row['comparator_case']})" if row["comparator_case"] else "-"
        target = f"{row['direction']} {_fmt(row['target'])}" if row["target"] is not None else "-"
        lines.append(f"| {row['target_name']} | {_fmt(row['ours'])} ({row['ours_case']}) | {other} | "
                     f"{_fmt(row['ratio'])} | {target} | {_fmt(row['met'])} |")
    lines += ["", "| run | what | precision | measured s | real tokens | tokens/s | pairs/s | padding | "
                  "peak RSS MiB | model GFLOP/s | % of peak | notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, run in report["runs"].items():
        if "error" in run:
            lines.append(f"| {case} | FAILED: {run['error']} | | | | | | | | | | |")
            continue
        fraction = run.get("fraction_of_peak")
        lines.append(
            f"| {case} | {run.get('what', '')} | {run.get('precision', '')} | {_fmt(run.get('seconds'))} | "
            f"{_fmt(run.get('real_tokens'))} | {_fmt(run.get('tokens_per_s'))} | {_fmt(run.get('pairs_per_s'))} | "
            f"{_fmt(run.get('padding_fraction'), 2)} | {_fmt(run.get('peak_rss_mib'), 4)} | "
            f"{_fmt((run.get('flop_per_s') or 0) / 1e9 or None)} | "
            f"{'-' if fraction is None else f'{100 * fraction:.1f}%'} | {_notes(run)} |")
    lines += ["", "How each run is measured:", ""]
    lines += [f"- **{case}**: {run['method']}" for case, run in report["runs"].items() if run.get("method")]
    lines += ["", "Assumptions:", ""] + [f"- {a}" for a in report["assumptions"]]
    if report["failed"]:
        lines += ["", f"Failed runs: {', '.join(report['failed'])} (see logs/)."]
    return "\n".join(lines) + "\n"


def _notes(run: dict) -> str:
    """What the generic columns leave out: PPO's and GRPO's time split, DPO's reference cost, generation counts."""
    if "completions_per_s" in run:
        split = "" if "generate_s" not in run else (
            f" = generate {_fmt(run['generate_s'])} + score {_fmt(run['score_s'])} + log-probs "
            f"{_fmt(run['logprobs_s'])} + update {_fmt(run['update_s'])}")
        return (f"iteration {_fmt(run['iteration_s'])} s{split}; {_fmt(run['step_s'])} s per optimiser step; "
                f"{_fmt(run['completions_per_s'])} completions/s; tokens/s = new tokens")
    if "iteration_s" in run:
        return (f"iteration {_fmt(run['iteration_s'])} s = generate {_fmt(run['generate_s'])} + score "
                f"{_fmt(run['score_s'])} + log-probs {_fmt(run['logprobs_s'])} + update {_fmt(run['update_s'])}; "
                f"rollout {_fmt(run['rollout_tokens_per_s'])} new tok/s; tokens/s = update")
    if "raw_iteration_s" in run:
        return (f"generate {_fmt(run['generate_s'])} s + train {_fmt(run['train_s'])} s per iteration; rollout "
                f"{_fmt(run['rollout_tokens_per_s'])} new tok/s; tokens/s = training")
    if "reference_s" in run:
        return (f"training alone {_fmt(run['train_pairs_per_s'])} pairs/s; reference precompute share "
                f"{_fmt(run['reference_s'])} s" if run["reference_s"] else "reference computed inside each step")
    if "new_tokens" in run:
        return f"{run['new_tokens']} new tokens after {run['prompt_tokens']} prompt tokens; tokens/s = new tokens"
    return ""


def _loads(values) -> str:
    return "?" if not values else "/".join(f"{x:.1f}" for x in values)


def _gflops(value) -> str:
    return "?" if not value else f"{value / 1e9:.1f} GFLOP/s"


# ---- command line ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny-random, every case, a few steps")
    size.add_argument("--full", action="store_true", help="smollm2-135m-instruct, realistic sizes (default)")
    parser.add_argument("--cases", default=",".join(STAGES),
                        help=f"comma-separated stages ({','.join(STAGES)}) or single cases (eval/align, eval/raw, ...)")
    parser.add_argument("--model", help="override the model (an alias or a model directory)")
    parser.add_argument("--threads", type=int, help="intra-op threads for every run (default: usable cores)")
    parser.add_argument("--lora", action="store_true", help="LoRA r=16 on every side instead of full fine-tuning")
    parser.add_argument("--last-layers", type=int, metavar="N",
                        help="with --lora: adapters on the last N layers only, on every side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/out", help="output folder (default bench/out)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1; more only to check the "
                                                            "harness quickly: side by side they slow each other)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every case, taking turns; each case "
                                                                  "reports its median (default 1)")
    parser.add_argument("--timeout", type=float, help="seconds per run before it is stopped (default 300 quick, "
                                                       "1800 full)")
    # internal: run one case in this process (the parent starts these)
    parser.add_argument("--one", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        from benchmarks.cases import run_one

        settings = BenchSettings(**json.loads(Path(args.settings).read_text()))
        run_one(args.one, settings, Path(args.result), Path(args.workdir))
        return 0
    threads = args.threads or len(os.sched_getaffinity(0))
    settings = quick_settings(threads) if args.quick else full_settings(threads)
    if args.last_layers and not args.lora:
        print("bench: error: --last-layers needs --lora", file=sys.stderr)
        return 2
    settings = dataclasses.replace(settings, seed=args.seed, lora=args.lora, last_layers=args.last_layers,
                                   model=args.model or settings.model)
    try:
        cases = selected_cases([c.strip() for c in args.cases.split(",") if c.strip()])
    except ValueError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.jobs < 1:
        print(f"bench: error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"bench: error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    report = run_benchmark(settings, cases, out, args.timeout or (300 if args.quick else 1800), args.jobs,
                           args.repeats)
    print(f"[bench] {len(report['runs'])} runs in {report['total_s']}s -> {out / 'bench.json'}, {out / 'bench.md'}")
    print((out / "bench.md").read_text())
    if report["failed"]:
        print(f"bench: failed runs: {', '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
