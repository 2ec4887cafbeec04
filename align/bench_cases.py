"""The measured runs of `align bench`, one per process (`python -m align.bench --one CASE`).

Every case returns a dict of measurements; `run_one` adds the process's peak memory and writes it as JSON.
Three kinds of run per training stage:
- `align`: the stage's real `train(cfg)`, steps read back from its `metrics.jsonl` (the stage logs throughput
  every step: `log_every=1`); the tokens of each step are replayed with the stage's own batching functions;
- `trl`: the TRL trainer with its default config, except what CPU needs (use_cpu, report_to, output_dir,
  max_steps) and the batch size where the comparison is per pair; steps timed by a TrainerCallback, tokens counted
  from the attention masks of the batches its own collator builds;
- `hand`: the shortest plain-PyTorch loop that does the same job (no align code), the memory baseline.
Generation (PPO rollouts and eval) is compared with raw batched `model.generate` on left-padded batches.
This module holds the shared helpers, the machine's matmul peak and SFT; reward model and DPO are in
`align/bench_preference.py`, PPO and eval in `align/bench_generation.py`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback  # every run imports transformers; its import is part of the baseline

# LoRA on every side when the bench runs with --lora: align's defaults (align.models.LoraConfig).
LORA_R, LORA_ALPHA = 16, 32
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BIG = 10**9  # "never" for eval_every / save_every
SFT_GRAD_ACCUM = 2  # align sft's default: one packed row per micro-batch, two micro-batches per optimiser step
TRAIN_PRECISION = "bf16 autocast, fp32 weights"
STAGE_PRECISION = "bf16 weights, fp32 masters"  # align sft/rm/dpo default precision: bf16 (align.precision)


# ---- process-level helpers ---------------------------------------------------------------------------------------


def memory_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS now, VmHWM the peak) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_one(case: str, settings, result_path: Path, workdir: Path) -> None:
    """Run `case` in this process and write its measurements (peak memory included) to `result_path`."""
    from align.bench_generation import GENERATION_CASES
    from align.bench_preference import PREFERENCE_CASES

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    baseline = memory_mib("VmRSS")  # torch and transformers imported, nothing else yet
    cases = {"machine": case_machine, **SFT_CASES, **PREFERENCE_CASES, **GENERATION_CASES}
    started = time.perf_counter()
    result = cases[case](settings, workdir)
    result.update(case=case, run_s=round(time.perf_counter() - started, 2), baseline_rss_mib=round(baseline, 1),
                  peak_rss_mib=round(memory_mib("VmHWM"), 1), torch_threads=torch.get_num_threads())
    result_path.write_text(json.dumps(result))


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


def lora_config(settings, task_type: str):
    """The same LoRA adapters for TRL and the hand-written loops as align gets; None for full fine-tuning."""
    if not settings.lora:
        return None
    import peft
    from transformers import AutoConfig

    layers = None
    if settings.last_layers:
        total = AutoConfig.from_pretrained(model_path(settings)).num_hidden_layers
        layers = list(range(total - settings.last_layers, total))
    return peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS,
                           task_type=task_type, layers_to_transform=layers)


def align_lora(settings):
    from align.models import LoraConfig

    return LoraConfig(enabled=settings.lora, r=LORA_R, alpha=LORA_ALPHA, target_modules=list(LORA_TARGETS),
                      last_layers=settings.last_layers)


def stage_basics(settings, workdir: Path, train_data: str, max_rows: int) -> dict:
    """The sections every align stage config in the bench shares: run (seed, threads), model (LoRA or full),
    training data without an eval split, no tracking."""
    from align.data import DataConfig
    from align.models import ModelConfig
    from align.stage import RunConfig
    from align.tracking import TrackingConfig

    return dict(run=RunConfig(name="bench", root=str(workdir / "runs"), seed=settings.seed, threads=settings.threads),
                model=ModelConfig(name=settings.model, lora=align_lora(settings)),
                data=DataConfig(train=train_data, eval=None, max_rows=max_rows),
                tracking=TrackingConfig(backend="none"))


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


def run_trl(trainer_cls, config_cls, settings, workdir: Path, steps: int, dataset, model, tokenizer, peft_task: str,
            **config):
    """Train a TRL trainer with its defaults for `steps` steps; return ((real, slots) per step, seconds per step)."""
    args = config_cls(output_dir=str(workdir / "trl"), use_cpu=True, report_to="none", max_steps=steps,
                      seed=settings.seed, **config)
    clock = StepClock()
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=lora_config(settings, peft_task), callbacks=[clock])
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


def rows_of(source: str, purpose: str, n: int) -> list[dict]:
    from align.data import DataConfig, load_rows

    return load_rows(source, purpose, DataConfig(max_rows=n))[0]


# ---- machine ---------------------------------------------------------------------------------------------------


def case_machine(settings, workdir: Path) -> dict:
    """The matmul peak: the best of several timed rounds of n x n torch.matmul, fp32 and bf16."""
    n = settings.matmul_size
    result = {"what": "torch.matmul peak", "method": f"best round of {n}x{n} torch.matmul (2n^3 FLOP each) over "
              f"~{settings.matmul_seconds}s per dtype, after 3 warm-up products", "cpu": _cpu_name(),
              "cpu_flags": _cpu_flags(), "matmul_size": n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
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


# ---- SFT -------------------------------------------------------------------------------------------------------


def case_sft_align(settings, workdir: Path) -> dict:
    from align.batching import packed_batches, tokenize_conversations
    from align.loop import epoch_generator
    from align.models import load_tokenizer
    from align.sft import SFTConfig, SFTTrainConfig, train

    steps = settings.warmup_steps + settings.sft_steps
    cfg = SFTConfig(
        **stage_basics(settings, workdir, "builtin:sft:train", settings.sft_conversations),
        train=SFTTrainConfig(epochs=BIG, max_steps=steps, pack_length=settings.pack_length, rows_per_batch=1,
                             grad_accum=SFT_GRAD_ACCUM, log_every=1, eval_every=BIG, save_every=BIG,
                             eos_check_prompts=0),
    )
    out = train(cfg)
    tokens_per_s = read_logged(out, "sft/tokens_per_s")
    # The tokens of each step, from the stage's own batching (same seed per epoch as align/sft.py).
    t, path = cfg.train, model_path(settings)
    tokenizer = load_tokenizer(path)
    rows = rows_of("builtin:sft:train", "sft", settings.sft_conversations)
    examples, _ = tokenize_conversations(tokenizer, [r["messages"] for r in rows], t.max_length, t.on_overflow)
    epochs: dict[int, list] = {}

    def batches(epoch: int):
        if epoch not in epochs:
            epochs[epoch] = packed_batches(examples, t.pack_length, t.rows_per_batch, tokenizer.pad_token_id,
                                           epoch_generator(cfg.run.seed, epoch))
        return epochs[epoch]

    per_epoch = len(batches(0)) // t.grad_accum
    logged_epochs = read_logged(out, "sft/epoch")  # step / steps_per_epoch: checks the replay's epoch length
    if any(abs(e - (i + 1) / per_epoch) > 1e-9 for i, e in enumerate(logged_epochs)):
        raise RuntimeError(f"the replayed batching gives {per_epoch} steps per epoch but align sft logged epochs "
                           f"{logged_epochs}; align/sft.py's batching changed: update case_sft_align")
    step_tokens = []
    for step in range(len(tokens_per_s)):
        epoch, position = divmod(step, per_epoch)
        micro = batches(epoch)[position * t.grad_accum : (position + 1) * t.grad_accum]
        step_tokens.append((sum(b.real_tokens for b in micro), sum(b.input_ids.numel() for b in micro)))
    step_seconds = [real / rate for (real, _), rate in zip(step_tokens, tokens_per_s)]
    return training_result(
        "align sft", "align.sft.train (tracking none, no eval, no EOS check, log_every=1); seconds per step = the "
        "step's real tokens / its logged sft/tokens_per_s, the tokens replayed with align.batching (best-fit "
        f"packing, {t.rows_per_batch} row(s) of {t.pack_length} tokens per micro-batch, grad_accum "
        f"{t.grad_accum})", step_tokens, step_seconds, settings.warmup_steps, matmul_parameters(path, "causal"),
        conversations=len(examples), precision=STAGE_PRECISION)


def case_sft_trl(settings, workdir: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = rows_of("builtin:sft:train", "sft", settings.sft_conversations)
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    steps = settings.warmup_steps + settings.sft_trl_steps
    step_tokens, step_seconds, defaults = run_trl(SFTTrainer, SFTConfig, settings, workdir, steps, dataset, model,
                                                  tokenizer, "CAUSAL_LM")
    return training_result(
        "TRL SFTTrainer, defaults", "trl.SFTTrainer on the same conversations (messages format), SFTConfig "
        f"defaults ({', '.join(f'{k}={v}' for k, v in defaults.items())}; no packing, loss on every token) with "
        "use_cpu, report_to=none, max_steps; a step's seconds = between consecutive on_step_end callbacks (data "
        "loading included); real tokens = its batch's attention mask", step_tokens, step_seconds,
        settings.warmup_steps, matmul_parameters(path, "causal"), trl_config=defaults)


def case_sft_hand(settings, workdir: Path) -> dict:
    """The shortest packed bf16 loop: conversations concatenated into one token stream cut into rows (attention
    crosses conversation boundaries), loss on every token, AdamW, gradient clipping."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if settings.lora:
        import peft

        model = peft.get_peft_model(model, lora_config(settings, "CAUSAL_LM"))
    rows = rows_of("builtin:sft:train", "sft", settings.sft_conversations)
    stream: list[int] = []
    for r in rows:
        stream += tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                            add_special_tokens=False)["input_ids"]
    length, grad_accum = settings.pack_length, SFT_GRAD_ACCUM
    packed = [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    model.train()
    step_seconds = []
    for step in range(settings.warmup_steps + settings.sft_steps):
        started = time.perf_counter()
        for micro in range(grad_accum):
            ids = torch.tensor([packed[(step * grad_accum + micro) % len(packed)]])
            with bf16_autocast():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss / grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - started)
    per_step = grad_accum * length
    return training_result(
        "hand-written packed bf16 loop", f"plain PyTorch/transformers: the conversations' chat-template tokens "
        f"concatenated and cut into rows of {length} (no padding, causal attention across conversations, loss on "
        f"every token), {grad_accum} rows per AdamW step, bf16 autocast, clip 1.0", [(per_step, per_step)] *
        len(step_seconds), step_seconds, settings.warmup_steps, matmul_parameters(path, "causal"))


SFT_CASES = {"sft/align": case_sft_align, "sft/trl": case_sft_trl, "sft/hand": case_sft_hand}
