"""PPO's DPO term on preference pairs (`train.preference_pairs`, align.preference_term): which pairs each optimiser
step takes, the loss against DPO's formula computed from plain forwards, with and without the frozen trunk, and the
term inside a PPO run (logged; weight 0 during the value warm-up)."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from align.config import load_config
from align.logprobs import FrozenReference
from align.loop import epoch_permutation
from align.models import LoraConfig, ModelConfig, load_model
from align.dpo import tokenize_pairs
from align.ppo import PPOConfig, train
from align.preference_term import PreferenceTerm

CPU = torch.device("cpu")
TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ppo-tiny.yaml"
ROWS = [{"prompt": "Write a short note.", "chosen": "Here is a note.", "rejected": "note note note note"},
        {"prompt": "List three colours.", "chosen": "Red, green, blue.", "rejected": "I cannot."}]


def test_each_step_takes_the_next_pairs_of_a_shuffle_per_epoch():
    """5 pairs, 2 a step: steps 0 and 1 take epoch 0's shuffle's first four, step 2 its last and epoch 1's first;
    every epoch takes each pair once; a step's pairs depend on its number alone (a resumed run sees the same)."""
    term = PreferenceTerm(pairs=[None] * 5, reference=None, per_step=2, beta=0.1, seed=3, pack_length=64,
                          trunk_layers=None)
    first, second = epoch_permutation(5, 3, 0), epoch_permutation(5, 3, 1)
    assert [term.step_pairs(step) for step in range(3)] == [first[:2], first[2:4], [first[4], second[0]]]
    assert sorted(first) == sorted(second) == list(range(5))
    assert term.step_pairs(7) == term.step_pairs(7) == [second[4], epoch_permutation(5, 3, 3)[0]]


def policy_and_term(tiny_model_dir, trunk: bool, move: bool = True):
    torch.manual_seed(0)  # peft draws lora_A
    policy, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), lora=LoraConfig(enabled=True,
                                                                                         last_layers=1)))
    if move:  # adapters off zero: the policy differs from its reference
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    term = PreferenceTerm(tokenize_pairs(tokenizer, ROWS, 64, 64)[0], FrozenReference(policy, lora=True),
                          per_step=2, beta=0.5, seed=0, pack_length=256, trunk_layers=1 if trunk else None)
    return policy, term


def sequence_logprob(model, prompt, response) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].float()
    return logits.log_softmax(-1).gather(1, torch.tensor(response)[:, None]).sum()


@pytest.mark.parametrize("trunk", [False, True])
def test_the_loss_is_dpos_on_the_steps_pairs_against_the_reference(tiny_model_dir, trunk):
    """L = -mean log sigmoid(beta * h), h the chosen's minus the rejected's log-ratio to the adapters-off reference
    (sums over response tokens, each from one plain forward); the same starting from the frozen layer's states;
    gradients reach the adapters; the statistics are DPO's implicit rewards."""
    policy, term = policy_and_term(tiny_model_dir, trunk)
    loss, stats = term.loss(policy, policy, step=0, device=CPU, precision="fp32")
    with torch.no_grad():
        ratios = []
        for prompt, chosen, rejected in (term.pairs[i] for i in term.step_pairs(0)):
            with policy.disable_adapter():
                ref = [sequence_logprob(policy, prompt, r) for r in (chosen, rejected)]
            ratios.append([sequence_logprob(policy, prompt, r) - f for r, f in zip((chosen, rejected), ref)])
    h = torch.tensor([c - r for c, r in ratios])
    torch.testing.assert_close(loss.detach(), -F.logsigmoid(0.5 * h).mean(), rtol=1e-4, atol=1e-5)
    assert stats["preference/rewards/margin"] == pytest.approx(float(0.5 * h.mean()), rel=1e-4, abs=1e-5)
    assert stats["preference/rewards/accuracy"] == float((h > 0).float().mean())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)


def test_at_the_start_the_policy_is_its_reference_and_the_loss_is_log_2(tiny_model_dir):
    policy, term = policy_and_term(tiny_model_dir, trunk=True, move=False)  # LoRA's B starts at zero
    loss, stats = term.loss(policy, policy, step=0, device=CPU, precision="fp32")
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and stats["preference/rewards/margin"] == 0.0


def test_a_ppo_run_logs_the_term_and_leaves_the_policy_alone_during_the_value_warm_up(tmp_path):
    """Every iteration logs the term's statistics and the term changes what PPO learns; with every iteration a value
    warm-up the saved policy is the starting model bit for bit, the term's weight being 0 there as the policy
    loss's is."""
    from safetensors.torch import load_file

    settings = [f"run.root={tmp_path}", "model.name=tiny-random", "reward.reward_model=null", "train.iterations=2",
                "train.max_new_tokens=8", "data.max_rows=8",
                "reward.functions=[{name: length_in_range, kwargs: {min_words: 0, max_words: 3}}]"]
    without = train(load_config(PPOConfig, TINY_CONFIG, [*settings, "run.name=without"]))
    settings.append("train.preference_pairs=builtin:pairs:train")
    moved = train(load_config(PPOConfig, TINY_CONFIG, [*settings, "run.name=moved"]))
    kept = train(load_config(PPOConfig, TINY_CONFIG, [*settings, "run.name=kept", "train.value_warmup_iterations=2"]))
    logged = [json.loads(line) for line in (moved / "metrics.jsonl").read_text().splitlines() if "ppo/kl" in line]
    assert len(logged) == 2 and all(0 <= row["ppo/preference/rewards/accuracy"] <= 1 for row in logged)
    start = load_model(ModelConfig(name="tiny-random"))[0].state_dict()
    saved = {run: load_file(run / "model.safetensors") for run in (without, moved, kept)}
    assert all(torch.equal(start[name].float(), saved[kept][name].float()) for name in saved[kept])
    assert any(not torch.equal(saved[without][name], saved[moved][name]) for name in saved[moved])
