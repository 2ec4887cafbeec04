"""PPO's first steps on `tiny-random` with LoRA on its top layer: the rollout copy is refreshed with the adapted
layer only, and in fp32 the old log-probs are the rollout's own, which equal what the training forward computes
for the same responses (so skipping that pass changes nothing but the time); with k responses per prompt, the
passes that compute each prompt once give what separate sequences give."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from align.config import ConfigError, load_config
from align.losses import repeated_ngram_tokens
from align.logprobs import FrozenReference, response_logprobs, response_values, same_trunk
from align.models import LoraConfig, ModelConfig, load_model
from align.ppo import (PPOConfig, PPOModels, PPOTrainConfig, Rollout, compute_advantages, evaluate_rollout,
                       generate_rollout, iteration_metrics, shared_trunk_layers)
from align.rewards import RewardLog
from align.rl import greedy_loops_in, old_logprobs_from_rollout, pad_right, rollout_generator
from align.rollout import GenerationConfig
from align.values import TokenValues, load_reward_backbone
from reward.compose import RewardBreakdown
from reward.degeneration import repetition_loop

CPU = torch.device("cpu")
TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ppo-tiny.yaml"
ROWS = [{"prompt": "Write a short note."}, {"prompt": "List three colours."}, {"prompt": "Say hello in French."}]


def first_steps(tiny_model_dir, backend: str, rollout_logprobs: bool, k: int = 1, trunk: bool = False,
                value_shares_trunk: bool = False, precision: str = "fp32", rollout_trunk: bool = False,
                rows: list[dict] = ROWS, **train):
    """Steps 1 and 3 of an iteration from a policy whose adapters have moved off zero: (rollout, training)."""
    torch.manual_seed(0)  # peft draws lora_A
    cfg = ModelConfig(name=str(tiny_model_dir), lora=LoraConfig(enabled=True, last_layers=1))
    policy, tokenizer = load_model(cfg)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    value_model = TokenValues(load_reward_backbone(cfg, str(tiny_model_dir))[0])
    generator = rollout_generator(str(tiny_model_dir), tokenizer, GenerationConfig(backend=backend), CPU, precision)
    trunk_layers = shared_trunk_layers(cfg.lora, policy, value_model) if trunk else None
    assert not value_shares_trunk or same_trunk(policy, value_model, trunk_layers[0])  # both from the same weights
    models = PPOModels(FrozenReference(policy, lora=True), generator, tokenizer, trunk_layers, value_shares_trunk,
                       rollout_logprobs, rollout_trunk)
    training = SimpleNamespace(raw={"policy": policy, "value": value_model})
    t = dataclasses.replace(PPOTrainConfig(), max_new_tokens=12, temperature=0.8, completions_per_prompt=k, **train)
    rollout = generate_rollout(training, models, rows, t, seed=3)
    evaluate_rollout(rollout, training, models, t, CPU, precision)
    return rollout, training


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_fp32_old_logprobs_from_the_rollout_equal_the_training_forwards(tiny_model_dir, backend):
    from_rollout, _ = first_steps(tiny_model_dir, backend, rollout_logprobs=True)
    recomputed, _ = first_steps(tiny_model_dir, backend, rollout_logprobs=False)
    assert from_rollout.response_ids == recomputed.response_ids  # same seed, same merged weights
    assert all(len(lp) == len(ids) for lp, ids in zip(from_rollout.sampled_logprobs, from_rollout.response_ids))
    torch.testing.assert_close(from_rollout.mask, recomputed.mask)
    torch.testing.assert_close(from_rollout.old_logprobs, recomputed.old_logprobs, rtol=0, atol=1e-4)
    # the adapters moved the policy: the rollout sampled from it, not from the base weights it was loaded with
    assert not torch.allclose(recomputed.old_logprobs, recomputed.ref_logprobs, atol=1e-3)


def test_bf16_old_logprobs_from_the_rollout_are_the_sampled_ones_within_bf16_rounding_of_the_training_forwards(
        tiny_model_dir):
    # train.old_logprobs=rollout: the log-probs the bf16 copy computed as it sampled, not a pass of their own
    assert old_logprobs_from_rollout("bf16-autocast", "rollout")
    assert not old_logprobs_from_rollout("bf16-autocast", "recompute")
    assert old_logprobs_from_rollout("fp32", "recompute")
    from_rollout, _ = first_steps(tiny_model_dir, "engine", rollout_logprobs=True, precision="bf16-autocast")
    recomputed, _ = first_steps(tiny_model_dir, "engine", rollout_logprobs=False, precision="bf16-autocast")
    assert from_rollout.response_ids == recomputed.response_ids
    sampled = pad_right([torch.tensor(lp) for lp in from_rollout.sampled_logprobs])[0]
    assert torch.equal(from_rollout.old_logprobs, sampled)
    assert not torch.equal(from_rollout.old_logprobs, recomputed.old_logprobs)  # bf16 weights against autocast
    # the bf16 tolerance of the engine's log-probs against the training forward's (tests/align/test_engine.py)
    torch.testing.assert_close(from_rollout.old_logprobs, recomputed.old_logprobs, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("trunk, value_shares_trunk, rollout_trunk",
                         [(False, False, False), (True, False, False), (True, True, False), (True, True, True)])
def test_k_responses_per_prompt_computed_once_equal_separate_sequences(tiny_model_dir, trunk, value_shares_trunk,
                                                                       rollout_trunk):
    """k = 2: each prompt's row twice in a row, two different samples of it, and the values, old and reference
    log-probs of the passes that compute each prompt once (through the frozen trunk or every layer; the value
    model's trunk its own or, made from the same weights, the policy's; the trunk's states run after sampling or,
    train.trunk_states=rollout, kept by the fp32 rollout copy as it sampled) equal those of laying every sequence
    out whole."""
    rollout, training = first_steps(tiny_model_dir, "engine", rollout_logprobs=False, k=2, trunk=trunk,
                                    value_shares_trunk=value_shares_trunk, rollout_trunk=rollout_trunk)
    assert (rollout.sampled_states is not None) == rollout_trunk
    assert rollout.rows == [row for row in ROWS for _ in range(2)]
    assert any(rollout.response_ids[2 * i] != rollout.response_ids[2 * i + 1] for i in range(len(ROWS)))
    assert rollout.trunks[0] is not None if trunk else rollout.trunks == (None, None)
    assert not trunk or (rollout.trunks[0] is rollout.trunks[1]) == value_shares_trunk
    policy, value_model = training.raw["policy"], training.raw["value"]
    prompts, responses = rollout.prompt_ids, rollout.response_ids
    with torch.no_grad():
        old = response_logprobs(policy, prompts, responses, 1024, 0.8)
        values = response_values(value_model, prompts, responses, 1024)
        with policy.disable_adapter():
            ref = response_logprobs(policy, prompts, responses, 1024, 0.8)
    for i in range(len(responses)):
        n = len(responses[i])
        torch.testing.assert_close(rollout.old_logprobs[i, :n], old[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rollout.ref_logprobs[i, :n], ref[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rollout.values[i, :n], values[i], rtol=1e-5, atol=1e-5)


def test_a_demonstration_is_trained_on_with_the_policys_own_log_probs_and_trunk(tiny_model_dir):
    """train.demonstration_column with k = 2: the random tiny model never ends with the asked-for phrase, so each
    prompt's second response is its demonstration. The rollout copy never computed anything for those, so the
    iteration's old log-probs and trunk states are recomputed: for every response, demonstrations included, they
    are the policy's own, as in test_k_responses_per_prompt_computed_once_equal_separate_sequences."""
    ends = json.dumps([{"type": "startend:end_checker", "end_phrase": "Any other questions?"}])
    rows = [{**row, "constraints": ends, "demonstration": "Fine. Any other questions?"} for row in ROWS]
    rollout, training = first_steps(tiny_model_dir, "engine", rollout_logprobs=True, k=2, trunk=True,
                                    value_shares_trunk=True, rollout_trunk=True, rows=rows,
                                    demonstration_column="demonstration")
    assert rollout.demonstrated == [1, 3, 5] and rollout.sampled_logprobs is None and rollout.sampled_states is None
    assert rollout.texts[1::2] == ["Fine. Any other questions?"] * 3 and all(rollout.finished[1::2])
    assert all(text != "Fine. Any other questions?" for text in rollout.texts[::2])
    policy = training.raw["policy"]
    with torch.no_grad():
        old = response_logprobs(policy, rollout.prompt_ids, rollout.response_ids, 1024, 0.8)
    for i, ids in enumerate(rollout.response_ids):
        torch.testing.assert_close(rollout.old_logprobs[i, :len(ids)], old[i], rtol=1e-5, atol=1e-5)
    # what the iteration's metrics say of the responses is said of the policy's own: responses 0, 2 and 4
    rollout.breakdown, rollout.reward_log = RewardBreakdown([0.0, 9.0, 2.0, 9.0, 4.0, 9.0], {}), RewardLog()
    rollout.scores = torch.tensor(rollout.breakdown.total)
    compute_advantages(rollout, 0.05, PPOTrainConfig(completions_per_prompt=2))
    metrics = iteration_metrics(rollout, 0.05, {})
    assert metrics["reward/total"] == 2.0 and metrics["eos_rate"] == sum(rollout.finished[::2]) / 3


