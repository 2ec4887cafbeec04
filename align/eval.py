"""`align eval`: instruction-following accuracy of a model on prompts that carry verifiable constraints.

    align eval configs/eval.yaml model=runs/default/sft

Generates one greedy completion per prompt (align's generation engine) and checks each prompt's constraints with
`reward.verifiers`, reporting as IFEval does:
- prompt-level accuracy: the fraction of prompts whose constraints are *all* followed;
- instruction-level accuracy: the fraction of individual constraints followed;
each strict and loose (loose forgives a leading/trailing line such as "Sure, here you go:" and markdown stars),
and per constraint type. Prompts in IFEval's own format (`instruction_id_list` + `kwargs`) are accepted too.

Two splits, side by side: **in-distribution** prompts (`prompts`: the constraint types align trains on, with
held-out topics, tasks and phrasings) and **unseen types** (`unseen_prompts`: constraint types no built-in
training data carries, `reward.instructions.UNSEEN_TYPES`), which tell whether a stage generalises or only learnt
the checkers it was trained on. Two signs of degeneration per split: the **loop share** (answers that are
repetition loops, `reward.degeneration.repetition_loop`) and the **EOS share** (answers that end with EOS within
the budget). Everything is scored at the budget (`max_new_tokens`) and, from the same greedy generation, at a
longer one (`long_budget`): an answer cut at the budget may only look finished because it was cut.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from align.data import DataConfig, DataError, load_rows
from align.rollout import GenerationConfig


@dataclass
class EvalConfig:
    stage: Literal["eval"] = "eval"  # this file configures `align eval`
    model: str = "smollm2-135m-instruct"  # alias, stage directory or hub id
    revision: str | None = None  # hub revision of `model` (a branch, tag or commit), for hub ids only; null: main
    prompts: str = "builtin:prompts:heldout"  # in-distribution prompts with verifiable constraints: a file, hub id
    # or builtin
    unseen_prompts: str | None = "builtin:unseen:heldout"  # prompts whose constraint types are never trained on;
    # null: no unseen-type split
    data: DataConfig = field(default_factory=DataConfig)  # how to read the prompts (format, skip_bad_rows, seed)
    max_prompts: int | None = None  # evaluate the first N prompts of each split; null: all
    max_new_tokens: int = 256  # the budget answers are scored at (greedy decoding)
    long_budget: int | None = 384  # also score at this longer budget, from the same generation; null: only the
    # budget
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
        for item, followed_strict, followed_loose in zip(items, strict, loose):
            counts = per_type[item["type"]]
            counts[0] += followed_strict
            counts[1] += followed_loose
            counts[2] += 1
        per_prompt.append({"strict": strict, "loose": loose})
    n = max(1, len(prompts))
    return {
        "prompt_level_strict": totals["prompt_strict"] / n,
        "prompt_level_loose": totals["prompt_loose"] / n,
        "instruction_level_strict": totals["instruction_strict"] / max(1, n_instructions),
        "instruction_level_loose": totals["instruction_loose"] / max(1, n_instructions),
        "prompts": len(prompts),
        "instructions": n_instructions,
        "per_type": {kind: {"strict": strict_sum / count, "loose": loose_sum / count, "count": count}
                     for kind, (strict_sum, loose_sum, count) in sorted(per_type.items())},
        "per_prompt": per_prompt,
    }


def add_loop_shares(per_type: dict[str, dict], constraints: list[list[dict]], looping: list[bool]) -> None:
    """Add to each type's entry of `per_type` the share of answers to prompts asking for it that loop: where the
    loops of a split come from."""
    asked, looped = Counter(), Counter()
    for items, loops in zip(constraints, looping):
        for type_id in {item["type"] for item in items}:
            asked[type_id] += 1
            looped[type_id] += loops
    for type_id, entry in per_type.items():
        entry["loop_share"] = looped[type_id] / max(1, asked[type_id])


def per_type_scores(results: dict) -> dict[str, dict]:
    """Per constraint type: the in-distribution split's entries, then those of the unseen split's types that the
    in-distribution split does not ask for (align:* and any held-out types). A trained type that an unseen prompt
    also asks for keeps its in-distribution entry."""
    unseen = (split_metrics(results, "unseen") or {}).get("per_type", {})
    return {**unseen, **results["per_type"]}


def markdown_table(results: dict[str, dict]) -> str:
    """One column per evaluated model: the four in-distribution headline accuracies, then per constraint type
    (`per_type_scores`) strict accuracy, the number of instructions and the share of those answers that loop."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in ("prompt_level_strict", "prompt_level_loose", "instruction_level_strict", "instruction_level_loose"):
        lines.append(f"| {key} | " + " | ".join(f"{results[n][key]:.3f}" for n in names) + " |")
    per_type = {n: per_type_scores(r) for n, r in results.items()}

    def cell(entry: dict | None) -> str:
        if entry is None:
            return "-"
        loops = f", loops {entry['loop_share']:.0%}" if "loop_share" in entry else ""
        return f"{entry['strict']:.2f} ({entry['count']}{loops})"

    for t in sorted({t for types in per_type.values() for t in types}):
        cells = [cell(per_type[n].get(t)) for n in names]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SPLIT_LABELS = {"in_distribution": "in-dist.", "unseen": "unseen"}  # split -> how tables name it
