"""`align report RUN_DIR`: one self-contained HTML page that summarises a pipeline run.

Reads what the stages and `align eval` leave on disk:

    RUN_DIR/<stage>/manifest.json, metrics.jsonl, tables/**/*.jsonl     stage in sft, rm, ppo, dpo, grpo
    RUN_DIR/<stage>/eval/results.json                                   `align eval` of that stage's model
    RUN_DIR/eval/<label>/results.json                                   other evaluated models, e.g. "base"

and writes RUN_DIR/report/index.html with its plots beside it as RUN_DIR/report/*.png.  The same PNGs are
embedded in the HTML as data: URIs, so index.html alone is the whole report (mail it, attach it to a ticket).

Missing pieces (a stage without eval results, a run with only sft) render as notes.  Files that exist but are
malformed raise ValueError naming the file, line and key.  Every string taken from the run is HTML-escaped, and
the page carries a Content-Security-Policy that allows only data: images and its own inline script (by hash),
so a completion that contains markup can neither run script nor load anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.registry import STAGES
from align.report_charts import (
    HEADLINE_KEYS,
    Chart,
    Series,
    eval_comparison_charts,
    generalisation_rows,
    stage_charts,
)

STAGE_ORDER = tuple(STAGES)  # align.registry: the stages in pipeline order
MAX_SAMPLE_PROMPTS = 6  # prompts shown side by side across evaluated models
MAX_TABLE_ROWS = 6  # rows shown from each training-sample table
MAX_TEXT_CHARS = 1500  # longer prompts/completions are cut, saying so



@dataclass
class Stage:
    """One stage directory as read from disk."""

    name: str
    directory: Path
    manifest: dict[str, Any]  # {} when manifest.json is missing
    metrics: dict[str, Series]  # metric key -> points; the last value logged for a step wins
    tables: dict[str, dict]  # table name -> its last logged {"step", "columns", "rows"}
    notes: list[str] = field(default_factory=list)


@dataclass
class EvalRun:
    """One `align eval` results.json, under the label the report shows it as ("base", "sft", ...)."""

    label: str
    path: Path
    results: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Public API


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/index.html (plus RUN_DIR/report/*.png) for a pipeline run; returns the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    stages = [load_stage(run_dir / name) for name in STAGE_ORDER if _is_stage_dir(run_dir / name)]
    evals = load_eval_runs(run_dir)
    if not stages and not evals:
        raise FileNotFoundError(
            f"{run_dir} holds no stage directories ({', '.join(STAGE_ORDER)}) with a manifest.json or "
            f"metrics.jsonl, and no eval results (<stage>/eval/results.json or eval/<label>/results.json)"
        )

    charts_by_stage = {stage.name: stage_charts(stage) for stage in stages}
    eval_charts = eval_comparison_charts(evals)

    report_dir = run_dir / "report"
    report_dir.mkdir(exist_ok=True)
    for stale in report_dir.glob("*.png"):  # plots of stages that are gone must not linger
        stale.unlink()
    for chart in [*eval_charts, *(c for charts in charts_by_stage.values() for c in charts)]:
        (report_dir / chart.filename).write_bytes(chart.png)

    page = render_page(run_dir, stages, evals, charts_by_stage, eval_charts)
    index = report_dir / "index.html"
    partial = report_dir / ".index.html.tmp"
    partial.write_text(page, encoding="utf-8")
    partial.replace(index)  # a reader never sees half a page
    return index


# ---------------------------------------------------------------------------------------------
# Reading the run directory


def _is_stage_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / "metrics.jsonl").is_file()


def load_stage(directory: Path) -> Stage:
    notes: list[str] = []
    manifest_path, metrics_path = directory / "manifest.json", directory / "metrics.jsonl"
    if not manifest_path.is_file():
        notes.append("No manifest.json: the stage has not recorded its status.")
    if not metrics_path.is_file():
        notes.append("No metrics.jsonl: nothing was logged.")
    manifest = _read_json_object(manifest_path) if manifest_path.is_file() else {}
    metrics = read_metrics(metrics_path, notes) if metrics_path.is_file() else {}
    tables: dict[str, dict] = {}
    for table_path in sorted((directory / "tables").rglob("*.jsonl")):
        records = _read_jsonl(table_path, notes)
        for line_number, record in records:
            _check_table_record(table_path, line_number, record)
        if records:
            tables[table_path.relative_to(directory / "tables").with_suffix("").as_posix()] = records[-1][1]
    return Stage(directory.name, directory, manifest, metrics, tables, notes)


def read_metrics(path: Path, notes: list[str]) -> dict[str, Series]:
    """metrics.jsonl as {key: [(step, value), ...]}; a step logged twice keeps its last value."""
    by_key: dict[str, dict[int, float]] = {}
    for line_number, record in _read_jsonl(path, notes):
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{path}:{line_number}: 'step' must be a non-negative integer, got {step!r}")
        for key, value in record.items():
            if key == "step":
                continue
            if not _is_number(value):
                raise ValueError(f"{path}:{line_number}: metric {key!r} must be a number, got {value!r}")
            by_key.setdefault(key, {})[step] = float(value)
    return {key: sorted(points.items()) for key, points in by_key.items()}


def _read_jsonl(path: Path, notes: list[str]) -> list[tuple[int, dict]]:
    """(line number, object) per line.  A cut-off last line (a stage still writing, or killed) is skipped
    with a note; any other line that is not a JSON object is an error."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if line_number == len(lines) and not text.endswith("\n"):
                notes.append(f"{path.name}: the last line is incomplete (stage still running or interrupted); "
                             f"it was left out.")
                continue
            raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
        records.append((line_number, record))
    return records