def test_a_greedy_member_is_each_prompts_greedy_answer_trained_on_with_the_policys_own_log_probs(tiny_model_dir):
    """train.greedy_member with k = 3: each prompt's first response is the policy's greedy answer (every token the
    policy's most likely next one), the other two are the samples drawn without it. The rollout copy computed
    nothing for the greedy answers, so the iteration's old log-probs and trunk states are recomputed: the policy's
    own for every response."""
    options = dict(rollout_logprobs=True, k=3, trunk=True, value_shares_trunk=True, rollout_trunk=True)
    rollout, training = first_steps(tiny_model_dir, "engine", greedy_member=True, **options)
    sampled, _ = first_steps(tiny_model_dir, "engine", **options)
    assert rollout.greedy == [0, 3, 6] and rollout.sampled_logprobs is None and rollout.sampled_states is None
    samples = (1, 2, 4, 5, 7, 8)
    assert [rollout.response_ids[i] for i in samples] == [sampled.response_ids[i] for i in samples]
    policy = training.raw["policy"]
    with torch.no_grad():
        for i in rollout.greedy:
            prompt, response = rollout.prompt_ids[i], rollout.response_ids[i]
            logits = policy(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
            assert logits.argmax(-1).tolist() == response
        old = response_logprobs(policy, rollout.prompt_ids, rollout.response_ids, 1024, 0.8)
    for i, ids in enumerate(rollout.response_ids):
        torch.testing.assert_close(rollout.old_logprobs[i, :len(ids)], old[i], rtol=1e-5, atol=1e-5)
    # with train.loop_unlikelihood too, its greedy continuations are these answers, not decoded again
    loops = greedy_loops_in(rollout, rollout.greedy)
    assert loops.response_ids == [rollout.response_ids[i] for i in (0, 3, 6)]
    assert loops.prompt_ids == [rollout.prompt_ids[i] for i in (0, 3, 6)]
    assert loops.looping == [repetition_loop(rollout.texts[i]) for i in (0, 3, 6)]
    assert loops.candidates == [repeated_ngram_tokens(rollout.response_ids[i], n=4) for i in (0, 3, 6)]


def test_bf16_trunk_states_from_the_rollout_are_within_bf16_rounding_of_the_trunks_own_run(tiny_model_dir):
    """train.trunk_states=rollout with a bf16 rollout copy: the reference log-probs and values start from the states
    the copy kept as it sampled, which differ from a run of the trunk under autocast by bf16 rounding only."""
    kept, _ = first_steps(tiny_model_dir, "engine", rollout_logprobs=True, k=2, trunk=True, value_shares_trunk=True,
                          precision="bf16-autocast", rollout_trunk=True)
    run, _ = first_steps(tiny_model_dir, "engine", rollout_logprobs=True, k=2, trunk=True, value_shares_trunk=True,
                         precision="bf16-autocast")
    assert kept.response_ids == run.response_ids and run.sampled_states is None
    assert kept.trunks[0].states[0].dtype == run.trunks[0].states[0].dtype  # as the policy's own layers pass on
    for name in ("ref_logprobs", "values"):
        assert not torch.equal(getattr(kept, name), getattr(run, name)), name  # bf16 weights against autocast
        torch.testing.assert_close(getattr(kept, name), getattr(run, name), atol=0.05, rtol=0.02)


def test_a_value_model_sharing_the_policys_trunk_gets_exactly_the_values_of_its_own_trunk(tiny_model_dir):
    """The shared trunk is only a saving: the same responses get the same values, old and reference log-probs to
    the bit as when the value model's trunk runs on its own."""
    own, _ = first_steps(tiny_model_dir, "engine", rollout_logprobs=False, k=2, trunk=True)
    shared, _ = first_steps(tiny_model_dir, "engine", rollout_logprobs=False, k=2, trunk=True, value_shares_trunk=True)
    assert own.response_ids == shared.response_ids and own.trunks[0] is not own.trunks[1]
    for name in ("values", "old_logprobs", "ref_logprobs"):
        assert torch.equal(getattr(own, name), getattr(shared, name)), name


def test_unlikelihood_adds_its_weight_times_the_responses_unlikelihood_per_token_to_the_loss(tiny_model_dir):
    """train.unlikelihood c: the minibatch loss grows by c * (sum of the responses' token unlikelihood) / (their
    response tokens), and the statistic reports that per-token unlikelihood; at 0 the loss is PPO's alone."""
    from align.losses import token_unlikelihood
    from align.ppo import compute_advantages, minibatch_loss

    rollout, training = first_steps(tiny_model_dir, "engine", rollout_logprobs=False)
    t = dataclasses.replace(PPOTrainConfig(), max_new_tokens=12, temperature=0.8)
    rollout.scores = torch.tensor([1.0, 0.0, 0.5])  # step 2's scores: any will do
    compute_advantages(rollout, t.kl_coef, t)
    state = SimpleNamespace(models=training.raw, step=t.value_warmup_iterations)  # past the value warm-up
    idx = torch.arange(len(ROWS))
    plain, plain_stats = minibatch_loss(state, rollout, idx, t, CPU, "fp32")
    weighted, stats = minibatch_loss(state, rollout, idx, dataclasses.replace(t, unlikelihood=0.5), CPU, "fp32")
    policy = training.raw["policy"]
    with torch.no_grad():
        total = 0.0
        for prompt, response in zip(rollout.prompt_ids, rollout.response_ids):
            logits = policy(input_ids=torch.tensor([prompt + response])).logits[0].float()
            total += token_unlikelihood(logits.log_softmax(-1)[len(prompt) - 1 : -1], torch.tensor(response))
    per_token = total / sum(len(r) for r in rollout.response_ids)
    assert plain_stats["unlikelihood"] == 0.0 and per_token > 0
    assert stats["unlikelihood"] == pytest.approx(float(per_token), rel=1e-4)
    torch.testing.assert_close(weighted - plain, 0.5 * per_token, rtol=1e-4, atol=1e-5)


def test_push_down_loops_backpropagates_its_weight_times_the_loops_sequence_unlikelihood(tiny_model_dir):
    """train.loop_unlikelihood c: of the greedy continuations, only those that loop count; their repeated 4-grams'
    tokens are pushed down with c x align.losses.sequence_unlikelihood under a plain forward; nothing is
    backpropagated without loops or during the value warm-up, and the greedy loop share is logged either way."""
    from align.losses import repeated_ngram_tokens, sequence_unlikelihood
    from align.ppo import push_down_loops
    from align.rl import GreedyLoops

    rollout, training = first_steps(tiny_model_dir, "engine", rollout_logprobs=False)
    policy, prompt = training.raw["policy"], rollout.prompt_ids[0]
    looping, fine = [7, 8, 9, 10] * 3, [11, 12, 13, 14, 15]
    loops = GreedyLoops([prompt, prompt], [looping, fine], [True, False], [repeated_ngram_tokens(ids) for ids in
                                                                          (looping, fine)])
    t = dataclasses.replace(PPOTrainConfig(), loop_unlikelihood=0.5)
    losses = []
    state = SimpleNamespace(models=training.raw, step=t.value_warmup_iterations, backward=losses.append)
    stats = push_down_loops(state, loops, t, CPU, "fp32")
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([prompt + looping])).logits[0, len(prompt) - 1 : -1].float()
    logprobs = logits.log_softmax(-1).gather(1, torch.tensor(looping)[:, None])[:, 0]
    expected = sequence_unlikelihood(logprobs, torch.tensor(repeated_ngram_tokens(looping)))
    assert stats["greedy_loop_share"] == 0.5 and expected > 0
    assert stats["loop_unlikelihood"] == pytest.approx(float(expected), rel=1e-4)
    torch.testing.assert_close(losses[0].detach(), 0.5 * expected, rtol=1e-4, atol=1e-6)
    losses[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters() if p.requires_grad)

    no_loops = loops._replace(looping=[False, False])
    assert push_down_loops(state, no_loops, t, CPU, "fp32") == {"greedy_loop_share": 0.0}
    warming_up = SimpleNamespace(models=training.raw, step=0, backward=losses.append)
    assert push_down_loops(warming_up, loops, dataclasses.replace(t, value_warmup_iterations=1), CPU, "fp32") == {
        "greedy_loop_share": 0.5}
    assert len(losses) == 1


