"""Process settings made at start-up: glibc's malloc keeps freed memory (the `align` command restarts itself with
its tunables), unless the user's own GLIBC_TUNABLES says otherwise."""

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
