"""Image bytes in the formats the API serves: PNG as stored, WebP or JPEG on request."""

from __future__ import annotations

import contextlib
import io

from PIL import Image

from stageflow.client import recipe
from stageflow.gateway.errors import GatewayError
from stageflow.v1 import orchestrator_pb2 as pb

MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
_ACCEPT = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpeg"}


def pick_format(query: str | None, accept: str | None) -> str:
    """`?format=` wins; else the first of Accept's types we serve; else png."""
    if query:
        fmt = query.lower().replace("jpg", "jpeg")
        if fmt not in MEDIA_TYPES:
            raise GatewayError(
                "INVALID_ARGUMENT", f"format: must be png, webp or jpeg, got {query!r}", "format"
            )
        return fmt
    for part in (accept or "").split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
    return "png"


# EXIF tags (TIFF 6.0 / Exif 2.3): UserComment lives in the Exif IFD.
_EXIF_IFD, _USER_COMMENT, _IMAGE_DESCRIPTION, _SOFTWARE = 0x8769, 0x9286, 0x010E, 0x0131


def _exif(job: pb.Job) -> bytes:
    """EXIF with the A1111 parameters text as UserComment (Unicode, as A1111
    writes it into JPEG/WebP and reads it back) and the prompt as ImageDescription."""
    exif = Image.Exif()
    exif[_SOFTWARE] = "stageflow"
    with contextlib.suppress(UnicodeEncodeError):
        exif[_IMAGE_DESCRIPTION] = job.prompt.encode("ascii").decode()  # ASCII by the spec
    text = recipe.parameters_text(job)
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\x00" + text.encode("utf-16-be")
    return exif.tobytes()


def convert(png: bytes, fmt: str, job: pb.Job | None = None) -> bytes:
    """`png` in `fmt`; with `job`, carrying that version's EXIF recipe."""
    if fmt == "png":
        return png
    with Image.open(io.BytesIO(png)) as image:
        out = io.BytesIO()
        rgb = image.convert("RGB") if fmt == "jpeg" else image
        extra = {"exif": _exif(job)} if job is not None else {}
        rgb.save(out, format=fmt.upper(), quality=90, **extra)
        return out.getvalue()


def export(png: bytes, fmt: str, job: pb.Job, stage: str = "") -> bytes:
    """A stored PNG as handed out: in `fmt`, carrying the job version's recipe
    (PNG text chunks; JPEG/WebP: EXIF UserComment and XMP). The stored
    artifact is untouched; only these bytes carry it."""
    return recipe.with_recipe(convert(png, fmt, job), job, stage=stage)
