"""The learned reward model: a causal LM backbone with a scalar head, read at the last token of a conversation.

    from reward.model import RewardModel
    rm = RewardModel.from_pretrained("runs/default/rm")
    rm.score(["Name a colour, in lowercase."], ["blue."])   # -> [1.73]

Needs only torch and transformers: conversations are right-padded into batches and the classifier reads each at
its last real token, as transformers' *ForSequenceClassification models do. align's stages score on packed rows
instead (`align.values.load_reward_model` sets `score_sequences`), with the same scores and less work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def conversation(prompt, completion: str) -> list[dict]:
    """Prompt (a string or a list of messages) + completion, as chat messages."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return messages + [{"role": "assistant", "content": completion}]


def tokenize_for_reward(tokenizer, prompt, completion: str, max_length: int) -> list[int]:
    """The chat-template tokens of prompt + completion; a too-long one keeps its *end* (where the head reads)."""
    text = tokenizer.apply_chat_template(conversation(prompt, completion), tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


class RewardModel:
    """Loads a reward-model stage directory and scores (prompt, completion) pairs; no extra arguments needed.

    `score_sequences(list of token-id lists) -> [N] tensor` may be replaced (align packs sequences instead of
    padding them); the default scores right-padded batches of `batch_size`."""

    def __init__(self, model, tokenizer, max_length: int = 1024, batch_size: int = 16):
        self.model, self.tokenizer = model.eval(), tokenizer
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.max_length, self.batch_size = max_length, batch_size
        self.score_sequences: Callable[[list[list[int]]], torch.Tensor] = self.padded_scores

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16, **kwargs) -> "RewardModel":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, use_safetensors=True)
        if model.config.num_labels != 1:
            raise ValueError(f"{path} is not a reward-model directory: its head has {model.config.num_labels} "
                             f"outputs, a reward model has 1 (train one with `align rm`)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model, tokenizer, **kwargs)

    def padded_scores(self, sequences: list[list[int]]) -> torch.Tensor:
        """[N] scores, each read at the sequence's last token; batches padded on the right, similar lengths
        together."""
        device, pad = self.model.device, self.tokenizer.pad_token_id
        scores = torch.empty(len(sequences))
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(sequences[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(sequences[i])], mask[row, : len(sequences[i])] = torch.tensor(sequences[i]), 1
            # the classifier reads each row at its last token that is not padding
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [b, 1]
            scores[batch] = logits[:, 0].float().cpu()
        return scores

    @torch.no_grad()
    def score(self, prompts: list, completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return []
        sequences = [
            tokenize_for_reward(self.tokenizer, p, c, self.max_length) for p, c in zip(prompts, completions)
        ]
        return self.score_sequences(sequences).tolist()
