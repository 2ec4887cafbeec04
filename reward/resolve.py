"""From a config entry of `reward.functions` to a checked reward function, before any training.

    reward:
      functions:
        - name: instruction_following            # a built-in (reward.functions.BUILTIN_REWARD_FUNCTIONS)
        - name: rewards/mine.py:brevity          # a function in a file: relative to the config file's folder, then CWD
          weight: 0.5
          kwargs: {max_words: 80}                # bound to the function with functools.partial
        - name: trl.rewards:get_soft_overlong_punishment    # a factory in an importable module:
          factory_kwargs: {max_completion_len: 128, soft_punish_cache: 32}   # called once; what it returns is used

Everything that can be checked without calling the function on real samples is checked here: the name resolves,
the object is callable (a factory's product too), it accepts the keyword arguments it will be called with (TRL's
convention: `prompts=`, `completions=`, one keyword per dataset column and TRL's extra keywords), and its `kwargs`
and `factory_kwargs` are real parameters. `async def` functions are accepted; `reward.calls` awaits them.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from reward.functions import BUILTIN_REWARD_FUNCTIONS

CALL_ARGS = ("prompts", "completions")
# What TRL's GRPOTrainer passes to every reward function besides prompts, completions and the dataset columns
# (trl 1.16, GRPOTrainer._calculate_rewards). align's RL stages pass them too (align.rewards.score_completions).
TRL_EXTRA_KWARGS = frozenset({"completion_ids", "trainer_state", "log_extra", "log_metric"})
_BUILTIN_COLUMNS = {"constraints"}  # the dataset columns built-ins read; used to check them when columns are unknown


class RewardFunctionError(Exception):
    """A reward function that cannot be resolved, does not fit the calling convention, or failed during a call."""


@dataclass
class RewardFunctionConfig:
    """One entry of a stage config's `reward.functions` list."""

    name: str  # built-in name | "package.module:function" | "path/to/file.py:function"
    weight: float = 1.0  # weight of this component in the total reward
    kwargs: dict = field(default_factory=dict)  # extra arguments bound to the reward function (functools.partial)
    # set for a factory (e.g. trl.rewards:get_soft_overlong_punishment): `name` is called once with these
    # arguments at stage start and what it returns is the reward function; null: `name` is the reward function
    factory_kwargs: dict | None = None


# --- resolving a name to an object ----------------------------------------------------------------------------


def resolve_reward_function(name: str, base_dir: Path | str | None = None) -> Callable[..., Any]:
    """Turn a config name into the callable it names, checking that it can be called as a reward function.

    `name` is a built-in name, "package.module:function", or "path/to/file.py:function" (a relative path is looked
    up under `base_dir`, normally the config file's folder, then under the current directory).
    """
    fn = resolve_name(name, base_dir)
    if inspect.isclass(fn):  # calling a class would build an object per batch instead of returning rewards
        attribute = name.rpartition(":")[2]
        raise RewardFunctionError(
            f"reward function '{name}' is a class; name a function, or an instance created in the module "
            f"(e.g. `my_reward = {attribute.rsplit('.', 1)[-1]}()`) whose __call__ takes "
            "(prompts, completions, **kwargs), or set `factory_kwargs` to build one at stage start"
        )
    check_reward_function(name, fn)
    return fn


def resolve_name(name: str, base_dir: Path | str | None = None) -> Any:
    """The callable object a config name refers to (a function, a factory, a class), not yet checked as a reward
    function."""
    if not isinstance(name, str) or not name.strip():
        raise RewardFunctionError(f"a reward function name must be a non-empty string, got {name!r}")
    if ":" not in name:
        if name not in BUILTIN_REWARD_FUNCTIONS:
            raise RewardFunctionError(_unknown_builtin_message(name))
        return BUILTIN_REWARD_FUNCTIONS[name]
    location, _, attribute = name.rpartition(":")  # rpartition: a Windows path "C:\\x.py:f" keeps its drive
    if not location or not attribute:
        raise RewardFunctionError(
            f"reward function '{name}': expected 'package.module:function' or 'path/to/file.py:function'"
        )
    if location.endswith(".py") or "/" in location or "\\" in location:
        module = _import_file(location, base_dir)
        where = f"file {module.__file__}"
    else:
        module = _import_module(location, name)
        where = f"module '{location}'"
    obj = _get_attribute(module, attribute, where)
    if not callable(obj):
        raise RewardFunctionError(f"reward function '{name}' is not callable: it is a {type(obj).__name__}")
    return obj


