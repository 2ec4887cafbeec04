"""Generation for every place that generates (PPO's rollouts, `align eval`, the pipeline's evaluations, SFT's EOS
check): chat prompts in; token ids, texts, finished flags and the log-probs of the generated tokens out.

    generator = TextGenerator(model, tokenizer, GenerationConfig())     # chooses the backend once
    out = generator.generate(prompts, max_new_tokens=256)                # greedy
    out = generator.generate(prompts, max_new_tokens=128, temperature=0.8, seed=7)
    generator.load_weights(policy_state_dict)                            # e.g. PPO, every iteration

Two backends behind that interface (`generation.backend`):
- `engine` (align.engine): a lean decoder for Llama-family models with a static KV cache whose rows are refilled
  as answers end (continuous batching); the default wherever it supports the model;
- `hf`: transformers' forward with a growing KV cache on length-sorted, left-padded batches whose finished rows
  leave the batch. The reference implementation the engine is tested against, and the fallback for other models.
Both sample the same way (`Sampler`): temperature -> top-k -> top-p -> a draw from a seeded generator; greedy at
temperature 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from align.engine import Completion, DecoderEngine, unsupported_reason


@dataclass
class GenerationConfig:
    """The `generation:` section of the stages that generate and of `align eval`."""

    backend: Literal["auto", "engine", "hf"] = "auto"  # auto: align's engine where it supports the model, else hf
    slots: int = 64  # rows decoded together (engine: cache rows refilled as answers end; hf: the batch size)
    # engine, decode steps: auto = align's decode-attention kernel for bf16 weights on an AVX-512 CPU (compiled on
    # first use, once per machine), else PyTorch's fused attention; reference = always PyTorch's
    attention: Literal["auto", "reference"] = "auto"
    # engine, matrix products with bf16 weights: auto = align's kernel on a CPU with AVX512_BF16 and no AMX (built
    # with the decode kernels), else PyTorch's (oneDNN's packed layout on a CPU); reference = always PyTorch's
    products: Literal["auto", "reference"] = "auto"


@dataclass
class Generations:
    prompts: list[str]  # the rendered prompts (chat template applied)
    texts: list[str]  # completions, special tokens removed
    token_ids: list[list[int]]  # completion token ids, EOS included when the model stopped, no padding
    finished: list[bool]  # True when the model emitted EOS before max_new_tokens
    new_tokens: int  # generated tokens in total (what throughput is measured in)
    logprobs: list[list[float]]  # per generated token: its log-prob at the sampling temperature (before top-k/p)
    prompt_ids: list[list[int]]  # the rendered prompts' token ids, as generation read them
    states: list[torch.Tensor] | None = None  # with `states_at`: per prompt, that layer's input at every position
    # the engine ran, [P + n - 1, hidden] (`align.engine.Completion.states`)


def prompt_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a string (TRL's standard form) is one user turn; messages are kept."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def render_prompt(tokenizer, prompt) -> str:
    """A prompt as text with the chat template applied: accepts a string (one user turn) or a list of messages."""
    return tokenizer.apply_chat_template(prompt_messages(prompt), tokenize=False, add_generation_prompt=True)


class Sampler:
    """(logits [n, vocab], the requests of the n rows) -> (next tokens [n], their log-probs [n]), in fp32.

    Greedy (argmax) at temperature 0; otherwise a draw from the temperature-scaled distribution restricted to the
    top_k tokens and the top_p probability mass (transformers' logits warpers). Every request (prompt i of a
    `generate` call is request `first_request + i`) draws from its own generator, seeded from `seed` and the
    request: what a request samples does not depend on which rows, batches or processes the others share it with
    (so N processes sampling their shards of a batch draw what one process drawing the whole batch does). The
    log-prob is the drawn token's under the temperature-scaled distribution before top-k/top-p, which is what a
    training forward pass at that temperature computes."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 first_request: int = 0):
        from transformers.generation.logits_process import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

        self.temperature = temperature
        self.warpers = LogitsProcessorList([TopKLogitsWarper(top_k)] if top_k else [])
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        if seed is None:  # drawn from torch's global generator, so a seeded run stays reproducible
            seed = int(torch.randint(2**62, (1,)))
        self.seed, self.first_request = seed, first_request
        self.generators: dict[int, torch.Generator] = {}

    def _uniform(self, request: int) -> float:
        """The next uniform draw in [0, 1) of `request`'s own stream."""
        if request not in self.generators:
            key = (self.seed * 0x9E3779B97F4A7C15 + self.first_request + request) % 2**63
            self.generators[request] = torch.Generator().manual_seed(key)
        return float(torch.rand((), generator=self.generators[request]))

    def __call__(self, logits: torch.Tensor, requests: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        if self.temperature > 0:
            logits = logits / self.temperature
        logprobs = torch.log_softmax(logits, dim=-1)
        if self.temperature <= 0:
            tokens = logits.argmax(-1)
        else:  # inverse-CDF sampling: the first token whose cumulative probability exceeds the row's uniform draw
            cumulative = torch.softmax(self.warpers(None, logits), dim=-1).cumsum(-1)  # [n, vocab]
            draws = torch.tensor([[self._uniform(r)] for r in requests], dtype=cumulative.dtype,
                                 device=cumulative.device)  # [n, 1]; the generators stay on the CPU
            tokens = torch.searchsorted(cumulative, draws * cumulative[:, -1:], right=True).squeeze(1)
            tokens = tokens.clamp(max=logits.shape[-1] - 1)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(1)


@torch.no_grad()
def reference_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos: int,
                     sample: Sampler, requests: list[int] | None = None) -> list[Completion]:
    """The `hf` backend on one left-padded batch ([B, T] ids and mask; `requests`: each row's request, by default
    its index): transformers' forward with a growing KV cache, finished rows removed from the batch and from the
    cache. Returns each row's completion."""
    from transformers import DynamicCache

    cache = DynamicCache()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: left padding does not shift positions
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    rows = list(range(len(input_ids)))  # which original row each live batch row is
    position = positions[:, -1:]  # [b, 1]
    completions = [Completion([], False, []) for _ in range(len(input_ids))]
    for step in range(max_new_tokens):
        tokens, logprobs = sample(out.logits[:, -1, :], [requests[r] for r in rows] if requests else rows)  # [b]
        for row, token, logprob in zip(rows, tokens.tolist(), logprobs.tolist()):
            completions[row].token_ids.append(token)
            completions[row].logprobs.append(logprob)
            completions[row].finished = token == eos
        live = tokens != eos  # [b]
        if step == max_new_tokens - 1 or not live.any():
            break
        if not live.all():  # drop finished rows from everything that carries the batch dimension
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows = [rows[i] for i in keep.tolist()]
            tokens, position, attention_mask = tokens[keep], position[keep], attention_mask[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        position = position + 1
        out = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=position,
                    past_key_values=cache, use_cache=True)
    return completions


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :], attention_mask[row, width - len(prompt) :] = torch.tensor(prompt), 1
    return input_ids, attention_mask