def test_leave_one_out_baseline_replaces_each_score_by_its_advantage_over_its_siblings():
    """With score_baseline leave_one_out, step 4 computes from the scores less their siblings' mean: the same
    advantages and returns as plain scores of -2, 2 (prompt 0: 2 and 4) and 0, 0 (prompt 1: 3 and 3)."""
    def rollout(scores):
        logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -1.0], [-1.5, -0.2], [-0.7, -0.3]])
        return Rollout(rows=[{}] * 4, prompt_ids=[], response_ids=[], texts=[], finished=[], sampled_logprobs=[],
                       scores=torch.tensor(scores), old_logprobs=logprobs, ref_logprobs=logprobs - 0.1,
                       values=torch.tensor([[0.3, 0.1], [0.2, 0.4], [0.0, 0.5], [0.1, 0.1]]),
                       mask=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))

    t = PPOTrainConfig(completions_per_prompt=2, whiten_advantages=False, lam=1.0)
    with_baseline, plain = rollout([2.0, 4.0, 3.0, 3.0]), rollout([-2.0, 2.0, 0.0, 0.0])
    compute_advantages(with_baseline, 0.1, dataclasses.replace(t, score_baseline="leave_one_out"))
    compute_advantages(plain, 0.1, t)
    torch.testing.assert_close(with_baseline.advantages, plain.advantages)
    torch.testing.assert_close(with_baseline.returns, plain.returns)