def _unknown_builtin_message(name: str) -> str:
    builtins = sorted(BUILTIN_REWARD_FUNCTIONS)
    close = difflib.get_close_matches(name, builtins, n=1, cutoff=0.6)
    hint = f" — did you mean '{close[0]}'?" if close else ""
    return (
        f"unknown reward function '{name}'{hint} Built-ins: {', '.join(builtins)}. "
        "Your own function is named 'package.module:function' or 'path/to/file.py:function'."
    )


def _import_module(module_name: str, full_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as err:
        raise RewardFunctionError(
            f"reward function '{full_name}': cannot import module '{module_name}' ({type(err).__name__}: {err}). "
            "Is it installed or on PYTHONPATH? For a file, write 'path/to/file.py:function'."
        ) from err


def _import_file(location: str, base_dir: Path | str | None) -> ModuleType:
    """Import a user's .py file once per resolved path (two functions from one file share the module)."""
    path = Path(location).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = ([Path(base_dir) / path] if base_dir is not None else []) + [Path.cwd() / path]
    found = next((c.resolve() for c in candidates if c.is_file()), None)
    if found is None:
        looked = ", ".join(str(c) for c in candidates)
        raise RewardFunctionError(f"reward function file not found: '{location}' (looked for {looked})")
    # A name unique per path, so files with the same stem in different folders do not replace each other.
    stem = re.sub(r"\W", "_", found.stem)  # "my-rewards.v2" -> a valid module name
    module_name = f"align_reward_file_{stem}_{hashlib.sha256(str(found).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, found)
    assert spec is not None and spec.loader is not None  # always set for an existing .py path
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # registered before running it, as `import` does (dataclasses need this)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise RewardFunctionError(
            f"cannot import reward function file {found}: {type(err).__name__}: {err}"
        ) from err
    return module


def _get_attribute(module: ModuleType, attribute: str, where: str) -> Any:
    obj: Any = module
    for part in attribute.split("."):  # "Class.method" style names are allowed
        if not hasattr(obj, part):
            defined = sorted(
                n for n, v in vars(module).items()
                if inspect.isfunction(v) and v.__module__ == module.__name__ and not n.startswith("_")
            )
            close = difflib.get_close_matches(attribute, defined, n=1, cutoff=0.6)
            hint = f" — did you mean '{close[0]}'?" if close else ""
            listing = f"functions defined there: {', '.join(defined)}" if defined else "it defines no functions"
            raise RewardFunctionError(f"{where} has no attribute '{attribute}'{hint} ({listing})")
        obj = getattr(obj, part)
    return obj


# --- factories ------------------------------------------------------------------------------------------------


def call_factory(label: str, factory: Callable[..., Any], factory_kwargs: Any) -> Callable[..., Any]:
    """Call a reward-function factory once with its `factory_kwargs` and return the reward function it made.

    The arguments are checked against the factory's parameters first, so a typo is an error naming the key
    rather than a TypeError from inside the factory."""
    if not isinstance(factory_kwargs, dict):
        raise RewardFunctionError(f"factory_kwargs of '{label}' must be a mapping, got {factory_kwargs!r}")
    _check_arguments(f"factory '{label}'", factory, factory_kwargs, settable=None, where="factory_kwargs")
    try:
        made = factory(**factory_kwargs)
    except Exception as err:
        raise RewardFunctionError(f"factory '{label}' raised: {type(err).__name__}: {err}") from err
    if inspect.isclass(made) or not callable(made):
        raise RewardFunctionError(
            f"factory '{label}' returned {type(made).__name__}, not a reward function; a factory must return "
            "a callable taking (prompts, completions, **kwargs)"
        )
    return made


