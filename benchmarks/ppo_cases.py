"""The PPO runs of the benchmark: align's stage with the generation engine and with the previous decoding loop
(`generation.backend: hf`), next to raw `model.generate` plus hand-written training of the same tokens."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.generation_cases import prompt_ids, raw_generate
from benchmarks.measure import (
    bf16_autocast,
    lora_config,
    matmul_parameters,
    model_path,
    read_logged,
    resolved_precision,
    right_pad,
    rows_of,
    stage_config,
    value_model,
)


def ppo_config(settings, workdir: Path, reward_dir: Path | None = None, *overrides: str):
    """configs/ppo.yaml at the benchmark's sizes (every iteration uses the same prompts: the data is exactly one
    iteration's worth), its reward model replaced by `reward_dir`, its value model made from the policy as there.
    One response to each prompt, as the hand-written comparator samples them (configs/ppo.yaml samples four to each
    of 4 prompts: as many responses)."""
    return stage_config("ppo", settings, workdir, "builtin:prompts:train", settings.ppo_prompts,
                        f"reward.reward_model={reward_dir}" if reward_dir else "reward.reward_model=null",
                        f"value_model={model_path(settings)}",
                        f"train.iterations={settings.warmup_steps + settings.ppo_iterations}",
                        f"train.prompts_per_iteration={settings.ppo_prompts}",
                        "train.completions_per_prompt=1", "train.score_baseline=none",
                        f"generation.slots={settings.ppo_prompts}",
                        f"train.minibatch_size={settings.ppo_minibatch}",
                        f"train.max_new_tokens={settings.ppo_max_new_tokens}", *overrides)


def case_ppo_align(settings, workdir: Path, backend: str = "auto") -> dict:
    from align.ppo import train

    path = model_path(settings)
    cfg = ppo_config(settings, workdir, reward_model_dir(path, workdir / "reward-model", settings.seed),
                     f"generation.backend={backend}")
    out = train(cfg)
    parts = {part: read_logged(out, f"ppo/time/{part}")[settings.warmup_steps:]
             for part in ("generate", "score", "logprobs", "update")}
    all_lengths = read_logged(out, "ppo/response_length")
    lengths = all_lengths[settings.warmup_steps:]
    if not lengths or any(len(v) != len(lengths) for v in parts.values()):
        raise RuntimeError(f"ppo logged {len(lengths)} measured iterations; expected {settings.ppo_iterations}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt_tokens = sum(len(ids) for ids in prompt_ids(tokenizer, [r["prompt"] for r in rows_of(
        "builtin:prompts:train", "prompt", settings.ppo_prompts)]))
    new_tokens = [round(length * settings.ppo_prompts) for length in lengths]  # per iteration (mean x prompts)
    update_tokens = sum(cfg.train.ppo_epochs * (prompt_tokens + n) for n in new_tokens)
    n_iter = len(lengths)
    mean = {part: sum(v) / n_iter for part, v in parts.items()}
    n_policy, n_value = matmul_parameters(path, "causal"), matmul_parameters(path, "value")
    generate_s, update_s = sum(parts["generate"]), sum(parts["update"])
    return {
        "what": "align ppo", "precision": precision_label(cfg), "peak_dtype": peak_dtype(cfg),
        "method": f"align.ppo.train ({settings.ppo_prompts} prompts per iteration = the whole prompt set, "
                  f"generation batch {settings.ppo_prompts}, max_new_tokens {settings.ppo_max_new_tokens}, "
                  f"temperature {cfg.train.temperature}, {cfg.train.ppo_epochs} PPO epochs of minibatch "
                  f"{settings.ppo_minibatch}, "
                  "reward = a reward model made from the base model (seeded random score head) + "
                  "instruction_following; value model from the policy, a new head); per-iteration times are the "
                  "stage's logged "
                  "ppo/time/{generate,score,logprobs,update} (generate includes syncing the rollout copy's "
                  "weights), new tokens = ppo/response_length x prompts, update tokens = PPO epochs x (prompt + "
                  "response tokens), each through the policy and the value model",
        "iterations_measured": n_iter, "warmup_steps": settings.warmup_steps,
        "new_tokens_by_iteration": [round(length * settings.ppo_prompts) for length in all_lengths],
        "iteration_s": sum(mean.values()), **{f"{part}_s": value for part, value in mean.items()},
        "prompt_tokens_per_iteration": prompt_tokens, "new_tokens_per_iteration": sum(new_tokens) / n_iter,
        "update_tokens_per_iteration": update_tokens / n_iter,
        "rollout_tokens_per_s": sum(new_tokens) / generate_s,
        "update_tokens_per_s": update_tokens / update_s,
        "seconds": sum(sum(v) for v in parts.values()), "real_tokens": update_tokens, "tokens_per_s":
        update_tokens / update_s, "parameters": n_policy, "value_parameters": n_value,
        "flop_formula": "update only: 6*(N_policy + N_value)*tokens of its PPO epochs",
        "flop_per_s": 6 * (n_policy + n_value) * update_tokens / update_s,
    }


def precision_label(cfg) -> str:
    """What align's PPO computes in: the precision its stage resolves on this machine (bf16 weights for the
    rollouts where bf16 products are native, and for the update bf16 weights with fp32 masters or bf16 autocast over
    fp32 weights; fp32 for both elsewhere)."""
    precision = resolved_precision(cfg)
    if precision == "bf16-autocast":
        return "rollouts: bf16 weights; update: bf16 autocast, fp32 weights"
    if precision == "bf16":
        return "rollouts: bf16 weights; update: bf16 weights, fp32 masters"
    return "fp32 (rollouts and update; bf16 products are not native here)"


def raw_precision_label(cfg) -> str:
    """What the raw side computes in: bf16 weights for generate and bf16 autocast over fp32 weights for training (a
    hand-written loop's usual choice) wherever align's stage uses bf16 at all, else fp32."""
    if resolved_precision(cfg) == "fp32":
        return precision_label(cfg)  # fp32 on both sides
    return "rollouts: bf16 weights; update: bf16 autocast, fp32 weights"


def peak_dtype(cfg) -> str:
    return "fp32" if resolved_precision(cfg) == "fp32" else "bf16"


def reward_model_dir(path: str, out: Path, seed: int) -> Path:
    """A reward-model directory as `align rm` leaves one (a sequence classifier with one label) made from the base
    model with a new, seeded score head: scoring and the value model built from it cost what trained ones do."""
    import gc

    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = value_model(path, tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    gc.collect()
    return out


def case_ppo_raw(settings, workdir: Path) -> dict:
    """Raw generation of the same prompts, then the least training a PPO update does on those sequences: PPO_EPOCHS
    passes of policy + value forward/backward over minibatches, AdamW. No scoring, no reference/old log-probs."""
    path, ppo = model_path(settings), ppo_config(settings, workdir)
    t = ppo.train
    tokenizer = AutoTokenizer.from_pretrained(path)
    bf16 = resolved_precision(ppo) != "fp32"
    generator_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    value = value_model(path, tokenizer.pad_token_id)
    if settings.lora:
        import peft

        policy = peft.get_peft_model(policy, lora_config(settings, ppo.model.lora, "CAUSAL_LM"))
        value = peft.get_peft_model(value, lora_config(settings, ppo.model.lora, "SEQ_CLS"))
    optimizer = torch.optim.AdamW([
        {"params": [p for p in policy.parameters() if p.requires_grad], "lr": t.learning_rate},
        {"params": [p for p in value.parameters() if p.requires_grad], "lr": t.value_learning_rate}])
    encoded = prompt_ids(tokenizer, [r["prompt"] for r in rows_of("builtin:prompts:train", "prompt",
                                                                  settings.ppo_prompts)])
    # align.rollout.generate's order (shortest prompt first) and seed: with the same weights (the warm-up
    # iteration) both sample the same completions; later, align's policy has moved and lengths differ by sampling.
    encoded.sort(key=len)
    sampling = dict(do_sample=True, temperature=t.temperature, top_p=t.top_p, top_k=t.top_k)
    body, head = (value.get_base_model() if settings.lora else value).model, (
        value.get_base_model() if settings.lora else value).score
    timings = []
    for iteration in range(settings.warmup_steps + settings.ppo_iterations):
        torch.manual_seed(settings.seed * 100003 + iteration * 101)
        completions, generate_s = raw_generate(generator_model, tokenizer, encoded, settings.ppo_prompts,
                                               settings.ppo_max_new_tokens, sampling)
        new_tokens = sum(len(c) for c in completions)
        completions = [c or [tokenizer.eos_token_id] for c in completions]  # as align/ppo.py: never empty
        started, tokens = time.perf_counter(), 0
        policy.train()
        value.train()
        for _ in range(t.ppo_epochs):
            for idx in torch.randperm(len(encoded)).split(settings.ppo_minibatch):
                sequences = [encoded[i] + completions[i] for i in idx]
                ids, mask = right_pad(sequences, tokenizer.pad_token_id)
                response = mask.clone()
                for row, i in enumerate(idx.tolist()):
                    response[row, : len(encoded[i])] = 0
                with bf16_autocast() if bf16 else contextlib.nullcontext():
                    logits = policy(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
                    values = head(body(input_ids=ids, attention_mask=mask).last_hidden_state).squeeze(-1).float()
                token_logps = logits.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
                weights = response[:, 1:].float()
                loss = -(token_logps * weights).sum() / weights.sum() + (values**2 * response).sum() / response.sum()
                loss.backward()
                trained = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(trained, t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                tokens += int(mask.sum())
        timings.append((generate_s, new_tokens, time.perf_counter() - started, tokens))
    measured, n = timings[settings.warmup_steps:], settings.ppo_iterations
    generate_s, new_tokens = sum(t[0] for t in measured), sum(t[1] for t in measured)
    train_s, train_tokens = sum(t[2] for t in measured), sum(t[3] for t in measured)
    n_policy, n_value = matmul_parameters(path, "causal"), matmul_parameters(path, "value")
    return {
        "what": "raw generate + hand-written PPO-shaped training",
        "precision": raw_precision_label(ppo), "peak_dtype": peak_dtype(ppo),
        "method": f"raw model.generate on left-padded batches of {settings.ppo_prompts} (the same prompts, order, "
                  "seeds, sampling and max_new_tokens as align's rollouts; no weight sync into the generating "
                  "copy), then "
                  f"{t.ppo_epochs} epochs of policy + value forward/backward over minibatches of "
                  f"{settings.ppo_minibatch} right-padded prompt+response sequences with AdamW (a stand-in loss of "
                  "the same shape: policy log-probs and value regression); raw_iteration_s is rescaled to align's "
                  "tokens per iteration when ppo/align ran (raw_iteration_s_own_tokens: this run's own)",
        "iterations_measured": len(measured), "warmup_steps": settings.warmup_steps,
        "new_tokens_by_iteration": [t[1] for t in timings],
        "generate_s": generate_s / n, "train_s": train_s / n,
        "new_tokens_per_iteration": new_tokens / n, "train_tokens_per_iteration": train_tokens / n,
        "generate_s_per_new_token": generate_s / max(1, new_tokens), "train_s_per_token": train_s / train_tokens,
        "raw_iteration_s_own_tokens": (generate_s + train_s) / n, "raw_iteration_s": (generate_s + train_s) / n,
        "rollout_tokens_per_s": new_tokens / generate_s, "update_tokens_per_s": train_tokens / train_s,
        "seconds": generate_s + train_s, "real_tokens": train_tokens, "tokens_per_s": train_tokens / train_s,
        "parameters": n_policy, "value_parameters": n_value,
        "flop_formula": "training only: 6*(N_policy + N_value)*tokens of its PPO epochs",
        "flop_per_s": 6 * (n_policy + n_value) * train_tokens / train_s,
    }




def case_ppo_align_hf(settings, workdir: Path) -> dict:
    """align ppo with the previous decoding loop (generation.backend hf): the iteration the engine is measured
    against."""
    return {**case_ppo_align(settings, workdir, "hf"), "what": "align ppo, previous decoding loop"}


PPO_CASES = {"ppo/align": case_ppo_align, "ppo/align-hf": case_ppo_align_hf, "ppo/raw": case_ppo_raw}
