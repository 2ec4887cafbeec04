"""The plots of `align report`, as PNG bytes: training curves per stage and the evaluation comparison
(matplotlib's object API with the Agg canvas: no pyplot, no global backend switch)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable

Series = list[tuple[int, float]]  # (step, value), ascending steps
HEADLINE_KEYS = ("prompt_level_strict", "prompt_level_loose", "instruction_level_strict", "instruction_level_loose")


@dataclass
class Chart:
    filename: str
    title: str
    png: bytes
    series: dict[str, Series] | None = None  # what a training chart plots (label -> points)


# Each training chart: slug, title, y label, and the metric names (after "<stage>/") it draws, if logged.
# Names ending in "/" take every metric under that prefix ("reward/" -> reward/total, reward/<component>...).
TRAINING_CHARTS = (
    ("loss", "Loss (train and held-out)", "loss", ("loss", "eval_loss", "eval/loss")),
    ("policy-value-loss", "Policy and value loss", "loss", ("policy_loss", "value_loss")),
    ("reward", "Reward and its components", "reward", ("reward", "reward/")),  # "reward": TRL's mean (GRPO)
    ("kl", "KL divergence from the reference policy", "KL", ("kl",)),
    ("accuracy", "Preference accuracy (chosen scored above rejected)", "accuracy",
     ("accuracy", "eval/accuracy", "rewards/accuracy", "eval/rewards/accuracy")),
    ("margin", "Reward margin (chosen - rejected)", "margin",
     ("margin", "eval/margin", "rewards/margin", "eval/rewards/margin")),
    ("implicit-rewards", "Implicit rewards of chosen and rejected responses", "reward",
     ("rewards/chosen", "rewards/rejected", "eval/rewards/chosen", "eval/rewards/rejected")),
)


def stage_charts(stage) -> list[Chart]:
    """The training charts for which this stage (an `align.report.Stage`) logged at least one metric."""
    charts = []
    prefix = f"{stage.name}/"
    for slug, title, ylabel, names in TRAINING_CHARTS:
        series: dict[str, Series] = {}
        for name in names:
            if name.endswith("/"):
                matching = sorted(k for k in stage.metrics if k.startswith(prefix + name)
                                  and not k.endswith("/applies"))  # "applies" is a 0/1 flag, not a reward
                # The total first, so it gets the first colour in every reward chart.
                matching.sort(key=lambda k: k != f"{prefix}{name}total")
            else:
                matching = [prefix + name] if prefix + name in stage.metrics else []
            for key in matching:
                series[key[len(prefix):]] = stage.metrics[key]
        if series:
            full_title = f"{stage.name}: {title}"
            png = _line_chart(full_title, series, ylabel)
            charts.append(Chart(f"{stage.name}-{slug}.png", full_title, png, series))
    return charts


def generalisation_rows(run) -> dict[str, float]:
    """What the generalisation table and chart show for one evaluated model: prompt-level loose accuracy on both
    splits, and each split's loop and EOS shares at each budget."""
    from align.eval import SPLIT_LABELS, degeneration_shares, split_metrics

    row = {}
    for split, label in SPLIT_LABELS.items():
        scores = split_metrics(run.results, split)
        if scores:
            row[f"{label} prompt loose"] = scores["prompt_level_loose"]
    for budget in run.results.get("budgets") or []:
        row.update({f"{name} @{budget}": share for name, share in degeneration_shares(run.results, budget).items()})
    return row


def eval_comparison_charts(evals: list) -> list[Chart]:
    """The headline and per-type comparison of the evaluated models (`align.report.EvalRun`s), and their
    generalisation to unseen constraint types and degeneration where the results have them."""
    if not evals:
        return []
    charts = [Chart("eval-headline.png", "Instruction following: headline accuracies", _headline_chart(evals))]
    if any(run.results.get("splits") for run in evals):
        charts.append(Chart("eval-generalisation.png", "Unseen constraint types, loops and EOS",
                            _generalisation_chart(evals)))
    if any(run.results["per_type"] for run in evals):
        charts.append(Chart("eval-per-type.png", "Strict accuracy per constraint type", _per_type_chart(evals)))
    return charts


