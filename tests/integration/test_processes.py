"""Children die with their parent, however the parent ends: Ctrl-C (SIGINT),
SIGTERM, SIGHUP and SIGKILL.

Two parents, each signalled all four ways: process_parent.py (three tiny
gRPC health servers started through stageflow.serving.processes, one of them
from a thread that has ended, one that ignores SIGTERM), and `stageflow up`
itself (three real stages and the orchestrator). After the signal every child
pid is gone and every child port can be bound again within a few seconds.

Ctrl-C and a hang-up go to the parent's whole process group, as a terminal
sends them; SIGTERM and SIGKILL to its pid, as `kill` does. A child that the
kernel re-parented stays a zombie here when init does not reap it: a zombie
runs nothing and holds no port, so it counts as gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stageflow.serving.processes import health_status, log_tail

PARENT = Path(__file__).with_name("process_parent.py")
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL]
GONE_S = 5.0  # every child gone (grace 1 s in process_parent.py, then SIGKILL)
UP_GONE_S = 20.0  # `stageflow up` drains four real servers in order
UP_NAMES = ("base", "refine", "upscale", "orchestrator")


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def port_free(port: int) -> bool:
    """Whether a server could listen on the port again (SO_REUSEADDR, as servers bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def log_events(path: Path) -> dict[str, str]:
    """event -> timestamp of a process's JSON log (the last of each)."""
    events = {}
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            events[record["event"]] = record["timestamp"]
    return events


def wait_until(what: Callable[[], str], condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what()}")
        time.sleep(0.05)


def send(parent: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if sig in (signal.SIGINT, signal.SIGHUP):
        os.killpg(parent.pid, sig)  # a terminal signals its whole foreground group
    else:
        os.kill(parent.pid, sig)


@contextlib.contextmanager
def parent_process(
    argv: list[str], log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], set[int]]]:
    """The parent in its own process group (as a shell runs a command), with
    SIGINT's default disposition (as a terminal's foreground job has it: a test
    run started in the background by a non-interactive shell ignores SIGINT,
    and its children would inherit that); yields it and a set to fill with its
    children's pids, all SIGKILLed if still alive at the end (a failed test
    leaves nothing running)."""
    with log.open("wb") as out:
        parent = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    children: set[int] = set()
    try:
        yield parent, children
    finally:
        for pid in [parent.pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait()


def assert_all_gone(pids: dict[str, int], ports: dict[str, int], timeout: float) -> None:
    wait_until(
        lambda: f"children gone: {[n for n, p in pids.items() if not gone(p)]}",
        lambda: all(gone(p) for p in pids.values()),
        timeout,
    )
    wait_until(
        lambda: f"ports free: {[n for n, p in ports.items() if not port_free(p)]}",
        lambda: all(port_free(p) for p in ports.values()),
        timeout,
    )


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_children_of_a_parent_die_with_it(sig: signal.Signals, tmp_path: Path) -> None:
    out = tmp_path / "children.json"
    log = tmp_path / "parent.log"
    with parent_process([sys.executable, str(PARENT), str(out)], log) as (parent, leftovers):
        wait_until(lambda: f"children started:\n{log_tail(log)}", out.exists, 60)
        children = json.loads(out.read_text())
        pids = {name: c["pid"] for name, c in children.items()}
        ports = {name: c["port"] for name, c in children.items()}
        leftovers.update(pids.values())
        assert set(pids.values()) == children_of(parent.pid)
        for name, port in ports.items():  # the thread's child outlived its thread
            assert health_status(f"127.0.0.1:{port}") == "SERVING", name

        send(parent, sig)
        parent.wait(timeout=30)
        assert_all_gone(pids, ports, GONE_S)

    stopped = {name for name in children if (tmp_path / f"{name}.stopped").exists()}
    if sig == signal.SIGKILL:
        # Nobody left to stop them in order: the kernel's parent-death signal did.
        assert stopped == set()
    else:
        # An orderly stop: SIGTERM to each, then SIGKILL for the one that ignores it.
        assert stopped == {"main", "thread"}, log_tail(log)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_stageflow_up_stops_its_children_with_it(sig: signal.Signals, tmp_path: Path) -> None:
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "stageflow.cli", "up", "--port", "0", "--state-dir", str(state)]
    # The gRPC processes only (their health and drain lines are what is checked); the
    # gateway is started by the same ServerProcess, whose parent-death path the test
    # above covers.
    argv += ["--gateway-port", "-1"]
    log = tmp_path / "up.log"
    with parent_process(argv, log) as (parent, leftovers):
        up = lambda: "stop with Ctrl-C" in log_tail(log)  # noqa: E731
        wait_until(lambda: f"`stageflow up` up:\n{log_tail(log)}", up, 120)
        pids = {}
        for pid in children_of(parent.pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            pids[cmdline[cmdline.index("--port-file") + 1].rsplit("/", 1)[1]] = pid
        leftovers.update(pids.values())
        assert set(pids) == set(UP_NAMES)
        ports = {name: int((state / "ports" / name).read_text()) for name in UP_NAMES}
        assert all(health_status(f"127.0.0.1:{p}") == "SERVING" for p in ports.values())

        send(parent, sig)
        parent.wait(timeout=60)
        assert_all_gone(pids, ports, UP_GONE_S)

    events = {name: log_events(state / "logs" / f"{name}.log") for name in UP_NAMES}
    if sig == signal.SIGKILL:
        # Nobody left to stop them in order: killed by the kernel, no drain.
        assert not any("draining" in e for e in events.values()), events
    else:
        # Drained and stopped in order: the orchestrator before any stage began to drain.
        assert all("stopped" in e for e in events.values()), events
        orchestrator_stopped = events["orchestrator"]["stopped"]
        assert all(events[s]["draining"] >= orchestrator_stopped for s in UP_NAMES[:3]), events
