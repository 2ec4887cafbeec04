"""align's generation engine: a lean decoder for Llama-family models with a static KV cache of `slots` rows and
continuous batching. Used through `align.rollout.generate` (its `generation.backend: engine`).

Why it is faster than transformers' `generate` on a CPU, where a decode step's work is small and per-operation
overhead and small matrix products dominate:
- **Slots, continuously refilled.** The cache has a fixed number of rows; a row that finishes hands its slot to the
  next waiting prompt (its prompt is prefilled into the slot), so every step decodes a full batch instead of a batch
  that empties as its answers end. When no prompt waits, the live rows move to the front and the step runs on
  just them, so finished rows cost no steps.
- **Fewer, larger matrix products.** The query, key and value projections are one matrix, the gate and up
  projections another: each layer runs four products instead of seven. With bf16 weights on a CPU with
  AVX512_BF16 (and no AMX) they run through align's product kernel, which streams each weight once at any row
  count (`align.decode_kernels.PackedLinear`); elsewhere through oneDNN's packed layout (on a GPU, plain products).
- **Attention for one query over a preallocated cache.** New keys and values are written in place (no growing
  `cat`); the query heads that share a key head attend together, reading each row's keys and values in place:
  with bf16 weights on an AVX-512 CPU through align's decode-attention kernel, which reads only each row's own
  positions (`align.decode_kernels`); elsewhere through PyTorch's fused attention over the cache length the
  longest live row needs (rounded up to 32), with the rows' own lengths masked.
- **One pass for each piece of elementwise work** between the products (the residual add with the next RMSNorm,
  the rotary embedding with the cache write, SiLU(gate) * up), through align's kernels where the attention kernel
  runs; PyTorch runs each as several operations, and at a few dozen rows their fixed costs add up.
Prefill runs whole prompts through the same weights with causal attention, several prompts at once, packed back
to back without padding, in chunks of at most PREFILL_TOKENS tokens; the tokens all of them start with (a chat
template's system prompt) run once.

The engine runs on the device that holds the model's weights (a CPU, or a GPU where one is present: the same
code, with plain products there instead of oneDNN's packed layout); the rows' bookkeeping stays on the CPU.

Numerics follow transformers' Llama implementation (RMSNorm in fp32, rotary tables from the model's own rotary
module, the residual stream in the weights' dtype, softmax in fp32): with fp32 weights greedy decoding gives
transformers' tokens (tests/align/test_engine.py); with bf16 weights the log-probs it reports for sampled tokens
match a training forward pass within bf16 precision.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from align import decode_kernels
from align.batching import SHARED_PREFIX_MIN, shared_prefix_length

ATTENTION_BUCKET = 32  # the attention length is rounded up to a multiple of this (fewer distinct shapes)
MIN_WIDTH = 4  # the step width never shrinks below this many rows
# Prompts are prefilled in chunks of at most this many tokens, so that a prefill's activations stay small
# whatever the prompts' lengths: a pass over many long prompts at once needs far more memory and runs slower per
# token (docs/BENCHMARK.md, "Prefill in chunks").
PREFILL_TOKENS = 1024


def unsupported_reason(model) -> str | None:
    """Why the engine cannot run `model` (None when it can): it runs Llama-family decoders (Llama, Mistral without
    a sliding window, Qwen2, SmolLM) whose layers are RMSNorm -> attention -> RMSNorm -> SiLU-gated MLP."""
    config = getattr(model, "config", None)
    body = getattr(model, "model", None)
    if config is None or body is None or not hasattr(body, "layers") or not hasattr(model, "lm_head"):
        return "not a decoder-only causal LM with a .model.layers body"
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} (the engine runs SiLU-gated MLPs)"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    layer = body.layers[0]
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    needed = [(attention, "q_proj"), (attention, "k_proj"), (attention, "v_proj"), (attention, "o_proj"),
              (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj"), (layer, "input_layernorm"),
              (layer, "post_attention_layernorm"), (body, "rotary_emb"), (body, "norm")]
    missing = [name for owner, name in needed if owner is None or not hasattr(owner, name)]
    if missing:
        return f"its layers lack {', '.join(missing)}"
    if any(hasattr(attention, name) for name in ("q_norm", "k_norm")):
        return "query/key normalisation inside attention"
    if getattr(attention.o_proj, "bias", None) is not None or getattr(mlp.down_proj, "bias", None) is not None:
        return "biases on the output projections"
    return None


PACK_ROWS = 64  # the row count oneDNN's packed weight layout is tuned for (it serves any count)


def _packed(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` in oneDNN's packed layout for products with few rows, or None where that is not available (not a
    CPU, no oneDNN, or bf16 on a CPU without bf16 kernels): laid out once, for the few-row products of a decode
    step."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    if weight.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_ROWS)
    except (RuntimeError, AttributeError):  # a torch without these internal oneDNN ops
        return None


class Projection:
    """x @ weight^T (+ bias) with the weight kept in the fastest layout for the device: align's kernel where it
    serves the weight and `kernel` asks for it (`align.decode_kernels.PackedLinear`), else `_packed`.

    It never keeps the caller's tensor itself: a packed layout is a copy, and a plain weight is copied unless
    `owned` says it already is one (a fused concatenation). A view of a model's weight would keep the model's
    storage alive (for weights loaded from safetensors, the whole memory-mapped file) and follow its changes."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, owned: bool = False,
                 kernel: bool = False):
        serve = kernel and decode_kernels.linear_runs(weight)
        self.kernel = decode_kernels.PackedLinear(weight, bias) if serve else None  # holds its own fp32 bias
        self.bias = bias.clone() if bias is not None and self.kernel is None else None
        self.packed = _packed(weight) if self.kernel is None else None
        plain = self.kernel is None and self.packed is None
        self.weight = (weight if owned else weight.clone()) if plain else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(x)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class LayerWeights:
    """One decoder layer's weights, fused: [q; k; v] and [gate; up] are single products."""

    input_norm: torch.Tensor  # [hidden]
    qkv: Projection  # [(heads + 2 kv_heads) * head_dim, hidden]
    out: Projection  # [hidden, heads * head_dim]
    post_norm: torch.Tensor  # [hidden]
    gate_up: Projection  # [2 * intermediate, hidden]
    down: Projection  # [hidden, intermediate]


