"""Fixtures of the multi-process tests (tests/align/test_distributed.py, tests/align/test_sharding.py)."""

from pathlib import Path

import pytest

from align.config import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """A tiny SFT stage (1 process) for the other stages to start from."""
    from align.sft import SFTConfig
    from align.sft import train as train_sft

    root = tmp_path_factory.mktemp("distributed")
    train_sft(load_config(SFTConfig, REPO / "configs" / "sft-tiny.yaml", [
        f"run.root={root}", "train.max_steps=2", "train.eos_check_prompts=0", "train.precision=fp32"]))
    return root


@pytest.fixture(scope="session", autouse=True)
def no_launched_process_outlives_the_tests():
    """After the last test: every process a test launched (tests.align.launch), and every worker those started,
    is gone; survivors are killed and reported as an error."""
    yield
    from tests.align.launch import LAUNCHED, kill_launch, survivors

    alive = {token: pids for token in LAUNCHED if (pids := survivors(token, grace=2.0))}
    for token in alive:
        kill_launch(token)
    assert not alive, f"processes outlived the tests that launched them: {sorted(alive.values())}"
