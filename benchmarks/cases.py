"""Every measured run of the benchmark, by name, and running one in this process (the harness, bench.py, starts a
process per run: `python -m benchmarks.bench --one CASE`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from benchmarks.generation_cases import GENERATION_CASES
from benchmarks.measure import case_machine, memory_mib
from benchmarks.ppo_cases import PPO_CASES
from benchmarks.preference_cases import PREFERENCE_CASES
from benchmarks.rl_cases import RL_CASES
from benchmarks.sft_cases import SFT_CASES

ALL_CASES = {"machine": case_machine, **SFT_CASES, **PREFERENCE_CASES, **PPO_CASES, **GENERATION_CASES,
             **RL_CASES}


def run_one(case: str, settings, result_path: Path, workdir: Path) -> None:
    """Run `case` in this process and write its measurements (peak memory included) to `result_path`."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    baseline = memory_mib("VmRSS")  # torch and transformers imported, nothing else yet
    started = time.perf_counter()
    result = ALL_CASES[case](settings, workdir)
    result.update(case=case, run_s=round(time.perf_counter() - started, 2), baseline_rss_mib=round(baseline, 1),
                  peak_rss_mib=round(memory_mib("VmHWM"), 1), torch_threads=torch.get_num_threads(),
                  glibc_tunables=os.environ.get("GLIBC_TUNABLES"))
    result_path.write_text(json.dumps(result))
