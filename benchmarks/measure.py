"""How the benchmark's runs are measured, and what they share (one run per process: `benchmarks/cases.py`).

Every case returns a dict of measurements; `cases.run_one` adds the process's peak memory and writes it as JSON.
Three kinds of run per training stage:
- `align`: the stage's real `train(cfg)`, steps read back from its `metrics.jsonl` (the stage logs throughput
  every step: `log_every=1`); the tokens of each step are replayed with the stage's own batching functions;
- `trl`: the TRL trainer with its default config, except what CPU needs (use_cpu, report_to, output_dir,
  max_steps) and the batch size where the comparison is per pair; steps timed by a TrainerCallback, tokens counted
  from the attention masks of the batches its own collator builds;
- `hand`: the shortest plain-PyTorch loop that does the same job (no align code), the memory baseline.
Generation (PPO rollouts and eval) is compared with raw batched `model.generate` on left-padded batches.
Settings that a stage's shipped config decides (LoRA rank and modules, gradient accumulation, PPO's temperature and
epochs, learning rates) are read from `configs/<stage>.yaml` (`stage_config`) for align's run and its comparators
alike; the benchmark's own settings decide only sizes, the model and full fine-tuning against LoRA.
This module holds the shared helpers and the machine's matmul peak; the cases are in `sft_cases.py`,
`preference_cases.py` (reward model, DPO), `generation_cases.py` (PPO, eval) and `rl_cases.py` (GRPO against
TRL's GRPOTrainer).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from transformers import TrainerCallback  # every run imports transformers; its import is part of the baseline

REPO = Path(__file__).resolve().parents[1]
BIG = 10**9  # "never" for eval_every / save_every
TRAIN_PRECISION = "bf16 autocast, fp32 weights"
STAGE_PRECISION = "bf16 weights, fp32 masters"  # align sft/rm/dpo default precision: bf16 (align.precision)


# ---- process-level helpers ---------------------------------------------------------------------------------------


def memory_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS now, VmHWM the peak) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def model_path(settings) -> str:
    from align.models import resolve_model_path  # only to find the alias's cached weights: the same for all sides

    return resolve_model_path(settings.model)


def matmul_parameters(path: str, kind: str) -> int:
    """N of the FLOP estimate: the parameters a token meets in a matmul. A causal LM counts a tied embedding once
    (as its LM head); a reward/value model (`kind="value"`) has no LM head, so its embedding is a lookup only."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        if kind == "causal":
            model = AutoModelForCausalLM.from_config(config)
        else:
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings() if kind == "causal" else None
    if output is None or output.weight is not embedding:
        total -= embedding.numel()
    return total


def stage_config(stage: str, settings, workdir: Path, train_data: str, max_rows: int, *overrides: str):
    """The stage's shipped config (`configs/<stage>.yaml`) as the benchmark runs it: the benchmark's model, seed and
    threads, LoRA on or off (on the last N layers with --last-layers), its own sizes (`overrides`), the training
    data without an eval split, no tracking. Everything else (learning rates, LoRA rank and modules, gradient
    accumulation, sampling) is the shipped config's, for align's run and for its comparators."""
    from align.config import load_config
    from align.registry import config_class

    layers = settings.last_layers if settings.lora and settings.last_layers else None
    return load_config(config_class(stage), REPO / "configs" / f"{stage}.yaml", [
        "run.name=bench", f"run.root={workdir / 'runs'}", f"run.seed={settings.seed}",
        f"run.threads={settings.threads}",
        f"model.name={model_path(settings)}", f"model.lora.enabled={str(settings.lora).lower()}",
        f"model.lora.last_layers={layers if layers else 'null'}", f"data.train={train_data}", "data.eval=null",
        f"data.max_rows={max_rows}", "tracking.backend=none", "train.log_every=1", f"train.save_every={BIG}",
        *overrides])


def lora_config(settings, lora, task_type: str):
    """The adapters align's run gets (`lora`: its config's model.lora), for TRL and the hand-written loops; None
    for full fine-tuning."""
    if not settings.lora:
        return None
    from align.models import peft_lora_config
    from transformers import AutoConfig

    return peft_lora_config(lora, AutoConfig.from_pretrained(model_path(settings)).num_hidden_layers, task_type)


def read_logged(stage_dir: Path, key: str) -> list[float]:
    """Every value of `key` in a stage's metrics.jsonl, in step order."""
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row[key] for row in rows if key in row]


def training_result(what: str, method: str, step_tokens: list[tuple[int, int]], step_seconds: list[float],
                    warmup: int, n_params: int, pairs_per_step: int | None = None, **extra) -> dict:
    """Steady-state figures over the steps after `warmup`. step_tokens: (real, slots) per step."""
    tokens, seconds = step_tokens[warmup:], step_seconds[warmup:]
    if not tokens or len(tokens) != len(seconds):
        raise RuntimeError(f"{what}: {len(step_tokens)} steps of tokens but {len(step_seconds)} timed steps; "
                           f"need more than {warmup} of both")
    real, slots, total_s = sum(r for r, _ in tokens), sum(s for _, s in tokens), sum(seconds)
    result = {
        "what": what, "method": method, "precision": TRAIN_PRECISION, "peak_dtype": "bf16",
        "steps_measured": len(seconds), "warmup_steps": warmup, "step_seconds": [round(s, 4) for s in seconds],
        "seconds": total_s, "real_tokens": real, "slot_tokens": slots, "tokens_per_s": real / total_s,
        "real_fraction": real / slots, "padding_fraction": 1 - real / slots, "parameters": n_params,
        "flop_formula": "6*N*real tokens", "flop_per_s": 6 * n_params * real / total_s,
    }
    if pairs_per_step:
        result["pairs"] = pairs_per_step * len(seconds)
        result["pairs_per_s"] = result["pairs"] / total_s
    result.update(extra)
    return result