SPLITS = tuple(SPLIT_LABELS)


def split_results(rows: list[dict], token_ids: list[list[int]], budget: int, tokenizer) -> dict:
    """Scores of one split's answers cut at `budget` tokens (what a generation with that budget would have been:
    decoding is greedy): the IFEval metrics, the loop share and the share that ended with EOS within the budget."""
    from reward.degeneration import repetition_loop
    from reward.functions import prompt_text

    eos = tokenizer.eos_token_id
    cut = [ids[:budget] for ids in token_ids]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in cut]
    prompts = [prompt_text(r["prompt"]) for r in rows]
    constraints = [constraints_of(r) for r in rows]
    results = score_completions(prompts, texts, constraints)
    looping = [repetition_loop(text) for text in texts]  # once, for the split's loop share and each type's
    add_loop_shares(results["per_type"], constraints, looping)
    results.update(
        budget=budget,
        loop_share=sum(looping) / max(1, len(texts)),
        eos_share=sum(eos in ids for ids in cut) / max(1, len(rows)),
        mean_new_tokens=sum(map(len, cut)) / max(1, len(rows)),
        samples=[{"prompt": p, "completion": c, "constraints": k, "followed": f["strict"]}
                 for p, c, k, f in zip(prompts, texts, constraints, results["per_prompt"])],
    )
    return results


