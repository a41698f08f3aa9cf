"""stageflow.serving.processes without starting a process: its argument checks,
port files, the exec wrapper's argv, the forker thread and the signal handling
(signals raised in this process). Real children: tests/integration/test_processes.py
and test_cluster.py."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stageflow.serving import processes
from stageflow.serving.processes import (
    ProcessError,
    ServerProcess,
    Terminated,
    log_tail,
    read_port,
    signals_interrupt,
    stopping,
)


@pytest.fixture
def handlers() -> Iterator[None]:
    """The stop signals' handlers as they were, whatever a test does to them."""
    saved = {sig: signal.getsignal(sig) for sig in processes.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_server_needs_argv_and_a_readiness(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="base: argv is empty"):
        ServerProcess("base", [], log=tmp_path / "log", port_file=tmp_path / "port")
    with pytest.raises(ValueError, match=r"weed: give port_file .* or ready"):
        ServerProcess("weed", ["weed"], log=tmp_path / "log")


def test_what_is_unknown_before_start_says_so(tmp_path: Path) -> None:
    server = ServerProcess("base", ["x"], log=tmp_path / "log", port_file=tmp_path / "port")
    with pytest.raises(ProcessError, match="base was not started"):
        _ = server.pid
    with pytest.raises(ProcessError, match="base: its port is not known yet"):
        _ = server.address
    assert server.returncode is None
    assert server.stop() is None  # stopping what never started is harmless


def test_a_missing_program_fails_in_the_parent_naming_it(tmp_path: Path) -> None:
    missing = ServerProcess(
        "base", ["no-such-program-xyz"], log=tmp_path / "log", port_file=tmp_path / "port"
    )
    with pytest.raises(FileNotFoundError, match="no-such-program-xyz"):
        missing.start()
    relative = ServerProcess(
        "base", ["./nothing-here"], log=tmp_path / "log", port_file=tmp_path / "p", cwd=tmp_path
    )
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        relative.start()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_the_wrapper_execs_the_resolved_program_with_the_same_argv(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "server"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    env = {"PATH": str(program.parent)}
    argv = processes._with_parent_death_signal(["server", "--port", "0"], env, None)
    assert argv[:4] == [sys.executable, "-I", "-S", "-c"]
    assert argv[4] == processes._PDEATHSIG_EXEC
    assert argv[5:] == [str(os.getpid()), str(program), "server", "--port", "0"]
    # relative to the child's working directory, as exec would see it
    relative = processes._with_parent_death_signal(["bin/server"], {}, tmp_path)
    assert relative[6:] == [str(program), "bin/server"]


def test_port_files_and_log_tails(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    assert read_port(port_file) is None
    port_file.write_text("")
    assert read_port(port_file) is None
    port_file.write_text("50051\n")
    assert read_port(port_file) == 50051

    log = tmp_path / "log"
    assert log_tail(log) == "(no log)"
    log.write_text("")
    assert log_tail(log) == "(log is empty)"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 2) == "line 98\nline 99"


def test_forks_from_other_threads_come_from_one_thread_that_outlives_them() -> None:
    forker = processes._Forker()
    assert forker.run(threading.get_ident) == threading.get_ident()  # the main thread: itself
    seen: list[int] = []
    for _ in range(2):
        caller = threading.Thread(target=lambda: seen.append(forker.run(threading.get_ident)))
        caller.start()
        caller.join()
    assert seen[0] == seen[1] != threading.get_ident()
    (thread,) = [t for t in threading.enumerate() if t.ident == seen[0]]
    assert thread.is_alive() and thread.daemon

    def fails() -> None:
        raise OSError("fork failed")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            forker.run(fails)
        except OSError as e:
            errors.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    caller.join()
    assert [str(e) for e in errors] == ["fork failed"]


@pytest.mark.usefixtures("handlers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signals_interrupt_turns_sigterm_and_sighup_into_a_keyboard_interrupt(
    sig: signal.Signals,
) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt) as raised, signals_interrupt():
        signal.raise_signal(sig)
    assert isinstance(raised.value, Terminated) and raised.value.signum == sig
    assert signal.getsignal(sig) is before  # restored


@pytest.mark.usefixtures("handlers")
def test_a_signal_while_stopping_hurries_the_stop_and_comes_back_after_it() -> None:
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    with stopping():
        with stopping():  # stop_all inside LocalCluster.stop: one shared stop
            signal.raise_signal(signal.SIGTERM)
            assert processes._stop_hurry.is_set()
        assert received == []  # not yet: the outer stop is still running
    assert received == [signal.SIGTERM]


@pytest.mark.usefixtures("handlers")
def test_ctrl_c_while_stopping_is_raised_once_the_stop_is_done() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = False
    with pytest.raises(KeyboardInterrupt), stopping():
        signal.raise_signal(signal.SIGINT)
        finished = True
    assert finished