# The parameters of a layer, by role, as transformers names them below the layer's own name.
LAYER_PARAMETERS = {
    "input_norm": "input_layernorm.weight", "q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight", "out": "self_attn.o_proj.weight", "post_norm": "post_attention_layernorm.weight",
    "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
}
QKV_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")


def _layer(weights: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device, kernel: bool) -> LayerWeights:
    """A layer from its parameters (`LAYER_PARAMETERS` roles, plus `q_bias`/`k_bias`/`v_bias` if it has them);
    `kernel`: its products through align's kernel where it serves them (`Projection`)."""
    w = {role: tensor.detach().to(device, dtype) for role, tensor in weights.items()}  # views where dtype and
    # device are the same, so the norms are copied and the products make their own (`Projection`)
    bias = torch.cat([w["q_bias"], w["k_bias"], w["v_bias"]]) if "q_bias" in w else None
    return LayerWeights(input_norm=w["input_norm"].clone(), post_norm=w["post_norm"].clone(),
                        qkv=Projection(torch.cat([w["q"], w["k"], w["v"]]), bias, owned=True, kernel=kernel),
                        out=Projection(w["out"], kernel=kernel),
                        gate_up=Projection(torch.cat([w["gate"], w["up"]]), owned=True, kernel=kernel),
                        down=Projection(w["down"], kernel=kernel))


@dataclass
class Completion:
    """One prompt's generated tokens (EOS included when the model stopped), whether it stopped, and the log-prob
    of each generated token under the sampling distribution (temperature applied, before top-k/top-p). `states`,
    when `generate` is asked for them: the input of one layer at every position the engine ran, [P + n - 1,
    hidden] for a prompt of P tokens and n generated ones (the last generated token is sampled, never run)."""

    token_ids: list[int]
    finished: bool
    logprobs: list[float]
    states: torch.Tensor | None = None


