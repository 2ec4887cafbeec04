"""GRPO: group-relative policy optimisation from the SFT policy, with the same composite reward as PPO, no critic.

    align grpo configs/grpo.yaml [key.path=value ...]

For each prompt the policy samples a group of G = `num_generations` completions; each completion's advantage is its
reward relative to its own group (Shao et al. 2024, DeepSeekMath, section 4.1):
    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)        (scale_rewards "group"; "batch" or "none" change the divisor)
and the policy maximises the clipped surrogate with these advantages on every completion token, minus beta times a
per-token KL estimate to the reference (the SFT model; with LoRA, the same model with its adapters off).
The value model of PPO is replaced by the group mean: that is the whole point.

TRL's `GRPOTrainer` (trl 1.16) runs the loop; this module wires our pieces into it:
1. the policy: the SFT stage's output (`model.name: sft`), LoRA passed to TRL as a peft config, so TRL computes the
   reference with the adapters disabled and never loads a second model;
2. the prompts: a `datasets.Dataset` in TRL's conversational prompt-only format (`prompt` = chat messages, a
   string prompt as one user turn), so TRL applies the chat template as every stage does, plus a `row_index`
   column pointing back at our loaded rows (see `prompt_dataset`);
3. the reward: ONE TRL reward function, `CompositeRewardFunction`, that calls the composite reward built by
   `align.rewards.build_reward` (reward model + reward functions, checked at stage start) through
   `align.rewards.score_completions`, as PPO does, and returns its total. Each component's batch mean goes to
   TRL's `log_metric`, so it is averaged and logged with TRL's own metrics;
4. the logs: TRL reports to nothing itself (`report_to="none"`); `TrackerCallback` forwards every TRL log to our
   tracker as `grpo/<name>`, so a stage has exactly one W&B run (ours) and one metrics.jsonl;
5. checkpoints: TRL's own, in `<stage>/checkpoints/trl/checkpoint-<step>` every `save_every` steps (newest
   `keep_checkpoints` kept). They hold pickled optimizer/scheduler/RNG state that TRL (transformers' Trainer) loads
   itself with `trainer.train(resume_from_checkpoint=...)`; we add `align_state.json` (W&B run id, reward
   normalisation statistics), written last, which also marks the checkpoint as complete. A rerun with the same
   config resumes from the newest complete one; SIGTERM/SIGINT saves one at the end of the step and stops;
6. the output: the policy with LoRA merged (`align.models.save_model`), tokenizer, config.yaml, manifest.json,
   metrics.jsonl and tables/grpo/samples.jsonl, like every policy stage.
Reward functions get what PPO gives them, which is what TRL gives them for the dataset's prompts (standard or
conversational, see align.rewards): prompts as loaded, completions in the prompts' form, one keyword per dataset
column, and TRL's completion_ids, trainer_state, log_metric (TRL's own: logged as grpo/<name>) and log_extra
(columns of the grpo/samples table). So a reward function runs unchanged in both stages, and in TRL.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from align.checkpoint import read_manifest, write_json_atomic, write_manifest
from align.config import ConfigError
from align.data import DataConfig, data_fingerprint, load_rows
from align.loop import Interrupted, TrainConfig, check_finite, check_finite_parameters, stop_if_requested
from align.models import LoraConfig, ModelConfig, count_parameters, load_model, peft_lora_config, save_model
from align.precision import AutocastPrecision
from align.rewards import RewardConfig, build_reward, dataset_columns, score_completions
from align.rl import constraint_pass_rates, log_samples
from align.rollout import prompt_messages
from align.stage import RunConfig, Stage, resolve_stage_model, run_stage
from align.tracking import Tracker, TrackingConfig
from reward.compose import CompositeReward

TRL_CHECKPOINTS = Path("checkpoints") / "trl"  # TRL's output_dir, inside the stage directory
ALIGN_STATE = "align_state.json"  # our part of a TRL checkpoint, written after TRL's files: its presence = complete


@dataclass
class GRPOTrainConfig(TrainConfig):
    learning_rate: float = 5.0e-5
    warmup_ratio: float = 0.0
    lr_schedule: Literal["cosine", "linear", "constant"] = "constant"
    precision: AutocastPrecision = "auto"  # auto: bf16-autocast where bf16 is native, else fp32; bf16-autocast: bf16
    # autocast over fp32 weights (TRL's bf16); fp32
    log_every: int = 1
    save_every: int = 10
    num_generations: int = 4  # G: completions sampled per prompt; advantages are relative within each group
    max_completion_length: int = 128  # longer completions are cut (counted in grpo/completions/clipped_ratio)
    temperature: float = 1.0  # sampling temperature (also applied to the log-probs, as TRL does)
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this much probability
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    per_device_batch_size: int = 8  # completions per forward/backward pass (per process)
    # forward/backward passes per optimiser step. Completions per optimiser step = per_device_batch_size *
    # gradient_accumulation_steps * processes, which must hold whole groups (a multiple of num_generations);
    # prompts per step = that / num_generations
    gradient_accumulation_steps: int = 1
    epochs: int = 1  # passes over the prompts
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    beta: float = 0.04  # KL coefficient to the reference (0 = no reference, no KL term)
    num_iterations: int = 1  # mu: optimisation passes over each generated batch
    epsilon: float = 0.2  # clip range of the ratio
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"  # how token losses are averaged (TRL's default)
    scale_rewards: Literal["group", "batch", "none"] = "group"  # divisor of the advantages (see the docstring)
    mask_truncated_completions: bool = False  # leave cut-off completions out of the loss (DAPO)
    gradient_checkpointing: bool = False  # TRL turns it on by default; on CPU with small models it only costs time
    eval_every: int = 0  # 0 = no held-out evaluation; otherwise every N steps, sampling G completions per prompt
    eval_max_prompts: int = 16  # held-out prompts sampled at each evaluation
    sample_table_rows: int = 4  # completions logged per generation batch, with their per-component rewards


@dataclass
class GRPOConfig:
    stage: Literal["grpo"] = "grpo"  # the stage this file configures: `align grpo` refuses any other
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="sft", lora=LoraConfig(enabled=True)))
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="builtin:prompts:train", eval="builtin:prompts:heldout")
    )
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---- what TRL is given ------------------------------------------------------------------------------------------


def prompt_dataset(rows: list[dict], first_index: int = 0):
    """TRL's conversational prompt-only dataset: `prompt` (chat messages; a string prompt as one user turn, so TRL
    applies the chat template to it, as PPO and eval do) and `row_index` (first_index + i).

    Only the prompt goes through Arrow: Arrow would rewrite the other columns (dicts in a list column are padded to
    one common set of keys, a column missing from some rows becomes None), and reward functions must see the values
    exactly as loaded. The reward looks each row up by `row_index` instead."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [prompt_messages(row["prompt"]) for row in rows],
        "row_index": list(range(first_index, first_index + len(rows))),
    })


