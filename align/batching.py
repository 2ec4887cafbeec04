"""From conversations to training tokens: chat-template tokenisation with assistant-only labels, a length report,
and padding-free packing.

Packing: conversations are placed into rows of at most `pack_length` tokens by best-fit-decreasing (the longest
first, each into the row with the least room that still fits it), so rows come out ~98% full. Each row carries
`position_ids` that restart at 0 for every conversation, so attention never crosses from one conversation into
another: with `align.attention` segments each conversation attends only within itself (no mask); with plain sdpa,
transformers turns restarting position ids into a block-diagonal causal mask.

`flat_passes` lays scored sequences (reward model, log-probs, values) out for forward passes with segments, and
computes the common prefix of a preference pair (the prompt) once for both of its answers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch

from align.attention import Segment, segments_from_position_ids, uses_segments

IGNORE = -100  # label of tokens that carry no loss


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # = input_ids on assistant tokens (EOS included), IGNORE elsewhere
    unlikely: list[int] | None = None  # = input_ids on tokens whose likelihood is pushed down, IGNORE elsewhere


@dataclass
class LengthReport:
    total: int = 0
    truncated: int = 0  # longer than max_length, cut to max_length (still had assistant tokens left)
    dropped: int = 0  # longer than max_length and dropped (on_overflow=drop, or nothing to learn was left)
    longest: int = 0
    examples: list[int] = field(default_factory=list)  # row indices of affected examples (first 20)

    def describe(self, max_length: int) -> str:
        if not (self.truncated or self.dropped):
            return f"all {self.total} examples fit in max_length={max_length} (longest {self.longest} tokens)"
        return (
            f"{self.truncated} of {self.total} examples truncated and {self.dropped} dropped for being longer than "
            f"max_length={max_length} tokens (longest {self.longest}; rows {self.examples[:20]})"
        )


def tokenize_conversation(tokenizer, messages: list[dict]) -> TokenizedExample:
    """Render `messages` with the tokenizer's chat template; label only the assistant turns.

    Each assistant turn's span is found by rendering the conversation up to it with a generation prompt (where
    the answer starts) and through it (where it ends, the end-of-turn/EOS token included, so the model learns
    to stop). Spans are mapped to tokens by character offsets, so templates that add text between turns work.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(through):
            raise ValueError(
                "the chat template renders a conversation differently from its prefixes (e.g. it rewrites earlier "
                "turns); assistant-only labels cannot be located for this template"
            )
        spans.append((start, len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    labels = [IGNORE] * len(input_ids)
    for index, (char_start, char_end) in enumerate(encoded["offset_mapping"]):
        if any(start <= char_start and char_end <= end for start, end in spans):
            labels[index] = input_ids[index]
    return TokenizedExample(input_ids, labels)


def tokenize_conversations(
    tokenizer, conversations: list[list[dict]], max_length: int, on_overflow: str = "truncate"
) -> tuple[list[TokenizedExample], LengthReport]:
    """Tokenise every conversation; examples longer than `max_length` are truncated or dropped and reported."""
    if on_overflow not in ("truncate", "drop"):
        raise ValueError(f"on_overflow must be 'truncate' or 'drop', got {on_overflow!r}")
    report = LengthReport(total=len(conversations))
    examples = []
    for row, messages in enumerate(conversations):
        example = tokenize_conversation(tokenizer, messages)
        report.longest = max(report.longest, len(example.input_ids))
        if len(example.input_ids) > max_length:
            report.examples.append(row)
            cut = TokenizedExample(example.input_ids[:max_length], example.labels[:max_length])
            if on_overflow == "drop" or all(label == IGNORE for label in cut.labels):
                report.dropped += 1
                continue
            report.truncated += 1
            example = cut
        examples.append(example)
    return examples, report


def repeated_line_negative(example: TokenizedExample, newlines: set[int], newline: int, specials: set[int], rng,
                           repeats: int = 2) -> TokenizedExample:
    """A negative for sequence-level unlikelihood (Welleck et al. 2020): the example's prompt and its last answer
    up to the end of one of the answer's lines (drawn with `rng`, a random.Random), then that line `repeats` times
    more, each on a line of its own: a repetition loop starting where the answer really wrote the line. The
    repeated lines' tokens are `unlikely`; nothing is labelled for the likelihood. `newlines`: the tokens that
    hold a line break (they end a line, and are never pushed down: every answer needs them); `newline`: the
    token put before each repeat; `specials`: the tokens that end an answer's text (EOS, end of turn)."""
    ids = example.input_ids
    last = max(i for i, label in enumerate(example.labels) if label != IGNORE)
    start = last
    while start > 0 and example.labels[start - 1] != IGNORE:  # the last answer's labelled tokens: [start, last]
        start -= 1
    end = next((i for i in range(start, last + 1) if ids[i] in specials), last + 1)  # its text: [start, end)
    breaks = [i for i in range(start, end) if ids[i] in newlines]
    lines = [(a, b) for a, b in zip([start] + [i + 1 for i in breaks], breaks + [end]) if b > a]
    if not lines:  # an answer that is only its EOS
        return TokenizedExample(list(ids), [IGNORE] * len(ids), [IGNORE] * len(ids))
    line_start, line_end = rng.choice(lines)
    repeated = ([newline] + ids[line_start:line_end]) * repeats
    return TokenizedExample(ids[:line_end] + repeated, [IGNORE] * (line_end + len(repeated)),
                            [IGNORE] * line_end + [IGNORE if t in newlines else t for t in repeated])


def pack_best_fit(lengths: list[int], pack_length: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: returns rows as lists of example indices, each row <= pack_length tokens."""
    if any(n > pack_length for n in lengths):
        raise ValueError(f"an example is longer than pack_length={pack_length}; tokenise with max_length <= it")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), kept sorted for bisect
    for i in order:
        slot = bisect.bisect_left(free, (lengths[i], -1))
        if slot == len(free):
            rows.append([i])
            bisect.insort(free, (pack_length - lengths[i], len(rows) - 1))
        else:
            room, row = free.pop(slot)
            rows[row].append(i)
            bisect.insort(free, (room - lengths[i], row))
    return rows


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T], restarting at 0 for every conversation (and for the padding tail)
    labels: torch.Tensor  # [B, T], IGNORE on non-assistant tokens and padding
    real_tokens: int  # non-padding tokens in the batch
    unlikely: torch.Tensor | None = None  # [B, T] tokens pushed down (TokenizedExample.unlikely); None: none

    @property
    def loss_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def collate_packed(examples: list[TokenizedExample], rows: list[list[int]], pad_token_id: int) -> PackedBatch:
    """Concatenate each row's examples; pad rows to the longest one (the padding is its own 'conversation')."""
    negatives = any(examples[i].unlikely for row in rows for i in row)
    ids, positions, labels, unlikely = [], [], [], []
    for row in rows:
        ids.append([t for i in row for t in examples[i].input_ids])
        labels.append([t for i in row for t in examples[i].labels])
        positions.append([p for i in row for p in range(len(examples[i].input_ids))])
        if negatives:
            unlikely.append([t for i in row for t in examples[i].unlikely or [IGNORE] * len(examples[i].input_ids)])
    width = max(len(r) for r in ids)
    real = sum(len(r) for r in ids)
    for row_ids, row_pos, row_labels in zip(ids, positions, labels):
        pad = width - len(row_ids)
        row_ids += [pad_token_id] * pad
        row_pos += list(range(pad))
        row_labels += [IGNORE] * pad
    for row_unlikely in unlikely:
        row_unlikely += [IGNORE] * (width - len(row_unlikely))
    return PackedBatch(torch.tensor(ids), torch.tensor(positions), torch.tensor(labels), real,
                       torch.tensor(unlikely) if negatives else None)


def packed_batches(examples: list[TokenizedExample], pack_length: int, rows_per_batch: int, pad_token_id: int,
                   generator: torch.Generator) -> list[PackedBatch]:
    """Pack all examples into rows, shuffle the rows with `generator`, and group them into batches."""
    rows = pack_best_fit([len(e.input_ids) for e in examples], pack_length)
    order = torch.randperm(len(rows), generator=generator).tolist()
    rows = [rows[i] for i in order]
    return [
        collate_packed(examples, rows[i : i + rows_per_batch], pad_token_id)
        for i in range(0, len(rows), rows_per_batch)
    ]


def causal_lm_loss(model, batch: PackedBatch, unlikelihood: float = 0.0) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over assistant tokens, and their count; with `unlikelihood` > 0, plus that
    weight times the token-level unlikelihood of each answer (align.losses.token_unlikelihood); plus the
    unlikelihood -log(1 - p) of every token the batch marks `unlikely` (the repetitions of negatives:
    `repeated_line_negative`; align.losses.sequence_unlikelihood, summed).

    Only positions that predict a labelled or unlikely token go through the LM head (`logits_to_keep`), which
    skips the vocabulary projection for prompt tokens. Returns a sum (not a mean) so the caller can normalise by
    the number of loss tokens in the whole optimiser step, which weights every token equally across micro-batches.
    """
    extra = {}
    if uses_segments(model):  # the rows back to back as one row: every conversation (and padding tail) a segment
        flat = None if batch.unlikely is None else batch.unlikely.reshape(1, -1)
        batch = PackedBatch(batch.input_ids.reshape(1, -1), batch.position_ids.reshape(1, -1),
                            batch.labels.reshape(1, -1), batch.real_tokens, flat)
        extra["segments"] = segments_from_position_ids(batch.position_ids[0])
    targets = batch.labels[:, 1:]  # token t+1 is predicted at position t
    unlikely = None if batch.unlikely is None else batch.unlikely[:, 1:]
    scored = targets != IGNORE if unlikely is None else (targets != IGNORE) | (unlikely != IGNORE)
    keep = scored.any(dim=0).nonzero().squeeze(-1)  # [K] positions with a label in any row
    output = model(
        input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, logits_to_keep=keep, **extra
    )
    logits = output.logits  # [B, K, V]
    picked = targets[:, keep]  # [B, K]
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), picked.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    if unlikelihood > 0:
        loss = loss + unlikelihood * answers_unlikelihood(logits, picked, keep)
    if unlikely is not None:
        loss = loss + repetitions_unlikelihood(logits, unlikely[:, keep])
    return loss, int((picked != IGNORE).sum())


def repetitions_unlikelihood(logits: torch.Tensor, unlikely: torch.Tensor) -> torch.Tensor:
    """-sum log(1 - p(u_t)) over the marked tokens: logits [B, K, V], unlikely [B, K] (IGNORE: not marked)."""
    from align.losses import sequence_unlikelihood

    marked = unlikely != IGNORE  # none marked: 0 (sequence_unlikelihood of no candidates, times 0)
    logprobs = logits[marked].float().log_softmax(-1).gather(-1, unlikely[marked][:, None]).squeeze(-1)
    return sequence_unlikelihood(logprobs, torch.ones_like(logprobs, dtype=torch.bool)) * marked.sum()


def answers_unlikelihood(logits: torch.Tensor, picked: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The token-level unlikelihood summed over every answer of a packed batch. logits: [B, K, V] at the kept
    positions `keep` [K], picked: [B, K] their targets (IGNORE off the answers). An answer is a run of labelled
    targets at consecutive positions: a prompt token separates one conversation's turns and two packed
    conversations."""
    from align.losses import token_unlikelihood

    total = logits.new_zeros((), dtype=torch.float32)
    for row in range(picked.shape[0]):
        columns = (picked[row] != IGNORE).nonzero().squeeze(-1)  # [n] this row's labelled columns, in order
        positions = keep[columns]
        breaks = (positions[1:] != positions[:-1] + 1).nonzero().squeeze(-1) + 1  # where a new answer starts
        for answer in columns.tensor_split(breaks.tolist()):
            total = total + token_unlikelihood(logits[row, answer].float().log_softmax(-1), picked[row, answer])
    return total


# ---- flat forward passes for scoring: reward model, log-probs, values ---------------------------------------------


@dataclass
class FlatPass:
    """Sequences laid out back to back in one row, for one forward pass with `align.attention` segments."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    segments: list[Segment]
    sequences: list[int]  # the caller's indices of the sequences in this pass
    token_index: list[torch.Tensor]  # per entry of `sequences`: [L_i] row positions of its tokens, in order
    shared: list[int]  # per entry of `sequences`: its first tokens that are read from its group's first sequence


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    """Tokens a and b start with in common, leaving each at least its last token of its own (where a reward
    model reads, and the response's end)."""
    n, limit = 0, min(len(a), len(b)) - 1
    while n < limit and a[n] == b[n]:
        n += 1
    return n


SHARED_PREFIX_MIN = 8  # tokens two ungrouped sequences must start with in common to be computed once


def prefix_units(sequences: list[list[int]], indices: list[int], max_tokens: int) -> list[list[tuple[int, int]]]:
    """`indices` as units of `flat_passes`, each [(first, 0), (b, n_b), ...]: a sequence that starts with
    SHARED_PREFIX_MIN or more tokens of the current unit's first (every conversation under a chat template with a
    system prompt) joins that unit and reads those n_b tokens from it, while the unit stays within `max_tokens`;
    any other starts a unit of its own."""
    units, length = [], 0
    for i in indices:
        shared = shared_prefix_length(sequences[units[-1][0][0]], sequences[i]) if units else 0
        if shared >= SHARED_PREFIX_MIN and length + len(sequences[i]) - shared <= max_tokens:
            units[-1].append((i, shared))
            length += len(sequences[i]) - shared
        else:
            units.append([(i, 0)])
            length = len(sequences[i])
    return units


def flat_passes(sequences: list[list[int]], pack_length: int, groups: list[tuple[int, ...]] = (),
                rows_per_pass: int = 4) -> list[FlatPass]:
    """Pack sequences (best fit into rows of `pack_length` tokens, `rows_per_pass` rows back to back per pass).

    Each group (a, b, c, ...) in `groups` is laid out as one unit [a | rest of b | rest of c | ...]: the rest of
    b attends to the prefix it has in common with a and continues its position ids, so a shared prompt is
    computed once: a preference pair's (its saving: docs/SPEED.md), or the k completions of one
    prompt in critic-free RL. The other sequences form such units by themselves where they start alike
    (`prefix_units`: a chat template's system prompt)."""
    grouped = {i for group in groups for i in group}
    units = [[(group[0], 0)] + [(b, shared_prefix_length(sequences[group[0]], sequences[b])) for b in group[1:]]
             for group in groups]
    units += prefix_units(sequences, [i for i in range(len(sequences)) if i not in grouped], pack_length)
    lengths = [sum(len(sequences[i]) - n for i, n in unit) for unit in units]
    rows = pack_best_fit(lengths, max([pack_length, *lengths]))
    passes = []
    for first in range(0, len(rows), rows_per_pass):
        ids, positions, segments, order, token_index, shared = [], [], [], [], [], []
        for unit in (units[u] for row in rows[first : first + rows_per_pass] for u in row):
            start = len(ids)  # where the unit's first sequence, which holds every shared prefix, starts
            for i, n in unit:
                tail = sequences[i][n:]
                ids += tail
                positions += range(n, len(sequences[i]))
                segments.append(Segment(len(ids) - len(tail), len(ids), *((start, start + n) if n else ())))
                order.append(i)
                shared.append(n)
                token_index.append(torch.cat([torch.arange(start, start + n),
                                              torch.arange(len(ids) - len(tail), len(ids))]))
        passes.append(FlatPass(torch.tensor([ids]), torch.tensor([positions]), segments, order, token_index, shared))
    return passes