@pytest.mark.parametrize("setting", ["train.score_baseline=leave_one_out", "train.demonstration_column=demonstration",
                                     "train.greedy_member=true"])
def test_leave_one_out_baseline_demonstrations_and_greedy_members_need_two_responses_per_prompt(setting):
    """Refused when the config is read (so `align validate` and the CLI's one-line error say it), before any model
    loads."""
    with pytest.raises(ConfigError, match=rf"configs/ppo-tiny.yaml: train: {setting.split('=')[0]}\S* needs "
                                          r"train.completions_per_prompt >= 2"):
        load_config(PPOConfig, TINY_CONFIG, [setting, "train.completions_per_prompt=1"])
    load_config(PPOConfig, TINY_CONFIG, [setting, "train.completions_per_prompt=2"])


def test_bf16_precision_trains_bf16_weights_from_fp32_masters_and_saves_fp32(tmp_path, monkeypatch):
    """`train.precision: bf16` in PPO: the policy and the value model compute with bf16 weights (the frozen trunk and
    the reference, the policy without adapters, with them) while the optimiser updates fp32 masters of the adapters
    and the value head; in the first iteration the policy is still the reference, so their KL is exactly 0; the
    saved model is fp32."""
    import align.ppo
    from safetensors import safe_open

    seen = []
    update = align.ppo.ppo_update

    def spy(training, rollout, *args):
        policy_dtypes = {p.dtype for p in training.raw["policy"].parameters()}
        value_dtypes = {p.dtype for p in training.raw["value"].parameters()}
        seen.append((policy_dtypes, value_dtypes, {p.dtype for p in training.parameters()}))
        return update(training, rollout, *args)

    monkeypatch.setattr(align.ppo, "ppo_update", spy)
    cfg = load_config(PPOConfig, TINY_CONFIG, [
        f"run.root={tmp_path}", "model.name=tiny-random", "reward.reward_model=null", "train.iterations=2",
        "train.precision=bf16", "train.max_new_tokens=8", "data.max_rows=8",
        "reward.functions=[{name: length_in_range, kwargs: {min_words: 0, max_words: 3}}]"])
    out = align.ppo.train(cfg)
    assert seen == [({torch.bfloat16}, {torch.bfloat16}, {torch.float32})] * 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "ppo/kl" in line]
    assert rows[0]["ppo/kl"] == 0.0 and json.loads((out / "manifest.json").read_text())["precision"] == "bf16"
    with safe_open(str(out / "model.safetensors"), "pt") as saved:
        assert {saved.get_tensor(name).dtype for name in saved.keys()} == {torch.float32}
