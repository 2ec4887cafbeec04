"""bf16 weights with fp32 masters: what the optimiser sees, how gradients add up, what a checkpoint keeps."""

import copy
import typing

import pytest
import torch

from align.loop import restore_training_state, save_training_state
from align.precision import MasterWeights, ModelWeights, autocast, training_weights
from tests.conftest import hub_snapshots


def llama(tied: bool = True):
    """A 2-layer Llama, fp32, input and output embeddings tied (as SmolLM2's are)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


def batch(seed: int) -> torch.Tensor:
    return torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(seed))


def loss_of(model, ids: torch.Tensor) -> torch.Tensor:
    with autocast(torch.device("cpu"), "bf16"):
        return model(input_ids=ids, labels=ids).loss


def test_the_model_holds_bf16_weights_and_the_optimiser_fp32_masters_of_them():
    model = llama()
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    weights = MasterWeights(model)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers are not weights
    names = [name for name, _ in weights.named_parameters()]
    assert names == list(original)  # the tied embedding once, under its first name
    for name, master in weights.named_parameters():
        assert master.dtype == torch.float32
        assert torch.equal(master, original[name])  # exact: no round trip through bf16


def test_micro_batch_gradients_add_up_in_fp32_in_the_masters():
    """Expected: the bf16 model's gradient of each micro-batch, taken separately, summed in fp32 — the tied
    embedding's gradient counting both its uses — and nothing left in the model's own .grad."""
    model = llama()
    weights = MasterWeights(model)
    plain = copy.deepcopy(model)  # the same bf16 weights, no hooks
    expected = {}
    for seed in (1, 2):
        plain.zero_grad(set_to_none=True)
        loss_of(plain, batch(seed)).backward()
        for name, p in plain.named_parameters():
            expected[name] = expected.get(name, 0) + p.grad.float()
    for seed in (1, 2):
        loss_of(model, batch(seed)).backward()
    assert all(p.grad is None for p in model.parameters())
    for name, master in weights.named_parameters():
        assert master.grad.dtype == torch.float32
        torch.testing.assert_close(master.grad, expected[name], rtol=0, atol=0)


def test_updates_smaller_than_bf16_resolution_accumulate_in_the_masters():
    """A weight of 1.0 moved by lr * grad = 1e-4 per step (SGD, grad 1): bf16's spacing at 1.0 is 2^-7 = 0.0078,
    so a bf16 weight updated in place would never move; the master reaches 1 - 10 * 1e-4 = 0.999 exactly as fp32
    does, and the model's weight is the master rounded to bf16 (0.9990 -> 1.0 in bf16)."""
    layer = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(layer.weight)
    weights = MasterWeights(layer)
    optimizer = torch.optim.SGD(weights.parameters(), lr=1e-4)
    for _ in range(10):
        layer(torch.ones(1, 1, dtype=torch.bfloat16)).sum().backward()
        optimizer.step()
        weights.step_done()
        optimizer.zero_grad(set_to_none=True)
    master = weights.parameters()[0]
    reference = torch.ones(()) - 1e-4
    for _ in range(9):
        reference = reference - 1e-4  # the same ten fp32 subtractions
    assert master.item() == pytest.approx(0.999, abs=1e-6) and master.item() == reference.item()
    assert layer.weight.item() == master.to(torch.bfloat16).item() == 1.0


def test_a_training_checkpoint_keeps_the_fp32_masters_and_resumes_them_exactly(tmp_path):
    model = llama()
    weights = MasterWeights(model)
    optimizer = torch.optim.AdamW(weights.parameters(), lr=1e-3)
    loss_of(model, batch(1)).backward()
    optimizer.step()
    weights.step_done()
    saved = save_training_state(tmp_path, 1, weights, optimizer, {}, keep=1)

    fresh = MasterWeights(llama())
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    restore_training_state(saved, fresh, fresh_optimizer)
    for (name, a), (_, b) in zip(weights.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), name  # fp32 masters, not their bf16 rounding
    for a, b in zip(model.parameters(), fresh.model.parameters()):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_the_saved_model_is_fp32_with_lora_merged_in_fp32():
    """After training, fp32_model() gives the masters back as the weights and a LoRA delta B @ A is added to the
    (bf16-valued) base in fp32: a delta far below bf16's resolution survives the merge."""
    import peft

    model = peft.get_peft_model(llama(), peft.LoraConfig(r=2, target_modules=["q_proj"], lora_alpha=2))
    weights = MasterWeights(model)
    masters = dict(weights.named_parameters())
    q_proj = "base_model.model.model.layers.0.self_attn.q_proj"
    with torch.no_grad():
        masters[f"{q_proj}.lora_B.default.weight"].fill_(1e-5)  # lora_B starts at zero: a tiny delta
    weights.step_done()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    base = layer.base_layer.weight.detach().float().clone()  # bf16 values
    delta = masters[f"{q_proj}.lora_B.default.weight"] @ masters[f"{q_proj}.lora_A.default.weight"]
    delta = delta.detach() * layer.scaling["default"]
    merged = weights.fp32_model().merge_and_unload()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    q = merged.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(q, base + delta, rtol=0, atol=1e-7)
    assert not torch.equal(q, base)


