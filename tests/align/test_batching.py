"""Assistant-only labels, the length report, best-fit packing, and that packing keeps conversations apart."""

import torch

from align.batching import (
    IGNORE,
    causal_lm_loss,
    collate_packed,
    TokenizedExample,
    flat_passes,
    pack_best_fit,
    packed_batches,
    prefix_units,
    repeated_line_negative,
    tokenize_conversation,
    tokenize_conversations,
)

CONVERSATION = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Green."},
]


def labelled_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])


def test_only_assistant_turns_are_labelled_and_eos_is_trained(tokenizer):
    example = tokenize_conversation(tokenizer, CONVERSATION)
    # The labelled text is exactly the two answers, each followed by the end-of-turn token (EOS) it must learn.
    assert labelled_text(tokenizer, example) == "Blue.<|im_end|>\nGreen.<|im_end|>\n"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)


def test_long_examples_are_truncated_or_dropped_and_reported(tokenizer):
    long = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 300}]
    short = CONVERSATION
    examples, report = tokenize_conversations(tokenizer, [short, long, short], max_length=64)
    assert (report.total, report.truncated, report.dropped, report.examples) == (3, 1, 0, [1])
    assert [len(e.input_ids) <= 64 for e in examples] == [True, True, True]
    examples, report = tokenize_conversations(tokenizer, [short, long], max_length=64, on_overflow="drop")
    assert (len(examples), report.truncated, report.dropped) == (1, 0, 1)
    assert report.describe(64).startswith("0 of 2 examples truncated and 1 dropped for being longer than max_length=64")


def test_a_prompt_longer_than_max_length_leaves_nothing_to_learn_and_is_dropped(tokenizer):
    long_prompt = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    examples, report = tokenize_conversations(tokenizer, [long_prompt], max_length=32)
    assert (examples, report.dropped, report.truncated) == ([], 1, 0)


def test_best_fit_decreasing_packs_tightly():
    """Lengths 8,7,5,3,2,1 into rows of 10: 8 opens row A, 7 row B, 5 row C; 3 fits B exactly (room 3),
    2 fits A exactly (room 2), 1 goes to C (room 5, the only row with space) -> three rows of 10, 10, 6."""
    rows = pack_best_fit([5, 3, 8, 2, 7, 1], pack_length=10)
    assert rows == [[2, 3], [4, 1], [0, 5]]


def test_sequences_that_start_alike_form_units_reading_their_common_start_from_the_first():
    """A system prompt of 8 tokens (SHARED_PREFIX_MIN) starts 0, 1 and 3; 2 starts otherwise and breaks the run, so 3
    opens a unit of its own; 4 shares only 7 tokens; the cap of 14 tokens stops 5 joining 3's unit (11 + 6 - 8)."""
    system = list(range(100, 108))
    sequences = [system + [1, 2], system + [3], [9] * 10, system + [4, 5, 6], system[:7] + [0, 1], system + [7] * 6]
    assert prefix_units(sequences, [0, 1, 2, 3, 4], 64) == [[(0, 0), (1, 8)], [(2, 0)], [(3, 0)], [(4, 0)]]
    assert prefix_units(sequences, [3, 5], 14) == [[(3, 0)], [(5, 0)]]
    assert prefix_units(sequences, [3, 5], 17) == [[(3, 0), (5, 8)]]
    # laid out once: the flat pass holds 0 whole and only the tokens of 1 after the system prompt
    (flat,) = flat_passes(sequences[:2], 64)
    assert flat.input_ids[0].tolist() == sequences[0] + [3] and flat.shared == [0, 8]
    assert flat.token_index[1].tolist() == list(range(8)) + [10]


