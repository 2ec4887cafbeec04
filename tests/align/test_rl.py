"""align/rl.py: what the RL stages share, against values derived by hand."""

import json

import pytest
import torch

from align.rl import iteration_rows, pairwise_disagreement, pearson, read_logged, same_prompt, window_means


def test_pearson_by_hand():
    """x = 1, 2, 3 and y = 1, 3, 2: deviations -1, 0, 1 and -1, 1, 0; covariance sum 1, squared deviations 2 and 2,
    so r = 1 / sqrt(2 * 2) = 0.5. Proportional: 1; reversed: -1; constant or too short: 0 by definition."""
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0
    assert pearson([4], [2]) == 0.0


def test_window_means_by_hand(tmp_path):
    """Five iterations in two windows: steps 1-2 and 3-5 (5 * 1 // 2 = 2). KL means (0 + 2) / 2 = 1 and
    (4 + 6 + 8) / 3 = 6; eos_rate was logged only at step 5; a line without ppo/kl (an evaluation) is not an
    iteration."""
    lines = [{"step": s, "ppo/kl": 2.0 * (s - 1)} for s in range(1, 6)]
    lines[4]["ppo/eos_rate"] = 0.5
    lines.insert(2, {"step": 2, "ppo/eval/accuracy": 1.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert window_means(read_logged(tmp_path), "ppo/", ("kl", "eos_rate"), windows=2) == [
        {"steps": [1, 2], "kl": 1.0, "eos_rate": None}, {"steps": [3, 5], "kl": 6.0, "eos_rate": 0.5}]
    assert len(window_means(read_logged(tmp_path), "ppo/", ("kl",), windows=8)) == 5  # never an empty window


def test_pairwise_disagreement_by_hand():
    """Model 0.8, 0.2, 0.5, 0.9; verifiers 1, 0, 0.5, 0. Pairs the verifiers rank (equal verifier scores skipped):
        (0,1) 1 > 0   and 0.8 > 0.2: agree       (0,2) 1 > 0.5 and 0.8 > 0.5: agree
        (0,3) 1 > 0   but 0.8 < 0.9: disagree    (1,2) 0 < 0.5 and 0.2 < 0.5: agree
        (1,3) 0 = 0   skipped                    (2,3) 0.5 > 0 but 0.5 < 0.9: disagree
    -> 2 / 5 = 0.4."""
    assert pairwise_disagreement([0.8, 0.2, 0.5, 0.9], [1.0, 0.0, 0.5, 0.0]) == pytest.approx(0.4)


def test_pairwise_disagreement_skips_unverified_and_tied_pairs():
    """A None verifier score (no constraints to check) leaves the sample out; no comparable pair gives 0; a model
    tie on a pair the verifiers separate is not a reversal."""
    assert pairwise_disagreement([0.1, 0.9, 0.5], [1.0, 0.0, None]) == pytest.approx(1.0)  # only (0,1) counts
    assert pairwise_disagreement([0.1, 0.9], [None, None]) == 0.0
    assert pairwise_disagreement([0.3, 0.7], [1.0, 1.0]) == 0.0
    assert pairwise_disagreement([0.5, 0.5], [1.0, 0.0]) == 0.0


def test_iteration_rows_walk_through_a_fixed_shuffle_per_epoch_split_between_processes():
    """5 rows, 2 per iteration: iterations 0 and 1 take positions 0-1 and 2-3 of epoch 0's shuffle; iteration 2
    takes its last position and the first of epoch 1's shuffle. With 2 processes each takes 1 of the 2."""
    from align.loop import epoch_permutation

    rows = [{"i": i} for i in range(5)]
    first, second = epoch_permutation(5, 7, 0), epoch_permutation(5, 7, 1)
    picked = [[r["i"] for r in iteration_rows(rows, it, 2, seed=7)] for it in range(3)]
    assert picked == [first[0:2], first[2:4], [first[4], second[0]]]
    shares = [[r["i"] for r in iteration_rows(rows, 1, 2, seed=7, process=p, processes=2)] for p in (0, 1)]
    assert shares == [[first[2]], [first[3]]]


def test_merged_weights_of_the_adapted_layers_refresh_the_rollout_copy_to_the_merged_policy(tiny_model_dir):
    """LoRA on the top layer of tiny-random's two, its adapters moved off zero: `adapted_layers_only` gives layer 1
    whole (its norms and products, the adapted ones with W + B A * scale) and nothing else; loaded into an engine
    built from the base weights, that engine's logits equal those of an engine built from the merged model."""
    from transformers import AutoModelForCausalLM

    from align.engine import DecoderEngine
    from align.models import LoraConfig, attach_lora
    from align.rl import merged_weights

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    policy = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                         LoraConfig(enabled=True, last_layers=1))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.5)
    weights = merged_weights(policy, adapted_layers_only=True)
    assert weights and all(name.startswith("model.layers.1.") for name in weights)
    assert {name.removeprefix("model.layers.1.") for name in weights} == {
        name.removeprefix("model.layers.1.") for name in base.state_dict() if name.startswith("model.layers.1.")}
    merged = policy.merge_and_unload()
    for name, value in weights.items():
        torch.testing.assert_close(value, merged.state_dict()[name], rtol=0, atol=1e-6)

    refreshed, expected = DecoderEngine(base, slots=2), DecoderEngine(merged, slots=2)
    refreshed.load_weights(weights)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    refreshed._ensure_cache(16)
    expected._ensure_cache(16)
    torch.testing.assert_close(refreshed._prefill([0, 1], prompts), expected._prefill([0, 1], prompts),
                               rtol=0, atol=1e-5)


