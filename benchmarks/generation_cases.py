"""The evaluation runs of the benchmark: `align eval` with the generation engine and with the previous decoding loop,
next to raw `model.generate` (bf16 weights, as the generation issue defines it, and fp32, the faster dtype on a CPU
without native bf16), and the engine's fp32 greedy tokens against transformers'.

Raw generation is what any implementation must do at the least: the prompts rendered with the chat template,
left-padded batches of the same size, `model.generate` with KV cache, the same sampling settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.rollout import left_padded
from benchmarks.measure import matmul_parameters, model_path, rows_of

GENERATION_PRECISION = "bf16 weights"


def prompt_ids(tokenizer, prompts: list) -> list[list[int]]:
    return [tokenizer(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"] for p in prompts]


def raw_generate(model, tokenizer, encoded: list[list[int]], batch_size: int, max_new_tokens: int,
                 sampling: dict) -> tuple[list[list[int]], float]:
    """Left-padded batches in the given order -> (completion ids cut after EOS, seconds)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    completions, started = [], time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            input_ids, mask = (t.to(model.device) for t in left_padded(batch, pad))
            width = input_ids.shape[1]
            output = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    eos_token_id=eos, pad_token_id=pad, **sampling)
            for row in output[:, width:].tolist():
                completions.append(row[: row.index(eos) + 1] if eos in row else [t for t in row if t != pad])
    return completions, time.perf_counter() - started


# ---- evaluation ------------------------------------------------------------------------------------------------


def eval_config(settings, workdir: Path, prompts: int, new_tokens: int, out: str, backend: str = "auto"):
    """align eval on the in-distribution held-out prompts only, at one budget (what raw generate is compared on)."""
    from align.eval import EvalConfig
    from align.rollout import GenerationConfig

    return EvalConfig(model=settings.model, prompts="builtin:prompts:heldout", unseen_prompts=None, long_budget=None,
                      max_prompts=prompts, max_new_tokens=new_tokens, threads=settings.threads, out=str(workdir / out),
                      generation=GenerationConfig(backend=backend, slots=settings.eval_slots))


def eval_case(settings, workdir: Path, backend: str) -> dict:
    """align eval with `backend`: the generation engine (auto) or the previous decoding loop (hf)."""
    from align.eval import evaluate

    evaluate(eval_config(settings, workdir, 2, 4, "warmup", backend))  # warm-up: the same code path, short
    results = evaluate(eval_config(settings, workdir, settings.eval_prompts, settings.eval_max_new_tokens, "eval",
                                   backend))
    path = model_path(settings)
    rows = rows_of("builtin:prompts:heldout", "prompt", settings.eval_prompts)
    prompt_tokens = sum(len(ids) for ids in prompt_ids(AutoTokenizer.from_pretrained(path), [r["prompt"]
                                                                                             for r in rows]))
    from align.precision import fast_bf16, resolve_precision

    what = "align eval" + (" (previous decoding loop)" if backend == "hf" else "")
    dtype = resolve_precision("auto", fast_bf16(torch.device("cpu")), ("bf16",))
    return generation_result(
        what, f"align.eval.evaluate ({results['prompts']} held-out prompts, generation.backend {backend} -> "
        f"{results['generation_backend']}, {settings.eval_slots} rows, greedy, max_new_tokens "
        f"{settings.eval_max_new_tokens}, precision auto); seconds = its generation_seconds, after a warm-up "
        "evaluate() of 2 prompts", results["generation_seconds"], results["new_tokens"], prompt_tokens,
        matmul_parameters(path, "causal"), finished_fraction=results["finished_fraction"],
        setup_s=results["generation_setup_seconds"], backend=results["generation_backend"], weights=dtype,
        precision=f"{dtype} weights (precision auto)")


def case_eval_align(settings, workdir: Path) -> dict:
    return eval_case(settings, workdir, "auto")


def case_eval_hf(settings, workdir: Path) -> dict:
    return eval_case(settings, workdir, "hf")


