"""Write docs/CONFIG.md: every config key of every stage, with its type, default and description, read from the
dataclasses themselves (where the defaults live), so the reference cannot drift from the code.

    python scripts/config_reference.py            # rewrite docs/CONFIG.md
    python scripts/config_reference.py --check    # exit 1 if docs/CONFIG.md is out of date (the tests do this)

A field's description is what the code says next to it, wherever it sits: a trailing comment (continued on the
comment lines below it, up to the next field when that one has a trailing comment of its own), comment lines
right above the field, or a string right after it (an attribute docstring). A field a class redeclares to change
its default keeps its base class's description unless it has its own.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "docs" / "CONFIG.md"


def _comments(source: str) -> dict[int, tuple[int, str, bool]]:
    """line number -> (column, text, whether the line holds nothing but the comment)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            alone = not token.line[:col].strip()
            found[row] = (col, token.string.lstrip("#").strip(), alone)
    return found


def own_descriptions(cls) -> dict[str, str]:
    """Descriptions written in `cls`'s own body (not its bases').

    Comment lines between two fields go to the field below, unless both fields have trailing comments: then they
    continue the trailing comment above (as do comment lines indented further than the fields)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments, body = _comments(source), ast.parse(source).body[0].body
    described: dict[str, list[str]] = {}
    previous = None  # (name, whether it has a trailing comment) of the field before
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name, column, parts = node.target.id, node.col_offset, []
        above, row = [], node.lineno - 1
        while row in comments and comments[row][2] and comments[row][0] == column:
            above.insert(0, comments[row][1])
            row -= 1
        trailing = node.end_lineno in comments and not comments[node.end_lineno][2]
        if above and previous and previous[1] and trailing:
            described[previous[0]] += above
        else:
            parts += above
        if trailing:
            parts.append(comments[node.end_lineno][1])
            row = node.end_lineno + 1
            while row in comments and comments[row][2] and comments[row][0] > column:
                parts.append(comments[row][1])
                row += 1
        following = body[index + 1] if index + 1 < len(body) else None
        if isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant) \
                and isinstance(following.value.value, str):
            parts.append(" ".join(following.value.value.split()))
        described[name] = parts
        previous = (name, trailing)
    return {name: " ".join(parts) for name, parts in described.items() if parts}


def descriptions(cls) -> dict[str, str]:
    """Every field's description, a subclass's own winning over its bases'."""
    merged: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        merged.update(own_descriptions(klass))
    return merged


def type_name(tp) -> str:
    text = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return re.sub(r"\b[\w.]+\.(\w+)", r"\1", text)


def rows(cls, prefix: str = "", instance=None) -> list[str]:
    instance = instance if instance is not None else cls()
    hints, meanings, out = typing.get_type_hints(cls), descriptions(cls), []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out += rows(type(value), f"{prefix}{f.name}.", value)
            continue
        item = _list_item_class(hints[f.name])
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [dataclasses.asdict(v) for v in value]
        shown = f"`{value!r}`".replace("|", "\\|")
        kind = type_name(hints[f.name]).replace("|", "\\|")
        meaning = meanings.get(f.name, "").replace("|", "\\|")
        out.append(f"| `{prefix}{f.name}` | {kind} | {shown} | {meaning} |")
        if item is not None:  # the keys of each entry of a list of sections, e.g. reward.functions[].name
            out += rows(item, f"{prefix}{f.name}[].", _defaults_of(item))
    return out


def _list_item_class(tp):
    """The dataclass of a `list[SomeDataclass]` field, else None."""
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):
            return item
    return None


class _Required:
    """Shown as the default of a field that has none (it must be set)."""

    def __repr__(self) -> str:
        return "required"


def _defaults_of(cls):
    """An object with every field of `cls` at its default (`required` where there is none)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = _Required()
    return type(cls.__name__, (), values)()


def reference() -> str:
    from align.registry import COMMANDS, STAGES, config_class

    parts = ["# Config reference", "",
             "Generated by `python scripts/config_reference.py` from the config dataclasses, where every default "
             "lives. A YAML file sets any of these keys; `key.path=value` on the command line overrides both. "
             "Unknown keys and wrong types are errors. Values are read as YAML, so text that YAML reads as a "
             "number is quoted: `model.revision: \"2.0\"` in a file, `model.revision='\"2.0\"'` on the command "
             "line.", ""]
    for name in [*STAGES, *COMMANDS]:
        cls = config_class(name)
        parts += [f"## `align {name}` — `{cls.__module__}.{cls.__name__}`", "",
                  "| key | type | default | meaning |", "|---|---|---|---|", *rows(cls), ""]
    return "\n".join(parts)


def undescribed() -> list[str]:
    """Keys of the reference that have no description (the tests require none)."""
    return [line.split("`")[1] for line in reference().splitlines()
            if line.startswith("| `") and line.rstrip().endswith("|  |")]


if __name__ == "__main__":
    text = reference()
    if "--check" in sys.argv:
        current = OUT.read_text() if OUT.is_file() else ""
        if current != text:
            print(f"{OUT} is out of date: run `python scripts/config_reference.py`")
            sys.exit(1)
        sys.exit(0)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
