"""What an operator sees from outside: each process's Prometheus endpoint, and
one job's trace across the orchestrator and the three stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stageflow.cli.cluster import ORCHESTRATOR, STAGES, LocalCluster
from stageflow.client import StageflowClient
from stageflow.serving.channels import client_channel
from stageflow.v1 import orchestrator_pb2 as pb
from stageflow.v1 import stage_pb2, stage_pb2_grpc
from tests.integration.conftest import Samples, sample, scrape_metrics

RUN = "/stageflow.v1.StageService/Run"


def scrape(cluster: LocalCluster, name: str) -> Samples:
    return scrape_metrics(cluster.port_file(name))


async def test_stage_metrics_endpoint_counts_a_call(local_cluster: LocalCluster) -> None:
    before = scrape(local_cluster, "base")
    request = stage_pb2.RunRequest(
        txt2img=stage_pb2.Txt2ImgParams(prompt="a red circle", width=64, height=64, steps=3)
    )
    async with client_channel(local_cluster.addresses["base"]) as channel:
        events = [
            e async for e in stage_pb2_grpc.StageServiceStub(channel).Run(request, timeout=60)
        ]
    assert events[-1].HasField("result")
    after = scrape(local_cluster, "base")

    ok = {"service": "base", "method": RUN, "code": "OK"}
    assert sample(after, "stageflow_rpc_requests_total", **ok) == (
        sample(before, "stageflow_rpc_requests_total", **ok) + 1
    )
    buckets = [key for key in after if key[0] == "stageflow_rpc_duration_seconds_bucket"]
    assert any(
        dict(labels).get("method") == RUN and dict(labels).get("le") == "+Inf"
        for _, labels in buckets
    )
    steps = sample(after, "stageflow_stage_step_seconds_count", stage="base") - sample(
        before, "stageflow_stage_step_seconds_count", stage="base"
    )
    assert steps >= 3
    assert sample(after, "stageflow_stage_batch_size_count", stage="base") >= 1
    assert ("stageflow_stage_queue_depth", frozenset({("stage", "base")})) in after
    assert sample(after, "stageflow_store_bytes_total", operation="put") > 0


@pytest.fixture(scope="module")
def traced_cluster(
    tmp_path_factory: pytest.TempPathFactory, fixture_models: Path
) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("traced-cluster")
    env = {
        "STAGEFLOW_TRACING_EXPORTER": "jsonl",
        "STAGEFLOW_TRACING_FILE": str(state / "traces" / "{service}.jsonl"),
    }
    with LocalCluster(
        state_dir=state, models_dir=fixture_models, torch_threads=1, extra_env=env
    ) as cluster:
        yield cluster


def spans(cluster: LocalCluster, name: str) -> list[dict[str, Any]]:
    path = cluster.state_dir / "traces" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def test_one_job_is_one_trace_across_all_processes(traced_cluster: LocalCluster) -> None:
    async with StageflowClient(traced_cluster.orchestrator_address) as client:
        job = await client.submit(base="a red circle", style="flat", seed=7, width=64, height=64)
        _ = [event async for event in client.watch(job.job_id)]
        job = await client.get(job.job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error

    by_process = {name: spans(traced_cluster, name) for name in (*STAGES, ORCHESTRATOR)}
    job_spans = [
        s
        for name, items in by_process.items()
        for s in items
        if s["attributes"].get("stageflow.job_id") == job.job_id
    ]
    trace_ids = {s["trace_id"] for s in job_spans}
    assert len(trace_ids) == 1, trace_ids
    (trace_id,) = trace_ids

    names = defaultdict(set)
    for s in job_spans:
        names[s["service"]].add((s["kind"], s["name"]))
    for stage in STAGES:
        assert ("SERVER", RUN.lstrip("/")) in names[stage], names[stage]
        assert ("INTERNAL", "store.put") in names[stage], names[stage]
    orchestrator = names[ORCHESTRATOR]
    assert ("SERVER", "stageflow.v1.OrchestratorService/SubmitJob") in orchestrator
    assert ("INTERNAL", "job.run") in orchestrator
    assert ("CLIENT", RUN.lstrip("/")) in orchestrator

    # Every span of this trace, in every process, carries the job id.
    in_trace = [s for items in by_process.values() for s in items if s["trace_id"] == trace_id]
    assert all(s["attributes"].get("stageflow.job_id") == job.job_id for s in in_trace)
    # Each stage's server span is the child of an orchestrator client span.
    client_ids = {s["span_id"] for s in by_process[ORCHESTRATOR] if s["kind"] == "CLIENT"}
    for stage in STAGES:
        servers = [
            s for s in by_process[stage] if s["kind"] == "SERVER" and s["trace_id"] == trace_id
        ]
        assert servers and all(s["parent_span_id"] in client_ids for s in servers)


def test_a_cli_command_is_the_root_of_its_jobs_trace(
    traced_cluster: LocalCluster, tmp_path: Path
) -> None:
    traces = traced_cluster.state_dir / "traces"
    env = {
        **os.environ,
        "STAGEFLOW_TRACING_EXPORTER": "jsonl",
        "STAGEFLOW_TRACING_FILE": str(traces / "{service}.jsonl"),
    }
    command = [
        sys.executable,
        "-m",
        "stageflow.cli",
        "submit",
        "--base",
        "a red circle",
        "--style",
        "flat",
    ]
    command += ["--width", "64", "--height", "64", "--json", "--out", str(tmp_path)]
    command += ["--address", traced_cluster.orchestrator_address]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job"]["job_id"]

    cli = spans(traced_cluster, "cli")
    (root,) = [s for s in cli if s["name"] == "cli submit"]
    assert root["parent_span_id"] is None
    assert root["attributes"]["stageflow.job_id"] == job_id
    in_trace = [s for s in cli if s["trace_id"] == root["trace_id"]]
    assert all(s["attributes"].get("stageflow.job_id") == job_id for s in in_trace)
    (submit,) = [s for s in in_trace if s["name"].endswith("/SubmitJob")]
    assert submit["kind"] == "CLIENT" and submit["parent_span_id"] == root["span_id"]

    orchestrator = [
        s for s in spans(traced_cluster, ORCHESTRATOR) if s["trace_id"] == root["trace_id"]
    ]
    names = {s["name"] for s in orchestrator}
    assert {"stageflow.v1.OrchestratorService/SubmitJob", "job.run"} <= names
    for stage in STAGES:
        assert any(s["trace_id"] == root["trace_id"] for s in spans(traced_cluster, stage)), stage