def _render(width: float, height: float, draw: Callable[[Any], None]) -> bytes:
    """PNG bytes of a one-axes figure that `draw(axes)` fills in."""
    import matplotlib
    from matplotlib.figure import Figure

    # parse_math off: a "$" in a label is text, not LaTeX (and malformed LaTeX would raise).
    with matplotlib.rc_context({"text.parse_math": False, "axes.titlesize": 10, "legend.fontsize": 7}):
        figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
        draw(figure.subplots())
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})  # no version stamp: same run, same bytes
    return buffer.getvalue()


def _line_chart(title: str, series: dict[str, Series], ylabel: str) -> bytes:
    from matplotlib.ticker import MaxNLocator

    def draw(axes) -> None:
        for label, points in series.items():
            steps, values = zip(*points)
            axes.plot(steps, values, label=label, linewidth=1.5,
                      marker="o" if len(points) <= 30 else None, markersize=3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        axes.set(title=title, xlabel="step", ylabel=ylabel)
        axes.grid(alpha=0.3)
        axes.legend()

    return _render(6.4, 3.6, draw)


def _headline_chart(evals: list) -> bytes:
    def draw(axes) -> None:
        width = 0.8 / len(evals)
        for index, run in enumerate(evals):
            offsets = [position + (index - (len(evals) - 1) / 2) * width for position in range(len(HEADLINE_KEYS))]
            axes.bar(offsets, [run.results[key] for key in HEADLINE_KEYS], width, label=run.label)
        axes.set_xticks(range(len(HEADLINE_KEYS)), [key.replace("_level_", "\n") for key in HEADLINE_KEYS])
        axes.set(ylim=(0, 1), ylabel="accuracy", title="Instruction following (IFEval-style)")
        axes.grid(axis="y", alpha=0.3)
        axes.figure.legend(loc="outside lower center", ncols=min(len(evals), 6))

    return _render(6.4, 3.9, draw)


def _generalisation_chart(evals: list) -> bytes:
    """Grouped bars per evaluated model: accuracy on both splits, loop and EOS shares at each budget."""
    rows = {run.label: generalisation_rows(run) for run in evals}
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))

    def draw(axes) -> None:
        width = 0.8 / len(evals)
        for index, (label, row) in enumerate(rows.items()):
            offsets = [position + (index - (len(evals) - 1) / 2) * width for position in range(len(keys))]
            axes.bar(offsets, [row.get(key, math.nan) for key in keys], width, label=label)
        axes.set_xticks(range(len(keys)), [key.replace(" prompt", "\nprompt").replace(" @", "\n@") for key in keys],
                        fontsize=7)
        axes.set(ylim=(0, 1), ylabel="share", title="Generalisation (unseen constraint types) and degeneration")
        axes.grid(axis="y", alpha=0.3)
        axes.figure.legend(loc="outside lower center", ncols=min(len(evals), 6))

    return _render(7.2, 3.9, draw)


def _per_type_chart(evals: list) -> bytes:
    """Horizontal grouped bars: one group per constraint type, one bar per evaluated model."""
    types = sorted({name for run in evals for name in run.results["per_type"]})

    def draw(axes) -> None:
        height = 0.8 / len(evals)
        for index, run in enumerate(evals):
            per_type = run.results["per_type"]
            # Types a model was not evaluated on get no bar (NaN), not a misleading zero.
            values = [per_type[name]["strict"] if name in per_type else math.nan for name in types]
            offsets = [position + (index - (len(evals) - 1) / 2) * height for position in range(len(types))]
            axes.barh(offsets, values, height, label=run.label)
        axes.set_yticks(range(len(types)), types, fontsize=7)
        axes.invert_yaxis()  # alphabetical from the top
        axes.set(xlim=(0, 1), xlabel="strict accuracy", title="Strict accuracy per constraint type")
        axes.grid(axis="x", alpha=0.3)
        axes.figure.legend(loc="outside lower center", ncols=min(len(evals), 6))

    return _render(8.0, 1.8 + len(types) * (0.1 * len(evals) + 0.15), draw)
