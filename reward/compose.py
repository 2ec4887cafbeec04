"""Reward functions named in a config, checked at stage start and combined into one weighted reward.

    reward:
      functions:
        - name: instruction_following            # a built-in (reward.functions.BUILTIN_REWARD_FUNCTIONS)
        - name: rewards/mine.py:brevity          # a function in a file: relative to the config file's folder, then CWD
          weight: 0.5
        - name: my_package.rewards:politeness    # a function in an importable module
          kwargs: {strict: true}                 # bound to the function with functools.partial
        - name: trl.rewards:get_soft_overlong_punishment                      # a factory, called once at start
          factory_kwargs: {max_completion_len: 128, soft_punish_cache: 32}

Everything that can be checked before training is checked in `CompositeReward.from_config` (`reward.resolve`): the
name resolves, the object is callable, it accepts the keyword arguments it will be called with (TRL's convention:
`prompts=`, `completions=`, one keyword per dataset column), its `kwargs` and `factory_kwargs` are real parameters.
During training (`reward.calls`), sync functions run in turn and `async def` ones concurrently; a function that
raises, returns the wrong number of values, or returns NaN/inf/non-numbers stops the run with a
`RewardFunctionError` naming the function and sample: a reward is never silently zeroed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reward.calls import EventLoop, call_functions, checked_values, excerpt, raised_message
from reward.functions import completion_text
from reward.resolve import (  # noqa: F401  (re-exported: the names users and stages import from here)
    TRL_EXTRA_KWARGS,
    RewardFunctionConfig,
    RewardFunctionError,
    build_components,
    check_reward_function,
    check_weight,
    resolve_reward_function,
)

REWARD_MODEL_NAME = "reward_model"  # the component name under which the reward model is reported
NORMALIZE_MODES = ("none", "batch", "running")
_EPS = 1e-6  # added to the std when z-scoring, so a constant component normalises to 0 instead of dividing by 0


class RewardModel(Protocol):
    """What CompositeReward needs of a reward model (reward.model.RewardModel is one).

    Prompts arrive as given (strings, or chat-message lists that it renders with its chat template);
    completions as text.
    """

    def score(self, prompts: list[Any], completions: list[str]) -> list[float]: ...


@dataclass
class RewardBreakdown:
    """The reward of one batch: the weighted total per sample, and each component's raw values."""

    total: list[float]
    components: dict[str, list[float | None]]  # None = the component does not apply to that sample

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Batch means for logging: `total`, each component over the samples it applies to, and `<name>/applies`."""
        if not self.total:
            return {}
        metrics = {f"{prefix}total": sum(self.total) / len(self.total)}
        for name, values in self.components.items():
            applied = [v for v in values if v is not None]
            if applied:  # left out rather than logged as NaN when no sample of the batch had this component
                metrics[f"{prefix}{name}"] = sum(applied) / len(applied)
            metrics[f"{prefix}{name}/applies"] = len(applied) / len(values)
        return metrics

    def subset(self, positions: list[int]) -> RewardBreakdown:
        """The breakdown of the samples at `positions`, in that order."""
        return RewardBreakdown([self.total[i] for i in positions],
                               {name: [values[i] for i in positions] for name, values in self.components.items()})


# --- normalisation --------------------------------------------------------------------------------------------


@dataclass
class _RunningStats:
    """Mean and variance of every value seen so far, merged batch by batch (Chan et al.'s parallel update)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    def update(self, values: list[float]) -> None:
        if not values:
            return
        batch_mean = sum(values) / len(values)
        batch_m2 = sum((v - batch_mean) ** 2 for v in values)
        total = self.count + len(values)
        delta = batch_mean - self.mean
        self.mean += delta * len(values) / total
        self.m2 += batch_m2 + delta**2 * self.count * len(values) / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0


def _z_scores(values: list[float | None], mean: float, std: float) -> list[float | None]:
    return [None if v is None else (v - mean) / (std + _EPS) for v in values]


# --- the composite reward -------------------------------------------------------------------------------------


class CompositeReward:
    """A weighted sum of reward functions (and optionally a reward model), keeping each component's values.

    normalize: "none" sums raw values; "batch" z-scores each component over the samples of the call it applies to;
    "running" z-scores each component with the mean/std of everything it returned so far (this call included),
    saved by `state_dict()` so a resumed run continues with the same statistics. With several processes scoring
    parts of one batch, `gather` makes both statistics those of the whole batch.
    """

    def __init__(
        self,
        functions: list[tuple[str, Callable[..., Any], float]],
        reward_model: RewardModel | None = None,
        reward_model_weight: float = 1.0,
        normalize: str = "none",
    ) -> None:
        if normalize not in NORMALIZE_MODES:
            raise RewardFunctionError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
        if not functions and reward_model is None:
            raise RewardFunctionError(
                "no reward configured: list reward functions under reward.functions, or a reward model"
            )
        if reward_model is not None and not callable(getattr(reward_model, "score", None)):
            raise RewardFunctionError(
                f"reward_model must have a score(prompts, completions) method, got {type(reward_model).__name__}"
            )
        names = [name for name, _, _ in functions] + ([REWARD_MODEL_NAME] if reward_model is not None else [])
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RewardFunctionError(f"reward component names must be unique, repeated: {', '.join(duplicates)}")
        for name, fn, weight in functions:
            if not callable(fn):
                raise RewardFunctionError(f"reward function '{name}' is not callable: it is a {type(fn).__name__}")
            check_weight(f"weight of reward function '{name}'", weight)
        check_weight("reward_model_weight", reward_model_weight)
        self.functions = [(name, fn, float(weight)) for name, fn, weight in functions]
        self.reward_model = reward_model
        self.reward_model_weight = float(reward_model_weight)
        self.normalize = normalize
        # How a component's values of one batch join those that other processes scored at the same time (data
        # parallelism): given this process's values, every process's. Normalisation then uses the statistics of
        # the whole batch, the same on every process. Default: this process's values only.
        self.gather: Callable[[list[float]], list[float]] = list
        self._stats = {name: _RunningStats() for name in names}
        self._loop = EventLoop()  # runs the async functions of every batch

    @classmethod
    def from_config(
        cls,
        configs: list[RewardFunctionConfig],
        reward_model: RewardModel | None = None,
        reward_model_weight: float = 1.0,
        normalize: str = "none",
        base_dir: Path | str | None = None,
        columns: set[str] | None = None,
    ) -> CompositeReward:
        """Resolve and check every configured function now, so a bad name or signature fails at stage start.

        `columns`: every keyword the stage will pass besides prompts/completions (the dataset's extra columns and
        TRL's extra keywords). A name used twice (e.g. one built-in with two settings) is reported as `name`,
        `name#2`, `name#3`...; factories are called here, once.
        """
        reserved = {REWARD_MODEL_NAME} if reward_model is not None else set()
        functions = build_components(configs, base_dir, columns, reserved)
        return cls(functions, reward_model, reward_model_weight, normalize)

    @property
    def names(self) -> list[str]:
        """Component names in call order (the reward model last)."""
        return list(self._stats)

    def describe(self) -> str:
        """The weighted sum on one line, for the stage's start-up log: `1 x instruction_following + 0.5 x no_loops
        (normalize=none)`."""
        terms = [f"{weight:g} x {name}" for name, _, weight in self.functions]
        if self.reward_model is not None:
            terms.append(f"{self.reward_model_weight:g} x {REWARD_MODEL_NAME}")
        return " + ".join(terms) + f" (normalize={self.normalize})"

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> RewardBreakdown:
        """Score a batch. Each function is called as fn(prompts=..., completions=..., **columns): the sync ones in
        turn, then every `async def` one together on one event loop (`reward.calls`). Prompts and completions are
        passed as given (TRL's standard or conversational form: see align.rewards.score_completions)."""
        if len(prompts) != len(completions):
            raise RewardFunctionError(f"got {len(prompts)} prompts but {len(completions)} completions")
        for column, values in columns.items():  # non-list keywords (e.g. TRL's trainer_state) pass through as-is
            if isinstance(values, (list, tuple)) and len(values) != len(completions):
                raise RewardFunctionError(
                    f"column '{column}' has {len(values)} values for {len(completions)} completions"
                )
        arguments = {"prompts": prompts, "completions": completions, **columns}
        components = call_functions([(name, fn) for name, fn, _ in self.functions], arguments, completions,
                                    self._loop)
        weights = {name: weight for name, _, weight in self.functions}
        if self.reward_model is not None:
            components[REWARD_MODEL_NAME] = self._score_with_model(prompts, completions)
            weights[REWARD_MODEL_NAME] = self.reward_model_weight
        scaled = self._normalised(components)
        total = []
        for index in range(len(completions)):
            applying = [name for name in components if components[name][index] is not None]
            if not applying:
                raise RewardFunctionError(
                    f"no reward component applies to sample {index} (completion {excerpt(completions[index])}): "
                    f"{', '.join(components)} all returned None. Add a reward that applies to every sample "
                    "(e.g. a reward model or no_repetition), or leave such samples out of the dataset"
                )
            total.append(sum(weights[name] * scaled[name][index] for name in applying))
        return RewardBreakdown(total=total, components=components)

    def _score_with_model(self, prompts: list[Any], completions: list[Any]) -> list[float | None]:
        assert self.reward_model is not None
        try:
            scores = self.reward_model.score(list(prompts), [completion_text(c) for c in completions])
        except Exception as err:
            raise RewardFunctionError(raised_message("reward model", err, completions)) from err
        return checked_values("reward model", scores, completions, allow_none=False)

    def _normalised(self, components: dict[str, list[float | None]]) -> dict[str, list[float | None]]:
        """Values as summed into the total; None stays None and never enters the statistics."""
        if self.normalize == "none":
            return components
        scaled = {}
        for name, values in components.items():
            present = self.gather([v for v in values if v is not None])
            if self.normalize == "batch":
                stats = _RunningStats()
                stats.update(present)
            else:
                stats = self._stats[name]
                stats.update(present)  # this batch counts, so the first batch is normalised by its own statistics
            scaled[name] = _z_scores(values, stats.mean, stats.std)
        return scaled

    def state_dict(self) -> dict[str, Any]:
        """Running normalisation statistics (plain JSON-able data) for the RL checkpoint."""
        components = {}
        if self.normalize == "running":
            components = {n: {"count": s.count, "mean": s.mean, "m2": s.m2} for n, s in self._stats.items()}
        return {"normalize": self.normalize, "components": components}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; the checkpoint must come from the same normalisation mode and components."""
        if state.get("normalize") != self.normalize:
            raise RewardFunctionError(
                f"reward state was saved with normalize={state.get('normalize')!r}, but this reward uses "
                f"normalize={self.normalize!r}"
            )
        if self.normalize != "running":
            return
        saved = state.get("components", {})
        if set(saved) != set(self._stats):
            raise RewardFunctionError(
                f"reward state has components {sorted(saved)}, but this reward has {sorted(self._stats)}; "
                "resume with the reward functions the run was started with"
            )
        for name, values in saved.items():
            self._stats[name] = _RunningStats(int(values["count"]), float(values["mean"]), float(values["m2"]))