def test_the_saved_model_keeps_the_parents_fp32_frozen_weights(tmp_path):
    """A model loaded from a directory and trained with bf16 weights holds its frozen weights in bf16 only; at save
    (fp32_model) they are read back from the directory's safetensors, so a LoRA merge adds the delta to the parent's
    own fp32 weight and an untouched weight saves as it was loaded, bit for bit. A frozen weight that changed since
    it was loaded (its bf16 value no longer the file's, rounded) is kept as it is."""
    import peft
    from transformers import LlamaForCausalLM

    llama().save_pretrained(tmp_path)
    parent = LlamaForCausalLM.from_pretrained(tmp_path).state_dict()
    model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path),
                                peft.LoraConfig(r=2, target_modules=["q_proj"], lora_alpha=2))
    weights = MasterWeights(model)
    masters = dict(weights.named_parameters())
    q_proj = "base_model.model.model.layers.0.self_attn.q_proj"
    with torch.no_grad():
        masters[f"{q_proj}.lora_B.default.weight"].fill_(1e-3)
        model.base_model.model.model.layers[1].mlp.up_proj.weight.add_(1.0)  # a frozen weight changed in bf16
    weights.step_done()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = (masters[f"{q_proj}.lora_B.default.weight"] @ masters[f"{q_proj}.lora_A.default.weight"]).detach()
    changed = model.base_model.model.model.layers[1].mlp.up_proj.weight.detach().float().clone()
    saved = weights.fp32_model().merge_and_unload().state_dict()
    torch.testing.assert_close(saved["model.layers.0.self_attn.q_proj.weight"],
                               parent["model.layers.0.self_attn.q_proj.weight"] + delta * layer.scaling["default"],
                               rtol=0, atol=1e-7)
    assert torch.equal(saved["model.layers.1.mlp.up_proj.weight"], changed)  # not the parent's: it had changed
    untouched = [name for name in parent if "q_proj" not in name and "up_proj" not in name]
    assert untouched and all(torch.equal(saved[name], parent[name]) for name in untouched)
    assert any(not torch.equal(parent[name].bfloat16().float(), parent[name]) for name in untouched)  # not bf16 already


def test_a_model_named_by_a_hub_id_gets_its_frozen_weights_back_from_the_local_hub_cache(tmp_path, monkeypatch):
    """A model loaded by hub id (`config._name_or_path` is the id, not a directory) is restored from its snapshot
    in the local Hugging Face cache, laid out as the hub client lays it out; nothing is downloaded."""
    from transformers import LlamaForCausalLM

    commit = "0123456789abcdef0123456789abcdef01234567"
    llama().save_pretrained(hub_snapshots(tmp_path, monkeypatch, main=commit) / commit)
    model = LlamaForCausalLM.from_pretrained("tiny/llama", cache_dir=str(tmp_path))
    assert model.config._name_or_path == "tiny/llama"
    parent = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.requires_grad_(False)
    saved = MasterWeights(model).fp32_model().state_dict()
    assert all(torch.equal(saved[name], parent[name]) for name in parent)  # not rounded to bf16
    assert any(not torch.equal(tensor.bfloat16().float(), tensor) for tensor in parent.values())


