"""The one way to run a server process: start it, wait until it serves, stop it.

`stageflow up`/`demo` (through `stageflow.cli.cluster.LocalCluster`), the
benchmarks and the tests all start their servers here:

    with ServerProcess("base", argv, log=log, port_file=port_file) as base:
        call(base.address)

**Start.** `argv` runs with stdout and stderr in `log`, stdin closed, in a new
session (so a terminal's Ctrl-C reaches only the parent, which then stops its
children in order).

**Ready.** A stageflow server writes the port it bound to `--port-file` (see
`stageflow.serving.server.write_port_file`: atomically, after bind and before
startup) and answers grpc.health.v1 SERVING once its startup (a model load)
is done. `wait_ready` waits for both, polling every `poll_s` over one channel,
never guessing with a sleep. A server that is not ours (SeaweedFS) passes
`ready=`, a check called until it returns True. When the process exits
first, or the wait times out, `ProcessError` says so with the last lines of
its log.

**Stop.** SIGTERM (stageflow servers drain), `grace` seconds, then SIGKILL of
the child's whole process group; the child is reaped. `stop_all` stops several
at once (SIGTERM to all, one shared grace); call it once per tier to stop in
order. A signal that arrives while children are being stopped does not cut the
stop short: it makes it hurry (SIGKILL at once), and is delivered again once
the outermost stop is done.

**Children always die with their parent.** Four ways a parent ends, four
mechanisms:

- Ctrl-C (SIGINT): Python raises KeyboardInterrupt in the main thread; the
  `with` blocks and `finally` clauses that own the processes stop them.
- SIGTERM and SIGHUP: their default action would end the parent at once, with
  no `finally` run. Inside `signals_interrupt()` they raise `Terminated` (a
  KeyboardInterrupt) instead, so they take the Ctrl-C path. Parents that own
  processes for a long time (`stageflow up`, the benchmarks) run inside it.
- Normal exit with processes still running: an atexit hook stops them.
- SIGKILL (or any death that runs no Python): on Linux every child is started
  through a few lines of Python (`_PDEATHSIG_EXEC`, about 15 ms) that ask the
  kernel, with prctl(PR_SET_PDEATHSIG, SIGKILL), to SIGKILL it when its parent
  dies, then exec the real argv (the setting survives exec). The kernel ties
  that signal to the *thread* that forked, not the process: a child forked
  from a short-lived thread (asyncio.to_thread, a thread pool) would be killed
  when that thread ends. So children are forked from the main thread or, when
  started from any other thread, from one forker thread that lives as long as
  the process. And since the parent may die between fork and prctl, the child
  checks afterwards that its parent is still the one that started it, and
  exits if not. SIGKILL, not SIGTERM: a parent that is gone cannot wait out a
  grace, and a child that ignores SIGTERM must not survive it.

What none of this covers: a grandchild that leaves its process group (its own
setsid) survives a stop, and a grandchild outlives a SIGKILLed parent unless it
sets its own parent-death signal (stageflow servers start no children).
Elsewhere than Linux there is no parent-death signal: SIGKILL of the parent
leaves its children running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "STOP_SIGNALS",
    "ProcessError",
    "ServerProcess",
    "Terminated",
    "health_status",
    "log_tail",
    "read_port",
    "signals_interrupt",
    "stop_all",
    "stopping",
    "wait_ready",
]

# The signals that ask a parent to stop: Ctrl-C, `kill`, a closed terminal.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_S = 0.05
LOG_TAIL_LINES = 40
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_GRACE_S = 15.0

# Run as `python -I -S -c _PDEATHSIG_EXEC <parent pid> <executable> <argv...>`.
_PDEATHSIG_EXEC = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
if os.getppid() != int(sys.argv[1]):
    os._exit(1)  # the parent died before prctl: no signal would ever come
os.execv(sys.argv[2], sys.argv[3:])
"""
_HAS_PDEATHSIG = sys.platform == "linux"
T = TypeVar("T")


