"""Uploads: a caller's own image as a job input (`POST /v1/uploads`).

The gateway checks an upload before anything stores it, as every input is
checked: at most `upload_max_bytes` read from the request (never more), the
format (PNG, JPEG or WebP) and the size from the header before any decoding
(`stageflow.core.image_header`: the pixel count a decompression bomb claims is
refused there), then a full decode with Pillow's bomb guard on, which must
agree with the header. Only then is it sent to the orchestrator's
UploadImage, which checks the header again (gRPC callers upload too) and
stores it content-addressed under the caller's tenant. The answer's `id` is
what `SubmitJobRequest.input_image` takes.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from typing import Annotated, Any

from fastapi import APIRouter, File, Request, UploadFile
from PIL import Image
from starlette.datastructures import UploadFile as FormFile  # fastapi's UploadFile's base

from stageflow.core.errors import InvalidArgument
from stageflow.core.image_header import ImageHeader, check_upload
from stageflow.gateway.errors import GatewayError
from stageflow.gateway.jobs import Client
from stageflow.gateway.settings import GatewaySettings

router = APIRouter(prefix="/v1", tags=["uploads"])

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def check_image(data: bytes, settings: GatewaySettings, field: str = "image") -> ImageHeader:
    """The header's checks, then a full decode that must agree with it;
    INVALID_ARGUMENT naming `field` otherwise."""
    try:
        header = check_upload(
            data,
            max_bytes=settings.upload_max_bytes,
            max_pixels=settings.upload_max_pixels,
            max_side=settings.upload_max_side,
            field=field,
        )
    except InvalidArgument as err:
        raise GatewayError("INVALID_ARGUMENT", str(err), field) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format != _PIL_FORMATS[header.format] or img.size != (
                    header.width,
                    header.height,
                ):
                    raise GatewayError(
                        "INVALID_ARGUMENT",
                        f"{field}: the image does not match its {header.format.upper()} header",
                        field,
                    )
                img.load()
    except GatewayError:
        raise
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise GatewayError(
            "INVALID_ARGUMENT", f"{field}: not a decodable image: {err}", field
        ) from None
    return header


async def read_upload(file: FormFile, settings: GatewaySettings, field: str) -> bytes:
    """At most upload_max_bytes of `file`; more is refused without reading it all."""
    data = await file.read(settings.upload_max_bytes + 1)
    if len(data) > settings.upload_max_bytes:
        raise GatewayError(
            "INVALID_ARGUMENT",
            f"{field}: must be at most {settings.upload_max_bytes} bytes",
            field,
        )
    await asyncio.to_thread(check_image, data, settings, field)
    return data


def gateway_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


@router.post("/uploads", status_code=201, summary="Upload an image to use as a job's input")
async def create_upload(
    client: Client,
    request: Request,
    file: Annotated[UploadFile, File(description="A PNG, JPEG or WebP image.")],
) -> dict[str, Any]:
    data = await read_upload(file, gateway_settings(request), "file")
    reply = await client.upload(data)
    return {
        "id": reply.upload_id,
        "format": reply.format,
        "width": reply.width,
        "height": reply.height,
        "sha256": reply.image.sha256,
        "bytes": reply.image.size_bytes,
    }
