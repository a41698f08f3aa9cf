"""structlog set-up shared by every process.

Everything ends in one stdlib handler on stderr, so lines from grpc, minio or
any library that uses `logging` get the same format and the same context
(request_id, job_id, method: bound per call by `stageflow.serving.interceptors`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _add_service(service: str) -> Processor:
    def add(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add


class _StderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever sys.stderr is at emit time (as logging.lastResort
    does), so a later swap of sys.stderr, e.g. pytest's capture, is followed
    instead of writing to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(*, level: str = "INFO", json: bool = False, service: str = "") -> None:
    """Configure structlog and the stdlib root logger; safe to call again."""
    level = level.upper()
    if level not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")

    # Run on structlog's own events and, as `foreign_pre_chain`, on stdlib
    # records, so both kinds carry the same keys.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        shared.append(_add_service(service))

    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks as data, without locals: they may hold secrets or images.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests and `stageflow up` may reconfigure after loggers
        # were created at import time.
        cache_logger_on_first_use=False,
    )

    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger: ``log.info("event", key=value)``."""
    return structlog.stdlib.get_logger(name)
