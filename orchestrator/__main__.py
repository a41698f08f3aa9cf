"""`python -m orchestrator`: settings → store → job DB (migrated) → stage clients → serve."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from stageflow.core.errors import StageflowError
from stageflow.core.logging import configure_logging, get_logger
from stageflow.orchestrator.auth import Authenticator
from stageflow.orchestrator.coordination import replica_leases
from stageflow.orchestrator.migrations import SchemaTooNew
from stageflow.orchestrator.quotas import parse_quota
from stageflow.orchestrator.replicas import RetryPolicy, StageCaller, stage_client_for
from stageflow.orchestrator.runner import JobRunner
from stageflow.orchestrator.scheduler import parse_limits
from stageflow.orchestrator.servicer import SERVICE_NAME, OrchestratorServicer
from stageflow.orchestrator.settings import OrchestratorSettings
from stageflow.orchestrator.sharing import ShareSigner
from stageflow.orchestrator.spec import SpecError, load_specs
from stageflow.orchestrator.stage_client import StageClient
from stageflow.orchestrator.store import open_job_store
from stageflow.orchestrator.uploads import UploadLimits
from stageflow.serving.server import Service, serve
from stageflow.serving.settings import load_settings
from stageflow.serving.tls import channel_credentials
from stageflow.v1 import orchestrator_pb2_grpc


async def _serve(settings: OrchestratorSettings) -> None:
    specs = load_specs(settings.pipelines_dir)  # fail fast: before anything is started
    stage_limits = parse_limits(settings.stage_limits)
    store = settings.open_store()
    jobs = await open_job_store(
        settings.job_store,
        password=settings.job_store_password(),
        pool_size=settings.job_store_pool_size,
        timeout_seconds=settings.job_store_timeout_seconds,
    )
    # mTLS to the stages with this process's own certificate, when it has one.
    credentials = channel_credentials(settings.tls_cert, settings.tls_key, settings.tls_ca)
    stages: dict[str, StageClient] = {
        name: stage_client_for(
            ",".join(addresses),
            settings.max_message_bytes,
            credentials,
            wait_ready_seconds=settings.retry_budget_seconds,
        )
        for name, addresses in settings.stages.items()
    }
    caller = StageCaller(
        RetryPolicy(
            base_seconds=settings.retry_base_seconds,
            cap_seconds=settings.retry_cap_seconds,
            budget_seconds=settings.retry_budget_seconds,
            exhausted_max_attempts=settings.exhausted_max_attempts,
        )
    )
    runner = JobRunner(
        stages,
        jobs,
        settings,
        store,
        specs=specs,
        stage_limits=stage_limits,
        caller=caller,
        default_quota=parse_quota(settings.default_quota, "default_quota"),
        sharing=ShareSigner(
            settings.share_secret_key.get_secret_value(), settings.share_max_seconds
        ),
        upload_limits=UploadLimits(
            max_bytes=settings.upload_max_bytes, max_pixels=settings.upload_max_pixels
        ),
        # PostgreSQL: one of any number of replicas (claims, leases, fencing).
        leases=replica_leases(jobs, settings.lease_seconds, settings.replica_name),
    )
    auth = Authenticator(jobs, settings.auth_secret_key.get_secret_value(), enabled=settings.auth)
    if not auth.enabled:
        get_logger(__name__).warning(
            "auth.off", message="authentication is OFF: every caller can read and cancel every job"
        )
    servicer = OrchestratorServicer(runner, auth)

    def register(server: grpc.aio.Server) -> None:
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)

    try:
        # On SIGTERM runner.drain stops admitting and lets the stage calls in
        # flight finish within the grace; runner.close then leaves every job
        # QUEUED or RUNNING in the DB: the next start resumes them.
        await serve(
            [Service(SERVICE_NAME, register)],
            settings,
            startup=runner.start,
            drain=runner.drain,
            shutdown=runner.close,
            # NOT_SERVING while the job database cannot be reached (calls then
            # fail UNAVAILABLE), SERVING again once it answers.
            health_check=jobs.healthy,
            name="orchestrator",
        )
    finally:
        for client in stages.values():
            await client.close()
        await jobs.close()


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(OrchestratorSettings, list(argv) if argv is not None else None)
    configure_logging(level=settings.log_level, json=settings.log_json, service="orchestrator")
    try:
        asyncio.run(_serve(settings))
    except SpecError as err:
        raise SystemExit(f"orchestrator: invalid pipeline spec: {err}") from None
    except ValueError as err:  # --stage-limits
        raise SystemExit(f"orchestrator: {err}") from None
    except SchemaTooNew as err:
        raise SystemExit(f"orchestrator: {err}") from None
    except StageflowError as err:  # the object store or the job database cannot be reached
        raise SystemExit(f"orchestrator: {err.message}") from None
    except OSError as err:  # the address cannot be bound, the job database cannot be opened
        raise SystemExit(f"orchestrator: {err}") from None


if __name__ == "__main__":
    main()
