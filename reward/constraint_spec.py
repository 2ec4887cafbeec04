"""The shape of a constraint type: its checker and the arguments it takes.

Kept apart from `reward.verifiers` so that modules defining more checkers (`reward.extra_verifiers`)
can build specs without importing the registry that collects them (no import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

RELATIONS = ("less than", "at least")
ArgKind = Literal["int", "str", "word", "token", "str_list", "relation", "language", "letter"]


@dataclass(frozen=True)
class ArgSpec:
    """One argument of a constraint type.

    kind: "int", "str", "word" (str without spaces), "token" (one ``\\w+`` run: letters, digits,
    underscores, so a checker that compares words can match it), "str_list" (non-empty list of str),
    "relation" ("less than" | "at least"), "language" (supported ISO 639-1 code) or "letter"
    (one non-space character: IFEval asks for letters but also for "#" and "!").
    """

    name: str
    kind: ArgKind
    minimum: int = 0
    required: bool = True

    def describe(self) -> str:
        if self.kind == "int":
            return f"{self.name} (int >= {self.minimum})"
        if self.kind == "relation":
            return f"{self.name} ('less than' | 'at least')"
        names = {"str_list": "list[str]", "word": "str, one word", "letter": "str, one character",
                 "token": "str, letters and digits only", "language": "ISO 639-1 code"}  # fmt: skip
        readable = names.get(self.kind, self.kind)
        return f"{self.name} ({readable}{'' if self.required else ', optional'})"


@dataclass(frozen=True)
class ConstraintSpec:
    """A constraint type: its checker (strict semantics) and the arguments it takes.

    `check_arguments`, when set, sees the whole constraint after each argument passed its own check
    and returns why the combination is invalid (e.g. nth_paragraph > num_paragraphs), or None.
    """

    type: str
    checker: Callable[..., bool]
    args: tuple[ArgSpec, ...]
    summary: str
    check_arguments: Callable[[dict], str | None] | None = None

    def signature(self) -> str:
        """Human-readable argument list, used in error messages."""
        if not self.args:
            return "it takes no arguments"
        return "it takes " + ", ".join(arg.describe() for arg in self.args)


def spec(type_id: str, checker: Callable[..., bool], summary: str, *args: ArgSpec,
         check_arguments: Callable[[dict], str | None] | None = None) -> ConstraintSpec:
    """A ConstraintSpec written compactly: the arguments as trailing positionals."""
    return ConstraintSpec(type_id, checker, args, summary, check_arguments)