def test_a_model_loaded_at_a_hub_revision_gets_its_frozen_weights_back_from_that_revision(tmp_path, monkeypatch):
    """`model.revision` pins a hub id to a snapshot other than the cache's `main`: the causal LM and the reward
    model's backbone load that snapshot, and a bf16 stage saves that snapshot's fp32 frozen weights, not `main`'s
    (transformers 5 keeps no commit on the config, so align records the revision it loaded)."""
    import shutil

    from transformers import AutoModelForCausalLM

    from align.models import ModelConfig, load_model, resolve_model_path
    from align.values import load_reward_backbone

    tiny, pinned, main = resolve_model_path("tiny-random"), "1" * 40, "2" * 40
    snapshots = hub_snapshots(tmp_path, monkeypatch, main=main)
    shutil.copytree(tiny, snapshots / main)
    shutil.copytree(tiny, snapshots / pinned)
    older = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        for p in older.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    older.save_pretrained(snapshots / pinned)

    expected = {name: t for name, t in older.state_dict().items() if name.startswith("model.")}
    cfg = ModelConfig(name="tiny/llama", revision=pinned)
    for model in (load_model(cfg)[0], load_reward_backbone(cfg, "tiny/llama")[0]):
        model.requires_grad_(False)
        saved = MasterWeights(model).fp32_model().state_dict()
        assert all(torch.equal(saved[name], tensor) for name, tensor in expected.items())


def test_fp32_and_autocast_train_the_model_itself_and_bf16_keeps_masters_on_several_processes():
    model = llama()
    for precision in ("fp32", "bf16-autocast"):
        weights = training_weights(model, precision, processes=2)
        assert isinstance(weights, ModelWeights) and not weights.reduces_own_gradients  # DDP all-reduces them
        assert weights.parameters() == [p for p in model.parameters() if p.requires_grad]
    assert not training_weights(llama(), "bf16").reduces_own_gradients
    weights = training_weights(model, "bf16", processes=2)  # the masters' gradients are all-reduced in fp32
    assert isinstance(weights, MasterWeights) and weights.reduces_own_gradients
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with pytest.raises(ValueError, match="precision must be one of bf16, bf16-autocast, fp32, got .fp16."):
        training_weights(model, "fp16")


def test_auto_precision_is_bf16_only_where_bf16_products_are_native():
    """auto -> the first bf16 mode the stage lists (bf16 masters in `Precision`) with native bf16, fp32 without;
    explicit choices pass through; the stage's own accepted values decide."""
    from align.precision import Precision, fast_bf16, resolve_precision

    all_values = typing.get_args(Precision)
    assert resolve_precision("auto", True, all_values) == "bf16"
    assert resolve_precision("auto", True, ("auto", "bf16-autocast", "bf16", "fp32")) == "bf16-autocast"  # in order
    assert resolve_precision("auto", True, ("auto", "fp32")) == "fp32"  # a stage without bf16 modes
    assert resolve_precision("auto", False, all_values) == "fp32"
    assert resolve_precision("bf16", False, all_values) == "bf16"
    from align.grpo import GRPOConfig
    from align.ppo import PPOConfig
    from align.stage import resolved_precision

    # auto in the order of each stage's own config type, on a device with and without native bf16 products
    assert resolved_precision(PPOConfig(), True) == resolved_precision(GRPOConfig(), True) == "bf16"  # fp32 masters
    assert resolved_precision(PPOConfig(), False) == resolved_precision(GRPOConfig(), False) == "fp32"
    assert resolve_precision("bf16-autocast", False, all_values) == "bf16-autocast"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", True, all_values)
    assert isinstance(fast_bf16(torch.device("cpu")), bool)


def test_a_stage_records_the_precision_auto_chose(capsys):
    from align.precision import fast_bf16
    from align.sft import SFTConfig
    from align.stage import stage_precision

    chosen = stage_precision(SFTConfig(), torch.device("cpu"))
    assert chosen == ("bf16" if fast_bf16(torch.device("cpu")) else "fp32")
    assert f"precision auto -> {chosen}" in capsys.readouterr().out
    # FSDP2 keeps no fp32 masters (align.loop.shard_models refuses them): there auto takes bf16 autocast instead
    sharded = SFTConfig()
    sharded.run.data_parallel = "fsdp2"
    assert stage_precision(sharded, torch.device("cpu")) == ("bf16-autocast" if fast_bf16(torch.device("cpu"))
                                                             else "fp32")
