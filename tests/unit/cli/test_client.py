"""StageflowClient: final image download and its digest check, option parsing."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stageflow.client import StageflowClient, SyncStageflowClient, options
from stageflow.core.errors import DataLoss, FailedPrecondition, InvalidArgument
from stageflow.v1 import common_pb2, stage_pb2
from stageflow.v1 import orchestrator_pb2 as pb
from tests.unit.cli.fakes import FINAL_BYTES, FakeOrchestrator

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def job_with_final(url: str, sha256: str) -> pb.Job:
    return pb.Job(
        job_id="j1",
        state=pb.JOB_STATE_SUCCEEDED,
        final=common_pb2.ArtifactRef(key="k.png", sha256=sha256, size_bytes=len(PNG)),
        final_url=url,
    )


@pytest.fixture
def final_png(tmp_path: Path) -> Path:
    # A space in the name: file:// URLs percent-encode it.
    path = tmp_path / "final image.png"
    path.write_bytes(PNG)
    return path


async def test_fetch_final_file_url_with_right_digest(final_png: Path) -> None:
    job = job_with_final(final_png.as_uri(), hashlib.sha256(PNG).hexdigest())
    assert await StageflowClient("unused:1").fetch_final(job) == PNG


async def test_fetch_final_refuses_wrong_digest(final_png: Path) -> None:
    job = job_with_final(final_png.as_uri(), hashlib.sha256(b"other").hexdigest())
    with pytest.raises(DataLoss, match="sha256 is"):
        await StageflowClient("unused:1").fetch_final(job)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_fetch_final_over_http(final_png: Path, http_root: str) -> None:
    url = f"{http_root}/final%20image.png"
    client = StageflowClient("unused:1")
    assert await client.fetch_final(job_with_final(url, hashlib.sha256(PNG).hexdigest())) == PNG
    with pytest.raises(DataLoss):
        await client.fetch_final(job_with_final(url, "ab" * 32))


async def test_fetch_final_of_unfinished_job() -> None:
    with pytest.raises(FailedPrecondition, match="no final image"):
        await StageflowClient("unused:1").fetch_final(
            pb.Job(job_id="j", state=pb.JOB_STATE_RUNNING)
        )


def test_options_take_short_enum_names_and_nested_boxes() -> None:
    refine = options(
        pb.RefineOptions,
        {"mode": "inpaint", "strength": 0.4, "mask_box": {"top": 0.8, "bottom": 1.0}},
    )
    assert refine.mode == stage_pb2.REFINE_MODE_INPAINT
    assert refine.mask_box.top == pytest.approx(0.8)
    assert options(pb.UpscaleOptions, {"mode": "UPSCALE_MODE_LANCZOS"}).mode == 2
    assert not options(pb.BaseOptions, None).HasField("steps")


def test_options_reject_unknown_fields_and_values() -> None:
    with pytest.raises(InvalidArgument, match="BaseOptions"):
        options(pb.BaseOptions, {"stepz": 3})
    with pytest.raises(InvalidArgument):
        options(pb.UpscaleOptions, {"mode": "bicubic"})


def test_sync_client_round_trip(fake: tuple[FakeOrchestrator, str]) -> None:
    servicer, address = fake
    with SyncStageflowClient(address) as client:
        job = client.submit(base="hero", style="cinematic", upscale_options={"mode": "lanczos"})
        events = [e.WhichOneof("event") for e in client.watch(job.job_id)]
        assert events[0] == "snapshot" and events[-1] == "finished"
        finished = client.get(job.job_id)
        assert finished.state == pb.JOB_STATE_SUCCEEDED
        assert client.fetch_final(finished) == FINAL_BYTES
        assert [j.job_id for j in client.list(state="succeeded")] == [job.job_id]
    assert servicer.submits[0].upscale.mode == stage_pb2.UPSCALE_MODE_LANCZOS
