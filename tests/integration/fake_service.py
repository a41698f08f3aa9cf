"""A stand-in for a stageflow process, run by the LocalCluster tests.

`python fake_service.py MODULE [flags as LocalCluster passes them]`: serves
grpc.health.v1 SERVING on --port, writes --port-file, records its argv and
the S3 variables to $FAKE_RECORD_DIR/MODULE.json and the time SIGTERM arrived
to MODULE.stopped. $FAKE_MODE_<MODULE> (dots as underscores) changes that:
"exit" prints a message and exits 3 at once; "stubborn" ignores SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> None:
    module, args = sys.argv[1], sys.argv[2:]
    flags = dict(zip(args[::2], args[1::2], strict=False))
    record = Path(os.environ["FAKE_RECORD_DIR"])
    mode = os.environ.get("FAKE_MODE_" + module.replace(".", "_"), "")
    env = {k: v for k, v in os.environ.items() if k.startswith("STAGEFLOW_S3_")}
    (record / f"{module}.json").write_text(json.dumps({"argv": args, "env": env}))
    if mode == "exit":
        print(f"{module}: cannot load model: no such file", flush=True)
        sys.exit(3)
    stopped = record / f"{module}.stopped"
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(
            signal.SIGTERM, lambda *_: (stopped.write_text(str(time.time_ns())), sys.exit(0))
        )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{flags['--port']}")
    server.start()
    port_file = Path(flags["--port-file"])
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
