"""Process settings made at start-up: glibc's malloc keeps freed memory (the `align` command of a training stage
restarts itself with its tunables), unless the user's own GLIBC_TUNABLES says otherwise."""

import os
import platform
import subprocess
import sys

import pytest

from align.runtime import MALLOC_TUNABLES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc only")

SHOW = "import os; from align.runtime import keep_freed_memory; keep_freed_memory(); " \
       "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'))"


def run(environment: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | environment
    process = subprocess.Popen([sys.executable, "-c", SHOW], env=env, stdout=subprocess.PIPE, text=True)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    pid, _, tunables = output.strip().partition(" ")
    assert int(pid) == process.pid  # restarted in place: the same process, so signals and waits still reach it
    return tunables


def test_the_process_restarts_itself_with_the_tunables_once():
    assert run({}) == MALLOC_TUNABLES


def test_the_users_own_setting_wins_and_an_empty_one_keeps_glibcs_defaults():
    assert run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == "glibc.malloc.arena_max=2"
    assert run({"GLIBC_TUNABLES": ""}) == ""


def test_only_the_training_stages_restart_with_the_tunables():
    """Training steps free and take back the same large blocks; generation allocates its cache once, so `align eval`
    and `align chat` keep glibc's defaults (less peak memory), and `align pipeline` leaves the choice to each
    stage's process: a setting of its own would reach them all."""
    from align.cli import keeps_freed_memory
    from align.registry import STAGES

    assert all(keeps_freed_memory([stage, "config.yaml"]) for stage in STAGES)
    assert not any(keeps_freed_memory([command, "x"]) for command in ("eval", "chat", "pipeline", "validate", "runs"))
    assert not keeps_freed_memory([])