def _check_table_record(path: Path, line_number: int, record: dict) -> None:
    columns, rows = record.get("columns"), record.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ValueError(f"{path}:{line_number}: a table line needs 'columns' and 'rows' lists "
                         f"(as written by Tracker.log_table)")
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ValueError(f"{path}:{line_number}: rows[{index}] must be a list of {len(columns)} values "
                             f"(one per column {columns})")


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def load_eval_runs(run_dir: Path) -> list[EvalRun]:
    """Eval results in display order: RUN_DIR/eval/<label> ("base" first), then each stage's own eval."""
    stage_results = {name: run_dir / name / "eval" / "results.json" for name in STAGE_ORDER}
    stage_results = {name: path for name, path in stage_results.items() if path.is_file()}
    extra = sorted((run_dir / "eval").glob("*/results.json"), key=lambda p: (p.parent.name != "base", p.parent.name))
    runs = []
    for path in extra:
        label = path.parent.name
        # RUN_DIR/eval/sft next to RUN_DIR/sft/eval: keep both, told apart by where they live.
        runs.append(EvalRun(f"eval/{label}" if label in stage_results else label, path, read_eval_results(path)))
    runs += [EvalRun(name, path, read_eval_results(path)) for name, path in stage_results.items()]
    return runs


def read_eval_results(path: Path) -> dict[str, Any]:
    """An `align eval` results.json, checked for the keys the report uses."""
    results = _read_json_object(path)
    for key in HEADLINE_KEYS:
        if not _is_number(results.get(key)):
            raise ValueError(f"{path}: key {key!r} must be a number (an `align eval` results.json has "
                             f"{', '.join(HEADLINE_KEYS)}, per_type and samples)")
    per_type = results.get("per_type")
    if not isinstance(per_type, dict):
        raise ValueError(f"{path}: key 'per_type' must be an object {{constraint type: {{strict, loose, count}}}}")
    for type_name, entry in per_type.items():
        if not isinstance(entry, dict) or not all(_is_number(entry.get(k)) for k in ("strict", "loose", "count")):
            raise ValueError(f"{path}: per_type[{type_name!r}] must have numbers 'strict', 'loose' and 'count'")
    samples = results.get("samples", [])
    if not isinstance(samples, list):
        raise ValueError(f"{path}: key 'samples' must be a list")
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict) or not all(isinstance(sample.get(k), str) for k in ("prompt", "completion")):
            raise ValueError(f"{path}: samples[{index}] must have string 'prompt' and 'completion'")
    return results


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# HTML