def evaluate(cfg: EvalConfig) -> dict:
    """Generate on both splits with cfg.model and score instruction following and degeneration at the budget and
    the long budget. Returns the results: the in-distribution scores at the budget at the top level (IFEval's
    headline numbers), and per split and budget under `splits`."""
    from align.rollout import load_generator
    from align.runtime import set_threads

    set_threads(cfg.threads)
    sources = {"in_distribution": cfg.prompts, "unseen": cfg.unseen_prompts}
    rows = {split: load_rows(source, "prompt", cfg.data)[0][: cfg.max_prompts or None]
            for split, source in sources.items() if source}
    started = time.perf_counter()
    generator = load_generator(cfg.model, cfg.precision, cfg.generation, cfg.revision)
    setup_seconds, started = time.perf_counter() - started, time.perf_counter()
    budgets = [cfg.max_new_tokens] + ([cfg.long_budget] if cfg.long_budget and cfg.long_budget > cfg.max_new_tokens
                                      else [])
    everything = [row for split_rows in rows.values() for row in split_rows]
    generations = generator.generate([r["prompt"] for r in everything], max_new_tokens=max(budgets))
    seconds = time.perf_counter() - started
    splits, start = {}, 0
    for split, split_rows in rows.items():
        token_ids = generations.token_ids[start : start + len(split_rows)]
        start += len(split_rows)
        splits[split] = {"source": sources[split], **{
            f"budget_{budget}": split_results(split_rows, token_ids, budget, generator.tokenizer)
            for budget in budgets}}
    headline = splits["in_distribution"][f"budget_{cfg.max_new_tokens}"]
    results = {**headline, "model": cfg.model, "revision": cfg.revision, "prompts_source": cfg.prompts,
               "budgets": budgets, "splits": splits, "finished_fraction": headline["eos_share"],
               "generation_backend": generator.backend, "generation_setup_seconds": setup_seconds,
               "generation_seconds": seconds,
               "new_tokens": generations.new_tokens, "new_tokens_per_s": generations.new_tokens / max(1e-9, seconds)}
    if cfg.reward_model:
        texts = [s["completion"] for s in headline["samples"]]
        results.update(reward_model_results(cfg, [r["prompt"] for r in rows["in_distribution"]], texts))
    out = Path(cfg.out) if cfg.out else _default_out(cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(summary_table({cfg.model: results}) + "\n\n" + markdown_table({cfg.model: results})
                                    + "\n")
    results["out"] = str(out)
    return results


def split_metrics(results: dict, split: str, budget: int | None = None) -> dict | None:
    """One split's scores at `budget` (default: the evaluation's budget), or None if it was not evaluated."""
    budget = budget or results.get("budgets", [None])[0]
    return results.get("splits", {}).get(split, {}).get(f"budget_{budget}")


def degeneration_shares(results: dict, budget: int) -> dict[str, float]:
    """The loop and EOS shares of each evaluated split at `budget`, e.g. {"loops in-dist.": 0.08, "loops unseen":
    0.14, "EOS in-dist.": 0.86, "EOS unseen": 0.85}."""
    shares = {}
    for what, key in (("loops", "loop_share"), ("EOS", "eos_share")):
        for split, label in SPLIT_LABELS.items():
            if scores := split_metrics(results, split, budget):
                shares[f"{what} {label}"] = scores[key]
    return shares


def summary_table(results: dict[str, dict]) -> str:
    """One row per evaluated model: prompt-level accuracy on both splits, loop and EOS shares of each split at
    each budget."""
    budgets = next(iter(results.values())).get("budgets", [])
    header = ["model", "in-dist. prompt strict", "in-dist. prompt loose", "in-dist. instr. loose",
              "unseen prompt loose", "unseen instr. loose"]
    header += [f"{what} in-dist. / unseen @{b}" for b in budgets for what in ("loops", "EOS")]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, r in results.items():
        seen, unseen = split_metrics(r, "in_distribution") or r, split_metrics(r, "unseen")
        cells = [name, f"{seen['prompt_level_strict']:.3f}", f"{seen['prompt_level_loose']:.3f}",
                 f"{seen['instruction_level_loose']:.3f}"]
        cells += [f"{unseen['prompt_level_loose']:.3f}", f"{unseen['instruction_level_loose']:.3f}"] if unseen \
            else ["-", "-"]
        for budget in budgets:
            shares = degeneration_shares(r, budget)
            cells += [" / ".join(f"{share:.0%}" for name, share in shares.items() if name.startswith(what))
                      for what in ("loops", "EOS")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    print(summary_table({cfg.model: results}) + "\n\n" + markdown_table({cfg.model: results}))
    if cfg.reward_model:
        print(f"\nreward model {cfg.reward_model}: mean score {results['reward_model_mean_score']:.3f}, "
              f"held-out pair accuracy {results['reward_model_pair_accuracy']:.3f}")
    prompts = sum(m["prompts"] for m in (split_metrics(results, s) for s in SPLITS) if m)
    print(f"\n[align] eval: {prompts} prompts, {results['new_tokens_per_s']:.1f} new tokens/s "
          f"({results['generation_backend']}) -> {results['out']}/results.json")
    return Path(results["out"])
