"""The unit tier's own rules (tests/unit/conftest.py) hold: every way of starting a
process is refused inside a unit test, before anything is started."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.unit.conftest import ProcessStarted


def test_subprocess_is_refused_naming_the_test() -> None:
    with pytest.raises(ProcessStarted, match=r"test_subprocess_is_refused_naming_the_test"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(ProcessStarted, match="belongs in tests/integration"):
        subprocess.Popen(["true"])


async def test_asyncio_subprocesses_are_refused() -> None:
    with pytest.raises(ProcessStarted):
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    with pytest.raises(ProcessStarted):
        await asyncio.create_subprocess_shell("true")


def test_multiprocessing_spawn_is_refused() -> None:
    process = multiprocessing.get_context("spawn").Process(target=print)
    with pytest.raises(ProcessStarted):
        process.start()


def test_os_level_starters_are_refused() -> None:
    with pytest.raises(ProcessStarted):
        if os.fork() == 0:  # only if the guard failed: the child leaves at once
            os._exit(0)
    with pytest.raises(ProcessStarted):
        if os.forkpty()[0] == 0:
            os._exit(0)
    with pytest.raises(ProcessStarted):
        os.posix_spawn("/bin/true", ["true"], {})
    with pytest.raises(ProcessStarted):
        os.system("true")
