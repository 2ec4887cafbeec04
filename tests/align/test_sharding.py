"""align/sharding.py: FSDP2 on 2 CPU processes (torchrun, gloo). The five stages' 2-process runs equal 1-process
runs in tests/align/test_distributed.py (`data_parallel` fsdp2); here, what those runs do not reach: processes
with different numbers of forward passes, and kill -9 then a rerun."""

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.align.launch import REPO, failure_output, finish, kill_launch, torchrun
from tests.align.test_distributed import PPO_REWARD, TIMEOUT, stage_settings
from tests.conftest import arithmetic_rows, write_jsonl


def test_processes_with_different_numbers_of_passes_compute_what_one_unsharded_model_does(tiny_model_dir, tmp_path):
    """6 sequences on one process (2 forward passes), 1 on the other (1 pass, repeated at weight 0): the gathered
    gradients are one model's over all 7; trunk states and values of uneven shares inside `gathered` are the
    unsharded model's (tests/align/fixtures/fsdp2_passes.py)."""
    launch = torchrun("tests/align/fixtures/fsdp2_passes.py", str(tiny_model_dir), str(tmp_path),
                      env={"PYTHONPATH": str(REPO)})
    result = finish(launch, TIMEOUT)
    assert result.returncode == 0, failure_output(result.stdout)
    for rank in (0, 1):
        found = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert found["trained"] and all("lora_" in name for name in found["trained"])
        assert found["grad_scale"] > 1e-3  # gradients worth comparing
        assert found["grads"] <= 1e-5 * max(1.0, found["grad_scale"]), found
        assert found["trunk"] <= 1e-5 and found["values"] <= 1e-5, found


def sft_settings(root) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(root / "train.jsonl", arithmetic_rows(16, seed=5))
    return [f"data.train={data}", "data.eval=null", "data.max_rows=null", "train.max_length=64", "train.pack_length=64",
            "train.eos_check_prompts=0", "train.grad_accum=1", "train.epochs=3", "train.save_every=2"]


def ppo_settings(sft_model) -> list[str]:
    """PPO from `sft_model` with a value model: two trained models, one optimiser."""
    return [f"model.name={sft_model}", "reward.reward_model=null", f"reward.functions={PPO_REWARD}",
            "data.eval=null", "train.iterations=6", "train.prompts_per_iteration=4", "train.minibatch_size=2",
            "train.temperature=1.0", "train.save_every=2"]


def launch_fsdp2(stage: str, root, settings: list[str]):
    config, overrides = stage_settings(stage, root, "two", *settings, "run.data_parallel=fsdp2")
    return torchrun("-m", "align", stage, str(config), *overrides)


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_kill_9_after_a_checkpoint_then_rerun_gives_the_uninterrupted_weights(tmp_path, run_root, stage):
    """SFT, and PPO (policy and value model), on 2 processes with FSDP2, checkpoints every 2 steps (gathered
    weights and optimiser state): every process killed (SIGKILL) once a checkpoint exists, then rerun, gives the
    uninterrupted run's weights bit for bit."""
    settings = {"sft": sft_settings, "ppo": lambda root: ppo_settings(run_root / "tiny" / "sft")}[stage]
    uninterrupted = finish(launch_fsdp2(stage, tmp_path / "a", settings(tmp_path / "a")), TIMEOUT)
    assert uninterrupted.returncode == 0, failure_output(uninterrupted.stdout)
    out = tmp_path / "b" / "two" / stage
    launch = launch_fsdp2(stage, tmp_path / "b", settings(tmp_path / "b"))
    while not any((out / "checkpoints").glob("step-*")) and launch.poll() is None:
        time.sleep(0.05)
    kill_launch(launch.token)  # SIGKILL to torchrun and both workers: no handler runs, nothing is flushed
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    rerun = finish(launch_fsdp2(stage, tmp_path / "b", settings(tmp_path / "b")), TIMEOUT)
    assert rerun.returncode == 0, failure_output(rerun.stdout)
    assert f"resuming from {out / 'checkpoints'}" in rerun.stdout
    expected, resumed = (load_file(d / "two" / stage / "model.safetensors") for d in (tmp_path / "a", tmp_path / "b"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)
