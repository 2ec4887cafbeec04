"""Model aliases, path errors, safetensors-only loading, LoRA attach/merge/reload."""

import json

import pytest
import torch

from align.models import ModelConfig, LoraConfig, load_model, resolve_model_path, save_model


def test_tiny_random_alias_is_a_cached_safetensors_llama_with_the_chat_template(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert not list(tiny_model_dir.glob("*.bin"))
    assert resolve_model_path("tiny-random") == str(tiny_model_dir)  # second call: the cache, no rebuild


def test_a_cache_entry_another_process_finished_meanwhile_is_kept_not_replaced(tmp_path, monkeypatch):
    """Two processes on an empty cache (the workers of one torchrun launch) both build an alias; the one that
    finishes second must leave the first one's directory, which the first may already be reading, untouched."""
    from align import models

    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path))

    def build(name: str):
        def write(directory):
            (directory / "config.json").write_text(json.dumps({"built_by": name}))
            (directory / "model.safetensors").write_bytes(b"")
            if name == "slow":  # the other process finishes while this one is still building
                models._cached("alias", build("fast"))
        return write

    target = models._cached("alias", build("slow"))
    assert json.loads((target / "config.json").read_text()) == {"built_by": "fast"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["alias"]  # no build directory left behind


def test_smollm2_alias_converts_the_gguf_once_to_safetensors():
    path = resolve_model_path("smollm2-135m-instruct")
    config = json.loads(open(f"{path}/config.json").read())
    assert config["model_type"] == "llama" and config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config


def test_pad_token_is_not_eos(tokenizer):
    """Padding must never be mistaken for the end of an answer."""
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_a_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.name './nope/model' does not exist; expected a local model"):
        resolve_model_path("./nope/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is a path but has no config.json"):
        resolve_model_path(str(tmp_path / "empty"))


def test_hub_ids_pass_through_unchanged():
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_remote_code_stays_off_by_default():
    assert ModelConfig().trust_remote_code is False


def test_lora_trains_only_adapters_and_merges_into_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model(ModelConfig(name="tiny-random", lora=LoraConfig(enabled=True, r=4)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapters do something, so merging is observable
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = model(ids).logits
    save_model(model, tokenizer, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no extra arguments
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_lora_last_layers_puts_adapters_on_the_top_layers_only_and_backward_stops_there():
    # tiny-random has 2 layers: last_layers=1 must adapt layer 1 only, and layer 0 must get no gradient at all
    model, _ = load_model(ModelConfig(name="tiny-random", lora=LoraConfig(enabled=True, r=4, last_layers=1)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n and "lora_" in n for n in trainable)
    model(torch.tensor([[1, 2, 3, 4]])).logits.sum().backward()  # lora_B starts at 0, so it gets the gradient
    assert all(p.grad is None for n, p in model.named_parameters() if ".layers.0." in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("last_layers", [0, 3])
def test_lora_last_layers_outside_the_model_is_a_clear_error(last_layers):
    with pytest.raises(ValueError, match=rf"model.lora.last_layers={last_layers} must be between 1 and the "
                                         r"model's 2 layers, or null for all layers"):
        load_model(ModelConfig(name="tiny-random", lora=LoraConfig(enabled=True, last_layers=last_layers)))
