"""Experiment tracking for pipeline stages: one W&B run per stage, plus plain files on disk.

Every stage calls `start_tracker(...)` once and `tracker.finish()` at the end.  Whatever the
backend, the tracker writes the stage directory's own record of what happened:

    <out_dir>/metrics.jsonl          one JSON object per `log` call: {"step": N, "<metric>": value, ...}
    <out_dir>/tables/<name>.jsonl    one JSON object per `log_table` call: {"step", "columns", "rows"}
    <out_dir>/summary.json           the merged `summary(...)` values

With `backend: wandb` the same data also goes to a W&B run whose files live under
`<out_dir>/wandb` (`job_type` = stage name, `group` = pipeline run name).

Mode `auto` goes online only when W&B itself would find an API key (WANDB_API_KEY, an identity
token file, a netrc entry for the W&B host, or the key in W&B's settings file); otherwise it runs
offline and prints one line saying which `wandb sync` command uploads the run later.  No mode ever
prompts for a login: an online run without a key is refused with an error before W&B is called.

Step monotonicity on resume: W&B drops (with a warning) any `log` whose step is lower than the run's
current step, and an offline resume starts a new local session whose own counter starts at 0.
The tracker therefore enforces one rule itself, identically for W&B and the files on disk: a
step lower than the last logged step is dropped (with one warning per session), an equal step
is merged into the same row.  On resume the floor is one past the highest step already in
metrics.jsonl / tables (or W&B's own step counter when online, if that is higher), so steps
that a resumed stage repeats after restarting from an older checkpoint are not logged twice.
Without `resume_id` a stage starts afresh and empties its metrics.jsonl / tables / summary.json.
Backend `none` still hands out a local `run_id`, so a pipeline resumes both backends the same way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BACKENDS = ("wandb", "none")
MODES = ("auto", "online", "offline")

# Artifacts up to this size are copied into W&B (browsable and downloadable from the UI);
# larger ones (model checkpoints) are logged as file:// references: checksums + lineage only.
ARTIFACT_COPY_LIMIT_BYTES = 20 * 1024 * 1024

REDACTED = "<redacted>"
_SECRET_WORDS = {"password", "passwd", "secret", "secrets", "apikey", "credential", "credentials"}
_SECRET_WORD_PAIRS = {("api", "key"), ("private", "key")}
# "<x>_token" is a secret (hf_token, auth_token) unless <x> names a tokenizer special token.
_TOKENIZER_TOKEN_PREFIXES = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "start", "end"}
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Table names may have "/" sections like W&B keys ("sft/samples" -> tables/sft/samples.jsonl).
_TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")


@dataclass
class TrackingConfig:
    """The `tracking:` section of every stage config."""

    backend: str = "wandb"  # wandb | none
    project: str = "align"  # the W&B project
    entity: str | None = None  # the W&B team or user; null: your default entity
    mode: str = "auto"  # auto (online if an API key is configured, else offline) | online | offline
    tags: list[str] = field(default_factory=list)  # W&B tags of the run

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"tracking.backend is {self.backend!r}; valid values are {list(BACKENDS)}")
        if self.mode not in MODES:
            raise ValueError(f"tracking.mode is {self.mode!r}; valid values are {list(MODES)}")
        if not isinstance(self.project, str) or not self.project:
            raise ValueError(f"tracking.project must be a non-empty string, got {self.project!r}")
        if not isinstance(self.tags, list) or not all(isinstance(tag, str) for tag in self.tags):
            raise ValueError(f"tracking.tags must be a list of strings, got {self.tags!r}")


# ---------------------------------------------------------------------------------------------
# Secrets


def _key_looks_secret(key: str) -> bool:
    # Split snake_case, kebab-case, dotted and camelCase keys into lowercase words.
    words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    if not words:
        return False
    if any(word in _SECRET_WORDS for word in words):
        return True
    if any(pair in _SECRET_WORD_PAIRS for pair in zip(words, words[1:])):
        return True
    if words[-1] == "token":
        return len(words) == 1 or words[-2] not in _TOKENIZER_TOKEN_PREFIXES
    return False


def scrub_secrets(value: Any) -> Any:
    """A copy of `value` with every secret-looking key's value replaced by "<redacted>".

    Secret-looking: api_key / apiKey, *password*, *passwd*, *secret*, *credential*, private_key,
    token or <x>_token (but not tokenizer keys like pad_token, nor max_new_tokens).
    Paths become strings and tuples lists, so the result is plain JSON-able config.
    """
    if isinstance(value, dict):
        return {
            key: (REDACTED if isinstance(key, str) and _key_looks_secret(key) else scrub_secrets(item))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub_secrets(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# Mode resolution


def wandb_api_key_configured() -> bool:
    """Whether W&B would find credentials for its configured host, without ever prompting.

    Uses W&B's own lookup (env WANDB_API_KEY / WANDB_IDENTITY_TOKEN_FILE, netrc entry for the
    host, settings file) so that `auto` agrees with what `wandb.init` would do.
    """
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    host = wandb_setup.singleton().settings.base_url
    credentials = wbauth.authenticate_session(
        host=host, source="align.tracking", prompt=False, update_session=False
    )
    return credentials is not None


def _resolve_mode(cfg: TrackingConfig) -> tuple[str, str]:
    """The W&B mode to use and a short reason, for the one line printed when offline."""
    if cfg.mode == "offline":
        return "offline", "tracking.mode is offline"
    if cfg.mode == "online":
        if not wandb_api_key_configured():
            raise RuntimeError(
                "tracking.mode is 'online' but no W&B API key is configured: set WANDB_API_KEY, "
                "run `wandb login`, or use tracking.mode 'auto' / 'offline'"
            )
        return "online", "tracking.mode is online"
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun"):
        return "offline", "WANDB_MODE=offline"
    if wandb_api_key_configured():
        return "online", "an API key is configured"
    return "offline", "no W&B API key configured"


# ---------------------------------------------------------------------------------------------
# Tracker


class Tracker:
    """Logs a stage's metrics, tables, summary and artifacts to disk and (optionally) to W&B."""

    def __init__(self, *, out_dir: Path, wandb_run: Any, run_id: str | None, resume: bool,
                 sync_hint: str | None) -> None:
        self.out_dir = out_dir
        self.run_id = run_id
        self.sync_hint = sync_hint
        self.run_dir: Path | None = Path(wandb_run.dir).parent if wandb_run is not None else None
        self._run = wandb_run
        self._inputs: list[str] = []
        self._accumulating_tables: dict[str, Any] = {}  # table name -> wandb.Table(INCREMENTAL)
        self._table_columns: dict[str, list[str]] = {}
        self._dropped_steps = 0
        self._finished = False

        self._tables_dir = out_dir / "tables"
        metrics_path = out_dir / "metrics.jsonl"
        if resume:
            files = [metrics_path, *sorted(self._tables_dir.rglob("*.jsonl"))]
            self._min_step = max([_next_step_in_jsonl(path) for path in files], default=0)
            if wandb_run is not None:
                # Online resumes know the server's step; offline sessions always report 0.
                self._min_step = max(self._min_step, int(wandb_run.step))
        else:
            # A fresh (non-resumed) run owns the stage directory's records: start them empty.
            self._min_step = 0
            for path in self._tables_dir.rglob("*.jsonl"):
                path.unlink()
            (out_dir / "summary.json").unlink(missing_ok=True)
        self._metrics_file = open(metrics_path, "a" if resume else "w", encoding="utf-8")

    # -- logging ---------------------------------------------------------------------------

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at `step` (to metrics.jsonl and W&B)."""
        self._check_open()
        _check_step(step)
        values = {key: _as_number(key, value) for key, value in metrics.items()}
        if not self._accept_step(step):
            return
        _append_jsonl(self._metrics_file, {"step": step, **values})
        if self._run is not None:
            self._run.log(values, step=step)

    def table_columns(self, name: str) -> list[str] | None:
        """The columns table `name` was first logged with (every later step must use them), or None."""
        return self._table_columns.get(name)

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        """Log a sample table at `step`, keeping every step's rows.

        Disk: one line appended to tables/<name>.jsonl ("a/b" -> tables/a/b.jsonl).  W&B: a new table under key `name`
        (the UI's step slider shows each step's samples) and an accumulating table under
        `<name>_all` with a leading "step" column (all samples so far, uploaded incrementally).
        """
        self._check_open()
        _check_step(step)
        _check_name("table name", name, _TABLE_NAME)
        columns = [str(column) for column in columns]
        known_columns = self._table_columns.setdefault(name, columns)
        if columns != known_columns:
            raise ValueError(f"table {name!r}: columns changed from {known_columns} to {columns}")
        for index, row in enumerate(rows):
            if len(row) != len(columns):
                raise ValueError(
                    f"table {name!r} step {step}: row {index} has {len(row)} values "
                    f"but there are {len(columns)} columns {columns}"
                )
        if not self._accept_step(step):
            return
        table_path = self._tables_dir / f"{name}.jsonl"
        table_path.parent.mkdir(parents=True, exist_ok=True)
        with open(table_path, "a", encoding="utf-8") as table_file:
            _append_jsonl(table_file, {"step": step, "columns": columns, "rows": [list(r) for r in rows]})
        if self._run is not None:
            import wandb

            accumulating = self._accumulating_tables.get(name)
            if accumulating is None:
                accumulating = wandb.Table(columns=["step", *columns], log_mode="INCREMENTAL")
                self._accumulating_tables[name] = accumulating
            for row in rows:
                accumulating.add_data(step, *row)
            this_step = wandb.Table(columns=columns, data=[list(row) for row in rows])
            self._run.log({name: this_step, f"{name}_all": accumulating}, step=step)

    def summary(self, values: dict) -> None:
        """Set final/headline values (W&B run summary; merged into summary.json)."""
        self._check_open()
        values = scrub_secrets(values)
        summary_path = self.out_dir / "summary.json"
        merged = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
        merged.update(values)
        summary_path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if self._run is not None:
            self._run.summary.update(values)

    def log_artifact(self, path: Path, name: str, type: str) -> None:
        """Record `path` (file or directory) as a W&B artifact output of this stage; no-op for none.

        Up to ARTIFACT_COPY_LIMIT_BYTES the files are copied into the artifact; above that it holds
        file:// references (checksums and lineage, no upload), which suits model checkpoints.
        """
        self._check_open()
        path = Path(path)
        _check_name("artifact name", name)
        if not path.exists():
            raise FileNotFoundError(f"artifact {name!r}: path {path} does not exist")
        if self._run is None:
            return
        import wandb

        artifact = wandb.Artifact(name, type=type)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        if sum(f.stat().st_size for f in files) > ARTIFACT_COPY_LIMIT_BYTES:
            artifact.add_reference(path.resolve().as_uri(), name=path.name if path.is_file() else None)
        elif path.is_file():
            artifact.add_file(str(path))
        else:
            artifact.add_dir(str(path))
        self._run.log_artifact(artifact)

    def use_artifact(self, name: str, type: str) -> None:
        """Declare that this stage consumes artifact `name` (input lineage).

        Always recorded in the run config under `lineage_inputs`; online runs also call W&B's
        use_artifact so the lineage graph links the stages.  W&B cannot resolve artifacts
        offline, so offline runs keep only the config record.
        """
        self._check_open()
        _check_name("artifact name", name)
        self._inputs.append(f"{type}:{name}")
        if self._run is None:
            return
        self._run.config.update({"lineage_inputs": list(self._inputs)}, allow_val_change=True)
        if not self._run.offline:
            import wandb

            try:
                self._run.use_artifact(f"{name}:latest", type=type)
            except wandb.errors.CommError as error:
                # The producing stage may have run offline and not been synced yet.
                logger.warning("W&B could not find artifact %s:latest (%s); lineage kept in config only",
                               name, error)

    def finish(self, exit_code: int = 0) -> None:
        """Close the files and the W&B run (a second call does nothing)."""
        if self._finished:
            return
        self._finished = True
        self._metrics_file.close()
        if self._dropped_steps:
            logger.warning("tracking: dropped %d log call(s) for steps already logged", self._dropped_steps)
        if self._run is not None:
            self._run.finish(exit_code=exit_code)

    # -- internals -------------------------------------------------------------------------

    def _accept_step(self, step: int) -> bool:
        if step < self._min_step:
            if self._dropped_steps == 0:
                logger.warning(
                    "tracking: step %d is below step %d that is already logged; dropping it "
                    "(W&B steps must not go backwards; later drops are counted silently)",
                    step, self._min_step,
                )
            self._dropped_steps += 1
            return False
        self._min_step = step
        return True

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"tracker for {self.out_dir} is already finished")


def start_tracker(cfg: TrackingConfig, *, out_dir: Path, run_name: str, group: str, job_type: str,
                  config: dict, resume_id: str | None = None) -> Tracker:
    """Start tracking one stage. `resume_id` (a previous `tracker.run_id`) continues that run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.backend == "none":
        # No W&B id exists, but a local id still lets a pipeline pass it back to resume.
        run_id = resume_id or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        return Tracker(out_dir=out_dir, wandb_run=None, run_id=run_id, resume=resume_id is not None,
                       sync_hint=None)

    # Quiet W&B's own banner/progress lines so training logs stay readable.  W&B reads this once,
    # when it first loads its global settings (which the API-key check below does); an explicit
    # WANDB_SILENT=false in the environment wins.
    os.environ.setdefault("WANDB_SILENT", "true")
    mode, reason = _resolve_mode(cfg)
    import wandb

    offline = mode == "offline"
    settings = wandb.Settings(
        silent=True,
        save_code=False,  # the code is in git; the pipeline logs what it needs in the config
        disable_git=True,  # no git commit/diff capture (slow on big repos, may leak local paths)
        console="off" if offline else "wrap",  # offline: leave stdout/stderr untouched
        x_disable_stats=offline,  # offline runs are CPU/dev runs: no system-metrics sampler
        x_disable_machine_info=offline,
    )
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=run_name,
        group=group,
        job_type=job_type,
        tags=list(cfg.tags),
        config=scrub_secrets(config),
        dir=str(out_dir),
        mode=mode,
        id=resume_id,
        resume="allow" if resume_id else None,
        reinit="create_new",  # never hand back another stage's still-open run
        settings=settings,
    )
    sync_hint = None
    if offline:
        sync_hint = f"wandb sync {shlex.quote(str(out_dir / 'wandb'))}/offline-run-*-{run.id}*"
        print(f"tracking: W&B run {run.id} is offline ({reason}); upload it later with: {sync_hint}",
              file=sys.stderr, flush=True)
    return Tracker(out_dir=out_dir, wandb_run=run, run_id=run.id, resume=resume_id is not None,
                   sync_hint=sync_hint)


