"""The reward-model and DPO runs of the benchmark (see benchmarks/measure.py for how runs are measured).

Both train on the same built-in preference pairs; align's stages lay the 2B sequences of a batch out back to back
(each pair's common prefix once), TRL and the hand-written loops pad them into one batch.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from pathlib import Path

import torch

from benchmarks.measure import (
    BIG,
    STAGE_PRECISION,
    bf16_autocast,
    lora_config,
    matmul_parameters,
    model_path,
    read_logged,
    right_pad,
    rows_of,
    run_trl,
    stage_config,
    training_result,
    value_model,
)


def pair_stage_config(stage: str, settings, workdir: Path):
    """configs/rm.yaml or configs/dpo.yaml at the benchmark's sizes, no held-out evaluation."""
    return stage_config(stage, settings, workdir, "builtin:pairs:train", settings.pairs, f"train.epochs={BIG}",
                        f"train.max_steps={settings.warmup_steps + settings.pair_steps}",
                        f"train.pairs_per_batch={settings.pairs_per_batch}", f"train.eval_every={BIG}")


# ---- reward model ----------------------------------------------------------------------------------------------


def case_rm_align(settings, workdir: Path) -> dict:
    from align.models import load_tokenizer
    from align.rm import tokenize_pairs, train

    cfg = pair_stage_config("rm", settings, workdir)
    out = train(cfg)
    pairs_per_s = read_logged(out, "rm/pairs_per_s")
    t, path = cfg.train, model_path(settings)
    pairs, _ = tokenize_pairs(load_tokenizer(path), rows_of("builtin:pairs:train", "preference", settings.pairs),
                              t.max_length)
    batches = list(stage_pair_batches(pairs, t.pairs_per_batch, cfg.run.seed, len(pairs_per_s)))
    step_tokens = [pair_pass_tokens([c for c, _ in batch] + [r for _, r in batch], t.pack_length)
                   for batch in batches]
    step_seconds = [len(batch) / rate for batch, rate in zip(batches, pairs_per_s)]
    return training_result(
        "align rm", "align.rm.train (tracking none, no eval, log_every=1); seconds per step = pairs per batch / "
        "its logged rm/pairs_per_s; tokens replayed with align.rm.tokenize_pairs and the packing of "
        "reward.model.packed_rewards (each pair's prompt once)", step_tokens, step_seconds, settings.warmup_steps,
        matmul_parameters(path, "value"), t.pairs_per_batch, precision=STAGE_PRECISION)


def stage_pair_batches(pairs: list, pairs_per_batch: int, seed: int, steps: int):
    """The pairs of each of the first `steps` steps of align rm / align dpo on one process, in the stage's order
    (one `align.loop.epoch_permutation` per epoch; the epoch's last step takes what is left)."""
    from align.distributed import epoch_step, epoch_steps
    from align.loop import epoch_permutation

    per_epoch = epoch_steps(len(pairs), pairs_per_batch)
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        order = epoch_permutation(len(pairs), seed, epoch)
        yield [pairs[i] for i in epoch_step(order, pairs_per_batch, position)]


def pair_pass_tokens(sequences: list[list[int]], pack_length: int) -> tuple[int, int]:
    """(tokens, slots) of a step's forward passes as align lays them out (align.batching.flat_passes, sequence i
    paired with i + B, their common prefix once): no padding, so both are the tokens the model runs."""
    from align.batching import flat_passes

    half = len(sequences) // 2
    tokens = sum(f.input_ids.numel() for f in flat_passes(sequences, pack_length, [(i, i + half) for i in range(half)]))
    return tokens, tokens


def preference_dataset(settings):
    """The pairs in TRL's conversational preference format (prompt messages, one-message chosen/rejected)."""
    from datasets import Dataset

    rows = rows_of("builtin:pairs:train", "preference", settings.pairs)
    return Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])


def case_rm_trl(settings, workdir: Path) -> dict:
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    path = model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    steps = settings.warmup_steps + settings.pair_steps
    step_tokens, step_seconds, defaults = run_trl(
        RewardTrainer, RewardConfig, settings, workdir, steps, preference_dataset(settings),
        value_model(path, tokenizer.pad_token_id), tokenizer,
        lora_config(settings, pair_stage_config("rm", settings, workdir).model.lora, "SEQ_CLS"),
        per_device_train_batch_size=settings.pairs_per_batch)
    return training_result(
        "TRL RewardTrainer, defaults", "trl.RewardTrainer on the same pairs (conversational preference format), "
        f"RewardConfig defaults ({', '.join(f'{k}={v}' for k, v in defaults.items())}) with use_cpu, "
        "report_to=none, max_steps and per_device_train_batch_size = align's pairs_per_batch; timed like sft/trl",
        step_tokens, step_seconds, settings.warmup_steps, matmul_parameters(path, "value"),
        settings.pairs_per_batch, trl_config=defaults)