def _check_arguments(subject: str, fn: Callable[..., Any], arguments: dict, settable: set[str] | None,
                     where: str) -> None:
    """Every key of `arguments` (set in the config under `where`) must be a parameter of `fn` (among `settable`
    when given); with `settable` None, `fn`'s parameters without a default must all be given."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return  # some callables implemented in C expose no signature; their call reports what is wrong
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    allowed = sorted(settable if settable is not None else named)
    takes_any_keyword = settable is None and any(p.kind is p.VAR_KEYWORD for p in params)
    for key in arguments:
        if not isinstance(key, str):
            raise RewardFunctionError(f"{subject}: {where} keys must be strings, got {key!r}")
        if key not in allowed and not takes_any_keyword:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
            hint = f" — did you mean '{close[0]}'?" if close else ""
            takes = f"it takes: {', '.join(allowed)}" if allowed else "it takes nothing besides the call's arguments"
            raise RewardFunctionError(f"{subject} has no parameter '{key}'{hint} ({takes})")
    if settable is None:
        missing = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and p.default is p.empty and p.name not in arguments]
        if missing:
            raise RewardFunctionError(f"{subject} requires {', '.join(map(repr, missing))}: set it under {where}")


# --- checking the calling convention --------------------------------------------------------------------------


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling `fn` returns a coroutine: an `async def` function, a functools.partial of one, or an object
    whose `__call__` is `async def` (the forms TRL's GRPOTrainer awaits)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def check_reward_function(label: str, fn: Callable[..., Any], columns: set[str] | None = None) -> None:
    """Check that `fn(prompts=..., completions=..., **{column: ...})` can be called, without calling it.

    `columns` are the keyword arguments the stage passes besides prompts and completions (the dataset's extra
    columns and TRL's extra keywords). When None, only prompts and completions are checked.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some callables implemented in C expose no signature; they are checked by their first call
    params = list(signature.parameters.values())
    positional_only = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if positional_only:
        raise RewardFunctionError(
            f"reward function '{label}' has positional-only parameters ({', '.join(positional_only)}); reward "
            "functions are called with keyword arguments (prompts=..., completions=..., one per dataset column), "
            "as TRL does"
        )
    takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for arg in CALL_ARGS:
        if arg not in named and not takes_any_keyword:
            raise RewardFunctionError(
                f"reward function '{label}' does not accept the keyword argument '{arg}'; define it as "
                "`def f(prompts, completions, **kwargs)` — reward functions are called as "
                "f(prompts=..., completions=..., <one keyword per dataset column>), as TRL does"
            )
    if columns is None:
        return
    if not takes_any_keyword:
        refused = sorted(c for c in columns if c not in named and c not in TRL_EXTRA_KWARGS)
        if refused:
            raise RewardFunctionError(
                f"reward function '{label}' does not accept the dataset column(s) {', '.join(map(repr, refused))}; "
                "add **kwargs to its parameters (every dataset column is passed as a keyword argument, as in TRL)"
            )
        refused = sorted(c for c in columns if c not in named)
        if refused:
            raise RewardFunctionError(
                f"reward function '{label}' does not accept TRL's keyword(s) {', '.join(map(repr, refused))}; add "
                "**kwargs to its parameters (TRL, and align's RL stages, pass completion_ids, trainer_state, "
                "log_metric and log_extra to every reward function)"
            )
    _check_required(label, params, named, columns)


def _check_required(label: str, params: list[inspect.Parameter], named: set[str], columns: set[str]) -> None:
    """Every parameter without a default must be passed at each call: prompts, completions or a column."""
    passed = set(CALL_ARGS) | set(columns)
    required = [
        p.name for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty and p.name not in passed
    ]
    if not required:
        return
    unnamed = [arg for arg in CALL_ARGS if arg not in named]
    shown = sorted(columns - TRL_EXTRA_KWARGS)
    close = difflib.get_close_matches(required[0], shown, n=1, cutoff=0.6)
    trl_keywords = sorted(TRL_EXTRA_KWARGS & set(required))
    if trl_keywords:  # e.g. TRL's (completion_ids, **kwargs) functions, checked where a caller passes no extras
        hint = f" — {', '.join(map(repr, trl_keywords))}: TRL's extra keyword(s), which align's RL stages pass"
    elif unnamed:  # e.g. def f(p, c, **kwargs): prompts= and completions= land in **kwargs, p and c stay unset
        hint = (
            " — it is called as f(prompts=..., completions=..., <columns>), as TRL does, so name its parameters "
            + ", ".join(map(repr, unnamed))
        )
    else:
        hint = f" — did you mean the column '{close[0]}'?" if close else ""
    raise RewardFunctionError(
        f"reward function '{label}' requires {', '.join(map(repr, required))}: not a dataset column "
        f"(columns: {', '.join(shown) or 'none'}) and not set under `kwargs` in its config{hint}"
    )


def _check_config_kwargs(label: str, fn: Callable[..., Any], kwargs: dict, columns: set[str] | None) -> None:
    """Every config kwarg must be a named parameter: a typo must not vanish into the function's **kwargs."""
    for key in kwargs:
        if key in CALL_ARGS or key in (columns or ()):
            raise RewardFunctionError(
                f"reward function '{label}': kwarg '{key}' cannot be set in the config, it is passed at every call "
                f"({'the prompts or completions' if key in CALL_ARGS else 'a dataset column'})"
            )
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    settable = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in CALL_ARGS and p.name not in (columns or ())}
    _check_arguments(f"reward function '{label}'", fn, kwargs, settable, where="kwargs")


