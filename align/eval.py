"""`align eval`: instruction-following accuracy of a model on prompts that carry verifiable constraints.

    align eval configs/eval.yaml model=runs/default/sft

Generates one greedy completion per prompt (batched, KV cache, bf16 weights) and checks each prompt's
constraints with `reward.verifiers`, reporting as IFEval does:
- prompt-level accuracy: the fraction of prompts whose constraints are *all* followed;
- instruction-level accuracy: the fraction of individual constraints followed;
each strict and loose (loose forgives a leading/trailing line such as "Sure, here you go:" and markdown stars),
and per constraint type. Prompts in IFEval's own format (`instruction_id_list` + `kwargs`) are accepted too.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from align.data import DataConfig, DataError, load_rows
from align.rollout import GenerationConfig


@dataclass
class EvalConfig:
    stage: Literal["eval"] = "eval"  # this file configures `align eval`
    model: str = "smollm2-135m-instruct"  # alias, stage directory or hub id
    prompts: str = "builtin:prompts:heldout"  # prompts with verifiable constraints: a file, hub id or builtin
    data: DataConfig = field(default_factory=DataConfig)  # how to read `prompts` (format, skip_bad_rows, seed)
    max_prompts: int | None = None  # evaluate the first N prompts; null: all
    max_new_tokens: int = 256  # token budget of each answer (greedy decoding)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # the decoding backend and its rows
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # the weights' dtype while generating; auto: bf16 where
    # bf16 products are native (align.precision.fast_bf16), else fp32
    threads: int | None = None  # intra-op threads; default: the available cores
    out: str | None = None  # default: <model dir>/eval (stage dirs) or runs/eval/<model>
    reward_model: str | None = None  # a reward-model directory: also report its mean score of the completions
    reward_pairs: str = "builtin:pairs:heldout"  # ... and its pairwise accuracy on these held-out pairs
    max_reward_pairs: int = 200  # held-out pairs the reward model's accuracy is measured on


def constraints_of(row: dict) -> list[dict]:
    """A row's constraints, from our `constraints` column or IFEval's `instruction_id_list` + `kwargs`."""
    from reward.verifiers import constraints_from_ifeval, parse_constraints

    if "constraints" in row:
        return parse_constraints(row["constraints"])
    if "instruction_id_list" in row:
        kwargs = row.get("kwargs") or [{} for _ in row["instruction_id_list"]]
        return constraints_from_ifeval(row["instruction_id_list"], kwargs)
    raise DataError("a prompt row has neither a 'constraints' column nor IFEval's 'instruction_id_list'")


def score_completions(prompts: list[str], completions: list[str], constraints: list[list[dict]]) -> dict:
    """IFEval metrics for completions: prompt/instruction level, strict/loose, per constraint type."""
    from reward.verifiers import check_all

    totals = {"prompt_strict": 0, "prompt_loose": 0, "instruction_strict": 0, "instruction_loose": 0}
    n_instructions = 0
    per_type = defaultdict(lambda: [0, 0, 0])  # type -> [followed strict, followed loose, count]
    per_prompt = []
    for prompt, completion, items in zip(prompts, completions, constraints):
        strict = check_all(items, completion, prompt=prompt, loose=False)
        loose = check_all(items, completion, prompt=prompt, loose=True)
        totals["prompt_strict"] += all(strict)
        totals["prompt_loose"] += all(loose)
        totals["instruction_strict"] += sum(strict)
        totals["instruction_loose"] += sum(loose)
        n_instructions += len(items)
        for item, s, l in zip(items, strict, loose):
            counts = per_type[item["type"]]
            counts[0], counts[1], counts[2] = counts[0] + s, counts[1] + l, counts[2] + 1
        per_prompt.append({"strict": strict, "loose": loose})
    n = max(1, len(prompts))
    return {
        "prompt_level_strict": totals["prompt_strict"] / n,
        "prompt_level_loose": totals["prompt_loose"] / n,
        "instruction_level_strict": totals["instruction_strict"] / max(1, n_instructions),
        "instruction_level_loose": totals["instruction_loose"] / max(1, n_instructions),
        "prompts": len(prompts),
        "instructions": n_instructions,
        "per_type": {t: {"strict": s / c, "loose": l / c, "count": c} for t, (s, l, c) in sorted(per_type.items())},
        "per_prompt": per_prompt,
    }


def markdown_table(results: dict[str, dict]) -> str:
    """One column per evaluated model: the four headline accuracies, then strict accuracy per constraint type."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in ("prompt_level_strict", "prompt_level_loose", "instruction_level_strict", "instruction_level_loose"):
        lines.append(f"| {key} | " + " | ".join(f"{results[n][key]:.3f}" for n in names) + " |")
    types = sorted({t for r in results.values() for t in r["per_type"]})
    for t in types:
        cells = [
            f"{results[n]['per_type'][t]['strict']:.2f} ({results[n]['per_type'][t]['count']})"
            if t in results[n]["per_type"] else "-" for n in names
        ]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(cfg: EvalConfig) -> dict:
    """Generate on cfg.prompts with cfg.model and score instruction following. Returns the results dict."""
    from align.rollout import load_generator
    from align.runtime import set_threads
    from reward.functions import prompt_text

    set_threads(cfg.threads)
    rows, _ = load_rows(cfg.prompts, "prompt", cfg.data)
    rows = rows[: cfg.max_prompts] if cfg.max_prompts else rows
    constraints = [constraints_of(r) for r in rows]
    started = time.perf_counter()
    generator = load_generator(cfg.model, cfg.precision, cfg.generation)
    setup_seconds, started = time.perf_counter() - started, time.perf_counter()
    generations = generator.generate([r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens)
    seconds = time.perf_counter() - started
    user_prompts = [prompt_text(r["prompt"]) for r in rows]
    results = score_completions(user_prompts, generations.texts, constraints)
    results.update(
        model=cfg.model,
        prompts_source=cfg.prompts,
        finished_fraction=sum(generations.finished) / max(1, len(rows)),
        mean_new_tokens=generations.new_tokens / max(1, len(rows)),
        generation_backend=generator.backend,
        generation_setup_seconds=setup_seconds,
        generation_seconds=seconds,
        new_tokens_per_s=generations.new_tokens / max(1e-9, seconds),
        samples=[
            {"prompt": p, "completion": c, "constraints": k, "followed": s["strict"]}
            for p, c, k, s in zip(user_prompts, generations.texts, constraints, results["per_prompt"])
        ],
    )
    if cfg.reward_model:
        results.update(reward_model_results(cfg, [r["prompt"] for r in rows], generations.texts))
    out = Path(cfg.out) if cfg.out else _default_out(cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table({cfg.model: results}) + "\n")
    results["out"] = str(out)
    return results


def reward_model_results(cfg: EvalConfig, prompts: list, completions: list[str]) -> dict:
    """The reward model's mean score of these completions, and its pairwise accuracy on held-out pairs."""
    from align.values import load_reward_model

    scorer = load_reward_model(cfg.reward_model)
    scores = scorer.score(prompts, completions)
    pairs, _ = load_rows(cfg.reward_pairs, "preference", cfg.data)
    pairs = pairs[: cfg.max_reward_pairs]
    chosen = scorer.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = scorer.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    return {
        "reward_model": cfg.reward_model,
        "reward_model_mean_score": sum(scores) / max(1, len(scores)),
        "reward_model_pair_accuracy": sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(pairs)),
    }


def _default_out(model: str) -> Path:
    path = Path(model)
    if (path / "manifest.json").is_file():
        return path / "eval"
    return Path("runs") / "eval" / model.replace("/", "__")


def train(cfg: EvalConfig, restart: bool = False) -> Path:
    """CLI entry point (stages share the `train(cfg)` shape): evaluate and print the table."""
    results = evaluate(cfg)
    print(markdown_table({cfg.model: results}))
    if cfg.reward_model:
        print(f"\nreward model {cfg.reward_model}: mean score {results['reward_model_mean_score']:.3f}, "
              f"held-out pair accuracy {results['reward_model_pair_accuracy']:.3f}")
    print(
        f"\n[align] eval: {results['prompts']} prompts, {results['new_tokens_per_s']:.1f} new tokens/s, "
        f"{results['finished_fraction']:.0%} finished with EOS -> {results['out']}/results.json"
    )
    return Path(results["out"])