def case_rm_hand(settings, workdir: Path) -> dict:
    from transformers import AutoTokenizer

    path, rm = model_path(settings), pair_stage_config("rm", settings, workdir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = value_model(path, tokenizer.pad_token_id)
    if settings.lora:
        import peft

        model = peft.get_peft_model(model, lora_config(settings, rm.model.lora, "SEQ_CLS"))
    rows = rows_of("builtin:pairs:train", "preference", settings.pairs)

    def ids(prompt, answer):
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    pairs = [(ids(r["prompt"], r["chosen"]), ids(r["prompt"], r["rejected"])) for r in rows]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=rm.train.learning_rate)
    model.train()
    n, step_tokens, step_seconds = settings.pairs_per_batch, [], []
    for step in range(settings.warmup_steps + settings.pair_steps):
        started = time.perf_counter()
        batch = [pairs[(step * n + i) % len(pairs)] for i in range(n)]
        input_ids, mask = right_pad([c for c, _ in batch] + [r for _, r in batch], tokenizer.pad_token_id)
        with bf16_autocast():
            rewards = model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1).float()
        loss = -torch.nn.functional.logsigmoid(rewards[:n] - rewards[n:]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - started)
        step_tokens.append((int(mask.sum()), mask.numel()))
    return training_result(
        "hand-written padded bf16 RM loop", "plain PyTorch/transformers: chosen and rejected chat-template "
        "sequences right-padded into one batch, AutoModelForSequenceClassification (reward at the last real "
        "token), Bradley-Terry loss, AdamW, bf16 autocast, clip 1.0", step_tokens, step_seconds,
        settings.warmup_steps, matmul_parameters(path, "value"), n)


# ---- DPO -------------------------------------------------------------------------------------------------------


def case_dpo_align(settings, workdir: Path) -> dict:
    from align.dpo import tokenize_pairs, train
    from align.models import load_tokenizer

    cfg = pair_stage_config("dpo", settings, workdir)
    printed = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        out = train(cfg)
    found = re.search(r"reference log-probs of (\d+) pairs precomputed in ([\d.]+)s", printed.getvalue())
    if not found:
        raise RuntimeError("align dpo did not print its reference precompute time; the bench reads it from there")
    reference_s_per_pair = float(found.group(2)) / int(found.group(1))
    pairs_per_s = read_logged(out, "dpo/pairs_per_s")
    t, path = cfg.train, model_path(settings)
    pairs, _ = tokenize_pairs(load_tokenizer(path), rows_of("builtin:pairs:train", "preference", settings.pairs),
                              t.max_prompt_length, t.max_response_length)
    batches = list(stage_pair_batches(pairs, t.pairs_per_batch, cfg.run.seed, len(pairs_per_s)))
    step_tokens = [pair_pass_tokens([p + c for p, c, _ in batch] + [p + r for p, _, r in batch], t.pack_length)
                   for batch in batches]
    step_seconds = [len(batch) / rate for batch, rate in zip(batches, pairs_per_s)]
    return dpo_result(
        training_result(
            "align dpo", "align.dpo.train (precompute_reference=true, tracking none, no eval, log_every=1); "
            "seconds per step = pairs per batch / its logged dpo/pairs_per_s, plus each pair's share of the "
            "reference precompute time the stage prints; tokens replayed with align.dpo.tokenize_pairs and the "
            "layout of align.batching.flat_passes (each pair's prompt once)", step_tokens, step_seconds,
            settings.warmup_steps, matmul_parameters(path, "causal"), t.pairs_per_batch, precision=STAGE_PRECISION),
        reference_s_per_pair)


def dpo_result(result: dict, reference_s_per_pair: float) -> dict:
    """Add the reference model's cost to a run that computed reference log-probs outside its timed steps: pairs/s
    with each pair's share of that time, and FLOP/s over training plus reference (6N + 2N per token)."""
    reference_s = reference_s_per_pair * result["pairs"]
    total_s = result["seconds"] + reference_s
    result.update(train_pairs_per_s=result["pairs_per_s"], reference_s=reference_s, pairs_per_s=result["pairs"] /
                  total_s, flop_formula="6*N*real tokens (policy) + 2*N*real tokens (reference)",
                  flop_per_s=8 * result["parameters"] * result["real_tokens"] / total_s)
    return result


