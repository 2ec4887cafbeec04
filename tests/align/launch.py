"""Launching multi-process runs from tests so that nothing outlives them.

torchrun starts every worker in a session (process group) of its own (torch.distributed.elastic's
SubprocessHandler passes start_new_session=True), so killing torchrun's process group alone leaves the workers
running: a worker blocked in a gloo collective then waits for its peer forever. Each launch here therefore carries
a marker in its environment, which every process it starts inherits, and a timed-out launch has the process group
of every process carrying that marker killed (SIGKILL), its own first, so that it can start nothing new.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = "ALIGN_TEST_LAUNCH"
LAUNCHED: list[str] = []  # the token of every launch of this test session (checked at its end: tests/align/conftest)


def launch(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start `args` in the repository, in a new session, its environment marked with a token of its own (the
    returned process's `.token`); stdout and stderr are read together."""
    token = uuid.uuid4().hex
    LAUNCHED.append(token)
    output = tempfile.TemporaryFile("w+")  # a file, not a pipe: a launch nobody reads yet never blocks on a full pipe
    process = subprocess.Popen(args, cwd=REPO, env={**os.environ, **(env or {}), MARKER: token},
                               stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    process.token, process.output = token, output
    return process


def printed(process: subprocess.Popen) -> str:
    process.output.seek(0)
    return process.output.read()


FIRST_FAILURE = re.compile(r"Traceback|terminate called|Fatal Python error|Segmentation fault|double free|"
                           r"corrupted|what\(\):")


def failure_output(text: str, tail: int = 4000) -> str:
    """What a failed launch printed, for an assertion message: the first failure's lines (a worker's traceback or
    abort message), which the tracebacks of the workers it took down push out of the tail, then the tail."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if FIRST_FAILURE.search(line)), None)
    head = "" if first is None else "\n".join(lines[first : first + 25])[:tail] + "\n[...]\n"
    return head + text[-tail:]


def torchrun(*args: str, nproc: int = 2, node: tuple[int, int, int] | None = None,
             env: dict | None = None) -> subprocess.Popen:
    """`python -m torch.distributed.run ... -m align ARGS` with one thread per process (2 processes on 2 cores).
    `node`: (node_rank, nnodes, master_port) for a multi-node launch over the loopback address."""
    if node is None:  # as the README's launches: with no port given, torchrun meets on a port the OS picks (a c10d
        nodes = []    # rendezvous on localhost:0), never one taken by another run or freed and taken again meanwhile
    else:
        nodes = ["--nnodes", str(node[1]), "--node_rank", str(node[0]), "--master_addr", "127.0.0.1",
                 "--master_port", str(node[2])]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *nodes, *args]
    return launch(command, {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})})


def finish(process: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for `process`; past `timeout` seconds kill every process it started and raise TimeoutExpired with
    what it printed."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_launch(process.token)
        process.wait()
        raise subprocess.TimeoutExpired(process.args, timeout, output=printed(process)) from None
    return subprocess.CompletedProcess(process.args, process.returncode, printed(process))


def finish_all(processes: list[subprocess.Popen], timeout: float) -> list[subprocess.CompletedProcess]:
    """`finish` each of `processes` (launches that work together, e.g. the nodes of one run) within `timeout`
    seconds in all; past it, or when one fails to finish, every one of them is killed (`kill_launch`)."""
    deadline = time.time() + timeout
    try:
        return [finish(process, max(1.0, deadline - time.time())) for process in processes]
    finally:
        for process in processes:
            kill_launch(process.token, patience=2.0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- processes by marker --------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[2])


def marked(token: str) -> list[int]:
    """Live processes (zombies left out: they hold no resources and wait only to be reaped) whose environment
    carries `token`."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        stat = _stat(int(entry.name))
        if needle in environment.split(b"\0") and stat and stat[0] != "Z":
            found.append(int(entry.name))
    return found


def kill_launch(token: str, patience: float = 10.0) -> None:
    """SIGKILL the process group of every live process carrying `token` until none is left (or `patience`
    seconds pass)."""
    deadline = time.time() + patience
    while time.time() < deadline:
        pids = marked(token)
        if not pids:
            return
        groups = []
        for pid in pids:
            stat = _stat(pid)
            if stat and stat[1] not in groups:
                groups.append(stat[1])
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def survivors(token: str, grace: float = 5.0) -> list[int]:
    """Processes carrying `token` still alive after up to `grace` seconds (SIGKILL is delivered asynchronously)."""
    deadline = time.time() + grace
    while (alive := marked(token)) and time.time() < deadline:
        time.sleep(0.1)
    return alive