def test_a_minibatchs_completions_are_grouped_by_their_prompt():
    """k = 3: completions 0-2 belong to prompt 0, 3-5 to prompt 1, 6-8 to prompt 2. A shuffled minibatch
    [7, 1, 6, 2, 4] holds two of prompt 2's (positions 0 and 2), two of prompt 0's (1 and 3) and one of prompt 1's,
    which has no sibling to share with."""
    assert same_prompt([7, 1, 6, 2, 4], 3) == [(0, 2), (1, 3)]
    assert same_prompt(range(6), 3) == [(0, 1, 2), (3, 4, 5)]
    assert same_prompt(torch.tensor([0, 3]), 3) == []


def test_greedy_loops_decode_greedily_and_flag_the_loops_and_their_repeated_ngrams(tiny_model_dir):
    """The continuations are the generator's greedy ones (temperature 0, the same with any seed); each is flagged
    by reward.degeneration.repetition_loop on its text, and its candidates are its repeated 4-grams."""
    from align.losses import repeated_ngram_tokens
    from align.rl import greedy_loops, rollout_generator
    from align.rollout import GenerationConfig
    from reward.degeneration import repetition_loop
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    generator = rollout_generator(str(tiny_model_dir), tokenizer, GenerationConfig(), torch.device("cpu"), "fp32")
    rows = [{"prompt": "Write a short note."}, {"prompt": "List three colours."}]
    loops = greedy_loops(generator, rows, max_new_tokens=40)
    greedy = generator.generate([row["prompt"] for row in rows], max_new_tokens=40, temperature=0.0, seed=123)
    assert loops.response_ids == greedy.token_ids and loops.prompt_ids == greedy.prompt_ids
    assert loops.looping == [repetition_loop(text) for text in greedy.texts]
    assert loops.candidates == [repeated_ngram_tokens(ids, n=4) for ids in greedy.token_ids]
    assert loops.loop_share == sum(loops.looping) / 2