def component_name(config_name: str, fn: Callable[..., Any]) -> str:
    """How a component is reported: a built-in by its config name, anything else by its `__name__` (a callable
    object by its class), as TRL names reward functions."""
    if config_name in BUILTIN_REWARD_FUNCTIONS:
        return config_name
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", None) or type(fn).__name__


def check_weight(what: str, weight: Any) -> None:
    if not isinstance(weight, numbers.Real) or isinstance(weight, bool) or not math.isfinite(weight):
        raise RewardFunctionError(f"{what} must be a finite number, got {weight!r}")


# --- one config entry -----------------------------------------------------------------------------------------


def build_component(
    config: RewardFunctionConfig, base_dir: Path | str | None, columns: set[str] | None
) -> tuple[str, Callable[..., Any], float]:
    """Resolve one config entry into (component name, callable with its kwargs bound, weight), checking it all;
    a factory (`factory_kwargs` set) is called here, once."""
    if not isinstance(config.kwargs, dict):
        raise RewardFunctionError(f"kwargs of '{config.name}' must be a mapping, got {config.kwargs!r}")
    check_weight(f"weight of '{config.name}'", config.weight)
    if config.factory_kwargs is not None:
        fn = call_factory(config.name, resolve_name(config.name, base_dir), config.factory_kwargs)
    else:
        fn = resolve_reward_function(config.name, base_dir)
    is_builtin = config.name in BUILTIN_REWARD_FUNCTIONS and config.factory_kwargs is None
    # The built-ins read only the `constraints` column, so they can be checked fully even when columns are unknown.
    known_columns = columns if columns is not None or not is_builtin else _BUILTIN_COLUMNS
    _check_config_kwargs(config.name, fn, config.kwargs, known_columns)
    bound = functools.partial(fn, **config.kwargs) if config.kwargs else fn
    check_reward_function(config.name, bound, known_columns)
    if is_builtin:
        _dry_run(config.name, bound)
    return component_name(config.name, fn), bound, float(config.weight)


def _dry_run(name: str, fn: Callable[..., Any]) -> None:
    """Call a built-in on an empty batch: it checks its parameters (e.g. n >= 1) before looking at samples."""
    empty: dict[str, Sequence[Any]] = {arg: [] for arg in CALL_ARGS}
    if "constraints" in inspect.signature(fn).parameters:
        empty["constraints"] = []
    try:
        fn(**empty)
    except (TypeError, ValueError) as err:
        raise RewardFunctionError(f"reward function '{name}': {err}") from err


def build_components(
    configs: list[RewardFunctionConfig], base_dir: Path | str | None, columns: set[str] | None,
    reserved: set[str] = frozenset(),
) -> list[tuple[str, Callable[..., Any], float]]:
    """Every entry of `reward.functions` as (unique component name, checked callable, weight); an error names the
    entry (`reward.functions[2]: ...`). A name used twice, or one in `reserved`, becomes `name#2`, `name#3`..."""
    taken, components = set(reserved), []
    for index, config in enumerate(configs):
        try:
            name, fn, weight = build_component(config, base_dir, columns)
        except RewardFunctionError as err:
            raise RewardFunctionError(f"reward.functions[{index}]: {err}") from err
        unique, suffix = name, 2
        while unique in taken:
            unique, suffix = f"{name}#{suffix}", suffix + 1
        taken.add(unique)
        components.append((unique, fn, weight))
    return components
