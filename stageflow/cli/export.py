"""`stageflow fetch` and `stageflow compare`: a job's images out of the API, recipe included.

Bytes come through the orchestrator (GetArtifact, sha256-verified) and the
recipe is embedded at export (`stageflow.client.recipe`), so a PNG needs
nothing but the slim install; WebP, JPEG and the side-by-side montage need
Pillow (the `gateway` extra), imported only then.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from stageflow.client import StageflowClient
from stageflow.client.recipe import select_version, with_recipe
from stageflow.core.errors import InvalidArgument
from stageflow.v1 import orchestrator_pb2 as pb

FORMATS = ("png", "webp", "jpeg")
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
PILLOW_EXTRA = "pip install 'stageflow[gateway]'"


def pillow(option: str) -> object:
    """The PIL.Image module, or a usage error naming the option and the extra."""
    try:
        from PIL import Image
    except ImportError:
        raise InvalidArgument(
            option, f"needs Pillow, which this install lacks: {PILLOW_EXTRA}"
        ) from None
    return Image


def check_format(fmt: str) -> str:
    fmt = fmt.lower().replace("jpg", "jpeg")
    if fmt not in FORMATS:
        raise InvalidArgument("--format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "png":
        pillow("--format " + fmt)
    return fmt


def encode(png: bytes, fmt: str, job: pb.Job, stage: str) -> bytes:
    """The stored PNG in `fmt`, carrying the job version's recipe."""
    if fmt != "png":
        from PIL import Image

        with Image.open(io.BytesIO(png)) as image:
            out = io.BytesIO()
            (image.convert("RGB") if fmt == "jpeg" else image).save(
                out, format=fmt.upper(), quality=90
            )
            png = out.getvalue()
    return with_recipe(png, job, stage=stage)


def default_name(job: pb.Job, stage: str, fmt: str) -> str:
    suffix = f"-{stage}" if stage else ""
    return f"{job.job_id}-v{job.version or 1}{suffix}.{EXTENSIONS[fmt]}"


async def fetch(
    client: StageflowClient, job_id: str, *, version: int, stage: str, fmt: str
) -> tuple[pb.Job, bytes]:
    """A version's final image (or `stage`'s output) in `fmt` with its recipe;
    NotFound naming --version/--stage and the allowed values otherwise."""
    job, png = await client.export(job_id, version=version, stage=stage)
    return job, encode(png, fmt, job, stage) if fmt != "png" else png


def parse_versions(text: str) -> list[int]:
    try:
        versions = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(
            "--versions", f"must be version numbers like 1,3, got {text!r}"
        ) from None
    if len(versions) < 2 or any(v < 1 for v in versions):
        raise InvalidArgument("--versions", f"must name two or more versions (>= 1), got {text!r}")
    return versions


def differing(jobs: Sequence[pb.Job]) -> list[str]:
    """For each version, the parameters in which it differs from the first:
    "stage.field=value" (bundle fields as "bundle.field=value")."""
    from google.protobuf import json_format

    def flat(job: pb.Job) -> dict[str, object]:
        values: dict[str, object] = {
            f"bundle.{k}": v
            for k, v in json_format.MessageToDict(
                job.bundle, preserving_proto_field_name=True
            ).items()
        }
        for run in job.stages:
            kind = run.request.WhichOneof("params")
            if not kind:
                continue
            params = json_format.MessageToDict(
                getattr(run.request, kind), preserving_proto_field_name=True
            )
            for key, value in params.items():
                if key not in ("prompt", "negative_prompt"):
                    values[f"{run.stage}.{key}"] = value
        return values

    first = flat(jobs[0])
    labels = []
    for job in jobs:
        mine = flat(job)
        changed = [
            f"{k}={mine.get(k, '-')}"
            for k in sorted(set(first) | set(mine))
            if first.get(k) != mine.get(k)
        ]
        labels.append(", ".join(changed))
    return labels


def montage(images: Sequence[bytes], labels: Sequence[str]) -> bytes:
    """The images side by side on one row, each with its label above, as a PNG."""
    from PIL import Image, ImageDraw

    opened = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    band = 28
    width = sum(im.width for im in opened) + 8 * (len(opened) + 1)
    height = max(im.height for im in opened) + band + 8
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    x = 8
    for image, label in zip(opened, labels, strict=True):
        sheet.paste(image, (x, band))
        draw.text((x, 4), label[:120], fill=(235, 235, 235))
        x += image.width + 8
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


async def compare(client: StageflowClient, job_id: str, versions: Sequence[int]) -> bytes:
    """A side-by-side PNG of the versions' finals, labelled with each version
    and the parameters in which it differs from the first."""
    lineage = await client.versions(job_id)
    jobs = [select_version(lineage, v) for v in versions]  # NotFound naming version
    images = [(await client.export(job_id, version=v))[1] for v in versions]
    changed = differing(jobs)
    labels = [
        f"v{job.version or 1}"
        + (f": {what}" if what else " (as submitted)" if i == 0 else ": same")
        for i, (job, what) in enumerate(zip(jobs, changed, strict=True))
    ]
    return montage(images, labels)


def write_new(path: Path, data: bytes) -> Path:
    from stageflow.cli.jobs import free_path
    from stageflow.client.download import write_atomically

    target = free_path(path)
    write_atomically(target, data)
    return target
