"""The critic-free RL runs of the benchmark: align's native GRPO stage next to TRL's GRPOTrainer doing the same work
(see benchmarks/measure.py for how runs are measured).

The same work on both sides: the same model and parameterisation (full fine-tuning, or LoRA from configs/grpo.yaml's
`model.lora` with --lora), the same prompts (the data is exactly one iteration's worth, so every iteration samples
completions for the same prompts), k completions each, the same max_new_tokens, sampling, learning rate, clip range,
KL coefficient, loss aggregation and advantage normalisation, and the same reward (configs/grpo.yaml's reward
functions, no reward model). One generation batch feeds `updates_per_batch` optimiser steps on both sides (all of
an iteration's completions in one minibatch). An iteration is timed from the start of generation to the end of its
last optimiser step; the first `warmup_steps` iterations are run but not timed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.generation_cases import prompt_ids
from benchmarks.measure import (StepClock, lora_config, matmul_parameters, model_path, read_logged,
                                resolved_precision, rows_of, stage_config)

DATA = "builtin:prompts:train"


def grpo_config(settings, workdir: Path):
    """configs/grpo.yaml at the benchmark's sizes: `grpo_prompts` prompts (the whole data) x `grpo_completions`
    completions per iteration in one minibatch, no reward model."""
    completions = settings.grpo_prompts * settings.grpo_completions
    return stage_config("grpo", settings, workdir, DATA, settings.grpo_prompts, "reward.reward_model=null",
                        f"train.iterations={settings.warmup_steps + settings.grpo_iterations}",
                        f"train.prompts_per_iteration={settings.grpo_prompts}",
                        f"train.completions_per_prompt={settings.grpo_completions}",
                        f"train.minibatch_size={completions}", f"generation.slots={completions}",
                        f"train.max_new_tokens={settings.grpo_max_new_tokens}")


def grpo_result(what: str, method: str, cfg, settings, iteration_seconds: list[float], mean_lengths: list[float],
                precision: str | None = None, **extra) -> dict:
    """Steady-state figures of measured iterations: seconds per iteration and per optimiser step, completions and
    new tokens per second, model FLOP/s by one formula for both sides."""
    t, path = cfg.train, model_path(settings)
    completions = settings.grpo_prompts * settings.grpo_completions
    steps = t.updates_per_batch  # optimiser steps per iteration: one minibatch of every completion, per pass
    prompt_tokens = settings.grpo_completions * sum(len(ids) for ids in prompt_ids(
        AutoTokenizer.from_pretrained(path), [row["prompt"] for row in rows_of(DATA, "prompt", settings.grpo_prompts)]))
    new_tokens = sum(length * completions for length in mean_lengths)
    seconds, n = sum(iteration_seconds), len(iteration_seconds)
    n_params = matmul_parameters(path, "causal")
    passes = 2 + 2 * (t.kl_in != "none") + 6 * t.updates_per_batch  # generate, reference, updates: per token
    precision = precision or resolved_precision(cfg)  # a side's own, else what align's stage resolves
    return {
        "what": what, "method": method, "precision": f"{precision} (generation and training)",
        "peak_dtype": "fp32" if precision == "fp32" else "bf16", "iterations_measured": n,
        "warmup_steps": settings.warmup_steps, "iteration_seconds": [round(s, 4) for s in iteration_seconds],
        "iteration_s": seconds / n, "step_s": seconds / (n * steps), "steps_per_iteration": steps,
        "completions_per_iteration": completions, "completions_per_s": completions * n / seconds,
        "new_tokens_per_iteration": new_tokens / n, "seconds": seconds, "real_tokens": round(new_tokens),
        "tokens_per_s": new_tokens / seconds, "parameters": n_params,
        "flop_formula": f"{passes}*N*(prompt + completion tokens): generation 2N, reference 2N (when a KL is used), "
                        "6N per update pass",
        "flop_per_s": passes * n_params * (prompt_tokens * n + new_tokens) / seconds, **extra,
    }


def case_grpo_align(settings, workdir: Path) -> dict:
    from align.grpo import train

    cfg = grpo_config(settings, workdir)
    out = train(cfg)
    parts = {part: read_logged(out, f"grpo/time/{part}")[settings.warmup_steps:]
             for part in ("generate", "score", "logprobs", "update")}
    lengths = read_logged(out, "grpo/response_length")[settings.warmup_steps:]
    iterations = [sum(values) for values in zip(*parts.values())]
    if not lengths or len(iterations) != len(lengths):
        raise RuntimeError(f"grpo logged {len(lengths)} measured iterations; expected {settings.grpo_iterations}")
    t = cfg.train
    return grpo_result(
        "align grpo", f"align.grpo.train ({settings.grpo_prompts} prompts x {settings.grpo_completions} completions "
        f"per iteration, max_new_tokens {t.max_new_tokens}, temperature {t.temperature}, loss {t.loss}, advantages "
        f"{t.advantages}, kl_in {t.kl_in} (beta {t.kl_coef}), {t.updates_per_batch} update pass(es) of one "
        "minibatch; reward = configs/grpo.yaml's functions, no reward model); per-iteration seconds are the stage's "
        "logged grpo/time/{generate,score,logprobs,update} (generate includes refreshing the rollout copy), new "
        "tokens = grpo/response_length x completions", cfg, settings, iterations, lengths,
        **{f"{part}_s": sum(values) / len(values) for part, values in parts.items()})


class LoggedClock(StepClock):
    """StepClock that also keeps every log TRL writes (its completion lengths)."""

    def __init__(self):
        super().__init__()
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def trl_reward(cfg, columns: list[str]):
    """configs/grpo.yaml's composite reward (align.rewards.build_reward) as one TRL reward function returning the
    weighted totals: TRL calls it with what it calls every reward function with."""
    from align.rewards import build_reward

    composite = build_reward(cfg.reward, cfg.run, columns)

    def composite_reward(prompts, completions, **kwargs):
        return composite(prompts, completions, **kwargs).total

    return composite_reward


def case_grpo_trl(settings, workdir: Path) -> dict:
    import trl
    from datasets import Dataset

    cfg, path = grpo_config(settings, workdir), model_path(settings)
    t, steps_per_iteration = cfg.train, cfg.train.updates_per_batch
    rows = rows_of(DATA, "prompt", settings.grpo_prompts)
    columns = sorted({key for row in rows for key in row} - {"prompt"})
    dataset = Dataset.from_dict({"prompt": [row["prompt"] for row in rows],
                                 **{column: [row.get(column) for row in rows] for column in columns}})
    completions = settings.grpo_prompts * settings.grpo_completions
    args = trl.GRPOConfig(
        output_dir=str(workdir / "trl"), use_cpu=True, report_to="none", seed=settings.seed, save_strategy="no",
        max_steps=(settings.warmup_steps + settings.grpo_iterations) * steps_per_iteration, logging_steps=1,
        per_device_train_batch_size=completions, steps_per_generation=1, gradient_accumulation_steps=1,
        num_generations=settings.grpo_completions, max_completion_length=t.max_new_tokens,
        temperature=t.temperature, top_p=t.top_p, top_k=t.top_k, learning_rate=t.learning_rate,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, lr_scheduler_type="constant",
        beta=t.kl_coef if t.kl_in == "loss" else 0.0, epsilon=t.clip_range, epsilon_high=t.clip_range_high,
        loss_type=t.loss, scale_rewards="group" if t.advantages == "grpo" else "none",
        num_iterations=t.updates_per_batch, bf16=resolved_precision(cfg) != "fp32",
        activation_checkpointing=False, dataloader_num_workers=0)
    clock = LoggedClock()
    trainer = trl.GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), reward_funcs=trl_reward(cfg, columns),
        args=args, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=lora_config(settings, cfg.model.lora, "CAUSAL_LM"), callbacks=[clock])
    trainer.train()
    step_seconds = clock.step_seconds()
    iterations = [sum(step_seconds[i : i + steps_per_iteration])
                  for i in range(0, len(step_seconds), steps_per_iteration)][settings.warmup_steps:]
    lengths = [log["completions/mean_length"] for log in clock.logs if "completions/mean_length" in log]
    lengths = lengths[::steps_per_iteration][settings.warmup_steps:]  # logged every step, sampled once an iteration
    chosen = {k: str(getattr(args, k)) for k in ("beta", "loss_type", "scale_rewards", "epsilon", "epsilon_high",
                                                 "num_iterations", "bf16", "gradient_checkpointing")}
    return grpo_result(
        "TRL GRPOTrainer, same work", "trl.GRPOTrainer on the same prompts (conversational, with their constraints "
        "column) and the same reward (align's composite of configs/grpo.yaml's functions as one TRL reward "
        f"function), GRPOConfig set to align's run ({', '.join(f'{k}={v}' for k, v in chosen.items())}; one "
        "generation batch of every completion per iteration, gradient checkpointing off as align has none, "
        "transformers' generate); an iteration's seconds = its optimiser steps' times from the previous step's "
        "end (generation included), new tokens = TRL's logged completions/mean_length x completions", cfg,
        settings, iterations, lengths, precision="bf16-autocast" if args.bf16 else "fp32", trl_config=chosen)


RL_CASES = {"grpo/align": case_grpo_align, "grpo/trl": case_grpo_trl}

