"""Rerunning a stage with a changed config: an earlier attempt that stopped before its first step (nothing trained,
nothing to resume) is discarded and the new config runs; an attempt with progress (a checkpoint, a completed step,
a complete manifest) keeps its protection and is refused, naming the changed keys."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from align.checkpoint import save_checkpoint
from align.cli import main
from align.config import ConfigError, load_config
from align.sft import SFTConfig
from align.stage import begin_stage, finish_stage
from tests.conftest import arithmetic_rows, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def sft(tmp_path: Path, learning_rate: float = 2e-4) -> SFTConfig:
    return load_config(SFTConfig, REPO / "configs" / "sft-tiny.yaml",
                       [f"run.root={tmp_path}", f"train.learning_rate={learning_rate}"])


def saved_learning_rate(out: Path) -> float:
    return yaml.safe_load((out / "config.yaml").read_text())["train"]["learning_rate"]


@pytest.mark.parametrize("ended", ["failed", "killed"])
def test_an_attempt_that_stopped_before_its_first_step_restarts_with_the_new_config(tmp_path, capsys, ended):
    out, _, _ = begin_stage(sft(tmp_path))
    if ended == "failed":  # what run_stage records when the stage raised before a step
        finish_stage(out, "failed", steps=0)
    # killed: the manifest still says running and has no steps; TRL may have made its (empty) output folder
    (out / "checkpoints" / "trl").mkdir(parents=True)
    (out / "wandb").mkdir()
    (out / "wandb" / "debug.log").write_text("the earlier attempt's run")

    again, resume_from, done = begin_stage(sft(tmp_path, learning_rate=1e-3))
    assert (again, resume_from, done) == (out, None, False)
    assert (f"[align] sft: the earlier attempt in {out} stopped before its first step; starting afresh with the "
            "new config") in capsys.readouterr().out
    assert saved_learning_rate(out) == 1e-3
    assert not (out / "wandb").exists()  # discarded with the attempt
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"


@pytest.mark.parametrize("progress", ["checkpoint", "a completed step", "complete"])
def test_an_attempt_with_progress_keeps_its_protection(tmp_path, progress):
    out, _, _ = begin_stage(sft(tmp_path))
    if progress == "checkpoint":  # e.g. killed between writing a checkpoint and the manifest
        save_checkpoint(out / "checkpoints", 2, {"w": torch.zeros(2)}, {"step": 2})
    else:
        finish_stage(out, "complete" if progress == "complete" else "failed",
                     steps=1 if progress == "a completed step" else 0)
    with pytest.raises(ConfigError, match=r"different config \(changed: train.learning_rate\); rerun with --restart"):
        begin_stage(sft(tmp_path, learning_rate=1e-3))
    assert saved_learning_rate(out) == 2e-4


def test_a_stage_saved_before_factory_kwargs_existed_is_the_same_config(tmp_path):
    """reward.functions entries written by an older version lack `factory_kwargs`: at its default, not a change;
    a real change inside an entry is named by its index."""
    from align.ppo import PPOConfig

    cfg = load_config(PPOConfig, None, [f"run.root={tmp_path}", "reward.functions=[{name: no_repetition}]"])
    out, _, _ = begin_stage(cfg)
    finish_stage(out, "interrupted", steps=1)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["reward"]["functions"][0]["factory_kwargs"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "config_sha256": "from an older version"}))
    assert begin_stage(cfg)[0] == out
    changed = load_config(PPOConfig, None, [f"run.root={tmp_path}",
                                            "reward.functions=[{name: no_repetition, weight: 2.0}]"])
    with pytest.raises(ConfigError, match=r"changed: reward.functions\[0\].weight\)"):
        begin_stage(changed)


def test_a_stage_that_failed_on_bad_data_reruns_once_the_data_is_fixed(tmp_path, capsys):
    """The issue's case end to end: the first run stops at a bad row before training; the rerun with the corrected
    data file trains, without --restart."""
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    good = write_jsonl(tmp_path / "good.jsonl", arithmetic_rows(16))
    config = REPO / "configs" / "sft-tiny.yaml"
    common = [f"run.root={tmp_path / 'runs'}", "data.eval=null", "train.max_steps=1", "train.eos_check_prompts=0"]
    assert main(["sft", str(config), f"data.train={bad}", *common]) == 2
    assert "must end with an assistant turn" in capsys.readouterr().err
    out = tmp_path / "runs" / "tiny" / "sft"
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"

    assert main(["sft", str(config), f"data.train={good}", *common]) == 0
    assert "stopped before its first step; starting afresh with the new config" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
