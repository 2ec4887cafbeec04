"""The SFT runs of the benchmark: align's stage, TRL's SFTTrainer with its defaults, a hand-written packed loop."""

from __future__ import annotations

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
    rows_of,
    run_trl,
    stage_config,
    training_result,
)


def sft_config(settings, workdir: Path):
    return stage_config("sft", settings, workdir, "builtin:sft:train", settings.sft_conversations,
                        f"train.epochs={BIG}", f"train.max_steps={settings.warmup_steps + settings.sft_steps}",
                        f"train.pack_length={settings.pack_length}", "train.rows_per_batch=1",
                        f"train.eval_every={BIG}", "train.eos_check_prompts=0")


def case_sft_align(settings, workdir: Path) -> dict:
    from align.batching import packed_batches
    from align.distributed import epoch_step, epoch_steps
    from align.loop import epoch_generator
    from align.models import load_tokenizer
    from align.sft import load_conversations, train

    cfg = sft_config(settings, workdir)
    out = train(cfg)
    tokens_per_s = read_logged(out, "sft/tokens_per_s")
    # The tokens of each step, from the stage's own batching (same seed per epoch as align/sft.py).
    t, path = cfg.train, model_path(settings)
    tokenizer = load_tokenizer(path)
    examples = load_conversations(cfg, tokenizer)[2]  # the stage's own examples (its negatives included)
    epochs: dict[int, list] = {}

    def batches(epoch: int):
        if epoch not in epochs:
            epochs[epoch] = packed_batches(examples, t.pack_length, t.rows_per_batch, tokenizer.pad_token_id,
                                           epoch_generator(cfg.run.seed, epoch))
        return epochs[epoch]

    per_epoch = epoch_steps(len(batches(0)), t.grad_accum)  # (one process: grad_accum micro-batches a step)
    logged_epochs = read_logged(out, "sft/epoch")  # step / steps_per_epoch: checks the replay's epoch length
    if any(abs(e - (i + 1) / per_epoch) > 1e-9 for i, e in enumerate(logged_epochs)):
        raise RuntimeError(f"the replayed batching gives {per_epoch} steps per epoch but align sft logged epochs "
                           f"{logged_epochs}; align/sft.py's batching changed: update case_sft_align")
    step_tokens = []
    for step in range(len(tokens_per_s)):
        epoch, position = divmod(step, per_epoch)
        micro = epoch_step(batches(epoch), t.grad_accum, position)
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

    path, sft = model_path(settings), sft_config(settings, workdir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = rows_of("builtin:sft:train", "sft", settings.sft_conversations)
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    steps = settings.warmup_steps + settings.sft_trl_steps
    step_tokens, step_seconds, defaults = run_trl(SFTTrainer, SFTConfig, settings, workdir, steps, dataset, model,
                                                  tokenizer, lora_config(settings, sft.model.lora, "CAUSAL_LM"))
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

    path, sft = model_path(settings), sft_config(settings, workdir).train
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if settings.lora:
        import peft

        model = peft.get_peft_model(model, lora_config(settings, sft_config(settings, workdir).model.lora,
                                                       "CAUSAL_LM"))
    rows = rows_of("builtin:sft:train", "sft", settings.sft_conversations)
    stream: list[int] = []
    for r in rows:
        stream += tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                            add_special_tokens=False)["input_ids"]
    length, grad_accum = settings.pack_length, sft.grad_accum
    packed = [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=sft.learning_rate)
    model.train()
    step_seconds = []
    for step in range(settings.warmup_steps + settings.sft_steps):
        started = time.perf_counter()
        for micro in range(grad_accum):
            ids = torch.tensor([packed[(step * grad_accum + micro) % len(packed)]])
            with bf16_autocast():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss / grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, sft.max_grad_norm)
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