class CompositeRewardFunction:
    """The composite reward as one TRL reward function: returns the weighted total per completion.

    TRL calls it as f(prompts=, completions=, completion_ids=, row_index=, trainer_state=, log_extra=, log_metric=).
    The composite is called through `align.rewards.score_completions` with the rows' own prompts (TRL's are the
    chat messages we gave it) and the completions' texts, so its functions get exactly what PPO gives them. Each
    component's batch mean (and constraint pass rates) goes to `log_metric`; on the main process, the first
    `table_rows` completions of each training batch go to the tracker's `grpo/samples` table, with the columns
    the functions logged through `log_extra`."""

    def __init__(self, composite: CompositeReward, rows: list[dict], columns: list[str], train_rows: int,
                 tracker: Tracker | None, table_rows: int) -> None:
        self.__name__ = "composite"  # TRL names its per-function metrics after it: rewards/composite/mean
        self.composite, self.rows, self.columns = composite, rows, columns
        self.train_rows, self.tracker, self.table_rows = train_rows, tracker, table_rows

    def __call__(self, prompts: list, completions: list, row_index: list[int], completion_ids=None,
                 trainer_state=None, log_metric=None, **trl_extras: Any) -> list[float]:
        from reward.functions import completion_text

        batch = [self.rows[i] for i in row_index]  # their prompts are TRL's `prompts`, as loaded (not via Arrow)
        texts = [completion_text(completion) for completion in completions]
        breakdown, log = score_completions(self.composite, batch, texts, completion_ids, self.columns,
                                           trainer_state, log_metric)
        if log_metric is not None:
            for name, value in {**breakdown.metrics("reward/"), **constraint_pass_rates(batch, completions)}.items():
                log_metric(name, value)
        training = all(i < self.train_rows for i in row_index)  # held-out rows are indexed after the training rows
        if training and trainer_state is not None:
            step = trainer_state.global_step + 1  # the optimiser step these completions train
            log_samples(self.tracker, "grpo/samples", step, [row["prompt"] for row in batch], texts, breakdown,
                        self.table_rows, extra=log.extra)
        return breakdown.total