def test_packed_rows_keep_conversations_apart(tiny_model_dir, tokenizer):
    """The loss of a packed row equals the sum of the losses of its conversations computed one by one."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    a = tokenize_conversation(tokenizer, CONVERSATION)
    b = tokenize_conversation(tokenizer, CONVERSATION[:2])
    packed = collate_packed([a, b], [[0, 1]], tokenizer.pad_token_id)
    assert packed.position_ids[0, len(a.input_ids)] == 0  # positions restart at the second conversation
    with torch.no_grad():
        together, n_together = causal_lm_loss(model, packed)
        alone = [causal_lm_loss(model, collate_packed([e], [[0]], tokenizer.pad_token_id)) for e in (a, b)]
    assert n_together == alone[0][1] + alone[1][1]
    torch.testing.assert_close(together, alone[0][0] + alone[1][0], rtol=1e-4, atol=1e-4)


def test_unlikelihood_of_packed_rows_is_the_sum_over_their_answers(tiny_model_dir, tokenizer):
    """With `unlikelihood`, the loss adds the weight times each answer's token unlikelihood: in a packed row, as
    over the answers computed one at a time (turns and conversations kept apart); weight 0 is the plain loss."""
    from transformers import AutoModelForCausalLM

    from align.losses import token_unlikelihood

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    a = tokenize_conversation(tokenizer, CONVERSATION)
    b = tokenize_conversation(tokenizer, CONVERSATION[:2])
    by_hand = torch.tensor(0.0)
    with torch.no_grad():
        for example in (a, b):
            ids, labels = torch.tensor([example.input_ids]), torch.tensor(example.labels)
            logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            targets = labels[1:]
            labelled = (targets != IGNORE).nonzero().squeeze(-1).tolist()
            runs = [[labelled[0]]]
            for position in labelled[1:]:  # the answers: runs of consecutive labelled positions
                runs[-1].append(position) if position == runs[-1][-1] + 1 else runs.append([position])
            assert len(runs) == (2 if example is a else 1)
            by_hand += sum(token_unlikelihood(logprobs[run], targets[run]) for run in runs)
        plain, n = causal_lm_loss(model, collate_packed([a, b], [[0, 1]], tokenizer.pad_token_id))
        with_ul, n_ul = causal_lm_loss(model, collate_packed([a, b], [[0, 1]], tokenizer.pad_token_id), 0.5)
        zero, _ = causal_lm_loss(model, collate_packed([a, b], [[0, 1]], tokenizer.pad_token_id), 0.0)
    assert n == n_ul and by_hand > 0
    torch.testing.assert_close(with_ul - plain, 0.5 * by_hand, rtol=1e-4, atol=1e-4)
    assert zero == plain


def test_padding_tail_carries_no_loss(tokenizer):
    a = tokenize_conversation(tokenizer, CONVERSATION)
    b = tokenize_conversation(tokenizer, CONVERSATION[:2])
    batch = collate_packed([a, b], [[0], [1]], tokenizer.pad_token_id)
    pad = len(a.input_ids) - len(b.input_ids)
    assert batch.real_tokens == len(a.input_ids) + len(b.input_ids)
    assert (batch.labels[1, -pad:] == IGNORE).all() and (batch.input_ids[1, -pad:] == tokenizer.pad_token_id).all()


def test_packed_batches_cover_every_example_once(tokenizer):
    examples = [tokenize_conversation(tokenizer, CONVERSATION[: 2 * (i % 2 + 1)]) for i in range(9)]
    batches = packed_batches(examples, 128, 2, tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    assert sum(b.real_tokens for b in batches) == sum(len(e.input_ids) for e in examples)
    assert all(b.input_ids.shape[1] <= 128 for b in batches)



class Draws:
    """A stand-in for random.Random whose choice is the line the test names."""

    def __init__(self, line: int):
        self.line = line

    def choice(self, options):
        return options[self.line]


def test_a_negative_repeats_one_line_of_its_answer_and_pushes_down_only_the_repeats():
    """Prompt 1 2, answer "5 6 \n 7 \n" + EOS 9 (newline token 0): its lines are [5 6] and [7]. Cut after a
    line, the line follows twice more, each after a newline; only the repeated lines' own tokens are unlikely,
    and no token is labelled."""
    example = TokenizedExample([1, 2, 5, 6, 0, 7, 0, 9, 0], [IGNORE, IGNORE, 5, 6, 0, 7, 0, 9, 0])
    first = repeated_line_negative(example, {0}, 0, {9}, Draws(0))
    assert first.input_ids == [1, 2, 5, 6, 0, 5, 6, 0, 5, 6]
    assert first.unlikely == [IGNORE] * 5 + [5, 6, IGNORE, 5, 6] and set(first.labels) == {IGNORE}
    second = repeated_line_negative(example, {0}, 0, {9}, Draws(1), repeats=3)
    assert second.input_ids == [1, 2, 5, 6, 0, 7] + [0, 7] * 3
    assert second.unlikely == [IGNORE] * 6 + [IGNORE, 7] * 3
    one_line = TokenizedExample([1, 5, 6, 9], [IGNORE, 5, 6, 9])  # no line break in the answer
    assert repeated_line_negative(one_line, {0}, 0, {9}, Draws(0)).input_ids == [1, 5, 6, 0, 5, 6, 0, 5, 6]


def test_the_last_answer_of_a_conversation_is_the_one_repeated(tokenizer):
    example = tokenize_conversation(tokenizer, CONVERSATION)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    negative = repeated_line_negative(example, {newline}, newline, {tokenizer.eos_token_id}, Draws(0))
    repeated = [t for t in negative.unlikely if t != IGNORE]
    assert tokenizer.decode(repeated) == "Green.Green."  # the first answer "Blue." is context, never repeated
    assert tokenizer.decode(negative.input_ids).endswith("<|im_start|>assistant\nGreen.\nGreen.\nGreen.")


def test_repeated_tokens_add_their_unlikelihood_to_the_loss(tiny_model_dir, tokenizer):
    """A negative packed with a conversation adds -sum log(1 - p) of its unlikely tokens, computed by hand from
    the model's own logits, and no loss tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    a = tokenize_conversation(tokenizer, CONVERSATION[:2])
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    negative = repeated_line_negative(a, {newline}, newline, {tokenizer.eos_token_id}, Draws(0))
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([negative.input_ids])).logits[0, :-1].float().log_softmax(-1)
        marked = [(t, u) for t, u in enumerate(negative.unlikely[1:]) if u != IGNORE]
        by_hand = -sum(torch.log1p(-logprobs[t, u].exp()) for t, u in marked)
        plain, n = causal_lm_loss(model, collate_packed([a], [[0]], tokenizer.pad_token_id))
        both, n_both = causal_lm_loss(model, collate_packed([a, negative], [[0, 1]], tokenizer.pad_token_id))
    assert len(marked) == 4 and n_both == n  # "Blue." twice: two tokens a copy in this tokenizer
    torch.testing.assert_close(both - plain, by_hand, rtol=1e-4, atol=1e-4)