def test_a_demonstration_replaces_the_last_response_of_each_prompt_no_response_followed(tokenizer):
    """k = 2, four prompts asking for the end phrase "Any other questions?" (or nothing): prompt 0's two responses
    both miss it, so its second becomes the demonstration (its tokens + EOS, finished, no sampled log-probs);
    prompt 1's first response follows it, prompt 2 has no constraints to judge by, and prompt 3's demonstration is
    longer than max_new_tokens: those keep what the policy sampled."""
    from align.rl import Completions, demonstrate_failed_prompts

    ends = json.dumps([{"type": "startend:end_checker", "end_phrase": "Any other questions?"}])
    short, long = "Here it is. Any other questions?", "Here it is, at length. " * 20 + "Any other questions?"
    prompts = [{"prompt": f"Prompt {i}.", "constraints": c, "demonstration": d}
               for i, (c, d) in enumerate([(ends, short), (ends, short), (None, short), (ends, long)])]
    rows = [row for row in prompts for _ in range(2)]
    texts = ["No.", "Nope.", "Yes. Any other questions?", "No.", "No.", "No.", "No.", "No."]
    sampled = Completions([[1, 2]] * 8, [[5 + i] for i in range(8)], texts, [False] * 8,
                          [[-0.5 - i] for i in range(8)], None)
    guided, replaced = demonstrate_failed_prompts(rows, sampled, 2, "demonstration", tokenizer, 40,
                                                  "none_follows_all")
    assert replaced == [1]
    demo_ids = tokenizer(short, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert guided.response_ids == [[5], demo_ids] + [[7 + i] for i in range(6)]
    assert guided.texts == texts[:1] + [short] + texts[2:]
    assert guided.finished == [False, True] + [False] * 6
    assert guided.sampled_logprobs == [[-0.5], None] + [[-2.5 - i] for i in range(6)]
    assert guided.prompt_ids == sampled.prompt_ids and sampled.texts == texts  # the input is left as it was
    assert demonstrate_failed_prompts(rows, sampled, 2, "demonstration", tokenizer, len(demo_ids) - 1,
                                      "none_follows_all")[1] == []


def test_demonstrations_need_answer_text_and_constraints_in_every_row():
    from align.config import ConfigError
    from align.rl import check_demonstrations

    check_demonstrations([{"prompt": "p", "constraints": "[]", "answer": "a"}], "answer", "data.jsonl")
    with pytest.raises(ConfigError, match=r"row 2 of data.jsonl has no answer text in column 'answer' \(its columns: "
                                          r"constraints, prompt\)"):
        check_demonstrations([{"prompt": "p", "constraints": "[]", "answer": "a"},
                              {"prompt": "q", "constraints": "[]"}], "answer", "data.jsonl")
    with pytest.raises(ConfigError, match="row 1 of data.jsonl has no 'constraints' column"):
        check_demonstrations([{"prompt": "p", "answer": "a"}], "answer", "data.jsonl")
    check_demonstrations([{"prompt": "p"}], None, "data.jsonl")  # no column, nothing to check


def test_a_constraint_none_follows_leaves_prompts_whose_every_constraint_some_response_follows(tokenizer):
    """k = 2, each prompt asking for lower case and the end phrase "Any other questions?". Prompt 0: one response
    ends with the phrase, the other is in lower case; none follows both (none_follows_all: a demonstration), but
    each constraint is followed by one of them (a_constraint_none_follows: none). Prompt 1: both end with the
    phrase, neither is in lower case: a demonstration either way."""
    from align.rl import Completions, demonstrate_failed_prompts

    both = json.dumps([{"type": "change_case:english_lowercase"},
                       {"type": "startend:end_checker", "end_phrase": "Any other questions?"}])
    rows = [{"prompt": f"Prompt {i}.", "constraints": both, "demonstration": "fine. any other questions?"}
            for i in (0, 0, 1, 1)]
    texts = ["Yes. Any other questions?", "yes.", "Yes. Any other questions?", "No. Any other questions?"]
    sampled = Completions([[1]] * 4, [[5]] * 4, texts, [True] * 4, [[-1.0]] * 4, None)
    replaced = {when: demonstrate_failed_prompts(rows, sampled, 2, "demonstration", tokenizer, 40, when)[1]
                for when in ("none_follows_all", "a_constraint_none_follows")}
    assert replaced == {"none_follows_all": [1, 3], "a_constraint_none_follows": [3]}