def trainer_callback(stage: Stage, reward: CompositeReward):
    """A `TrainerCallback` (built here so importing this module does not import transformers) that:
    - forwards TRL's logs to the stage's tracker as grpo/<name> at the optimiser step, and counts its steps;
    - stops the stage on a non-finite loss, gradient norm or trainable weight;
    - on a stop request (SIGTERM/SIGINT, see align.loop), asks TRL to checkpoint and stop at the end of the step;
    - writes align_state.json into each TRL checkpoint once TRL has written its files."""
    from transformers import TrainerCallback

    class TrackerCallback(TrainerCallback):
        def __init__(self) -> None:
            self.latest: dict[str, float] = {}  # last value of every metric, for the manifest and summary
            self.stop: Interrupted | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            step, logs = state.global_step, logs or {}
            for key in ("loss", "grad_norm"):
                if isinstance(logs.get(key), (int, float)):
                    check_finite(float(logs[key]), "grpo", step, "loss" if key == "loss" else "gradient norm")
            # TRL logs None for a metric with no valid value in the window (e.g. a component that never applied)
            values = {f"grpo/{k}": v for k, v in logs.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            self.latest.update(values)
            if values:
                stage.log(values, step)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            stage.steps = state.global_step
            check_finite_parameters(model, "grpo", state.global_step)  # before TRL can checkpoint a NaN
            try:
                stop_if_requested(lambda: None)  # the checkpoint is TRL's, saved when it sees should_save
            except Interrupted as stop:
                self.stop = stop
                control.should_save = True
                control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_json_atomic(checkpoint / ALIGN_STATE, {
                    "step": state.global_step, "wandb_id": stage.tracker.run_id if stage.tracker else None,
                    "reward": reward.state_dict()})

    return TrackerCallback()


def newest_trl_checkpoint(checkpoints: Path) -> Path | None:
    """The newest `checkpoint-<step>` that holds align_state.json (TRL finished writing it); others are skipped."""
    if not checkpoints.is_dir():
        return None
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for checkpoint in reversed(found):
        if (checkpoint / ALIGN_STATE).is_file():
            return checkpoint
        warnings.warn(f"skipping incomplete TRL checkpoint {checkpoint} (no {ALIGN_STATE})", stacklevel=2)
    return None


def trl_arguments(cfg: GRPOConfig, output_dir: Path, processes: int, prompts: int, evaluate: bool, use_cpu: bool,
                  precision: str = "fp32"):
    """TRL's GRPOConfig (a transformers TrainingArguments) from ours; checks the batch shape with our key names."""
    import trl

    t = cfg.train
    per_step = t.per_device_batch_size * t.gradient_accumulation_steps * processes
    if t.num_generations < 2 or per_step % t.num_generations:
        raise ConfigError(
            f"train.num_generations={t.num_generations} must be at least 2 and divide the completions per step, "
            f"train.per_device_batch_size * train.gradient_accumulation_steps * processes = "
            f"{t.per_device_batch_size} * {t.gradient_accumulation_steps} * {processes} = {per_step}")
    if per_step // t.num_generations > prompts:
        raise ConfigError(
            f"a step needs {per_step // t.num_generations} prompts ({per_step} completions / train.num_generations="
            f"{t.num_generations}) but {cfg.data.train} has {prompts}; lower train.per_device_batch_size")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1): a fraction of the training steps")
    schedules = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
    return trl.GRPOConfig(
        output_dir=str(output_dir),
        report_to="none",  # our tracker is the only logger: one W&B run per stage
        use_cpu=use_cpu,
        bf16=precision == "bf16-autocast",
        seed=cfg.run.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # row_index must reach the reward
        num_generations=t.num_generations,
        max_completion_length=t.max_completion_length,
        temperature=t.temperature,
        top_p=t.top_p,
        top_k=t.top_k,
        per_device_train_batch_size=t.per_device_batch_size,
        # evaluation batches must hold whole groups too
        per_device_eval_batch_size=t.num_generations * max(1, t.per_device_batch_size // t.num_generations),
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the training steps
        lr_scheduler_type=schedules[t.lr_schedule],
        max_grad_norm=t.max_grad_norm,
        beta=t.beta,
        num_iterations=t.num_iterations,
        epsilon=t.epsilon,
        loss_type=t.loss_type,
        scale_rewards=t.scale_rewards,
        mask_truncated_completions=t.mask_truncated_completions,
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        logging_steps=t.log_every,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=t.keep_checkpoints,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_every if evaluate else None,
        log_completions=False,  # TRL's completions table goes to W&B only via report_to; ours is grpo/samples
    )


# ---- the stage --------------------------------------------------------------------------------------------------


def load_prompts(cfg: GRPOConfig) -> tuple[list[dict], list[dict], Any]:
    """(training prompts, held-out prompts, the training data's LoadReport); no held-out prompts when
    train.eval_every is 0."""
    train_rows, report = load_rows(cfg.data.train, "prompt", cfg.data)
    eval_rows = []
    if cfg.data.eval and cfg.train.eval_every:
        eval_rows = load_rows(cfg.data.eval, "prompt", cfg.data)[0][: cfg.train.eval_max_prompts]
    return train_rows, eval_rows, report


def resume_point(trl_dir: Path, composite: CompositeReward) -> tuple[Path | None, str | None]:
    """TRL's newest complete checkpoint and our W&B run id saved with it (None, None for a fresh start);
    restores the reward's running normalisation statistics from it."""
    checkpoint = newest_trl_checkpoint(trl_dir)
    if checkpoint is None:
        return None, None
    saved = json.loads((checkpoint / ALIGN_STATE).read_text())
    composite.load_state_dict(saved["reward"])
    print(f"[align] grpo: resuming from {checkpoint} at step {saved['step']}")
    return checkpoint, saved["wandb_id"]


def reference_description(cfg: GRPOConfig) -> str:
    if not cfg.train.beta:
        return "none (beta 0: no KL term)"
    return "the policy with LoRA adapters off" if cfg.model.lora.enabled else "a frozen copy of the policy"


def train(cfg: GRPOConfig, *, restart: bool = False) -> Path:
    return run_stage(cfg, restart, group_relative_policy_optimisation)


def group_relative_policy_optimisation(stage: Stage) -> None:
    import torch
    from trl import GRPOTrainer

    # TRL's arguments reset accelerate's process state: read what is needed of it first
    cfg, device, processes = stage.cfg, stage.accelerator.device, stage.processes
    previous_start = (read_manifest(stage.out) or {}).get("started")
    trl_dir = stage.out / TRL_CHECKPOINTS

    # 1. the policy, without adapters: TRL attaches LoRA from the peft config
    policy_path = resolve_stage_model(cfg.model.name, cfg.run)
    policy, tokenizer = load_model(dataclasses.replace(cfg.model, name=policy_path,
                                                       lora=dataclasses.replace(cfg.model.lora, enabled=False)))

    # 2. prompts (training rows first, then held-out rows, indexed in that order) and 3. the reward, checked now
    train_rows, eval_rows, report = load_prompts(cfg)
    rows = train_rows + eval_rows
    columns = dataset_columns(rows)
    args = trl_arguments(cfg, trl_dir, processes, len(train_rows), evaluate=bool(eval_rows),
                         use_cpu=not torch.cuda.is_available(), precision=stage.precision)
    composite = build_reward(cfg.reward, cfg.run, columns, device=device)
    print(f"[align] grpo: {len(train_rows)} prompts from {cfg.data.train} ({len(eval_rows)} held out), "
          f"{cfg.train.num_generations} completions each; reward = {composite.describe()}")

    # 5. resume from TRL's newest complete checkpoint, in the same W&B run
    checkpoint, wandb_id = resume_point(trl_dir, composite)
    reward_model = resolve_stage_model(cfg.reward.reward_model, cfg.run) if cfg.reward.reward_model else None
    if stage.main:
        write_manifest(stage.out, resumed_from=str(checkpoint) if checkpoint else None,
                       **({"started": previous_start} if checkpoint and previous_start else {}))
    stage.start_tracking(wandb_id, base_model=policy_path, data_fingerprint=data_fingerprint(train_rows),
                         parents={"policy": policy_path, "reward_model": reward_model},
                         data={"train": cfg.data.train, "prompts": len(train_rows), "eval_prompts": len(eval_rows),
                               "bad_rows_skipped": len(report.bad_rows)})

    # 4. TRL's trainer, logging through our tracker
    callback = trainer_callback(stage, composite)
    peft_config = peft_lora_config(cfg.model.lora, policy.config.num_hidden_layers) if cfg.model.lora.enabled \
        else None
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=CompositeRewardFunction(composite, rows, columns, len(train_rows), stage.tracker,
                                             cfg.train.sample_table_rows),
        args=args,
        train_dataset=prompt_dataset(train_rows),
        eval_dataset=prompt_dataset(eval_rows, len(train_rows)) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=[callback],
        peft_config=peft_config,
    )
    print(f"[align] grpo: policy {policy_path} ({count_parameters(trainer.model)[0]:,} trainable), "
          f"reference = {reference_description(cfg)}")
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if callback.stop:
        raise callback.stop

    # 6. final model, LoRA merged
    if stage.main:
        model = trainer.accelerator.unwrap_model(trainer.model)
        check_finite_parameters(model, "grpo", stage.steps)
        save_model(model, tokenizer, stage.out)
        stage.complete(callback.latest, stage.steps,
                       [f"load it with: AutoModelForCausalLM.from_pretrained('{stage.out}')"])
