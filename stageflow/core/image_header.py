"""An uploaded image's format and size, read from its header without decoding it.

The orchestrator (no Pillow) and the gateway both check an upload with
`check_upload` before anything stores it: the format must be PNG, JPEG or
WebP, the byte size and the header's width x height within limits. The
pixel count from the header is what a decompression bomb lies about least:
a tiny file claiming 100 000 x 100 000 pixels is refused here, before any
decoder allocates for it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from stageflow.core.errors import InvalidArgument

FORMATS = ("png", "jpeg", "webp")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are not frames.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageHeader:
    format: str  # png, jpeg or webp
    width: int
    height: int

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def _png(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            return None
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker in (0xD9, 0xDA):  # end of image / start of scan before a frame
            return None
        i += 2 + length
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def read_header(data: bytes, *, field: str = "image") -> ImageHeader:
    """The format and size the header declares; INVALID_ARGUMENT naming `field`
    for anything that is not a well-formed PNG, JPEG or WebP header."""
    if data.startswith(_PNG_SIGNATURE):
        fmt, size = "png", _png(data)
    elif data.startswith(b"\xff\xd8"):
        fmt, size = "jpeg", _jpeg(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, size = "webp", _webp(data)
    else:
        raise InvalidArgument(field, "must be a PNG, JPEG or WebP image")
    if size is None:
        raise InvalidArgument(field, f"malformed {fmt.upper()} header: no image size in it")
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidArgument(field, f"the {fmt.upper()} header declares {width}x{height} pixels")
    return ImageHeader(fmt, width, height)


def check_upload(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, field: str = "image"
) -> ImageHeader:
    """`read_header`, then the limits: bytes, each side, and width x height."""
    if not data:
        raise InvalidArgument(field, "must not be empty")
    if len(data) > max_bytes:
        raise InvalidArgument(field, f"must be at most {max_bytes} bytes, got {len(data)}")
    header = read_header(data, field=field)
    if max(header.width, header.height) > max_side:
        raise InvalidArgument(
            field,
            f"each side must be at most {max_side} pixels, got {header.width}x{header.height}",
        )
    if header.width * header.height > max_pixels:
        raise InvalidArgument(
            field,
            f"must be at most {max_pixels} pixels (a decompression bomb?), got "
            f"{header.width}x{header.height}",
        )
    return header