class DecoderEngine:
    """A Llama-family decoder with fused weights and a KV cache of `slots` rows (see the module docstring).

        engine = DecoderEngine(model, slots=64)          # weights copied (fused) in the model's dtype or `dtype`
        engine.load_weights(policy_state_dict)           # refresh them later by transformers' parameter names
        completions = engine.generate(prompt_ids, max_new_tokens=256, sample=sampler, eos_token_id=2)
    """

    def __init__(self, model, slots: int = 64, dtype: torch.dtype | None = None, release_model: bool = False,
                 attention: str = "auto", products: str = "auto"):
        """`release_model`: empty each of the model's layers once the engine has its own copy (for a caller that
        loaded the model only to generate with it: the weights are never held twice). `attention`: "auto" decodes
        with align's decode kernels where they run (`align.decode_kernels`), "reference" always with PyTorch's
        fused attention and operations. `products`: "auto" runs the matrix products through align's kernel where it
        serves the weights (`align.decode_kernels.linear_runs`), "reference" always through PyTorch's."""
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"the generation engine cannot run {type(model).__name__}: {reason}")
        for name, value in (("attention", attention), ("products", products)):
            if value not in ("auto", "reference"):
                raise ValueError(f"{name} must be 'auto' or 'reference', not {value!r}")
        self.kernel_products = products == "auto"
        config, body = model.config, model.model
        first = next(model.parameters())
        self.dtype, self.device = dtype or first.dtype, first.device  # the engine runs where the model's weights are
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps, self.slots = config.rms_norm_eps, slots
        self.rotary = body.rotary_emb
        self.names = self._parameter_names(model)
        self.layers: list[LayerWeights] = []
        self.load_weights(dict(model.named_parameters(remove_duplicate=False)), release=release_model)
        self.keys = self.values = self.cos = self.sin = None
        self.cache_length = 0
        self.states_at, self.states = None, None  # during a `generate` that keeps states: the layer, [slots, L, hidden]
        self.use_kernel = (attention == "auto" and decode_kernels.kernel_runs(
            self.dtype, self.device, self.head_dim, self.heads // self.kv_heads)
            and decode_kernels.load_kernel() is not None)
        # The elementwise work between the products runs through align's kernels wherever the attention kernel runs
        # (benchmarks/decode_elementwise.py turns this off to measure what they save).
        self.fuse_elementwise = self.use_kernel

    # -- weights ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _parameter_names(model) -> dict:
        """transformers' names of the parameters the engine uses: the embedding, the final norm, the vocabulary
        projection, and per layer its `LAYER_PARAMETERS` (and `QKV_BIASES` where it has them)."""
        names = {id(module): name for name, module in model.named_modules()}
        layers = []
        for layer in model.model.layers:
            prefix = names[id(layer)]
            roles = {role: f"{prefix}.{suffix}" for role, suffix in LAYER_PARAMETERS.items()}
            if layer.self_attn.q_proj.bias is not None:
                roles.update({f"{'qkv'[i]}_bias": f"{prefix}.{suffix}" for i, suffix in enumerate(QKV_BIASES)})
            layers.append(roles)
        return {"embed": f"{names[id(model.model.embed_tokens)]}.weight",
                "final_norm": f"{names[id(model.model.norm)]}.weight",
                "lm_head": f"{names[id(model.lm_head)]}.weight", "layers": layers}

    @torch.no_grad()
    def load_weights(self, state_dict: dict[str, torch.Tensor], release: bool = False) -> None:
        """Take weights by transformers' names (as `state_dict()` gives them), cast to the engine's dtype and laid
        out for its products. Only the layers named are rebuilt (PPO passes the layers its adapters change), but a
        layer must come whole; the vocabulary projection follows a tied embedding. `release`: empty each layer's
        given tensors once its copy is made."""
        names, dtype, device = self.names, self.dtype, self.device
        for index, roles in enumerate(names["layers"]):
            present = [name for name in roles.values() if name in state_dict]
            if not present:
                if index >= len(self.layers):
                    raise ValueError(f"load_weights: the state dict lacks layer {index}, e.g. {roles['q']}")
                continue
            if len(present) < len(roles):
                missing = sorted(set(roles.values()) - set(present))
                raise ValueError(f"load_weights: layer {index} comes in part; it lacks {missing[:3]}")
            layer = _layer({role: state_dict[name] for role, name in roles.items()}, dtype, device,
                           self.kernel_products)
            self.layers[index:index + 1] = [layer]
            if release:
                for name in roles.values():
                    tensor = state_dict[name]
                    tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        # copies, never views (as `Projection` keeps its own)
        if names["final_norm"] in state_dict:
            self.final_norm = state_dict[names["final_norm"]].detach().to(device, dtype, copy=True)
        if names["embed"] in state_dict:
            self.embed = state_dict[names["embed"]].detach().to(device, dtype, copy=True)
        head = state_dict.get(names["lm_head"])
        if head is not None or names["embed"] in state_dict:
            tied = head is None  # the vocabulary projection is the engine's own copy of the embedding
            self.lm_head = Projection(self.embed if tied else head.detach().to(device, dtype), owned=tied,
                                      kernel=self.kernel_products)
        if not hasattr(self, "embed") or not hasattr(self, "final_norm"):
            raise ValueError(f"load_weights: the state dict lacks {names['embed']} or {names['final_norm']}")

    # -- the cache ---------------------------------------------------------------------------------------------------

    def _ensure_cache(self, length: int) -> None:
        """Keys and values for `slots` rows of at least `length` positions (a whole number of attention buckets, so
        a step's attention length never depends on how large an earlier call made the cache: the fused kernel's
        sums depend on it, and a resumed run must sample what the uninterrupted run did), and the rotary tables."""
        length = _bucketed(length)
        if length <= self.cache_length:
            return
        shape = (len(self.layers), self.slots, self.kv_heads, length, self.head_dim)
        # zeros, not empty: masked positions still enter the products, and garbage there could be inf or NaN
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(self.embed[:1], torch.arange(length, device=self.device)[None])  # transformers' own
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # [length, head_dim]
        self.cache_length = length

    def _move_row(self, source: int, target: int, length: int) -> None:
        self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
        self.values[:, target, :, :length] = self.values[:, source, :, :length]
        if self.states is not None:
            self.states[target, :length] = self.states[source, :length]

    # -- the model ---------------------------------------------------------------------------------------------------

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as transformers computes it: in fp32, the weight applied in the input's dtype."""
        hidden = x.float()
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * hidden.to(x.dtype)

    def _qkv(self, weights: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Input [..., hidden] -> rotated queries [..., heads, D], rotated keys and values [..., kv_heads, D]."""
        return self._rotated_heads(weights.qkv(self._norm(x, weights.input_norm)), cos, sin)

    def _rotated_heads(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """The fused projection's output [..., (heads + 2 kv_heads) * D] -> rotated queries [..., heads, D], rotated
        keys and values [..., kv_heads, D]."""
        d = self.head_dim
        q, k, v = qkv.split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q = q.unflatten(-1, (self.heads, d))
        k, v = k.unflatten(-1, (self.kv_heads, d)), v.unflatten(-1, (self.kv_heads, d))
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def _mlp(self, weights: LayerWeights, x: torch.Tensor) -> torch.Tensor:
        """x + down(silu(gate(norm(x))) * up(norm(x))), gate and up from one product."""
        return x + weights.down(_silu_times_up(weights.gate_up(self._norm(x, weights.post_norm))))

    @torch.no_grad()
    def _prefill(self, rows: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Run whole prompts into cache rows `rows`, in chunks of at most PREFILL_TOKENS tokens (a chunk holds one
        prompt at least), the tokens they all start with once (`_shared_start`); the logits after each
        prompt's last token: [n, vocab]."""
        shared = self._shared_start(rows, prompts)
        lengths = [len(p) - shared for p in prompts]  # the tokens each prompt still runs
        logits, start = [], 0
        while start < len(prompts):
            end, tokens = start + 1, lengths[start]
            while end < len(prompts) and tokens + lengths[end] <= PREFILL_TOKENS:
                tokens += lengths[end]
                end += 1
            logits.append(self._prefill_chunk(rows[start:end], prompts[start:end], shared))
            start = end
        return torch.cat(logits)

    def _shared_start(self, rows: list[int], prompts: list[list[int]]) -> int:
        """How many tokens every prompt starts with (a chat template's system prompt), when at least
        SHARED_PREFIX_MIN, else 0: they run once, into the first row, and their keys and values are copied into
        the other rows."""
        if len(prompts) < 2:
            return 0
        shared = min(shared_prefix_length(prompts[0], p) for p in prompts[1:])
        if shared < SHARED_PREFIX_MIN:
            return 0
        self._prefill_chunk(rows[:1], [prompts[0][:shared]])
        others = torch.tensor(rows[1:], device=self.device)
        for cache in (self.keys, self.values):
            cache[:, others, :, :shared] = cache[:, rows[0] : rows[0] + 1, :, :shared]
        if self.states is not None:
            self.states[others, :shared] = self.states[rows[0] : rows[0] + 1, :shared]
        return shared

    def _prefill_chunk(self, rows: list[int], prompts: list[list[int]], start: int = 0) -> torch.Tensor:
        """`_prefill` of prompts packed back to back, no padding, from position `start` (the positions before it
        are in the rows' cache already): the products run on every prompt's tokens at once, the attention prompt
        by prompt over its own cache row."""
        lengths = [len(p) - start for p in prompts]
        ids = torch.tensor([t for p in prompts for t in p[start:]], device=self.device)  # [N]
        positions = torch.cat([torch.arange(start, len(p)) for p in prompts]).to(self.device)  # [N]
        owners = torch.tensor(rows).repeat_interleave(torch.tensor(lengths)).to(self.device)  # each token's row
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # [N, 1, D]
        # Causal attention within each prompt (is_causal where nothing is cached before it); after `start` cached
        # positions token i sees positions [0, start + i].
        masks = {n: torch.ones(n, start + n, dtype=torch.bool, device=self.device).tril(start)
                 for n in lengths} if start else {}
        x = self.embed[ids]  # [N, hidden]
        for layer, weights in enumerate(self.layers):
            if layer == self.states_at:
                self.states[owners, positions] = x
            q, k, v = self._qkv(weights, x, cos, sin)  # [N, heads, D], [N, kv_heads, D]
            self.keys[layer][owners, :, positions] = k
            self.values[layer][owners, :, positions] = v
            out = []
            for row, query, n in zip(rows, q.split(lengths), lengths):
                keys = self.keys[layer, row : row + 1, :, : start + n]  # [1, kv_heads, start + n, D]
                values = self.values[layer, row : row + 1, :, : start + n]
                out.append(F.scaled_dot_product_attention(query.transpose(0, 1)[None], keys, values,
                                                          attn_mask=masks.get(n),
                                                          is_causal=not start, enable_gqa=True)[0])
            x = x + weights.out(torch.cat(out, dim=1).transpose(0, 1).flatten(1))
            x = self._mlp(weights, x)
        ends = torch.tensor(lengths, device=self.device).cumsum(0) - 1
        return self.lm_head(self._norm(x[ends], self.final_norm))  # after each prompt's last token: [n, vocab]

    @torch.no_grad()
    def _decode(self, tokens: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        """One step for cache rows [0, W): token t of row b goes to position positions[b] and attends to positions
        [0, positions[b]]; `length` >= every attended position + 1. Returns the next-token logits [W, vocab]."""
        width, groups, device = len(tokens), self.heads // self.kv_heads, self.device
        tokens, positions = tokens.to(device), positions.to(device)
        cos, sin = self.cos[positions], self.sin[positions]  # [W, D]
        lengths = positions + 1  # each row attends to its positions [0, positions[b]]
        if self.use_kernel:
            attend = functools.partial(decode_kernels.kernel, lengths=lengths)
        else:
            attend = functools.partial(decode_kernels.reference,
                                       mask=decode_kernels.length_mask(lengths, length, self.dtype))
        x, delta = self.embed[tokens], None  # [W, hidden]; delta: what the last sublayer adds to x
        for layer, weights in enumerate(self.layers):
            x, normed = self._add_norm(x, delta, weights.input_norm)
            if layer == self.states_at:
                self.states[torch.arange(width, device=device), positions] = x
            q = self._rotary_into_cache(layer, weights.qkv(normed), cos, sin, positions)  # [W, heads, D]
            keys, values = self.keys[layer, :width, :, :length], self.values[layer, :width, :, :length]
            # The query heads that share a key head are that head's `groups` queries: each row's keys and values are
            # read once, in place (a product over the cache slice would copy it first).
            out = attend(q.view(width, self.kv_heads, groups, self.head_dim), keys, values)  # [W, kv_heads, groups, D]
            x, normed = self._add_norm(x, weights.out(out.reshape(width, -1)), weights.post_norm)
            delta = weights.down(self._silu_mul(weights.gate_up(normed)))
        return self.lm_head(self._add_norm(x, delta, self.final_norm)[1])

    # The elementwise work of a decode step: align's kernels where they run (one pass each), else PyTorch's
    # operations, with the same roundings (`align.decode_kernels`).

    def _add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor):
        """(x + delta, RMSNorm(x + delta) * weight); x itself where delta is None."""
        if self.fuse_elementwise:
            return decode_kernels.add_rms_norm(x, delta, weight, self.eps)
        x = x if delta is None else x + delta
        return x, self._norm(x, weight)

    def _rotary_into_cache(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                           positions: torch.Tensor) -> torch.Tensor:
        """qkv [W, (heads + 2 kv_heads) * D] -> rotated queries [W, heads, D]; the rotated keys and the values go
        into `layer`'s cache at row b, position positions[b]. cos, sin [W, D]: the rotary tables at the positions."""
        if self.fuse_elementwise:
            return decode_kernels.rotary_into_cache(qkv, cos, sin, positions, self.keys[layer], self.values[layer],
                                                    self.heads)
        q, k, v = self._rotated_heads(qkv, cos[:, None], sin[:, None])
        rows = torch.arange(len(qkv), device=qkv.device)
        self.keys[layer, rows, :, positions], self.values[layer, rows, :, positions] = k, v
        return q

    def _silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """[gate, up] [W, 2 * intermediate] -> SiLU(gate) * up."""
        return decode_kernels.silu_mul(gate_up) if self.fuse_elementwise else _silu_times_up(gate_up)

    # -- continuous batching -----------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], max_new_tokens: int, sample, eos_token_id: int,
                 states_at: int | None = None) -> list[Completion]:
        """Complete every prompt (token ids): up to `max_new_tokens` each, stopping at `eos_token_id`; `sample`
        maps logits [n, vocab] and the rows' requests (prompt indices) to (tokens [n], their log-probs [n]).
        Prompts enter free rows as others finish. `states_at`: keep the input of that layer at every position
        each completion ran (`Completion.states`, in the engine's dtype), e.g. the frozen layers' output that a
        training pass above them starts from."""
        if not prompts:
            return []
        if states_at is not None and not 0 <= states_at < len(self.layers):
            raise ValueError(f"states_at must name one of the {len(self.layers)} layers, not {states_at}")
        self._ensure_cache(max(len(p) for p in prompts) + max_new_tokens)
        if states_at is not None:
            self.states_at = states_at
            self.states = torch.empty(self.slots, self.cache_length, self.embed.shape[1], dtype=self.dtype,
                                      device=self.device)
        try:
            return self._generate(prompts, max_new_tokens, sample, eos_token_id)
        finally:
            self.states_at, self.states = None, None

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, sample, eos_token_id: int) -> list[Completion]:
        state = _Rows(self.slots, min(self.slots, len(prompts)), max_new_tokens, eos_token_id)
        waiting = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        waiting.reverse()  # popped from the end: shortest prompts first, as the reference loop orders them
        while waiting or state.live:
            free = state.free_rows()
            if waiting and free and (len(free) >= max(1, state.width // 8) or not state.live):
                taken = [waiting.pop() for _ in range(min(len(free), len(waiting)))]
                rows = free[: len(taken)]
                tokens, logprobs = sample(self._prefill(rows, [prompts[i] for i in taken]), taken)
                for row, request, token, logprob in zip(rows, taken, tokens.tolist(), logprobs.tolist()):
                    state.start(row, request, len(prompts[request]), token, logprob)
                    self._keep_states(state, row, request, prompts)
            if not state.live:
                continue
            if not waiting:
                state.shrink(self._move_row)
            width = state.width
            positions = state.positions[:width]
            length = _bucketed(int(positions.max() + 1))  # <= the cache's
            logits = self._decode(state.tokens[:width], positions, length)
            live = sorted(state.live)
            requests = [state.live[row] for row in live]
            tokens, logprobs = sample(logits[live], requests)
            for row, request, token, logprob in zip(live, requests, tokens.tolist(), logprobs.tolist()):
                state.advance(row, token, logprob)
                self._keep_states(state, row, request, prompts)
        return [state.done[i] for i in range(len(prompts))]

    def _keep_states(self, state: "_Rows", row: int, request: int, prompts: list[list[int]]) -> None:
        """When `row` has just finished `request` and states are kept: copy out the states of the positions it
        ran (its prompt and every generated token but the last)."""
        if self.states is None or request not in state.done:
            return
        completion = state.done[request]
        completion.states = self.states[row, : len(prompts[request]) + len(completion.token_ids) - 1].clone()


class _Rows:
    """The bookkeeping of the cache rows during `DecoderEngine.generate`: which request each live row decodes, the
    position its next token goes to, its last token, and the step width [0, width)."""

    def __init__(self, slots: int, width: int, max_new_tokens: int, eos_token_id: int):
        self.width, self.max_new_tokens, self.eos = width, max_new_tokens, eos_token_id
        self.positions = torch.zeros(slots, dtype=torch.long)  # where each row's next token goes (0: idle row)
        self.tokens = torch.zeros(slots, dtype=torch.long)  # each row's last token, the next step's input
        self.live: dict[int, int] = {}  # row -> request
        self.generated: dict[int, Completion] = {}  # row -> what its request has generated so far
        self.done: dict[int, Completion] = {}  # request -> its completion

    def free_rows(self) -> list[int]:
        return [row for row in range(self.width) if row not in self.live]

    def start(self, row: int, request: int, prompt_length: int, token: int, logprob: float) -> None:
        """A prompt was prefilled into `row` and its first token sampled."""
        self.live[row], self.generated[row] = request, Completion([], False, [])
        self.positions[row] = prompt_length
        self.advance(row, token, logprob, move=False)

    def advance(self, row: int, token: int, logprob: float, move: bool = True) -> None:
        """Record a sampled token; finish the row at EOS or at the token budget."""
        completion = self.generated[row]
        completion.token_ids.append(token)
        completion.logprobs.append(logprob)
        if move:
            self.positions[row] += 1
        self.tokens[row] = token
        if token == self.eos or len(completion.token_ids) >= self.max_new_tokens:
            completion.finished = token == self.eos
            self.done[self.live.pop(row)] = self.generated.pop(row)
            self.positions[row] = self.tokens[row] = 0

    def shrink(self, move_row) -> None:
        """Move the live rows above the live count into free rows below it and narrow the width to that count (at
        least MIN_WIDTH): a finished row costs no further step."""
        width = max(MIN_WIDTH, len(self.live))
        if width >= self.width:
            return
        free = [row for row in range(width) if row not in self.live]
        for row in [row for row in self.live if row >= width]:
            target = free.pop(0)
            move_row(row, target, int(self.positions[row]))
            self.live[target], self.generated[target] = self.live.pop(row), self.generated.pop(row)
            self.positions[target], self.tokens[target] = self.positions[row], self.tokens[row]
            self.positions[row] = self.tokens[row] = 0
        self.width = width


def _bucketed(length: int) -> int:
    """`length` rounded up to a whole number of ATTENTION_BUCKETs."""
    return -(-length // ATTENTION_BUCKET) * ATTENTION_BUCKET


def _silu_times_up(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2 * intermediate] = [gate, up] -> SiLU(gate) * up, as the Llama MLP computes it."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding as transformers applies it: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