# ---------------------------------------------------------------------------------------------
# Reading an offline run back (tests, debugging)


def read_offline_run(run_dir: Path) -> dict:
    """Read a W&B run directory (`<out_dir>/wandb/offline-run-...`) back from its .wandb log.

    Uses `wandb leet inspect --json`, W&B's own reader for the transaction log.  Returns
    {"run_id", "project", "job_type", "group", "tags", "exit_code" (None while running),
     "config" (nested, as logged), "history" (one dict per step, with "_step"), "summary",
     "tables" ({key: [{"step", "columns", "data"}]}, read from the
     table files the history points to), "artifacts" ([{"name", "type"}])}.
    In history and summary, media such as tables appear as flat "<key>.<field>" entries, as W&B
    stores them.  A resumed run has one directory per session: read each.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or len(list(run_dir.glob("run-*.wandb"))) != 1:
        raise FileNotFoundError(f"{run_dir} is not a W&B run directory with exactly one run-*.wandb file")
    completed = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"`wandb leet inspect --json {run_dir}` failed: {completed.stderr.strip()}")

    result: dict[str, Any] = {"run_id": None, "project": None, "job_type": None, "group": None, "tags": [],
                              "exit_code": None, "config": {}, "history": [], "summary": {},
                              "tables": {}, "artifacts": []}
    for line in completed.stdout.splitlines():
        record = json.loads(line)
        kind = record.get("type")
        body = record.get(kind, {})
        if kind == "run":
            result.update(run_id=body.get("run_id"), project=body.get("project"), job_type=body.get("job_type"),
                          group=body.get("run_group"), tags=body.get("tags", []))
            result["config"].update(body.get("config", {}).get("update", {}))
        elif kind == "config":
            result["config"].update(body.get("update", {}))
        elif kind == "history":
            result["history"].append(body["item"])
        elif kind == "summary":
            result["summary"].update(body.get("update", {}))
            for removed in body.get("remove", []):  # {"key": "a"} or {"nested_key": ["a", "b"]}
                result["summary"].pop(removed.get("key") or ".".join(removed.get("nested_key", [])), None)
        elif kind == "artifact":
            result["artifacts"].append({"name": body.get("name"), "type": body.get("type")})
        elif kind == "exit":
            result["exit_code"] = body.get("exit_code", 0)
    result["config"].pop("_wandb", None)

    for row in result["history"]:
        for key, value in row.items():
            if key.endswith("._type") and value in ("table-file", "incremental-table-file"):
                table_key = key[: -len("._type")]
                table = json.loads((run_dir / "files" / row[f"{table_key}.path"]).read_text(encoding="utf-8"))
                result["tables"].setdefault(table_key, []).append(
                    {"step": row["_step"], "columns": table["columns"], "data": table["data"]}
                )
    return result


# ---------------------------------------------------------------------------------------------
# Small helpers


def _check_step(step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")


def _check_name(what: str, name: str, pattern: re.Pattern = _ARTIFACT_NAME) -> None:
    if not isinstance(name, str) or not pattern.match(name):
        allowed = "letters, digits, '_', '-', '.'" + (" and '/' between sections" if pattern is _TABLE_NAME else "")
        raise ValueError(f"{what} {name!r} must start with a letter or digit and contain only {allowed}")


def _as_number(key: str, value: Any) -> float | int:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    return value


def _append_jsonl(file: Any, obj: dict) -> None:
    # Flushed per line so a crash loses at most the line being written.
    file.write(json.dumps(obj) + "\n")
    file.flush()


def _next_step_in_jsonl(path: Path) -> int:
    """One past the highest "step" in a jsonl file (0 if none), trimming a torn last line."""
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        # The previous process died mid-write: drop the partial line so appends stay valid JSONL.
        text = text[: text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    steps = [json.loads(line)["step"] for line in text.splitlines() if line.strip()]
    return max(steps) + 1 if steps else 0
