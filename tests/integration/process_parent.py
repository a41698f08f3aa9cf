"""A parent process for test_processes.py: `python process_parent.py OUT_JSON`.

Starts three tiny gRPC health servers (fake_service.py) through
stageflow.serving.processes, writes their pids and ports to OUT_JSON once all
are SERVING, and waits to be signalled, as `stageflow up` does (inside
`signals_interrupt`, stopping its children on the way out):

- "main": started from the main thread;
- "thread": started from a thread that waits until it is SERVING and ends
  before OUT_JSON is written (a parent-death signal tied to that thread
  would have killed it by then);
- "stubborn": ignores SIGTERM, so a stop has to SIGKILL it after the grace.

Each records the time SIGTERM reached it in <name>.stopped beside OUT_JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from stageflow.serving.processes import ServerProcess, signals_interrupt, stop_all, wait_ready

FAKE_SERVICE = Path(__file__).with_name("fake_service.py")
GRACE_S = 1.0


def server(folder: Path, name: str) -> ServerProcess:
    port_file = folder / f"{name}.port"
    argv = [sys.executable, str(FAKE_SERVICE), name, "--port", "0", "--port-file", str(port_file)]
    env = {**os.environ, "FAKE_RECORD_DIR": str(folder), "FAKE_MODE_stubborn": "stubborn"}
    return ServerProcess(name, argv, log=folder / f"{name}.log", port_file=port_file, env=env)


def main() -> None:
    out = Path(sys.argv[1])
    folder = out.parent
    children = [server(folder, name) for name in ("main", "thread", "stubborn")]
    with signals_interrupt():
        try:
            children[0].start()
            # The thread lives until its child is up (past its prctl), then ends.
            starter = threading.Thread(target=lambda: children[1].start().wait_ready(60))
            starter.start()
            starter.join()
            children[2].start()
            wait_ready(children, timeout=60)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({c.name: {"pid": c.pid, "port": c.port} for c in children}))
            tmp.replace(out)
            while True:
                time.sleep(3600)
        finally:
            stop_all(children, grace=GRACE_S)


if __name__ == "__main__":
    main()
