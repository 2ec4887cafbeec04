"""Load training data from a file, a hub dataset or a builtin generator, and normalise it per purpose.

Every stage reads its rows through `load_rows(source, purpose, cfg)`, which returns plain dicts (`source` may
also be a list of sources, mixed row by row):

    purpose "sft"        -> {"messages": [{"role", "content"}, ... ending with an assistant turn], **extra}
    purpose "preference" -> {"prompt": [messages ending with a user turn], "chosen": str, "rejected": str, **extra}
    purpose "prompt"     -> {"prompt": str as given (TRL's standard form) | [messages ending in a user turn], **extra}

Input formats (TRL's standard and conversational dataset types, plus raw Anthropic-HH text):

    messages           {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
    prompt_completion  {"prompt": str | messages, "completion": str | messages}
    preference         {"prompt": str | messages, "chosen": str | [one assistant message], "rejected": ...}
                       or implicit prompt: {"chosen": messages, "rejected": messages}, the shared prefix
                       being the prompt (they must differ only in one final assistant turn)
    prompt_only        {"prompt": str | messages}
    hh                 {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}: multi-turn text,
                       split at the last "Assistant:" turn; chosen and rejected must share that prompt

Which formats each purpose accepts:
    sft        messages; prompt_completion (prompt + completion); preference and hh (prompt + chosen)
    preference preference; hh
    prompt     every format: its prompt; for messages, the conversation without its final assistant turn

A plain `text` column (TRL "language modeling") is not accepted: every stage here is chat-based.
With data.format "auto" the format is detected from the first row's columns, and every later row
must have the same format (an explicit data.format instead reads those columns from every row).
Columns not used by the format are kept as extra keys (e.g. `constraints`), unless their name
collides with a normalised output key. String contents are kept verbatim, except that HH text
turns are stripped (the markers carry their own whitespace).

Bad rows are never dropped silently: by default the first one raises DataError naming the source,
the row ("line N" in JSON-lines files, "row N" = N-th record, 1-based, elsewhere), the field and
what was expected. With data.skip_bad_rows they are skipped and listed in the LoadReport.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import chain, zip_longest
from typing import Any, Callable, Literal

from align.data_sources import FILE_EXTENSIONS, DataError, json_type_name, read_source  # noqa: F401

PURPOSES = ("sft", "preference", "prompt")
FORMATS = ("messages", "prompt_completion", "preference", "prompt_only", "hh")
ROLES = ("system", "user", "assistant")

# The input formats each purpose can be built from.
ACCEPTED_FORMATS = {
    "sft": ("messages", "prompt_completion", "preference", "hh"),
    "preference": ("preference", "hh"),
    "prompt": ("prompt_only", "prompt_completion", "preference", "hh", "messages"),
}
# The columns each format reads; every other column of a row is passed through as an extra key.
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt_only": ("prompt",),
    "hh": ("chosen", "rejected"),
}
# When a row has the columns of several formats (e.g. ultrachat has both `prompt` and `messages`),
# the purpose decides which one to read.
FORMAT_PRIORITY = {
    "sft": ("messages", "prompt_completion", "preference", "hh", "prompt_only"),
    "preference": ("preference", "hh", "messages", "prompt_completion", "prompt_only"),
    "prompt": ("prompt_completion", "preference", "prompt_only", "hh", "messages"),
}


@dataclass
class DataConfig:
    """The `data:` section of a stage config."""

    # local file, hub dataset id ("id" or "id:split"), or builtin:<kind>:<split>; or a list of these, mixed row by
    # row (the first row of each, then the second of each, ...), so that max_rows keeps an even mix
    train: str | list[str] = "builtin:sft:train"
    eval: str | list[str] | None = "builtin:sft:heldout"  # held-out data, same forms as train; null: no evaluation
    split: str = "train"  # hub split used when a hub id has no ":split" suffix
    # the rows' format; auto: detected from the first row's columns
    format: Literal["auto", "messages", "prompt_completion", "preference", "prompt_only", "hh"] = "auto"
    skip_bad_rows: bool = False  # skip (and report) bad rows instead of stopping at the first one
    max_rows: int | None = None  # keep the first max_rows valid rows (all rows are still validated)
    builtin_size: int | None = None  # n for the builtin generator (None = its default)
    seed: int = 0  # seed for the builtin generator
    heldout_types: list[str] = field(default_factory=list)  # trained types kept out of builtin training data

    def __post_init__(self) -> None:
        if self.format not in ("auto", *FORMATS):
            raise DataError(f"data.format must be one of auto, {', '.join(FORMATS)}; got {self.format!r}")
        if self.heldout_types:  # checked here, so a typo stops the run when the config is read
            from reward.instructions import heldout_types_error  # lazily, as for the builtin generator
            if error := heldout_types_error(self.heldout_types):
                raise DataError(f"data.heldout_types: {error}")
        for name in ("train", "eval"):
            if getattr(self, name) == []:
                raise DataError(f"data.{name} is an empty list: name at least one source (or null for data.eval)")
        for name in ("max_rows", "builtin_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"data.{name} must be a positive integer or null, got {value}")


@dataclass
class LoadReport:
    """What load_rows read: bad_rows holds (row or line number, full error message) per skipped row."""

    source: str
    rows_read: int
    rows_kept: int
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    format: str = ""

    def summary(self) -> str:
        line = f"{self.source}: {self.rows_kept} rows kept of {self.rows_read} read (format {self.format})"
        if self.bad_rows:
            line += f"; {len(self.bad_rows)} bad rows skipped, first: {self.bad_rows[0][1]}"
        return line


def load_rows(source: str | list[str], purpose: str, cfg: DataConfig) -> tuple[list[dict], LoadReport]:
    """Read `source`, validate every row and normalise it for `purpose` ("sft" | "preference" | "prompt")."""
    if purpose not in PURPOSES:
        raise DataError(f"unknown data purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
    if isinstance(source, list):
        return _load_mixture(source, purpose, cfg)
    return _load_source(source, purpose, cfg, cfg.max_rows)


def _load_mixture(sources: list[str], purpose: str, cfg: DataConfig) -> tuple[list[dict], LoadReport]:
    """The rows of several sources, interleaved: the first row of each, then the second of each, and so on, a source
    that runs out dropping out; `max_rows` then keeps the first rows of the mix. Each source is read and validated
    as it would be alone (its own format)."""
    if not sources:
        raise DataError(f"an empty list of data sources for purpose {purpose!r}")
    loaded = [_load_source(source, purpose, cfg, max_rows=None) for source in sources]
    gap = object()  # fills the rounds after a shorter source has run out
    rows = [row for row in chain.from_iterable(zip_longest(*(rows for rows, _ in loaded), fillvalue=gap))
            if row is not gap][: cfg.max_rows]
    reports = [report for _, report in loaded]
    return rows, LoadReport(" + ".join(sources), sum(r.rows_read for r in reports), len(rows),
                            [bad for r in reports for bad in r.bad_rows],
                            ", ".join(dict.fromkeys(r.format for r in reports)))


def _load_source(source: str, purpose: str, cfg: DataConfig, max_rows: int | None) -> tuple[list[dict], LoadReport]:
    """One source's rows, every one validated; the first `max_rows` of them kept."""
    if not source:
        raise DataError(f"no data source given for purpose {purpose!r}")
    if cfg.format != "auto":
        _check_purpose_accepts(source, purpose, cfg.format, "set by data.format")

    rows: list[dict] = []
    bad_rows: list[tuple[int, str]] = []
    file_format = None if cfg.format == "auto" else cfg.format
    first_where = ""  # the row that fixed file_format in auto mode
    rows_read = 0
    for raw in read_source(source, cfg):
        rows_read += 1
        where = f"{raw.unit} {raw.number}"
        try:
            if raw.problem is not None:
                raise _RowError(raw.problem)
            if cfg.format != "auto":
                row_format = cfg.format
            else:
                row_format = _detect_format(raw.value, purpose)
                if file_format is None:
                    _check_purpose_accepts(source, purpose, row_format, f"detected from {where}")
                    file_format, first_where = row_format, where
                elif row_format != file_format:
                    raise _RowError(
                        f"mixed formats: this row has the columns of format '{row_format}' but {first_where} "
                        f"is format '{file_format}'; a dataset must use one format throughout "
                        f"(or set data.format to choose the columns to read)"
                    )
            normalised = _project(purpose, row_format, _NORMALISERS[row_format](raw.value))
            if purpose == "prompt" and row_format != "messages" and isinstance(raw.value.get("prompt"), str):
                normalised["prompt"] = raw.value["prompt"]  # kept standard: reward functions get it as TRL does
        except _RowError as err:
            message = f"{source}, {where}: {err}"
            if not cfg.skip_bad_rows:
                raise DataError(message) from None
            bad_rows.append((raw.number, message))
            continue
        extra = {k: v for k, v in raw.value.items() if k not in FORMAT_COLUMNS[row_format]}
        rows.append({**extra, **normalised})

    if rows_read == 0:
        raise DataError(f"{source}: the dataset is empty (no rows)")
    if not rows:
        raise DataError(
            f"{source}: no usable rows: all {rows_read} rows are bad; first: {bad_rows[0][1]}"
        )
    rows = rows[:max_rows]
    report = LoadReport(source, rows_read, len(rows), bad_rows, file_format or "")
    return rows, report