class TextGenerator:
    """Completes chat prompts with a model, on the backend `config.backend` picks (see the module docstring)."""

    def __init__(self, model, tokenizer, config: GenerationConfig | None = None, release_model: bool = False):
        """`release_model`: the engine may empty the model's layers as it copies them (the model is not used
        afterwards)."""
        self.config, self.tokenizer = config or GenerationConfig(), tokenizer
        reason = unsupported_reason(model) if self.config.backend != "hf" else None
        if self.config.backend == "engine" and reason:
            from align.config import ConfigError

            raise ConfigError(f"generation.backend is 'engine' but the engine cannot run this model: {reason}; "
                             f"use 'auto' or 'hf'")
        self.backend = "hf" if self.config.backend == "hf" or reason else "engine"
        self.model = model if self.backend == "hf" else None
        self.engine = None
        if self.backend == "engine":
            self.engine = DecoderEngine(model, self.config.slots, release_model=release_model,
                                        attention=self.config.attention, products=self.config.products)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """New weights (transformers' names), e.g. the current policy's with LoRA merged; all of them or some."""
        if self.engine is not None:
            self.engine.load_weights(state_dict)
            return
        unexpected = self.model.load_state_dict(state_dict, strict=False).unexpected_keys
        if unexpected:  # some of the weights (e.g. only the adapted layers) may come; none the model lacks
            raise ValueError(f"load_weights: the model has no parameters named {unexpected[:3]}")

    @torch.no_grad()
    def generate(self, prompts: list, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, first_request: int = 0,
                 states_at: int | None = None) -> Generations:
        """One completion per prompt (a string or chat messages). temperature 0 means greedy decoding. Prompt i
        samples as request `first_request + i` (`Sampler`): a process generating its shard of a larger batch
        passes the shard's first index there. `states_at` (engine only: `keeps_states`): also return the input
        of that layer at every position each completion ran."""
        rendered = [render_prompt(self.tokenizer, p) for p in prompts]
        encoded = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
        sample, eos = Sampler(temperature, top_p, top_k, seed, first_request), self.tokenizer.eos_token_id
        if self.engine is not None:
            completions = self.engine.generate(encoded, max_new_tokens, sample, eos, states_at)
        elif states_at is not None:
            raise ValueError("only the engine backend keeps a layer's states as it generates")
        else:
            completions = self._reference(encoded, max_new_tokens, sample, eos)
        token_ids = [c.token_ids for c in completions]
        return Generations(rendered, [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids],
                           token_ids, [c.finished for c in completions], sum(map(len, token_ids)),
                           [c.logprobs for c in completions], encoded,
                           [c.states for c in completions] if states_at is not None else None)

    @property
    def keeps_states(self) -> bool:
        """Whether `generate` can keep a layer's states (`states_at`): on the engine backend."""
        return self.engine is not None

    def _reference(self, encoded: list[list[int]], max_new_tokens: int, sample: Sampler, eos: int):
        """The hf backend: length-sorted batches of `slots` prompts."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        completions: list[Completion | None] = [None] * len(encoded)
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(order), self.config.slots):
            batch = order[start : start + self.config.slots]
            ids, mask = left_padded([encoded[i] for i in batch], self.tokenizer.pad_token_id)
            device = self.model.device
            for i, completion in zip(batch, reference_decode(self.model, ids.to(device), mask.to(device),
                                                             max_new_tokens, eos, sample, batch)):
                completions[i] = completion
        self.model.train(was_training)
        return completions


def load_generator(model: str, precision: str = "auto", config: GenerationConfig | None = None,
                   revision: str | None = None) -> TextGenerator:
    """A TextGenerator for a model named as `align eval` and `align chat` name it (an alias, a model directory such
    as a stage's output, or a hub id, at `revision` if given): its tokenizer (a chat template is required) and its
    weights, from safetensors, in bf16 or fp32 while generating (`auto`: bf16 where bf16 products are native), on
    the GPU where one is present."""
    from transformers import AutoModelForCausalLM

    from align.models import from_pretrained, load_tokenizer, resolve_model_path
    from align.precision import fast_bf16, resolve_precision

    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path, revision=revision)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_precision(precision, fast_bf16(device), ("bf16",))
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float32
    weights = from_pretrained(AutoModelForCausalLM, path, revision=revision, dtype=dtype,
                              use_safetensors=True).to(device)
    return TextGenerator(weights, tokenizer, config, release_model=True)  # only the engine's copy stays


def generate(model, tokenizer, prompts: list, *, config: GenerationConfig | None = None, **sampling) -> Generations:
    """One-off generation: `TextGenerator(model, tokenizer, config).generate(prompts, **sampling)`."""
    return TextGenerator(model, tokenizer, config).generate(prompts, **sampling)
