"""Where rows come from: local files (JSON lines, JSON, parquet, CSV, optionally gzipped), dataset folders and hub
datasets (through `datasets`), and the built-in generator (`builtin:<kind>:<split>`). Each reader yields raw rows
in order, numbered as error messages show them; align.data validates and normalises them."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

FILE_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")


def json_type_name(value) -> str:
    """JSON-flavoured type names for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class DataError(ValueError):
    """Data that cannot be used, with a message naming the source, row, field and what was expected."""


@dataclass
class RawRow:
    number: int  # 1-based line number (JSON lines) or record number (everything else)
    unit: str  # "line" or "row"
    value: dict  # the parsed row; {} when `problem` is set
    problem: str | None = None  # why the row could not even be parsed


def read_source(source: str, cfg) -> Iterator[RawRow]:
    """Dispatch on the source: builtin:<kind>:<split>, a local file or folder, or a hub dataset id."""
    if source.startswith("builtin:"):
        return _read_builtin(source, cfg)
    path = Path(source).expanduser()
    if path.is_dir():  # a dataset folder, e.g. a downloaded hub dataset repo
        return _read_with_datasets(source, str(path), cfg.split, what="dataset folder")
    longest_first = sorted(FILE_EXTENSIONS, key=len, reverse=True)  # so ".jsonl.gz" wins over ".gz" names
    extension = next((e for e in longest_first if path.name.lower().endswith(e)), None)
    if path.is_file():
        if extension is None:
            suffix = f"'{path.suffix}'" if path.suffix else "(none)"
            raise DataError(f"{source}: unknown file extension {suffix}; expected one of "
                            f"{', '.join(FILE_EXTENSIONS)} (or a hub dataset id, or builtin:<kind>:<split>)")
        if extension in (".jsonl", ".jsonl.gz"):
            return _read_json_lines(source, path)
        if extension in (".json", ".json.gz"):
            return _read_json(source, path)
        if extension == ".parquet":
            return _read_parquet(source, path)
        return _read_csv(source, path)
    if extension is not None or not _HUB_ID.match(source):
        raise DataError(f"{source}: file not found (looked for {path.resolve()})")
    dataset_id, _, split = source.partition(":")
    return _read_with_datasets(source, dataset_id, split or cfg.split, what="hub dataset")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def _open_text(path: Path, mode: str = "rb"):
    return gzip.open(path, mode) if path.name.lower().endswith(".gz") else open(path, mode)


def _parse_json_line(line: bytes) -> tuple[dict, str | None]:
    try:
        value = json.loads(line.rstrip(b"\r\n").decode("utf-8").lstrip("\ufeff"))
    except UnicodeDecodeError as err:
        return {}, f"not valid UTF-8 ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        return {}, f"invalid JSON: {err.msg} (column {err.colno})"
    if not isinstance(value, dict):
        return {}, f"expected a JSON object, got {json_type_name(value)}"
    return value, None


def _json_lines(source: str, lines: Iterator[bytes]) -> Iterator[RawRow]:
    """One JSON object per line, numbered by line; blank lines are not rows."""
    try:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                value, problem = _parse_json_line(line)
                yield RawRow(number, "line", value, problem)
    except (OSError, EOFError) as err:  # e.g. a truncated .gz file
        raise DataError(f"{source}: cannot read the file: {err}") from None


def _read_json_lines(source: str, path: Path) -> Iterator[RawRow]:
    with _open_text(path) as handle:
        yield from _json_lines(source, handle)


def _read_json(source: str, path: Path) -> Iterator[RawRow]:
    """A .json file is either one JSON list of objects (rows numbered 1..n) or JSON lines."""
    with _open_text(path) as handle:
        data = handle.read()
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        yield from _json_lines(source, io.BytesIO(data))
        return
    try:
        records = json.loads(data.decode("utf-8").lstrip("\ufeff"))
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{source}, line {err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    for number, record in enumerate(records, start=1):
        if isinstance(record, dict):
            yield RawRow(number, "row", record)
        else:
            yield RawRow(number, "row", {}, f"expected a JSON object, got {json_type_name(record)}")


def _read_parquet(source: str, path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet  # installed with `datasets`; read directly so nothing is written to the HF cache

    try:
        records = pyarrow.parquet.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{source}: cannot read the parquet file: {err}") from None
    for number, record in enumerate(records, start=1):
        yield RawRow(number, "row", record)


def _read_csv(source: str, path: Path) -> Iterator[RawRow]:
    """CSV cells are plain strings, so only string formats fit: a `messages` column cannot be read."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is not None and "messages" in header:
                raise DataError(f"{source}: a 'messages' column cannot be read from CSV (cells are plain text, a "
                                f"conversation is a list); use .jsonl, .json or .parquet for conversations")
            for number, cells in enumerate(reader, start=1):
                if len(cells) != len(header):
                    problem = f"has {len(cells)} cells but the header has {len(header)} columns"
                    yield RawRow(number, "row", {}, problem)
                else:
                    yield RawRow(number, "row", dict(zip(header, cells)))
        except UnicodeDecodeError as err:  # decoding runs ahead in blocks, so no exact line here
            raise DataError(f"{source}: not valid UTF-8 ({err.reason}); save the CSV as UTF-8") from None
        except csv.Error as err:
            raise DataError(f"{source}, line {reader.line_num}: cannot read the CSV: {err}") from None


def _read_with_datasets(source: str, name: str, split: str, what: str) -> Iterator[RawRow]:
    """A hub dataset id or a local dataset folder, through `datasets.load_dataset`."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        if what == "hub dataset" and datasets.config.HF_HUB_OFFLINE:
            raise DataError(
                f"{source}: cannot load hub dataset '{name}' (split '{split}'): the Hugging Face hub is offline "
                f"(HF_HUB_OFFLINE=1) and the dataset is not in the local cache; download it elsewhere and point "
                f"data.train/data.eval at a local {', '.join(FILE_EXTENSIONS)} file or dataset folder "
                f"(no local file {Path(source).resolve()} exists)"
            ) from None
        raise DataError(f"{source}: cannot load {what} '{name}' (split '{split}'): {err}") from None
    for number, record in enumerate(dataset, start=1):
        yield RawRow(number, "row", record)


def _read_builtin(source: str, cfg) -> Iterator[RawRow]:
    """builtin:<kind>:<split> -> reward.instructions.build_dataset(kind, split, n=..., seed=..., heldout_types=...)."""
    parts = source.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise DataError(f"{source}: expected builtin:<kind>:<split>, e.g. builtin:sft:train")
    from reward.instructions import build_dataset  # imported lazily: it is only needed for builtin data
    try:
        records = build_dataset(parts[1], parts[2], n=cfg.builtin_size, seed=cfg.seed, heldout_types=cfg.heldout_types)
    except (ValueError, KeyError) as err:
        raise DataError(f"{source}: {err}") from None
    for number, record in enumerate(records, start=1):
        if isinstance(record.get("prompt"), str):  # the built-in datasets are conversational, in TRL's sense
            record = {**record, "prompt": [{"role": "user", "content": record["prompt"]}]}
        yield RawRow(number, "row", dict(record))
