"""What the RL stages share: which prompts an iteration uses, and what a batch of scored completions is judged by
(per-component rewards, constraint pass rates, length and reward-hacking signals, the sample table)."""

from __future__ import annotations

import torch

from align.loop import epoch_permutation


def iteration_rows(rows: list[dict], iteration: int, per_iteration: int, seed: int, process: int = 0,
                   processes: int = 1) -> list[dict]:
    """This process's prompts for `iteration`: `per_iteration` prompts a step through a fixed per-epoch shuffle
    (so a resumed run sees the same ones), split evenly between the processes."""
    per_process = per_iteration // processes
    start = iteration * per_iteration
    epoch = start // len(rows)
    # two epochs' orders back to back, for an iteration that runs over an epoch's end
    order = epoch_permutation(len(rows), seed, epoch) + epoch_permutation(len(rows), seed, epoch + 1)
    begin = start % len(rows) + process * per_process
    return [rows[i] for i in order[begin : begin + per_process]]


def constraint_pass_rates(rows: list[dict], completions: list) -> dict[str, float]:
    """Fraction of completions meeting each constraint type, for rows with a `constraints` column:
    {"constraint/<type>": rate}. What the run is judged by, independent of reward weights."""
    from reward.functions import completion_text, prompt_text
    from reward.verifiers import check_all, parse_constraints

    by_type: dict[str, list[bool]] = {}
    for row, completion in zip(rows, completions):
        constraints = parse_constraints(row["constraints"]) if row.get("constraints") else []
        results = check_all(constraints, completion_text(completion), prompt=prompt_text(row["prompt"]))
        for constraint, ok in zip(constraints, results):
            by_type.setdefault(constraint["type"], []).append(ok)
    return {f"constraint/{kind}": sum(oks) / len(oks) for kind, oks in by_type.items()}


def pearson(x: list[float], y: list[float]) -> float:
    """Correlation of two lists (0 when either is constant): e.g. reward vs response length, a hacking signal."""
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def pairwise_disagreement(model_scores: list[float], verifier_scores: list[float | None]) -> float:
    """Among pairs of samples that the verifiers rank differently, the fraction the reward model ranks the other
    way round: how often the learned reward and the programmatic checks disagree (0 = never)."""
    pairs = disagree = 0
    for i in range(len(model_scores)):
        for j in range(i + 1, len(model_scores)):
            vi, vj = verifier_scores[i], verifier_scores[j]
            if vi is None or vj is None or vi == vj:
                continue
            pairs += 1
            disagree += (model_scores[i] - model_scores[j]) * (vi - vj) < 0
    return disagree / pairs if pairs else 0.0


def completion_metrics(breakdown, rows: list[dict], texts: list[str], lengths: list[int],
                       finished: list[bool]) -> dict[str, float]:
    """What a batch of scored completions is judged by: each reward component, the constraint pass rates, the
    response length and unfinished share, and two reward-hacking signals (reward-length correlation, reward model
    against verifiers)."""
    metrics = {**breakdown.metrics("reward/"), **constraint_pass_rates(rows, texts)}
    metrics.update({
        "response_length": sum(lengths) / len(lengths),
        "unfinished_fraction": 1 - sum(finished) / len(finished),
        "reward_length_correlation": pearson(breakdown.total, lengths),
    })
    components = breakdown.components
    if "reward_model" in components and "instruction_following" in components:
        metrics["reward_model_verifier_disagreement"] = pairwise_disagreement(
            components["reward_model"], components["instruction_following"])
    return metrics


def log_samples(tracker, name: str, step: int, prompts: list, completions: list, breakdown, limit: int,
                step_column: str = "step", extra: dict[str, list] | None = None) -> None:
    """The first `limit` completions of a batch, with their total and per-component rewards and the `extra`
    columns reward functions logged (TRL's `log_extra`: one value per sample), as table `name` (one table over the
    whole run; its first column, `step_column`, says when). A table keeps the extra columns of its first step."""
    from reward.functions import completion_text, prompt_text

    if tracker is None or limit <= 0:
        return
    names, extra = list(breakdown.components), extra or {}
    columns = [step_column, "prompt", "completion", "total", *names]
    known, fixed = tracker.table_columns(name), len(columns)
    extra_columns = known[fixed:] if known else list(extra)
    columns += extra_columns
    rows = [[step, prompt_text(prompt), completion_text(completion), round(total, 4),
             *[breakdown.components[component][i] for component in names],
             *[_cell(extra.get(column), i) for column in extra_columns]]
            for i, (prompt, completion, total) in enumerate(zip(prompts, completions, breakdown.total))]
    tracker.log_table(name, columns, rows[:limit], step=step)


def _cell(values: list | None, index: int):
    """Sample `index` of a logged extra column, as a table cell: a JSON scalar as it is, anything else as text."""
    value = values[index] if values is not None and index < len(values) else None
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
