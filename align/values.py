"""Scalar heads read on packed rows: the reward model's score at the last token of each conversation, and PPO's
value at every response token, from one module (`TokenValues`) that DDP can wrap.

Sequences are packed without padding (as in SFT): each conversation attends only within itself (`align.attention`
segments), and a preference pair's common prompt is computed once (`align.batching.flat_passes`).

    scorer = load_reward_model("runs/default/rm")        # a reward.model.RewardModel that scores on packed rows
    scorer.score(["Name a colour, in lowercase."], ["blue."])
"""

from __future__ import annotations

import torch

from align.attention import attend_by_segments, require_segments
from align.batching import flat_passes
from align.sharding import pad_passes
from reward.model import RewardModel


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
    passes = flat_passes(sequences, pack_length, pairs)

    def forward(flat):
        return values(flat.input_ids.to(device), flat.position_ids.to(device), flat.segments)  # [1, T]

    for flat in passes:
        per_position = forward(flat)
        ends = torch.stack([index[-1] for index in flat.token_index])
        for i, value in zip(flat.sequences, per_position[0, ends.to(device)]):
            rewards[i] = value
    pad_passes(values, passes, forward, rewards)  # FSDP2: as many passes as every other process (align.sharding)
    return torch.stack(rewards)


def load_reward_model(path: str, dtype: torch.dtype | None = None, pack_length: int = 2048) -> RewardModel:
    """A reward-model directory as a `reward.model.RewardModel` whose scores come from packed rows (no padding,
    no mask) instead of its default padded batches: same scores, less work. `dtype` None: bf16 where bf16
    products are native (`align.precision.fast_bf16`), else fp32 (an AVX2 CPU emulates bf16
    products, many times slower than fp32)."""
    if dtype is None:
        from align.precision import fast_bf16

        dtype = torch.bfloat16 if fast_bf16(torch.device("cuda" if torch.cuda.is_available() else "cpu")) \
            else torch.float32
    scorer = RewardModel.from_pretrained(path, dtype=dtype)
    values = TokenValues(attend_by_segments(scorer.model))
    scorer.score_sequences = lambda sequences: packed_rewards(values, sequences, pack_length)
    return scorer


def load_reward_backbone(cfg, path: str):
    """A *ForSequenceClassification model (num_labels=1) on the weights at `path` (the SFT stage's, for the reward
    model; the reward model's, for PPO's value model), LoRA on the body if `cfg.lora` (a ModelConfig) enables it."""
    from transformers import AutoModelForSequenceClassification

    from align.models import attach_lora, load_tokenizer

    tokenizer = load_tokenizer(path, cfg.trust_remote_code, cfg.revision)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, revision=cfg.revision, num_labels=1, dtype=torch.float32, use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code
    )
    model.hub_revision = cfg.revision  # where a bf16 stage gets its fp32 frozen weights back (align.precision)
    model.config.pad_token_id = tokenizer.pad_token_id
    attend_by_segments(model)
    if cfg.lora.enabled:
        model = attach_lora(model, cfg.lora, task_type="SEQ_CLS")  # SEQ_CLS also trains `score`
    return model, tokenizer