class ProcessError(RuntimeError):
    """A server process exited before it was ready, or did not get ready in time."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP inside `signals_interrupt()`: stop as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def read_port(path: Path) -> int | None:
    """The port in a port file, or None while it is missing."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def health_status(address: str, timeout: float = 1.0) -> str:
    """grpc.health.v1 Check of the whole server: SERVING, NOT_SERVING, ... or UNREACHABLE."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        return _check(channel, timeout)


def _check(channel: Any, timeout: float) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
    except grpc.RpcError:
        return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class ServerProcess:
    """One server process. `start()`, `wait_ready()`, `stop()`; as a context
    manager it starts and waits on enter and stops on exit.

    Readiness is `ready()` returning True when given, else the port in
    `port_file` answering health SERVING at `host`. One of the two is needed.
    `start_timeout` bounds `wait_ready` (and so the context manager's enter).
    `env` replaces the environment (default: this process's); `cwd` is the
    working directory; `append_log` keeps what `log` already holds.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        port_file: Path | None = None,
        ready: Callable[[], bool] | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        append_log: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
        credentials: Any = None,
    ) -> None:
        """`credentials` (grpc.ChannelCredentials) make the readiness checks TLS."""
        if not argv:
            raise ValueError(f"{name}: argv is empty")
        if port_file is None and ready is None:
            raise ValueError(f"{name}: give port_file (a gRPC server) or ready (any other)")
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = Path(log)
        self.port_file = port_file
        self.host = host
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._ready_check = ready
        self._credentials = credentials
        self.start_timeout = start_timeout
        self._append_log = append_log
        self._popen: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._channel: Any = None
        self.port: int | None = None
        self.ready = False
        self.status = "not started"  # what the last readiness check saw

    # -- what callers read -----------------------------------------------------

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise ProcessError(f"{self.name} was not started")
        return self._popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    @property
    def address(self) -> str:
        """host:port from the port file (known once `wait_port` or `wait_ready` returned)."""
        if self.port is None:
            raise ProcessError(f"{self.name}: its port is not known yet")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        """Spawn the process (it is not ready yet: see `wait_ready`)."""
        if self._popen is not None:
            raise ProcessError(f"{self.name} was already started")
        if self.port_file is not None:
            self.port_file.unlink(missing_ok=True)  # a stale one would pass for this process's
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = _with_parent_death_signal(self.argv, self.env, self.cwd)
        self._popen = _forker.run(lambda: self._spawn(argv))
        self._started = time.monotonic()
        self.status = "starting"
        return self

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab" if self._append_log else "wb") as out:  # the child keeps its own
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        _live.add(self)
        return popen

    def check_ready(self) -> bool:
        """One readiness check: True once ready. Raises ProcessError when the process exited."""
        if self.ready:
            return True
        self._raise_if_exited()
        if self.port_file is not None and self.port is None:
            self.port = read_port(self.port_file)
            if self.port is None:
                self.status = "no port file yet"
                return False
        if self._ready_check is not None:
            try:
                self.ready = bool(self._ready_check())
                self.status = "ready" if self.ready else "not ready"
            except Exception as e:  # not listening yet, or half up
                self.status = f"{type(e).__name__}: {e}"
        else:
            self.status = _check(self._health_channel(), timeout=1.0)
            self.ready = self.status == "SERVING"
        if self.ready:
            self._close_channel()
        return self.ready

    def wait_port(self, timeout: float | None = None, poll_s: float = POLL_S) -> int:
        """The port, once the process wrote its port file."""
        if self.port_file is None:
            raise ProcessError(f"{self.name} has no port file")
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while self.port is None:
            self._raise_if_exited()
            self.port = read_port(self.port_file)
            if self.port is None:
                if time.monotonic() > deadline:
                    self.status = "no port file yet"
                    raise self._not_ready()
                time.sleep(poll_s)
        return self.port

    def wait_ready(self, timeout: float | None = None, poll_s: float = POLL_S) -> Self:
        """Wait until ready (at most `timeout`, default `start_timeout`); see `wait_ready`."""
        wait_ready([self], self.start_timeout if timeout is None else timeout, poll_s)
        return self

    def stop(self, grace: float = DEFAULT_GRACE_S) -> int | None:
        """SIGTERM, `grace` seconds, SIGKILL; reaped. The exit status (None if never started)."""
        stop_all([self], grace)
        return self.returncode

    def __enter__(self) -> Self:
        if self._popen is None:
            self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop(grace=5)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------

    def _raise_if_exited(self) -> None:
        rc = self.popen.poll()
        if rc is not None:
            self._close_channel()
            raise ProcessError(
                f"{self.name} exited with status {rc} before it was ready. "
                f"Last lines of {self.log}:\n{log_tail(self.log)}"
            )

    def _not_ready(self) -> ProcessError:
        waited = time.monotonic() - self._started
        return ProcessError(
            f"{self.name} not ready after {waited:.0f}s ({self.status}). "
            f"Last lines of {self.log}:\n{log_tail(self.log)}"
        )

    def _health_channel(self) -> Any:
        # One channel for the whole wait: a model load can take a minute of polls.
        if self._channel is None:
            import grpc

            if self._credentials is not None:
                self._channel = grpc.secure_channel(self.address, self._credentials)
            else:
                self._channel = grpc.insecure_channel(self.address)
        return self._channel

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _exited(self) -> bool:
        """Whether the process has exited, without reaping it (its pid, and so its
        process group id, stay reserved until `_reap`)."""
        popen = self.popen
        if popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped elsewhere (Popen.wait by a caller)
            return True

    def _signal(self, sig: int) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def _kill_group(self) -> None:
        """SIGKILL the process group: the child if it still runs, and whatever it left."""
        if self.popen.returncode is not None:
            return  # reaped: its group id may belong to someone else by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def _reap(self) -> None:
        self._close_channel()
        self.popen.wait()
        _live.discard(self)


def wait_ready(
    processes: Sequence[ServerProcess],
    timeout: float = DEFAULT_START_TIMEOUT_S,
    poll_s: float = POLL_S,
) -> None:
    """Wait until every process is ready (they start up in parallel).

    Raises ProcessError as soon as one exits, or when `timeout` passes.
    """
    deadline = time.monotonic() + timeout
    pending = [p for p in processes if not p.ready]
    while pending:
        pending = [p for p in pending if not p.check_ready()]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise pending[0]._not_ready()
        time.sleep(poll_s)


def stop_all(processes: Sequence[ServerProcess], grace: float = DEFAULT_GRACE_S) -> None:
    """Stop several processes at once: SIGTERM to all, wait up to `grace` for
    them together, then SIGKILL the process group of each; all reaped.

    Safe to call twice, and on processes that never started."""
    started = [p for p in processes if p._popen is not None]
    with _stopping() as hurry:
        for p in started:
            p._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        pending = [p for p in started if not p._exited()]
        while pending and time.monotonic() < deadline and not hurry.is_set():
            time.sleep(min(POLL_S / 2, max(0.0, deadline - time.monotonic())))
            pending = [p for p in pending if not p._exited()]
        for p in started:
            p._kill_group()
        for p in started:
            p._reap()


# -- signals ---------------------------------------------------------------------


@contextlib.contextmanager
def signals_interrupt(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGHUP),
) -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Terminated` (a KeyboardInterrupt)
    in the main thread, as Ctrl-C does, so the code that owns child processes
    stops them in order on its way out. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_stop_depth = 0
_stop_hurry = threading.Event()
_stop_received: list[int] = []


@contextlib.contextmanager
def _stopping() -> Iterator[threading.Event]:
    """While stopping children: a stop signal sets `hurry` instead of interrupting.

    Nested uses share one state; the outermost delivers the first signal that
    arrived again once it is done, under the handlers it found.
    """
    global _stop_depth
    if threading.current_thread() is not threading.main_thread():
        yield threading.Event()  # signals go to the main thread, not here
        return

    def hurry(signum: int, frame: FrameType | None) -> None:
        _stop_received.append(signum)
        _stop_hurry.set()

    previous: dict[signal.Signals, Any] = {}
    if _stop_depth == 0:
        _stop_hurry.clear()
        _stop_received.clear()
        previous = {sig: signal.signal(sig, hurry) for sig in STOP_SIGNALS}
    _stop_depth += 1
    try:
        yield _stop_hurry
    finally:
        _stop_depth -= 1
        if _stop_depth == 0:
            for sig, handler in previous.items():
                # None: a handler not set from Python; the default is the nearest.
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
            if _stop_received:
                signal.raise_signal(_stop_received[0])


@contextlib.contextmanager
def stopping() -> Iterator[None]:
    """Group several `stop_all` calls into one stop (see `_stopping`)."""
    with _stopping():
        yield


# -- spawning --------------------------------------------------------------------


def _with_parent_death_signal(
    argv: list[str], env: Mapping[str, str] | None, cwd: Path | None
) -> list[str]:
    """argv behind the parent-death-signal exec wrapper (Linux), its program
    resolved here so that a missing one is a clear error in the parent."""
    if not _HAS_PDEATHSIG:
        return argv
    program = argv[0]
    found: str | None
    if os.sep in program:  # relative to the child's working directory, as exec sees it
        path = os.path.join(cwd or os.getcwd(), program)
        found = path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    else:
        search = (env if env is not None else os.environ).get("PATH", os.defpath)
        found = shutil.which(program, path=search)
    if found is None:
        raise FileNotFoundError(f"cannot run {program!r}: no such executable")
    resolved = os.path.abspath(found)
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), resolved, *argv]


class _Forker:
    """Forks from the main thread, or else from one thread that never ends.

    A parent-death signal fires when the thread that forked ends (see the
    module docstring), so no child may be forked from a short-lived thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: SimpleQueue[tuple[Callable[[], object], Future[object]]] = SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], T]) -> T:
        if threading.current_thread() is threading.main_thread():
            return fn()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="stageflow-forker", daemon=True
                )
                self._thread.start()
        future: Future[object] = Future()
        self._jobs.put((fn, future))
        return future.result()  # type: ignore[return-value]

    def _loop(self) -> None:
        while True:
            fn, future = self._jobs.get()
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)


_forker = _Forker()
_live: set[ServerProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Processes nobody stopped are stopped at exit (Python's, not a signal's)."""
    if _live:
        stop_all(list(_live), grace=5)
