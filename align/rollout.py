"""Batched, KV-cached generation shared by evaluation and the RL stages.

Prompts are sorted by length before batching so each batch pads as little as possible (left padding, since
decoder-only models continue from the right edge), then results are put back in the caller's order.

The decoding loop is ours rather than `model.generate` for one reason: a row that has emitted EOS leaves the
batch (its KV-cache rows are dropped), so the remaining steps only pay for the rows still generating. On CPU a
decoding step costs roughly in proportion to its rows, and with answers of very different lengths a static batch
spends a third or more of its row-steps on finished rows. Sampling is the usual temperature -> top-k -> top-p ->
multinomial chain (transformers' own logits warpers), greedy when temperature is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Generations:
    prompts: list[str]  # the rendered prompts (chat template applied)
    texts: list[str]  # completions, special tokens removed
    token_ids: list[list[int]]  # completion token ids, EOS included when the model stopped, no padding
    finished: list[bool]  # True when the model emitted EOS before max_new_tokens
    new_tokens: int  # generated tokens in total (what throughput is measured in)


def render_prompt(tokenizer, prompt) -> str:
    """A prompt as text with the chat template applied: accepts a string (one user turn) or a list of messages."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def next_token_sampler(temperature: float, top_p: float, top_k: int):
    """A function logits [B, V] -> next token ids [B]: argmax when temperature is 0, else a sample from the
    temperature-scaled distribution restricted to the top_k tokens and the top_p probability mass."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if temperature <= 0:
        return lambda logits: logits.argmax(-1)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return lambda logits: torch.multinomial(torch.softmax(warpers(None, logits), dim=-1), 1).squeeze(1)


def decode_batch(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos: int,
                 next_token) -> list[list[int]]:
    """Continue a left-padded batch ([B, T] ids and mask) for up to max_new_tokens; returns each row's new tokens,
    EOS included when it stopped. Rows that finish are removed from the batch and from the KV cache."""
    from transformers import DynamicCache

    cache = DynamicCache()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: left padding does not shift positions
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    rows = list(range(len(input_ids)))  # which original row each live batch row is
    position = positions[:, -1:]  # [b, 1]
    new_tokens: list[list[int]] = [[] for _ in range(len(input_ids))]
    for step in range(max_new_tokens):
        tokens = next_token(out.logits[:, -1, :].float())  # [b]
        for row, token in zip(rows, tokens.tolist()):
            new_tokens[row].append(token)
        live = tokens != eos  # [b]
        if step == max_new_tokens - 1 or not live.any():
            break
        if not live.all():  # drop finished rows from everything that carries the batch dimension
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows = [rows[i] for i in keep.tolist()]
            tokens, position, attention_mask = tokens[keep], position[keep], attention_mask[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        position = position + 1
        out = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=position,
                    past_key_values=cache, use_cache=True)
    return new_tokens


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator_seed: int | None = None,
) -> Generations:
    """Generate one completion per prompt. temperature 0 means greedy decoding."""
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    texts, token_ids, finished = [None] * len(prompts), [None] * len(prompts), [False] * len(prompts)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    next_token = next_token_sampler(temperature, top_p, top_k)
    new_tokens = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding
            input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]) :] = 1
        outputs = decode_batch(model, input_ids.to(model.device), attention_mask.to(model.device), max_new_tokens,
                               eos, next_token)
        for ids, i in zip(outputs, batch):
            finished[i] = eos in ids
            token_ids[i] = ids
            texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
            new_tokens += len(ids)
    model.train(was_training)
    return Generations(rendered, texts, token_ids, finished, new_tokens)