# Sets <body data-images-total data-ready> once every image has loaded, so a headless browser (the tests,
# CI) can check that the page rendered with all of its plots.
_READY_SCRIPT = (
    "window.addEventListener('load', function () {"
    " var images = Array.prototype.slice.call(document.images);"
    " var loaded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });"
    " document.body.dataset.imagesTotal = String(images.length);"
    " document.body.dataset.ready = String(loaded.length);"
    " });"
)
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_READY_SCRIPT.encode()).digest()).decode()
_CSP = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
        f"base-uri 'none'; form-action 'none'")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1240px; padding: 1em 2em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; margin: 0.5em 0; }
.muted { color: #777; font-size: 0.85em; } .up { color: #1a7f37; } .down { color: #c62828; }
td[class^="status-"] { font-weight: bold; } .status-complete { color: #1a7f37; } .status-running { color: #b26a00; }
.status-failed { color: #c62828; } td.nowrap { white-space: nowrap; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em; }
figure { margin: 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; } figcaption { color: #555; }
.sample { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; margin: 1em 0; }
.side-by-side { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 0.6em; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #fafafa; border: 1px solid #eee;
      padding: 0.4em; margin: 0.3em 0; max-height: 22em; overflow-y: auto; font-size: 0.85em; }
.ok { color: #1a7f37; } .miss { color: #c62828; }
nav a { margin-right: 1em; }
"""


def render_page(run_dir: Path, stages: list[Stage], evals: list[EvalRun],
                charts_by_stage: dict[str, list[Chart]], eval_charts: list[Chart]) -> str:
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    nav = "".join(f'<a href="#stage-{stage.name}">{stage.name}</a>' for stage in stages)
    body = [
        f"<h1>Run report: {_esc(run_dir.resolve().name)}</h1>",
        f'<p class="muted">{_esc(run_dir.resolve())} &middot; generated {_esc(generated)}</p>',
        f'<nav><a href="#stages">Stages</a><a href="#eval">Instruction following</a>'
        f'<a href="#samples">Samples</a>{nav}</nav>',
        _stages_section(stages),
        _eval_section(stages, evals, eval_charts),
        _samples_section(evals),
        *(_stage_section(stage, charts_by_stage[stage.name]) for stage in stages),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>align report: {_esc(run_dir.resolve().name)}</title>\n<style>{_STYLE}</style>\n"
        f"<script>{_READY_SCRIPT}</script>\n</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _stages_section(stages: list[Stage]) -> str:
    if not stages:
        return '<h2 id="stages">Stages</h2><p class="note">No stage directories in this run.</p>'
    rows = []
    for stage in stages:
        manifest = stage.manifest
        status = str(manifest.get("status", "unknown"))
        status_class = re.sub(r"[^a-z]", "", status.lower())  # a CSS class name, never markup
        rows.append("<tr>" + "".join([
            f'<td><a href="#stage-{stage.name}">{stage.name}</a></td>',
            f'<td class="status-{status_class}">{_esc(status)}</td>',
            f"<td>{_esc(manifest.get('base_model', '—'))}</td>",
            f"<td class=\"nowrap\">{_esc(manifest.get('started', '—'))}</td>",
            f"<td class=\"nowrap\">{_esc(manifest.get('finished', '—'))}</td>",
            f'<td class="num">{_esc(_duration(manifest))}</td>',
            f'<td class="num">{_esc(_fmt(manifest.get("steps")))}</td>',
            f"<td><code>{_esc(manifest.get('data_fingerprint', '—'))}</code></td>",
            f"<td><code>{_esc(str(manifest.get('config_sha256', '—'))[:12])}</code></td>",
        ]) + "</tr>")
    header = "".join(f"<th>{name}</th>" for name in ("stage", "status", "base model", "started", "finished",
                                                       "duration", "steps", "data fingerprint", "config sha256"))
    return f'<h2 id="stages">Stages</h2><table><tr>{header}</tr>{"".join(rows)}</table>'


def _eval_section(stages: list[Stage], evals: list[EvalRun], charts: list[Chart]) -> str:
    parts = ['<h2 id="eval">Instruction following</h2>']
    unevaluated = [s.name for s in stages if s.name != "rm" and s.name not in {run.label for run in evals}]
    for name in unevaluated:
        parts.append(f'<p class="note">Stage {name} has no eval results ({name}/eval/results.json); run '
                     f"<code>align eval configs/eval.yaml model=RUN_DIR/{name}</code> to add it.</p>")
    if not evals:
        parts.append('<p class="note">No eval results in this run, so there is no before/after comparison.</p>')
        return "\n".join(parts)
    if not any(run.label == "base" for run in evals):
        parts.append('<p class="note">No base-model results (eval/base/results.json): '
                     "accuracies are not compared with the starting model.</p>")
    parts.append(_headline_table(evals))
    parts.append(_generalisation_table(evals))
    parts.append('<div class="charts">' + "".join(_figure(chart) for chart in charts) + "</div>")
    parts.append(_per_type_table(evals))
    return "\n".join(parts)


def _headline_table(evals: list[EvalRun]) -> str:
    base = next((run for run in evals if run.label == "base"), None)
    header = "<tr><th>model</th><th>evaluated</th>" + "".join(f"<th>{key}</th>" for key in HEADLINE_KEYS) + \
             "<th>prompts</th></tr>"
    rows = []
    for run in evals:
        cells = []
        for key in HEADLINE_KEYS:
            value = run.results[key]
            delta = ""
            if base is not None and run is not base:
                change = value - base.results[key]
                delta = f' <span class="{"up" if change > 0 else "down" if change < 0 else "muted"}">' \
                        f"({change:+.3f})</span>"
            cells.append(f'<td class="num">{value:.3f}{delta}</td>')
        rows.append(f"<tr><th>{_esc(run.label)}</th><td>{_esc(run.results.get('model', '—'))}</td>"
                    f'{"".join(cells)}<td class="num">{_esc(_fmt(run.results.get("prompts")))}</td></tr>')
    caption = '<p class="muted">Changes in brackets are against the base model.</p>' if base else ""
    return f"<table>{header}{''.join(rows)}</table>{caption}"


def _generalisation_table(evals: list[EvalRun]) -> str:
    """Unseen constraint types next to in-distribution ones, and the loop and EOS shares at each budget; a stage
    that follows unseen types worse than the base model is marked."""
    rows = {run.label: generalisation_rows(run) for run in evals}
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    if not any("unseen prompt loose" in row for row in rows.values()) and not any("loops" in k for k in keys):
        return ""
    base = rows.get("base", {}).get("unseen prompt loose")
    body = []
    for label, row in rows.items():
        cells = []
        for key in keys:
            value = row.get(key)
            worse = key == "unseen prompt loose" and base is not None and value is not None and value < base
            text = "—" if value is None else f"{value:.3f}" if "prompt" in key else f"{value:.0%}"
            cells.append(f'<td class="num{" down" if worse else ""}">{text}</td>')
        body.append(f"<tr><th>{_esc(label)}</th>{''.join(cells)}</tr>")
    header = "<tr><th>model</th>" + "".join(f"<th>{_esc(k)}</th>" for k in keys) + "</tr>"
    note = ('<p class="muted">Unseen: constraint types no training data carries. Loops: answers that repeat '
            "themselves until cut off (reward.degeneration). EOS: answers that end within the budget. Red: below "
            "the base model.</p>")
    return f"<h3>Generalisation and degeneration</h3><table>{header}{''.join(body)}</table>{note}"


def _loops(entry: dict) -> str:
    share = entry.get("loop_share")
    return f" &middot; loops {share:.0%}" if isinstance(share, (int, float)) else ""


def _per_type_table(evals: list[EvalRun]) -> str:
    from align.eval import per_type_scores

    per_type = [per_type_scores(run.results) for run in evals]  # each run's, once
    types = sorted({name for scores in per_type for name in scores})
    if not types:
        return '<p class="note">The eval results have no per-constraint-type breakdown.</p>'
    header = "<tr><th>constraint type</th>" + "".join(f"<th>{_esc(run.label)}</th>" for run in evals) + "</tr>"
    rows = []
    for name in types:
        cells = []
        for scores in per_type:
            entry = scores.get(name)
            cells.append('<td class="muted">not evaluated</td>' if entry is None else
                         f'<td class="num">{entry["strict"]:.2f} <span class="muted">loose {entry["loose"]:.2f}'
                         f" &middot; n={_esc(_fmt(entry['count']))}{_loops(entry)}</span></td>")
        rows.append(f"<tr><td>{_esc(name)}</td>{''.join(cells)}</tr>")
    return (f"<h3>Per constraint type (strict accuracy)</h3><table>{header}{''.join(rows)}</table>")


def _samples_section(evals: list[EvalRun]) -> str:
    parts = ['<h2 id="samples">Sample completions, side by side</h2>']
    with_samples = [run for run in evals if run.results.get("samples")]
    if not with_samples:
        parts.append('<p class="note">No eval samples to compare.</p>')
        return "\n".join(parts)
    by_label = {run.label: {s["prompt"]: s for s in run.results["samples"]} for run in with_samples}
    # Prompts in the first model's order, those that most models answered first (same prompt text = same row).
    order = list(dict.fromkeys(s["prompt"] for run in with_samples for s in run.results["samples"]))
    coverage = {prompt: sum(prompt in samples for samples in by_label.values()) for prompt in order}
    chosen = sorted(order, key=lambda prompt: -coverage[prompt])[:MAX_SAMPLE_PROMPTS]
    if len(with_samples) > 1 and all(coverage[prompt] == 1 for prompt in chosen):
        parts.append('<p class="note">The evaluated models share no prompts; completions are shown unmatched.</p>')
    parts.append(f'<p class="muted">{len(chosen)} of {len(order)} prompts; models: '
                 f"{_esc(', '.join(run.label for run in with_samples))}.</p>")
    for prompt in chosen:
        columns = []
        for run in with_samples:
            sample = by_label[run.label].get(prompt)
            if sample is None:
                columns.append(f'<div class="completion" data-model="{_esc(run.label)}"><b>{_esc(run.label)}</b>'
                               '<p class="muted">not evaluated on this prompt</p></div>')
            else:
                columns.append(f'<div class="completion" data-model="{_esc(run.label)}"><b>{_esc(run.label)}</b> '
                               f"{_followed_summary(sample)}<pre>{_esc(_clip(sample['completion']))}</pre></div>")
        parts.append(f'<div class="sample"><b>Prompt</b><pre>{_esc(_clip(prompt))}</pre>'
                     f'<div class="side-by-side">{"".join(columns)}</div></div>')
    return "\n".join(parts)


def _followed_summary(sample: dict) -> str:
    """"2/3 followed" plus each constraint type marked followed or missed (strict)."""
    constraints, followed = sample.get("constraints"), sample.get("followed")
    if not isinstance(constraints, list) or not isinstance(followed, list) or len(constraints) != len(followed):
        return ""
    marks = []
    for constraint, ok in zip(constraints, followed):
        name = constraint.get("type", "?") if isinstance(constraint, dict) else constraint
        marks.append(f'<span class="{"ok" if ok else "miss"}">{"&#10003;" if ok else "&#10007;"} {_esc(name)}</span>')
    return (f'<span class="muted">{sum(bool(ok) for ok in followed)}/{len(followed)} followed</span>'
            f'<div class="muted">{" &middot; ".join(marks)}</div>')


def _stage_section(stage: Stage, charts: list[Chart]) -> str:
    parts = [f'<h2 id="stage-{stage.name}">Stage {stage.name}</h2>']
    status = stage.manifest.get("status")
    if status is not None and status != "complete":
        parts.append(f'<p class="note">Status is {_esc(status)}: the stage is still running, was interrupted '
                     "or failed; the curves below stop where it stopped.</p>")
    parts += [f'<p class="note">{_esc(note)}</p>' for note in stage.notes]
    if charts:
        parts.append('<div class="charts">' + "".join(_figure(chart) for chart in charts) + "</div>")
    elif stage.metrics:
        parts.append(f'<p class="note">None of the logged metrics ({_esc(", ".join(sorted(stage.metrics)[:8]))}'
                     "...) has a chart in this report.</p>")
    windows = stage.manifest.get("windows")
    if isinstance(windows, list) and windows and all(isinstance(w, dict) for w in windows):
        parts.append(_windows_table(windows))
    final = stage.manifest.get("metrics")
    if isinstance(final, dict) and final:
        parts.append(_details(f"Final metrics ({len(final)})", dict(sorted(final.items()))))
    rest = {key: value for key, value in _flatten(stage.manifest).items() if key.split(".")[0] != "metrics"}
    if rest:
        parts.append(_details("Manifest", rest))
    for name, table in stage.tables.items():
        parts.append(_training_table(name, table))
    return "\n".join(parts)


def _windows_table(windows: list[dict]) -> str:
    """An RL stage's iterations in windows (align.rl.window_means): how far the policy moved, whether it stops."""
    columns = list(dict.fromkeys(key for window in windows for key in window))
    header = "".join(f"<th>{_esc(column)}</th>" for column in columns)
    rows = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(window.get(column)))}</td>" for column in columns) + "</tr>"
                   for window in windows)
    return (f"<h3>By iteration window</h3><p class=\"muted\">Means over each window of iterations (KL in nats "
            f"per completion).</p><table><tr>{header}</tr>{rows}</table>")


def _details(summary: str, values: dict[str, Any]) -> str:
    """A collapsed key/value table."""
    rows = "".join(f"<tr><td>{_esc(key)}</td><td>{_esc(_fmt(value))}</td></tr>" for key, value in values.items())
    return f"<details><summary>{_esc(summary)}</summary><table>{rows}</table></details>"


def _training_table(name: str, table: dict) -> str:
    header = "".join(f"<th>{_esc(column)}</th>" for column in table["columns"])
    rows = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in table["rows"][:MAX_TABLE_ROWS])
    shown = f"{min(len(table['rows']), MAX_TABLE_ROWS)} of {len(table['rows'])} rows"
    return (f"<h3>Training samples: {_esc(name)}</h3><p class=\"muted\">Last logged step "
            f"{_esc(_fmt(table.get('step')))}, {shown}.</p><table><tr>{header}</tr>{rows}</table>")


def _cell(value: Any) -> str:
    if _is_number(value):
        return f'<td class="num">{_esc(_fmt(value))}</td>'
    text = value if isinstance(value, str) else json.dumps(value)
    return f"<td><pre>{_esc(_clip(text))}</pre></td>"


def _figure(chart: Chart) -> str:
    data = base64.b64encode(chart.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(chart.title)}" '
            f'data-file="{_esc(chart.filename)}"><figcaption>{_esc(chart.title)} '
            f"({_esc(chart.filename)})</figcaption></figure>")


# ---------------------------------------------------------------------------------------------
# Small helpers

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _esc(value: Any) -> str:
    """Text for HTML: markup characters escaped, control characters shown as \\xNN instead of vanishing."""
    text = _CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value))
    return html.escape(text, quote=True)


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"\n… [{len(text) - MAX_TEXT_CHARS} more characters]"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _duration(manifest: dict) -> str:
    try:
        started = dt.datetime.fromisoformat(str(manifest["started"]))
        seconds = int((dt.datetime.fromisoformat(str(manifest["finished"])) - started).total_seconds())
    except (KeyError, ValueError, TypeError):  # missing, unparsable, or one timestamp without a time zone
        return "—"
    # A negative span is a "finished" left over from an earlier attempt of a resumed stage.
    return "—" if seconds < 0 else f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _flatten(value: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat
