"""The typography pass after the upscale, through real processes: base → upscale →
refine with overlay text; the refine stage's OCR check is recorded on the job,
and the final PNG reads back as the text."""

from __future__ import annotations

import io
import subprocess
import sys

from PIL import Image

from stageflow.cli.cluster import LocalCluster
from stageflow.client import StageflowClient
from stageflow.core.artifacts import get_artifact
from stageflow.core.storage import ObjectStore
from stageflow.inference.interface import TextPlacement
from stageflow.inference.ocr import TextReader, cer, normalize
from stageflow.inference.typography import PLACEMENT_BOXES, box_pixels
from stageflow.v1 import orchestrator_pb2 as pb

TEXT = "Chapter One"
ORDER = ["base", "upscale", "refine"]


async def test_text_pass_after_the_upscale_reads_back_exactly(
    local_cluster: LocalCluster, local_store: ObjectStore
) -> None:
    async with StageflowClient(local_cluster.orchestrator_address) as client:
        job = await client.submit(
            base="epic game hero portrait",
            style="moody cinematic",
            text=TEXT,
            seed=42,
            stages=ORDER,
        )
        async for _ in client.watch(job.job_id):
            pass
        job = await client.get(job.job_id)

    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert [run.stage for run in job.stages] == ORDER
    base, upscale, refine = job.stages
    assert upscale.request.image.key == base.output.key
    assert refine.request.image.key == upscale.output.key
    assert job.final.key == refine.output.key
    assert refine.request.refine.text == TEXT

    check = refine.text_check
    assert refine.HasField("text_check")
    assert check.text == TEXT and 1 <= check.attempts <= 3
    assert len(check.attempt_cers) == check.attempts
    assert check.exact or check.fell_back, check
    # A fallback is reported as such, never as a harmonised success.
    assert check.fell_back == all(c > 0 for c in check.attempt_cers)

    final = Image.open(io.BytesIO(get_artifact(local_store, job.final.key, job.final.sha256)))
    assert final.size == (4 * 128, 4 * 128)
    # Read the final PNG independently of the stage: the bottom band, whole.
    band = final.convert("RGB").crop(box_pixels(PLACEMENT_BOXES[TextPlacement.BOTTOM], final.size))
    read = TextReader().read(band)
    assert normalize(read) == normalize(TEXT) or cer(TEXT, read) <= 0.05, read


def test_cli_submit_refuses_a_bad_stage_order(local_cluster: LocalCluster) -> None:
    # A bad order is refused before anything runs, naming the field.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stageflow.cli",
            "submit",
            "--address",
            local_cluster.orchestrator_address,
            "--base",
            "hero",
            "--style",
            "ink",
            "--stages",
            "upscale,base",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "INVALID_ARGUMENT" in result.stderr and "stages" in result.stderr
