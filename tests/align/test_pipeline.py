"""The whole chain on `tiny-random` (what CI runs end to end), and its fault tolerance: kill -9 inside every stage
then rerun gives the same final weights as an uninterrupted run; SIGTERM exits 143 and resumes; a half-written
newest checkpoint is skipped; a finished stage with a changed config is refused; secrets never reach the disk."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from align.runtime import MALLOC_TUNABLES
from tests.conftest import MAIN, PINNED, pinned_and_main_snapshots

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "configs" / "pipeline-tiny.yaml"
STAGES = ("sft", "rm", "ppo", "dpo")
SENTINELS = {"WANDB_API_KEY": "sentinel-wandb-key-1b0d6f0e2a", "HF_TOKEN": "hf_sentinelTOKEN93c1f2"}


def align(*args, env=None, **kwargs) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "align", *map(str, args)], cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(stage_dir / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """One full run of the tiny pipeline, logging to offline W&B with secrets in the environment."""
    root = tmp_path_factory.mktemp("uninterrupted")
    env = {**SENTINELS, "WANDB_MODE": "offline", "WANDB_DATA_DIR": str(root / "wandb-data")}
    code, output = finish(align("pipeline", PIPELINE, f"run.root={root}", "tracking_backend=wandb", env=env))
    assert code == 0, output
    return root / "tiny"


def test_the_chain_completes_with_lineage_evaluation_and_report(uninterrupted):
    for stage in STAGES:
        manifest = json.loads((uninterrupted / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", stage
        assert manifest["malloc_tunables"] == os.environ.get("GLIBC_TUNABLES", MALLOC_TUNABLES), stage
    assert json.loads((uninterrupted / "ppo" / "manifest.json").read_text())["parents"]["policy"].endswith("tiny/sft")
    summary = (uninterrupted / "eval" / "summary.md").read_text()
    rows = [line.split(" | ")[0] for line in summary.splitlines()[2:6]]
    assert summary.startswith("| model | in-dist. prompt strict |") and rows == ["| base", "| sft", "| ppo", "| dpo"]
    assert "| metric | base | sft | ppo | dpo |" in summary and "\n| align:" in summary  # unseen types
    assert (uninterrupted / "report" / "index.html").is_file()
    ppo_runs = list((uninterrupted / "ppo" / "wandb").glob("offline-run-*"))
    assert ppo_runs, "the PPO stage logged to an offline W&B run"


def test_each_stage_ran_from_its_resolved_config_which_runs_alone_as_the_same_stage(uninterrupted):
    assert sorted(p.stem for p in (uninterrupted / "configs").glob("*.yaml")) == sorted(STAGES)
    code, output = finish(align("dpo", uninterrupted / "configs" / "dpo.yaml"))
    assert code == 0, output
    assert "is already complete with this config; skipping" in output


def test_ppo_wandb_run_has_per_component_rewards_and_sample_tables_from_several_steps(uninterrupted):
    from align.tracking import read_offline_run

    (run_dir,) = (uninterrupted / "ppo" / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run["job_type"] == "ppo" and run["group"] == "tiny"
    steps_with = lambda key: {row["_step"] for row in run["history"] if key in row}  # noqa: E731
    for key in ("ppo/reward/total", "ppo/reward/reward_model", "ppo/reward/instruction_following", "ppo/kl",
                "ppo/entropy", "ppo/policy_loss", "ppo/value_loss", "ppo/clip_fraction", "ppo/approx_kl",
                "ppo/value_explained_variance", "ppo/response_length", "ppo/eos_rate", "ppo/loop_share",
                "ppo/reward_length_correlation", "ppo/reward_model_verifier_disagreement"):
        assert len(steps_with(key)) >= 2, key
    assert any(k.startswith("ppo/constraint/") for row in run["history"] for k in row)
    tables = run["tables"]["ppo/samples"]
    assert len({t["step"] for t in tables}) >= 2  # the table keeps its history across steps
    assert tables[0]["columns"][:5] == ["iteration", "prompt", "completion", "total", "instruction_following"]
    # the manifest says whether the last iteration's mean KL stayed within train.kl_target
    manifest = json.loads((uninterrupted / "ppo" / "manifest.json").read_text())
    target = yaml.safe_load((uninterrupted / "ppo" / "config.yaml").read_text())["train"]["kl_target"]
    kl = manifest["metrics"]["ppo/kl"]
    assert manifest["metrics"]["ppo/kl_within_target"] == float(kl <= target)
    # and how the policy moved: mean KL, EOS rate, loops... per window of iterations, the last ending at the last
    assert manifest["windows"][-1]["steps"][1] == manifest["steps"]
    assert {"kl", "eos_rate", "loop_share", "response_length", "reward/total"} <= set(manifest["windows"][0])


def test_ppo_value_warmup_trains_the_value_model_and_leaves_the_policy_as_it_was(uninterrupted, tmp_path):
    """With train.value_warmup_iterations = train.iterations only the value loss has gradients: the saved policy is
    the SFT model bit for bit (the pipeline's PPO, without warm-up, moved it), while the value loss is logged; also
    under `precision: bf16` (PPO's auto where bf16 is native), which holds the frozen weights in bf16 while it
    trains and saves the parent's own (`align.precision.restore_frozen_weights`)."""
    code, output = finish(align("ppo", REPO / "configs" / "ppo-tiny.yaml", f"run.root={tmp_path}",
                                f"model.name={uninterrupted / 'sft'}", f"reward.reward_model={uninterrupted / 'rm'}",
                                "train.iterations=2", "train.value_warmup_iterations=2", "train.precision=bf16"))
    assert code == 0, output
    sft, warmed, moved = (weights(path) for path in (uninterrupted / "sft", tmp_path / "tiny" / "ppo",
                                                      uninterrupted / "ppo"))
    assert all(torch.equal(sft[name], warmed[name]) for name in sft)
    assert any(not torch.equal(sft[name], moved[name]) for name in sft)
    logged = [json.loads(line) for line in (tmp_path / "tiny" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2] and all(row["ppo/value_loss"] > 0 for row in logged)


def test_no_secret_reaches_any_file_the_pipeline_writes(uninterrupted):
    for path in uninterrupted.parent.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for name, sentinel in SENTINELS.items():
                assert sentinel.encode() not in data, f"{name} leaked into {path}"


def test_rerun_skips_every_finished_stage(uninterrupted):
    code, output = finish(align("pipeline", PIPELINE, f"run.root={uninterrupted.parent}", "tracking_backend=wandb",
                                env={"WANDB_MODE": "offline"}))
    assert code == 0, output
    assert output.count("is already complete with this config; skipping") == len(STAGES)


def pipeline_with_overrides(directory: Path, stage: str, overrides: str) -> Path:
    """A copy of the tiny pipeline (and its stage configs) in `directory`, with `overrides` on `stage`."""
    pipeline = directory / "pipeline.yaml"
    pipeline.write_text(PIPELINE.read_text().replace(f"config: {stage}-tiny.yaml", f"config: {stage}-tiny.yaml\n"
                                                     f"    overrides: {overrides}"))
    for name in STAGES:
        (directory / f"{name}-tiny.yaml").write_text((REPO / "configs" / f"{name}-tiny.yaml").read_text())
    return pipeline


def test_the_baseline_is_the_snapshot_the_first_stage_pins(tmp_path, monkeypatch):
    """When the first stage pins `model.revision` of a hub id, the pipeline evaluates that snapshot as the base
    model, the weights the stage starts from, not the cache's `main` (a local hub cache whose two snapshots answer
    differently: tests.conftest.hub_snapshots). Each must answer as `align eval` of its own directory does."""
    snapshots = pinned_and_main_snapshots(tmp_path / "hub", monkeypatch)
    pipeline = tmp_path / "pipeline.yaml"
    sft = {"config": str(REPO / "configs" / "sft-tiny.yaml"),
           "overrides": ["model.name=tiny/llama", f"model.revision={PINNED}", "train.max_steps=1"]}
    evaluation = {"max_prompts": 4, "max_new_tokens": 8, "long_budget": None}  # align eval's keys
    pipeline.write_text(yaml.safe_dump({"stage": "pipeline", "run": {"name": "pinned"}, "stages": [sft],
                                        "eval": evaluation}))
    code, output = finish(align("pipeline", pipeline, f"run.root={tmp_path}"))
    assert code == 0, output
    base = json.loads((tmp_path / "pinned" / "eval" / "base" / "results.json").read_text())
    assert base["revision"] == PINNED

    def answers(results: dict) -> list[str]:
        return [sample["completion"] for sample in results["samples"]]

    for snapshot in (PINNED, MAIN):
        out = tmp_path / f"eval-{snapshot[0]}"
        settings = [f"{key}={json.dumps(value)}" for key, value in evaluation.items()]  # None -> null
        code, output = finish(align("eval", REPO / "configs" / "eval.yaml", f"model={snapshots / snapshot}",
                                    f"out={out}", *settings))
        assert code == 0, output
        direct = json.loads((out / "results.json").read_text())
        assert (answers(direct) == answers(base)) == (snapshot == PINNED)


def test_a_finished_stage_with_a_changed_config_is_refused(uninterrupted, tmp_path):
    changed = pipeline_with_overrides(tmp_path, "rm", "[train.margin=0.5]")
    code, output = finish(align("pipeline", changed, f"run.root={uninterrupted.parent}", "tracking_backend=wandb",
                                env={"WANDB_MODE": "offline"}))
    assert code == 2
    assert f"stage 'rm' in {uninterrupted / 'rm'} was run with a different config (changed: train.margin)" in output
    assert output.count("align: error:") == 1 and "align: pipeline:" not in output  # the stage's one line


def wait_for(predicate, process, timeout=300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended before the condition held:\n{process.stdout.read()}")
        time.sleep(0.02)
    raise AssertionError("timed out")


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # gone (also between a check and the read)
        return False


def wait_until_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while alive(pid):
        assert time.time() < deadline, f"process {pid} outlived the pipeline that started it"
        time.sleep(0.05)


def test_kill_9_inside_every_stage_then_rerun_gives_the_uninterrupted_weights(uninterrupted, tmp_path):
    root = tmp_path / "killed"
    for stage in STAGES:
        process = align("pipeline", PIPELINE, f"run.root={root}", "eval.enabled=false")
        checkpoints = root / "tiny" / stage / "checkpoints"
        wait_for(lambda: any(checkpoints.glob("step-*")), process)
        process.kill()  # SIGKILL: no handler runs, nothing is flushed
        process.wait()
        manifest = json.loads((root / "tiny" / stage / "manifest.json").read_text())
        assert manifest["status"] == "running"
        wait_until_gone(manifest["pid"])  # the stage's own process died with the pipeline's
        if stage == STAGES[-1]:  # and a newer checkpoint that was only half written when the machine died
            newest = sorted(checkpoints.glob("step-*"))[-1]
            torn = checkpoints / "step-99999999"
            torn.mkdir()
            data = (newest / "tensors.safetensors").read_bytes()
            (torn / "tensors.safetensors").write_bytes(data[: len(data) // 3])
            (torn / "checkpoint.json").write_text((newest / "checkpoint.json").read_text())
    code, output = finish(align("pipeline", PIPELINE, f"run.root={root}", "eval.enabled=false"))
    assert code == 0, output
    assert "skipping incomplete or corrupted checkpoint" in output and "step-99999999" in output
    for stage in STAGES:
        expected, resumed = weights(uninterrupted / stage), weights(root / "tiny" / stage)
        assert expected.keys() == resumed.keys()
        for name in expected:
            torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=f"{stage}: {name}")


def test_sigterm_to_the_pipeline_stops_its_stage_at_a_checkpoint_and_exits_143(tmp_path):
    pipeline = pipeline_with_overrides(tmp_path, "sft", "[train.epochs=6, train.save_every=1000]")
    process = align("pipeline", pipeline, f"run.root={tmp_path}", "eval.enabled=false")
    metrics = tmp_path / "tiny" / "sft" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and '"sft/loss"' in metrics.read_text(), process)
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code == 143, output
    assert output.count("SIGTERM: finishing this step, then checkpointing") == 1  # passed on once, by the pipeline
    assert json.loads((tmp_path / "tiny" / "sft" / "manifest.json").read_text())["status"] == "interrupted"
    assert list((tmp_path / "tiny" / "sft" / "checkpoints").glob("step-*"))
    assert not (tmp_path / "tiny" / "rm").exists()


def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes(tmp_path):
    config = REPO / "configs" / "sft-tiny.yaml"
    args = ("sft", config, f"run.root={tmp_path}", "train.epochs=6", "train.save_every=1000")
    process = align(*args)
    metrics = tmp_path / "tiny" / "sft" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and '"sft/loss"' in metrics.read_text(), process)
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code == 143, output
    manifest = json.loads((tmp_path / "tiny" / "sft" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    (checkpoint,) = (tmp_path / "tiny" / "sft" / "checkpoints").glob("step-*")  # written on SIGTERM
    step = int(checkpoint.name.split("-")[1])
    code, output = finish(align(*args))
    assert code == 0, output
    assert f"resuming from {checkpoint} at step {step}" in output