def case_dpo_trl(settings, workdir: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    path = model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    steps = settings.warmup_steps + settings.pair_steps
    step_tokens, step_seconds, defaults = run_trl(
        DPOTrainer, DPOConfig, settings, workdir, steps, preference_dataset(settings), model, tokenizer,
        lora_config(settings, pair_stage_config("dpo", settings, workdir).model.lora, "CAUSAL_LM"),
        per_device_train_batch_size=settings.pairs_per_batch)
    # The reference forward runs inside every TRL step (precompute_ref_log_probs=False by default).
    return dpo_result(training_result(
        "TRL DPOTrainer, defaults", "trl.DPOTrainer on the same pairs (conversational preference format), DPOConfig "
        f"defaults ({', '.join(f'{k}={v}' for k, v in defaults.items())}; reference log-probs computed in every "
        "step) with use_cpu, report_to=none, max_steps and per_device_train_batch_size = align's pairs_per_batch; "
        "timed like sft/trl", step_tokens, step_seconds, settings.warmup_steps, matmul_parameters(path, "causal"),
        settings.pairs_per_batch, trl_config=defaults), 0.0)


def case_dpo_hand(settings, workdir: Path) -> dict:
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, dpo = model_path(settings), pair_stage_config("dpo", settings, workdir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if settings.lora:
        import peft

        policy = peft.get_peft_model(policy, lora_config(settings, dpo.model.lora, "CAUSAL_LM"))
        reference = None
    else:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    rows = rows_of("builtin:pairs:train", "preference", settings.pairs)
    eos, pad, n = tokenizer.eos_token_id, tokenizer.pad_token_id, settings.pairs_per_batch
    pairs = []
    for r in rows:
        prompt = tokenizer(tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
        pairs.append([(prompt, tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])
                      for text in (r["chosen"], r["rejected"])])

    def sequence_logps(model, batch):  # [2n]: chosen then rejected, summed over response tokens
        sequences = [p + a for p, a in (pair[0] for pair in batch)] + [p + a for p, a in (pair[1] for pair in batch)]
        starts = [len(p) for p, _ in (pair[0] for pair in batch)] + [len(p) for p, _ in (pair[1] for pair in batch)]
        ids, mask = right_pad(sequences, pad)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:]
        token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
        positions = torch.arange(targets.shape[1]).unsqueeze(0)
        response = (positions >= torch.tensor(starts).unsqueeze(1) - 1) & mask[:, 1:].bool()
        return (token_logps * response).sum(-1), mask

    steps = settings.warmup_steps + settings.pair_steps
    batches = [[pairs[(step * n + i) % len(pairs)] for i in range(n)] for step in range(steps)]
    started = time.perf_counter()  # reference log-probs of every pair the steps use, once, before training
    with torch.no_grad(), bf16_autocast():
        if reference is not None:
            reference_logps = [sequence_logps(reference, batch)[0] for batch in batches]
        else:
            with policy.disable_adapter():
                reference_logps = [sequence_logps(policy, batch)[0] for batch in batches]
    reference_s_per_pair = (time.perf_counter() - started) / (steps * n)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=dpo.train.learning_rate)
    policy.train()
    step_tokens, step_seconds = [], []
    for batch, ref in zip(batches, reference_logps):
        started = time.perf_counter()
        with bf16_autocast():
            logps, mask = sequence_logps(policy, batch)
        h = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
        loss = -torch.nn.functional.logsigmoid(0.1 * h).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - started)
        step_tokens.append((int(mask.sum()), mask.numel()))
    return dpo_result(training_result(
        "hand-written padded bf16 DPO loop", "plain PyTorch/transformers: prompt+chosen and prompt+rejected "
        "right-padded into one batch, full-vocabulary logits, log-probs summed over response tokens, sigmoid DPO "
        "loss (beta 0.1), AdamW, bf16 autocast, clip 1.0; reference log-probs precomputed once (timed, each pair's "
        "share added)", step_tokens, step_seconds, settings.warmup_steps, matmul_parameters(path, "causal"), n),
        reference_s_per_pair)


class _Tee(io.TextIOBase):
    """Writes to several streams: the stage's printout goes to the log and is kept to be read back."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


PREFERENCE_CASES = {
    "rm/align": case_rm_align, "rm/trl": case_rm_trl, "rm/hand": case_rm_hand,
    "dpo/align": case_dpo_align, "dpo/trl": case_dpo_trl, "dpo/hand": case_dpo_hand,
}