def data_fingerprint(rows: list[dict]) -> str:
    """First 16 hex digits of the sha256 of the rows' canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Format detection and per-format validation. Row-level problems raise _RowError with a message that
# starts at the field ("field 'messages[1].content': ..."); load_rows prefixes the source and row.


class _RowError(Exception):
    """A problem with one row; load_rows turns it into a DataError or a skipped, reported row."""


def _check_purpose_accepts(source: str, purpose: str, fmt: str, how: str) -> None:
    if fmt not in ACCEPTED_FORMATS[purpose]:
        raise DataError(
            f"{source}: format '{fmt}' ({how}) cannot be used for purpose '{purpose}'; "
            f"it needs one of: {', '.join(ACCEPTED_FORMATS[purpose])}"
        )


def _detect_format(row: dict, purpose: str) -> str:
    """The format whose columns this row has; if several, the one the purpose prefers."""
    present = set()
    if "messages" in row:
        present.add("messages")
    if "chosen" in row or "rejected" in row:
        # string chosen/rejected without a prompt column is raw Anthropic-HH text
        present.add("hh" if "prompt" not in row and isinstance(row.get("chosen"), str) else "preference")
    if "completion" in row:
        present.add("prompt_completion")
    if "prompt" in row:
        present.add("prompt_only")
    for fmt in FORMAT_PRIORITY[purpose]:
        if fmt in present:
            return fmt
    columns = ", ".join(repr(k) for k in row) or "none"
    raise _RowError(
        f"no recognised columns (found {columns}); expected 'messages', 'prompt'+'completion', "
        f"'prompt'+'chosen'+'rejected', 'chosen'+'rejected', or 'prompt'"
    )


def _require(row: dict, name: str, fmt: str) -> Any:
    if name not in row:
        needs = " and ".join(f"'{c}'" for c in FORMAT_COLUMNS[fmt] if not (fmt == "preference" and c == "prompt"))
        columns = ", ".join(repr(k) for k in row) or "none"
        raise _RowError(f"field '{name}': missing (format '{fmt}' needs {needs}; the row has {columns})")
    return row[name]


def _messages(value: Any, name: str) -> list[dict]:
    """Validate a list of {"role", "content"} messages; return them with only those two keys."""
    if not isinstance(value, (list, tuple)):
        raise _RowError(f"field '{name}': expected a list of {{'role', 'content'}} messages, "
                        f"got {json_type_name(value)}")
    if not value:
        raise _RowError(f"field '{name}': expected at least one message, got an empty list")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _RowError(
                f"field '{name}[{i}]': expected an object with 'role' and 'content', got {json_type_name(message)}"
            )
        for key in ("role", "content"):
            if key not in message:
                raise _RowError(f"field '{name}[{i}].{key}': missing (every message needs 'role' and 'content')")
            if not isinstance(message[key], str):
                raise _RowError(f"field '{name}[{i}].{key}': expected a string, got {json_type_name(message[key])}")
        if message["role"] not in ROLES:
            raise _RowError(
                f"field '{name}[{i}].role': unknown role {message['role']!r}; expected one of "
                + ", ".join(f"'{r}'" for r in ROLES)
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _check_ends_with(messages: list[dict], role: str, name: str, why: str) -> None:
    """The last turn must have `role` and non-blank content."""
    last = len(messages) - 1
    if messages[last]["role"] != role:
        raise _RowError(f"field '{name}': must end with {'an' if role == 'assistant' else 'a'} {role} turn "
                        f"({why}); its last turn is {messages[last]['role']!r}")
    if not messages[last]["content"].strip():
        kind = "response" if role == "assistant" else "prompt"
        raise _RowError(f"field '{name}[{last}].content': empty {kind}; expected non-blank text")


def _prompt(value: Any, name: str = "prompt") -> list[dict]:
    """A prompt given as a string (one user turn) or as messages ending with a user turn."""
    if isinstance(value, str):
        if not value.strip():
            raise _RowError(f"field '{name}': empty prompt; expected non-blank text")
        return [{"role": "user", "content": value}]
    if not isinstance(value, (list, tuple)):
        raise _RowError(f"field '{name}': expected a string or a list of messages, got {json_type_name(value)}")
    messages = _messages(value, name)
    _check_ends_with(messages, "user", name, "the model answers it")
    return messages


def _response(value: Any, name: str) -> str:
    """A chosen/rejected response: a string, or a list holding exactly one assistant message."""
    if isinstance(value, (list, tuple)):
        messages = _messages(value, name)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            roles = ", ".join(m["role"] for m in messages)
            raise _RowError(f"field '{name}': expected a string or a list with one assistant message, "
                            f"got a list of {len(messages)} messages ({roles})")
        value = messages[0]["content"]
    elif not isinstance(value, str):
        raise _RowError(
            f"field '{name}': expected a string or a list with one assistant message, got {json_type_name(value)}"
        )
    if not value.strip():
        raise _RowError(f"field '{name}': empty response; expected non-blank text")
    return value


def _normalise_messages(row: dict) -> dict:
    return {"messages": _messages(_require(row, "messages", "messages"), "messages")}


def _normalise_prompt_completion(row: dict) -> dict:
    prompt = _prompt(_require(row, "prompt", "prompt_completion"))
    completion = _require(row, "completion", "prompt_completion")
    if isinstance(completion, str):
        if not completion.strip():
            raise _RowError("field 'completion': empty response; expected non-blank text")
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}
    if not isinstance(completion, (list, tuple)):
        raise _RowError(f"field 'completion': expected a string or a list of messages, "
                        f"got {json_type_name(completion)}")
    messages = _messages(completion, "completion")
    _check_ends_with(messages, "assistant", "completion", "the response to train on")
    return {"prompt": prompt, "completion": messages}


def _normalise_preference(row: dict) -> dict:
    chosen = _require(row, "chosen", "preference")
    rejected = _require(row, "rejected", "preference")
    if "prompt" in row:
        return {"prompt": _prompt(row["prompt"]), "chosen": _response(chosen, "chosen"),
                "rejected": _response(rejected, "rejected")}
    # Implicit prompt: chosen and rejected are whole conversations; their shared prefix is the prompt.
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise _RowError("field 'prompt': missing; string 'chosen'/'rejected' need a 'prompt' column "
                        "(or, without one, must both be conversations, or Anthropic-HH text with data.format hh)")
    chosen_turns, rejected_turns = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    return _split_shared_prompt(chosen_turns, rejected_turns, "the shared prefix of 'chosen' and 'rejected'")


def _split_shared_prompt(chosen: list[dict], rejected: list[dict], prompt_name: str) -> dict:
    """Split two conversations that differ only in their final assistant turn into prompt/chosen/rejected."""
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        _check_ends_with(turns, "assistant", name, "the response being compared")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if not (shared == len(chosen) - 1 == len(rejected) - 1):
        raise _RowError(
            f"field 'rejected': 'chosen' and 'rejected' must be the same conversation up to one final assistant "
            f"turn, but they first differ at turn {shared + 1} "
            f"(chosen has {len(chosen)} turns, rejected {len(rejected)})"
        )
    prompt = chosen[:shared]
    if prompt[-1]["role"] != "user":
        raise _RowError(
            f"field 'chosen': {prompt_name} must end with a user turn; its last turn is {prompt[-1]['role']!r}"
        )
    return {"prompt": prompt, "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _parse_hh(value: Any, name: str) -> list[dict]:
    """Anthropic-HH text ("\\n\\nHuman: ...\\n\\nAssistant: ...") -> messages, contents stripped."""
    if not isinstance(value, str):
        raise _RowError(f"field '{name}': expected Anthropic-HH text (a string), got {json_type_name(value)}")
    pieces = _HH_TURN.split(value)  # [text before the first turn, role, content, role, content, ...]
    if len(pieces) < 3 or pieces[0].strip():
        raise _RowError(f"field '{name}': expected Anthropic-HH text starting with '\\n\\nHuman:' "
                        f"(for plain-string preference pairs add a 'prompt' column)")
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(pieces[1::2], pieces[2::2])]


def _normalise_hh(row: dict) -> dict:
    chosen = _parse_hh(_require(row, "chosen", "hh"), "chosen")
    rejected = _parse_hh(_require(row, "rejected", "hh"), "rejected")
    for turns, name in ((chosen, "chosen"), (rejected, "rejected")):
        if turns[-1]["role"] != "assistant":
            raise _RowError(f"field '{name}': must end with an 'Assistant:' turn (the response being compared); "
                            f"its last turn is 'Human:'")
        if not turns[-1]["content"]:
            raise _RowError(f"field '{name}': empty response after the last 'Assistant:'; expected non-blank text")
    if chosen[:-1] != rejected[:-1]:
        raise _RowError("field 'rejected': its prompt (the turns before the last 'Assistant:') differs from "
                        "the prompt in 'chosen'; the two must differ only in the last Assistant turn")
    prompt = chosen[:-1]
    if not prompt or prompt[-1]["role"] != "user":
        last = "nothing" if not prompt else "an 'Assistant:' turn"
        raise _RowError(f"field 'chosen': the prompt before the last 'Assistant:' must end with a 'Human:' turn; "
                        f"it ends with {last}")
    if not prompt[-1]["content"]:
        raise _RowError("field 'chosen': empty prompt (the last 'Human:' turn is blank); expected non-blank text")
    return {"prompt": prompt, "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}


def _normalise_prompt_only(row: dict) -> dict:
    return {"prompt": _prompt(_require(row, "prompt", "prompt_only"))}


_NORMALISERS: dict[str, Callable[[dict], dict]] = {
    "messages": _normalise_messages,
    "prompt_completion": _normalise_prompt_completion,
    "preference": _normalise_preference,
    "prompt_only": _normalise_prompt_only,
    "hh": _normalise_hh,
}


def _project(purpose: str, fmt: str, row: dict) -> dict:
    """Turn a normalised row of format `fmt` into the output shape of `purpose`."""
    if purpose == "sft":
        if fmt == "messages":
            _check_ends_with(row["messages"], "assistant", "messages", "the response to train on")
            return row
        if fmt == "prompt_completion":
            return {"messages": row["prompt"] + row["completion"]}
        return {"messages": row["prompt"] + [{"role": "assistant", "content": row["chosen"]}]}
    if purpose == "preference":
        return row
    if fmt == "messages":  # purpose "prompt": the conversation up to its final assistant turn
        messages = row["messages"]
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise _RowError("field 'messages': has no turns before the final assistant turn to use as a prompt")
        _check_ends_with(messages, "user", "messages", "the prompt is everything before the final assistant turn")
        return {"prompt": messages}
    return {"prompt": row["prompt"]}
