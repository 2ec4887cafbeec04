"""The learned reward model: a causal LM backbone with a scalar head, read at the last token of a conversation.

    from reward.model import RewardModel
    rm = RewardModel.from_pretrained("runs/default/rm")
    rm.score(["Name a colour, in lowercase."], ["blue."])   # -> [1.73]

Sequences are packed without padding (as in SFT): each conversation attends only within itself (`align.attention`
segments), and the head reads the hidden state of its last token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from align.attention import attend_by_segments, require_segments
from align.batching import flat_passes


def conversation(prompt, completion: str) -> list[dict]:
    """Prompt (a string or a list of messages) + completion, as chat messages."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return messages + [{"role": "assistant", "content": completion}]


def tokenize_for_reward(tokenizer, prompt, completion: str, max_length: int) -> list[int]:
    """The chat-template tokens of prompt + completion; a too-long one keeps its *end* (where the head reads)."""
    text = tokenizer.apply_chat_template(conversation(prompt, completion), tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


def backbone_and_head(model):
    """(transformer body, score head) of a *ForSequenceClassification model, through a LoRA wrapper if any."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.score


class TokenValues(torch.nn.Module):
    """A scalar for every position of a packed row: `forward(input_ids, position_ids, segments) -> [B, T]` (or
    `inputs_embeds` instead of `input_ids`).

    Wraps a *ForSequenceClassification model (num_labels=1) so that the reward model (read at last tokens) and
    PPO's value model (read at every response token) are one plain module that DDP can wrap."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, position_ids=None, segments=None, use_cache=False, inputs_embeds=None):
        body, head = backbone_and_head(self.model)
        extra = {"segments": segments} if segments is not None else {}
        hidden = body(input_ids=input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids,
                      use_cache=use_cache, **extra).last_hidden_state
        return head(hidden).squeeze(-1).float()


def packed_rewards(values: TokenValues, sequences: list[list[int]], pack_length: int,
                   pairs: list[tuple[int, int]] = ()) -> torch.Tensor:
    """Scalar reward for every token sequence, read at its last token: [N]. Sequences are laid out back to back
    (`align.batching.flat_passes`); each (a, b) in `pairs` computes its common prefix once."""
    require_segments(values)
    rewards = [None] * len(sequences)
    device = next(values.parameters()).device
    for flat in flat_passes(sequences, pack_length, pairs):
        per_position = values(flat.input_ids.to(device), flat.position_ids.to(device), flat.segments)  # [1, T]
        ends = torch.stack([index[-1] for index in flat.token_index])
        for i, value in zip(flat.sequences, per_position[0, ends.to(device)]):
            rewards[i] = value
    return torch.stack(rewards)


class RewardModel:
    """Loads a reward-model stage directory and scores (prompt, completion) pairs; no extra arguments needed."""

    def __init__(self, model, tokenizer, max_length: int = 1024, pack_length: int = 2048):
        self.model, self.tokenizer = attend_by_segments(model).eval(), tokenizer
        self.values = TokenValues(self.model)
        self.max_length, self.pack_length = max_length, pack_length

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16, **kwargs) -> "RewardModel":
        from transformers import AutoModelForSequenceClassification

        from align.models import load_tokenizer

        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, use_safetensors=True)
        if model.config.num_labels != 1:
            raise ValueError(f"{path} is not a reward-model directory: its head has {model.config.num_labels} "
                             f"outputs, a reward model has 1 (train one with `align rm`)")
        return cls(model, load_tokenizer(str(path)), **kwargs)

    @torch.no_grad()
    def score(self, prompts: list, completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return []
        sequences = [
            tokenize_for_reward(self.tokenizer, p, c, self.max_length) for p, c in zip(prompts, completions)
        ]
        return packed_rewards(self.values, sequences, self.pack_length).tolist()