class StepClock(TrainerCallback):
    """Records when a Trainer's training starts and when each of its steps ends."""

    def __init__(self):
        self.start, self.ends = None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        """Seconds of each step: from the previous step's end (data loading and logging included)."""
        times = [self.start] + self.ends
        return [b - a for a, b in zip(times, times[1:])]


class BatchRecorder:
    """Wraps a trainer's own data collator and records (real, slot) tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator, self.batches = collator, []

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch["attention_mask"]
        self.batches.append((int(mask.sum()), int(mask.numel())))
        return batch


def run_trl(trainer_cls, config_cls, settings, workdir: Path, steps: int, dataset, model, tokenizer, peft_config,
            **config):
    """Train a TRL trainer with its defaults for `steps` steps; return ((real, slots) per step, seconds per step)."""
    args = config_cls(output_dir=str(workdir / "trl"), use_cpu=True, report_to="none", max_steps=steps,
                      seed=settings.seed, **config)
    clock = StepClock()
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[clock])
    recorder = BatchRecorder(trainer.data_collator)
    trainer.data_collator = recorder
    trainer.train()
    defaults = {k: getattr(args, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "bf16",
                                               "gradient_checkpointing", "optim", "max_length")}
    if args.gradient_accumulation_steps != 1:
        raise RuntimeError("the TRL runs assume one batch per optimiser step")
    return recorder.batches[:steps], clock.step_seconds(), {k: str(v) for k, v in defaults.items()}


def right_pad(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, : len(s)], mask[row, : len(s)] = torch.tensor(s), 1
    return ids, mask


def value_model(path: str, pad_token_id: int):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad_token_id
    return model


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def resolved_precision(cfg) -> str:
    """The precision align's stage trains in on this machine (`auto` resolved as the stage resolves it)."""
    from align.precision import fast_bf16
    from align.stage import resolved_precision as stage_resolved

    return stage_resolved(cfg, fast_bf16(torch.device("cpu")))


def median_ms_in_turns(sides: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median milliseconds of each side's call (`sides`: name -> a callable of no arguments) over `rounds` rounds,
    the sides taking turns within each round (one call of each), after `warmup` untimed rounds."""
    times = {name: [] for name in sides}
    for round_ in range(warmup + rounds):
        for name, call in sides.items():
            started = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(1000 * (time.perf_counter() - started))
    return {name: statistics.median(measured) for name, measured in times.items()}


def generations_in_turns(generators: dict, prompts: list, rounds: int, **sampling) -> tuple[dict, dict]:
    """Each side's generator (`align.rollout.TextGenerator`, by name) completes `prompts` with `sampling` once
    untimed, then `rounds` times, the sides taking turns: ({name: [(seconds, new tokens) per round]}, {name: its
    untimed `Generations`})."""
    outputs = {name: generator.generate(prompts, **sampling) for name, generator in generators.items()}
    runs = {name: [] for name in generators}
    for _ in range(rounds):
        for name, generator in generators.items():
            started = time.perf_counter()
            out = generator.generate(prompts, **sampling)
            runs[name].append((time.perf_counter() - started, out.new_tokens))
    return runs, outputs


def rates_row(label: str, measured: list[tuple[float, int]]) -> str:
    """A markdown row of (seconds, new tokens) rounds of one side: each round's new tokens/s, their median, and the
    first round's new tokens."""
    rates = [tokens / seconds for seconds, tokens in measured]
    return f"| {label} | {', '.join(f'{r:.0f}' for r in rates)} | {statistics.median(rates):.0f} | {measured[0][1]} |"


def rows_of(source: str, purpose: str, n: int) -> list[dict]:
    from align.data import DataConfig, load_rows

    return load_rows(source, purpose, DataConfig(max_rows=n))[0]


# ---- machine ---------------------------------------------------------------------------------------------------


def case_machine(settings, workdir: Path) -> dict:
    """The matmul peak: the best of several timed rounds of n x n torch.matmul, fp32 and bf16. Where one product
    takes longer than 0.2 s (bf16 emulated on a CPU without native bf16 kernels) n is halved until it does not."""
    result = {"what": "torch.matmul peak", "method": f"best round of n x n torch.matmul (2n^3 FLOP each, n = "
              f"{settings.matmul_size} or halved until a product takes < 0.2 s) over ~{settings.matmul_seconds}s per "
              "dtype, after 3 warm-up products", "cpu": _cpu_name(), "cpu_flags": _cpu_flags(),
              "matmul_size": settings.matmul_size}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = settings.matmul_size
        while True:
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            started = time.perf_counter()
            torch.matmul(a, b)
            if time.perf_counter() - started < 0.2 or n <= 128:
                break
            n //= 2
        for _ in range(3):
            torch.matmul(a, b)
        best, deadline = 0.0, time.perf_counter() + settings.matmul_seconds
        while time.perf_counter() < deadline or best == 0.0:
            started, reps = time.perf_counter(), 0
            while reps == 0 or time.perf_counter() - started < 0.05:
                torch.matmul(a, b)
                reps += 1
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - started))
        result[f"matmul_{name}_flop_per_s"] = best
        result[f"matmul_{name}_size"] = n
    return result


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512_bf16", "amx", "avx512f",
                                                                                    "avx2", "fma")))
    return []