def raw_eval(settings, dtype: torch.dtype) -> dict:
    """Raw batched `model.generate` of the held-out prompts with `dtype` weights, greedy."""
    path = model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    rows = rows_of("builtin:prompts:heldout", "prompt", settings.eval_prompts)
    encoded = prompt_ids(tokenizer, [r["prompt"] for r in rows])
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    raw_generate(model, tokenizer, encoded[:2], settings.eval_batch_size, 4, greedy)  # warm-up
    completions, seconds = raw_generate(model, tokenizer, encoded, settings.eval_batch_size,
                                        settings.eval_max_new_tokens, greedy)
    eos, name = tokenizer.eos_token_id, str(dtype).replace("torch.", "").replace("bfloat16", "bf16")
    return generation_result(
        f"raw batched generate, {name}", f"raw model.generate, {name} weights, left-padded batches of "
        f"{settings.eval_batch_size} in the data's order, greedy, max_new_tokens {settings.eval_max_new_tokens}, "
        "after a warm-up generation of 2 prompts", seconds, sum(len(c) for c in completions),
        sum(len(ids) for ids in encoded), matmul_parameters(path, "causal"), precision=f"{name} weights", weights=name,
        finished_fraction=sum(bool(c) and c[-1] == eos for c in completions) / len(completions))


def case_eval_raw(settings, workdir: Path) -> dict:
    return raw_eval(settings, torch.bfloat16)


def case_eval_raw_fp32(settings, workdir: Path) -> dict:
    return raw_eval(settings, torch.float32)


def case_eval_exact(settings, workdir: Path) -> dict:
    """fp32 greedy decoding: the engine's tokens against transformers' `generate` on the same prompts, one at a
    time. Where a prompt's tokens differ, the gap between transformers' top two logits at the first difference
    (a near tie, < 1e-4, is the only acceptable cause)."""
    from align.rollout import GenerationConfig, TextGenerator

    path = model_path(settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = rows_of("builtin:prompts:heldout", "prompt", settings.exact_prompts)
    engine = TextGenerator(model, tokenizer, GenerationConfig(backend="engine", slots=settings.eval_slots))
    started = time.perf_counter()
    ours = engine.generate([r["prompt"] for r in rows], max_new_tokens=settings.exact_max_new_tokens).token_ids
    seconds = time.perf_counter() - started
    matches, gaps = 0, []
    for ids, mine in zip(prompt_ids(tokenizer, [r["prompt"] for r in rows]), ours):
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=settings.exact_max_new_tokens,
                                 do_sample=False, output_scores=True, return_dict_in_generate=True,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        theirs = out.sequences[0, len(ids):].tolist()
        if theirs == mine:
            matches += 1
            continue
        first = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), min(len(theirs), len(mine)))
        top = out.scores[min(first, len(out.scores) - 1)][0].float().topk(2).values
        gaps.append(float(top[0] - top[1]))
    return {"what": "fp32 greedy tokens: engine vs transformers' generate", "method": case_eval_exact.__doc__,
            "precision": "fp32 weights", "prompts": len(rows), "matches": matches, "divergence_logit_gaps": gaps,
            "near_ties_only": all(gap < 1e-4 for gap in gaps), "seconds": seconds,
            "max_new_tokens": settings.exact_max_new_tokens}


def generation_result(what: str, method: str, seconds: float, new_tokens: int, prompt_tokens: int, n_params: int,
                      **extra) -> dict:
    return {
        "what": what, "method": method, "precision": GENERATION_PRECISION, "peak_dtype": "bf16",
        "seconds": seconds, "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
        "new_tokens_per_s": new_tokens / seconds, "tokens_per_s": new_tokens / seconds, "parameters": n_params,
        "flop_formula": "2*N*(prompt + generated tokens)", "flop_per_s": 2 * n_params * (prompt_tokens + new_tokens)
        / seconds, **extra,
    }


GENERATION_CASES = {"eval/align": case_eval_align, "eval/hf": case_eval_hf, "eval/raw": case_eval_raw,
                    "eval/raw-fp32": case_eval_raw_fp32, "eval/exact": case_eval_exact}
