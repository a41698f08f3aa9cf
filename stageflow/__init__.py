"""stageflow: staged image generation (base -> refine -> upscale) as gRPC services.

The packages, lowest floor first (DESIGN.md; `make lint` checks the imports):

- `stageflow.v1`: generated protobuf and gRPC code of `protos/stageflow/v1`;
- `stageflow.core`: errors, logging, object stores, artifact keys, the settings base;
- `stageflow.kinds`: the stage-kind registry (one entry per kind);
- `stageflow.inference`: the model layer, no transport;
- `stageflow.serving`: the gRPC runtime every server process shares;
- `stageflow.stage`, `stageflow.services`: the stage data plane and its processes;
- `stageflow.orchestrator`: jobs through the stages;
- `stageflow.client`, `stageflow.cli`: the slim client and the `stageflow` command;
- `stageflow.gateway`: the HTTP/JSON gateway over the client.

A plain ``pip install stageflow`` gives the client and the CLI's client commands;
the serving parts come as extras (``stageflow[stage]``, ``stageflow[orchestrator]``,
``stageflow[gateway]``, ``stageflow[all]``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stageflow")
except PackageNotFoundError:  # a checkout on sys.path, not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
