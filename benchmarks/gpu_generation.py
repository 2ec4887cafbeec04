"""Generation on a GPU, side by side in one run: align's engine (`generation.backend: engine`), the previous
decoding loop (`hf`) and raw batched `model.generate`, on the same held-out prompts, greedy, bf16 weights.

    python benchmarks/gpu_generation.py --model runs/default/sft            # a model directory
    python benchmarks/gpu_generation.py --model DIR --random-weights        # DIR's config, random bf16 weights

With `--random-weights` only the model's config and tokenizer are read (what a machine without the weights can
run: the speed of a decode step does not depend on the weights' values); such a model rarely emits EOS, so every
answer runs to the token budget in every implementation. Prints one JSON line per implementation and the ratios.
Needs a GPU; the project never does (docs/BENCHMARK.md, "On a GPU").
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from benchmarks.generation_cases import prompt_ids, raw_generate
from benchmarks.measure import rows_of


def load(path: str, random_weights: bool):
    if random_weights:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, use_safetensors=True)
    return model.to("cuda").eval()


def timed(run) -> tuple[object, float]:
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = run()
    torch.cuda.synchronize()
    return out, time.perf_counter() - started


def measure(model, tokenizer, prompts: list[str], slots: int, max_new_tokens: int) -> list[dict]:
    from align.rollout import GenerationConfig, TextGenerator

    results = []
    for backend in ("engine", "hf"):
        generator = TextGenerator(model, tokenizer, GenerationConfig(backend=backend, slots=slots))
        generator.generate(prompts[:2], max_new_tokens=4)  # warm-up
        out, seconds = timed(lambda: generator.generate(prompts, max_new_tokens=max_new_tokens))
        results.append({"what": f"align TextGenerator, backend {backend}", "seconds": seconds,
                        "new_tokens": out.new_tokens, "finished": sum(out.finished)})
    encoded = prompt_ids(tokenizer, prompts)
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    raw_generate(model, tokenizer, encoded[:2], slots, 4, greedy)  # warm-up
    (completions, _), seconds = timed(lambda: raw_generate(model, tokenizer, encoded, slots, max_new_tokens, greedy))
    results.append({"what": f"raw batched model.generate, batches of {slots}", "seconds": seconds,
                    "new_tokens": sum(map(len, completions)),
                    "finished": sum(bool(c) and c[-1] == tokenizer.eos_token_id for c in completions)})
    for result in results:
        result["new_tokens_per_s"] = result["new_tokens"] / result["seconds"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model directory (config.json and tokenizer)")
    parser.add_argument("--random-weights", action="store_true", help="random bf16 weights from the config")
    parser.add_argument("--prompts", type=int, default=128, help="held-out prompts")
    parser.add_argument("--slots", type=int, default=64, help="rows decoded together (and raw generate's batch)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_generation.py: no GPU here (torch.cuda.is_available() is False)")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load(args.model, args.random_weights)
    prompts = [row["prompt"] for row in rows_of("builtin:prompts:heldout", "prompt", args.prompts)]
    results = measure(model, tokenizer, prompts, args.slots, args.max_new_tokens)
    setting = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "prompts": len(prompts),
               "slots": args.slots, "max_new_tokens": args.max_new_tokens, "random_weights": args.random_weights}
    print(json.dumps(setting))
    for result in results:
        print(json.dumps(result))
    raw = results[-1]["new_tokens_per_s"]
    print(json.dumps({f"{r['what']} / raw generate": round(r["new_tokens_per_s"] / raw, 2) for r in results[:-1]}))


if __name__ == "__main__":
    main()
