"""Image bytes in the formats the API serves: PNG as stored, WebP or JPEG on request."""

from __future__ import annotations

import io

from PIL import Image

from stageflow.gateway.errors import GatewayError

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


def convert(png: bytes, fmt: str) -> bytes:
    if fmt == "png":
        return png
    with Image.open(io.BytesIO(png)) as image:
        out = io.BytesIO()
        rgb = image.convert("RGB") if fmt == "jpeg" else image
        rgb.save(out, format=fmt.upper(), quality=90)
        return out.getvalue()
