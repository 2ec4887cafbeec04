"""Tracking: real W&B offline runs, read back from their .wandb logs; files on disk for every backend.

Tests that depend on environment variables W&B reads (API keys, netrc, WANDB_SILENT) run in a
child process: W&B caches its global settings once per process, so a key set in one test
would otherwise make later `auto`-mode trackers in the same pytest process try to go online.
"""

from __future__ import annotations

import glob
import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from align.tracking import (
    REDACTED,
    TrackingConfig,
    read_offline_run,
    scrub_secrets,
    start_tracker,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _wandb_staging_in_tmp(tmp_path, monkeypatch):
    # W&B stages table/artifact files under its data dir (default ~/.local/share/wandb).
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no W&B credentials anywhere: no env key, no netrc, fresh config dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "HF_TOKEN"}
    env.update(
        HOME=str(tmp_path / "home"),
        NETRC=str(tmp_path / "home" / "no-netrc"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
        PYTHONPATH=str(REPO_ROOT),
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------


def test_offline_wandb_run_reads_back_metrics_config_group_and_table_history(tmp_path):
    out = tmp_path / "sft"
    config = {"model": {"name": "tiny-gpt", "layers": 2}, "train": {"lr": 3e-4}, "hub": {"hf_token": "hf_abc"}}
    tracker = start_tracker(
        TrackingConfig(mode="offline", project="align-test", tags=["unit"]),
        out_dir=out, run_name="demo-sft", group="demo", job_type="sft", config=config,
    )
    assert tracker.run_dir is not None and tracker.run_dir.parent == out / "wandb"
    samples = {1: [["2+2?", "4"]], 2: [["3+3?", "6"], ["hi", "hello"]]}
    for step, loss in [(0, 2.5), (1, 1.75), (2, 1.25)]:
        tracker.log({"sft/loss": loss, "sft/learning_rate": 1e-4 * (step + 1)}, step=step)
        if step in samples:
            tracker.log_table("sft/samples", ["prompt", "completion"], samples[step], step=step)
    tracker.summary({"sft/final_loss": 1.25})
    tracker.finish()

    run = read_offline_run(tracker.run_dir)
    assert run["run_id"] == tracker.run_id
    assert (run["project"], run["job_type"], run["group"], run["tags"]) == ("align-test", "sft", "demo", ["unit"])
    assert run["exit_code"] == 0
    assert run["config"] == {"model": {"name": "tiny-gpt", "layers": 2}, "train": {"lr": 3e-4},
                             "hub": {"hf_token": REDACTED}}
    losses = {row["_step"]: row["sft/loss"] for row in run["history"] if "sft/loss" in row}
    assert losses == {0: 2.5, 1: 1.75, 2: 1.25}
    assert [row["_step"] for row in run["history"]] == [0, 1, 2]  # table and metrics share a step's row
    assert run["summary"]["sft/final_loss"] == 1.25

    # A new table per step under the same key, and an accumulating table with a step column.
    assert run["tables"]["sft/samples"] == [
        {"step": 1, "columns": ["prompt", "completion"], "data": [["2+2?", "4"]]},
        {"step": 2, "columns": ["prompt", "completion"], "data": [["3+3?", "6"], ["hi", "hello"]]},
    ]
    accumulated = [row for increment in run["tables"]["sft/samples_all"] for row in increment["data"]]
    assert accumulated == [[1, "2+2?", "4"], [2, "3+3?", "6"], [2, "hi", "hello"]]

    # The same data is in the stage directory as plain files.
    assert _read_jsonl(out / "metrics.jsonl") == [
        {"step": 0, "sft/loss": 2.5, "sft/learning_rate": 1e-4},
        {"step": 1, "sft/loss": 1.75, "sft/learning_rate": 2e-4},
        {"step": 2, "sft/loss": 1.25, "sft/learning_rate": 1e-4 * 3},
    ]
    assert [(t["step"], t["rows"]) for t in _read_jsonl(out / "tables" / "sft" / "samples.jsonl")] == [
        (1, [["2+2?", "4"]]), (2, [["3+3?", "6"], ["hi", "hello"]]),
    ]
    assert json.loads((out / "summary.json").read_text()) == {"sft/final_loss": 1.25}

    glob_pattern = tracker.sync_hint.removeprefix("wandb sync ")
    assert glob.glob(glob_pattern) == [str(tracker.run_dir)]


def test_artifacts_offline_are_logged_and_inputs_recorded_in_config(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(b"\0" * 64)
    tracker = start_tracker(TrackingConfig(mode="offline"), out_dir=tmp_path / "rm", run_name="demo-rm",
                            group="demo", job_type="reward_model", config={"seed": 1})
    tracker.use_artifact("demo-sft-model", type="model")
    tracker.log_artifact(checkpoint, name="demo-rm-model", type="model")
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        tracker.log_artifact(tmp_path / "missing-dir", name="nope", type="model")
    tracker.finish()

    run = read_offline_run(tracker.run_dir)
    assert {"name": "demo-rm-model", "type": "model"} in run["artifacts"]
    assert run["config"]["lineage_inputs"] == ["model:demo-sft-model"]


def test_resume_continues_the_run_without_duplicating_steps(tmp_path):
    out = tmp_path / "ppo"
    cfg = TrackingConfig(mode="offline")
    first = start_tracker(cfg, out_dir=out, run_name="demo-ppo", group="demo", job_type="ppo", config={"a": 1})
    for step in range(5):
        first.log({"ppo/reward": float(step)}, step=step)
    first.log_table("ppo/samples", ["completion"], [["s4"]], step=4)
    first.finish(exit_code=1)  # the stage crashed after step 4; its last checkpoint was step 2

    second = start_tracker(cfg, out_dir=out, run_name="demo-ppo", group="demo", job_type="ppo", config={"a": 1},
                           resume_id=first.run_id)
    for step in range(3, 7):  # resumed from the step-2 checkpoint: steps 3 and 4 happen again
        second.log({"ppo/reward": 10.0 + step}, step=step)
    second.log_table("ppo/samples", ["completion"], [["s6"]], step=6)
    second.finish()

    assert second.run_id == first.run_id and second.run_dir != first.run_dir
    before, after = read_offline_run(first.run_dir), read_offline_run(second.run_dir)
    assert (before["exit_code"], after["exit_code"]) == (1, 0)
    assert after["run_id"] == first.run_id and after["job_type"] == "ppo" and after["group"] == "demo"
    assert [row["_step"] for row in before["history"]] == [0, 1, 2, 3, 4]
    assert [(row["_step"], row["ppo/reward"]) for row in after["history"]] == [(5, 15.0), (6, 16.0)]
    assert [row["step"] for row in _read_jsonl(out / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5, 6]
    assert [t["step"] for t in _read_jsonl(out / "tables" / "ppo" / "samples.jsonl")] == [4, 6]
    # One `wandb sync` command uploads both local sessions (W&B syncs same-id files in start order).
    assert sorted(glob.glob(second.sync_hint.removeprefix("wandb sync "))) == sorted(
        [str(first.run_dir), str(second.run_dir)])


def test_backend_none_still_writes_metrics_tables_and_summary(tmp_path):
    out = tmp_path / "dpo"
    tracker = start_tracker(TrackingConfig(backend="none"), out_dir=out, run_name="demo-dpo", group="demo",
                            job_type="dpo", config={"beta": 0.1})
    assert tracker.run_dir is None and tracker.sync_hint is None and tracker.run_id
    tracker.log({"dpo/loss": 0.69}, step=0)
    tracker.log({"dpo/loss": 0.5}, step=3)
    tracker.log({"dpo/eval_accuracy": 0.75}, step=3)  # a second call at the same step is kept
    tracker.log({"dpo/loss": 0.9}, step=2)  # going backwards is dropped
    tracker.log_table("samples", ["prompt", "chosen"], [["p", "c"]], step=3)
    tracker.summary({"dpo/final_loss": 0.5})
    tracker.log_artifact(out / "metrics.jsonl", name="unused", type="report")  # no-op, but path checked
    tracker.finish()
    tracker.finish()  # idempotent

    assert _read_jsonl(out / "metrics.jsonl") == [
        {"step": 0, "dpo/loss": 0.69}, {"step": 3, "dpo/loss": 0.5}, {"step": 3, "dpo/eval_accuracy": 0.75},
    ]
    assert _read_jsonl(out / "tables" / "samples.jsonl") == [
        {"step": 3, "columns": ["prompt", "chosen"], "rows": [["p", "c"]]}]
    assert json.loads((out / "summary.json").read_text()) == {"dpo/final_loss": 0.5}
    assert not (out / "wandb").exists()
    with pytest.raises(RuntimeError, match="already finished"):
        tracker.log({"x": 1.0}, step=9)


def test_backend_none_resume_trims_a_torn_line_and_a_fresh_start_truncates(tmp_path):
    out = tmp_path / "grpo"
    cfg = TrackingConfig(backend="none")
    first = start_tracker(cfg, out_dir=out, run_name="r", group="g", job_type="grpo", config={})
    first.log({"loss": 1.0}, step=0)
    first.log({"loss": 0.8}, step=1)
    first.finish(1)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # the process died mid-write

    resumed = start_tracker(cfg, out_dir=out, run_name="r", group="g", job_type="grpo", config={},
                            resume_id=first.run_id)
    assert resumed.run_id == first.run_id
    resumed.log({"loss": 0.7}, step=1)  # already logged before the crash: dropped
    resumed.log({"loss": 0.6}, step=2)
    resumed.finish()
    assert _read_jsonl(out / "metrics.jsonl") == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.8},
                                                  {"step": 2, "loss": 0.6}]

    fresh = start_tracker(cfg, out_dir=out, run_name="r", group="g", job_type="grpo", config={})
    fresh.log({"loss": 5.0}, step=0)
    fresh.finish()
    assert fresh.run_id != first.run_id
    assert _read_jsonl(out / "metrics.jsonl") == [{"step": 0, "loss": 5.0}]


def test_bad_input_names_the_field_and_the_valid_values(tmp_path):
    with pytest.raises(ValueError, match=r"tracking\.backend is 'tensorboard'; valid values are \['wandb', 'none'\]"):
        TrackingConfig(backend="tensorboard")
    with pytest.raises(ValueError, match=r"tracking\.mode is 'sometimes'"):
        TrackingConfig(mode="sometimes")
    tracker = start_tracker(TrackingConfig(backend="none"), out_dir=tmp_path, run_name="r", group="g",
                            job_type="sft", config={})
    with pytest.raises(TypeError, match="metric 'sft/loss' must be a number, got str"):
        tracker.log({"sft/loss": "low"}, step=0)
    with pytest.raises(ValueError, match="step must be a non-negative int, got -1"):
        tracker.log({"sft/loss": 1.0}, step=-1)
    with pytest.raises(ValueError, match=r"table 'samples' step 0: row 1 has 1 values but there are 2 columns"):
        tracker.log_table("samples", ["prompt", "completion"], [["a", "b"], ["c"]], step=0)
    with pytest.raises(ValueError, match="table name '../escape'"):
        tracker.log_table("../escape", ["a"], [["x"]], step=0)
    tracker.finish()


def test_scrub_secrets_redacts_secret_looking_keys_only():
    config = {
        "token": "t", "hf_token": "h", "wandbApiKey": "k", "db_password": "p", "client_secret": "s",
        "hub": {"api_key": "k2", "private_key": "pk", "credentials": {"user": "u"}},
        "runs": [{"auth_token": "a", "name": "ok"}],
        "pad_token": "<pad>", "eos_token_id": 2, "max_new_tokens": 64, "tokenizer": "gpt2", "seed": 1,
        "out": Path("/runs/x"),
    }
    assert scrub_secrets(config) == {
        "token": REDACTED, "hf_token": REDACTED, "wandbApiKey": REDACTED, "db_password": REDACTED,
        "client_secret": REDACTED,
        "hub": {"api_key": REDACTED, "private_key": REDACTED, "credentials": REDACTED},
        "runs": [{"auth_token": REDACTED, "name": "ok"}],
        "pad_token": "<pad>", "eos_token_id": 2, "max_new_tokens": 64, "tokenizer": "gpt2", "seed": 1,
        "out": "/runs/x",
    }
    assert config["hf_token"] == "h"  # the input is not modified


# ---------------------------------------------------------------------------------------------
# Child-process tests (environment-sensitive)

NO_PROMPT_CHILD = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from align.tracking import TrackingConfig, start_tracker, wandb_api_key_configured

    out = Path(sys.argv[1])
    result = {}
    try:
        start_tracker(TrackingConfig(mode="online"), out_dir=out / "online", run_name="r", group="g",
                      job_type="sft", config={})
    except RuntimeError as error:
        result["online_error"] = str(error)
    tracker = start_tracker(TrackingConfig(mode="auto"), out_dir=out / "auto", run_name="r", group="g",
                            job_type="sft", config={"x": 1})
    tracker.log({"loss": 1.0}, step=0)
    tracker.finish()
    result.update(run_dir=str(tracker.run_dir), sync_hint=tracker.sync_hint)

    # W&B's own credential lookup: a netrc entry for its host, or the environment variable.
    netrc = out / "netrc"
    netrc.write_text("machine api.wandb.ai login user password " + "n" * 40 + "\\n")
    os.chmod(netrc, 0o600)
    os.environ["NETRC"] = str(netrc)
    result["key_from_netrc"] = wandb_api_key_configured()
    os.environ["NETRC"] = str(out / "missing-netrc")
    result["key_after_netrc_removed"] = wandb_api_key_configured()
    os.environ["WANDB_API_KEY"] = "e" * 40
    result["key_from_env"] = wandb_api_key_configured()
    print(json.dumps(result))
""")


def _run_child_with_tty(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run with stdin and stderr on a pseudo-terminal that never answers, so a login prompt hangs."""
    master, slave = pty.openpty()
    process = subprocess.Popen(args, stdin=slave, stderr=slave, stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT)
    os.close(slave)
    terminal = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                chunk = b""
            if not chunk:
                break
            terminal += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        shown = terminal.decode()[-2000:]
        raise AssertionError(f"tracker start hung (login prompt?); terminal showed:\n{shown}") from None
    return process.returncode, process.stdout.read().decode(), terminal.decode(errors="replace")


@pytest.mark.parametrize("stdin", ["closed", "unanswered-terminal"])
def test_no_key_auto_goes_offline_online_is_refused_and_nothing_prompts(tmp_path, stdin):
    args = [sys.executable, "-c", NO_PROMPT_CHILD, str(tmp_path / "out")]
    if stdin == "closed":
        completed = subprocess.run(args, env=_child_env(tmp_path), cwd=REPO_ROOT, capture_output=True, text=True,
                                   timeout=60, preexec_fn=lambda: os.close(0))
        returncode, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
    else:
        # WANDB_SILENT=false and TERM set: W&B would be free to prompt if the tracker let it try.
        env = _child_env(tmp_path, WANDB_SILENT="false", TERM="xterm")
        returncode, stdout, stderr = _run_child_with_tty(args, env, timeout=60)
    assert returncode == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert "tracking.mode is 'online' but no W&B API key is configured" in result["online_error"]
    assert "WANDB_API_KEY" in result["online_error"]
    run_dir = Path(result["run_dir"])
    assert run_dir.name.startswith("offline-run-") and run_dir.parent == tmp_path / "out" / "auto" / "wandb"
    hint_lines = [line for line in stderr.splitlines() if "wandb sync" in line]
    assert len(hint_lines) == 1 and "no W&B API key configured" in hint_lines[0]
    assert result["sync_hint"] in hint_lines[0]
    assert read_offline_run(run_dir)["history"][0]["loss"] == 1.0
    assert (result["key_from_netrc"], result["key_after_netrc_removed"], result["key_from_env"]) == (True, False, True)


SECRETS_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from align.tracking import TrackingConfig, start_tracker

    out = Path(sys.argv[1])
    config = {"model": {"name": "tiny"}, "hub": {"hf_token": os.environ["HF_TOKEN"], "repo": "me/tiny"},
              "wandb": {"api_key": os.environ["WANDB_API_KEY"]}, "db": [{"password": "pw-SENTINEL-3"}]}
    tracker = start_tracker(TrackingConfig(mode="offline"), out_dir=out, run_name="r", group="g",
                            job_type="sft", config=config)
    tracker.log({"loss": 1.0}, step=0)
    tracker.log_table("samples", ["prompt"], [["hello"]], step=0)
    tracker.summary({"loss": 1.0, "hf_token": os.environ["HF_TOKEN"]})
    tracker.finish()
    print(tracker.run_dir)
""")


def test_secrets_from_env_and_config_reach_no_file(tmp_path):
    wandb_key = "SENTINELwandbkey" + "0" * 30  # W&B checks the key's format even offline
    hf_token = "hf_SENTINEL_hftoken_123"
    out = tmp_path / "stage"
    completed = subprocess.run(
        [sys.executable, "-c", SECRETS_CHILD, str(out)], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
        env=_child_env(tmp_path, WANDB_API_KEY=wandb_key, HF_TOKEN=hf_token),
    )
    assert completed.returncode == 0, completed.stderr
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.suffix == ".wandb" for path in files) and (out / "metrics.jsonl") in files
    for path in files:
        content = path.read_bytes()
        for sentinel in (wandb_key, hf_token, "pw-SENTINEL-3"):
            assert sentinel.encode() not in content, f"{sentinel} leaked into {path}"
    run = read_offline_run(Path(completed.stdout.strip().splitlines()[-1]))
    assert run["config"]["hub"] == {"hf_token": REDACTED, "repo": "me/tiny"}
    assert run["config"]["wandb"] == {"api_key": REDACTED}
    assert run["summary"]["hf_token"] == REDACTED
