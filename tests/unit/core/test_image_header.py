"""Upload checks from the header alone, and the orchestrator's per-tenant upload store."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from stageflow.core.errors import InvalidArgument, NotFound
from stageflow.core.image_header import check_upload, read_header
from stageflow.core.storage import LocalStore
from stageflow.orchestrator.uploads import UploadLimits, resolve_upload, store_upload


def _check(data: bytes, field: str = "image") -> object:
    return check_upload(data, max_bytes=1 << 20, max_pixels=256 * 256, max_side=512, field=field)


def _encode(fmt: str, size: tuple[int, int], **kwargs: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "kwargs", "name"),
    [
        ("PNG", {}, "png"),
        ("JPEG", {}, "jpeg"),
        ("JPEG", {"progressive": True}, "jpeg"),
        ("WEBP", {}, "webp"),
        ("WEBP", {"lossless": True}, "webp"),
        ("WEBP", {"exif": b"Exif\x00\x00MM"}, "webp"),  # VP8X, extended
    ],
)
def test_format_and_size_come_from_the_header(fmt: str, kwargs: object, name: str) -> None:
    data = _encode(fmt, (37, 21), **kwargs)  # type: ignore[arg-type]
    header = read_header(data)
    assert (header.format, header.width, header.height) == (name, 37, 21)


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` (a decompression bomb's trick)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def test_a_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(InvalidArgument, match="at most 65536 pixels") as err:
        check_upload(
            _png_claiming(300, 300), max_bytes=1 << 20, max_pixels=65536, max_side=512, field="file"
        )
    assert err.value.field == "file"
    with pytest.raises(InvalidArgument, match="each side must be at most 512"):
        _check(_png_claiming(100_000, 1))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "must not be empty"),
        (b"GIF89a" + b"\x00" * 40, "PNG, JPEG or WebP"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "malformed PNG header"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "malformed JPEG header"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20, "malformed WEBP header"),
        (_png_claiming(0, 5), "declares 0x5"),
    ],
)
def test_anything_else_names_the_field(data: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as err:
        _check(data, field="image")
    assert err.value.field == "image"


def test_too_many_bytes() -> None:
    with pytest.raises(InvalidArgument, match="at most 10 bytes"):
        check_upload(_encode("PNG", (4, 4)), max_bytes=10, max_pixels=100, max_side=10)


def test_uploads_are_content_addressed_per_tenant(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    data = _encode("PNG", (16, 8))

    async def scenario() -> None:
        first = await store_upload(store, data, "acme", UploadLimits())
        again = await store_upload(store, data, "acme", UploadLimits())
        assert first.upload_id == again.upload_id == f"{first.image.sha256}.png"
        assert first.image.key.startswith("uploads/acme/sha256/")
        assert (first.width, first.height, first.format) == (16, 8, "png")
        ref, width, height = await resolve_upload(store, first.upload_id, "acme")
        assert ref == first.image and (width, height) == (16, 8)
        # Another tenant's id names nothing of its own: NOT_FOUND, as an unknown id.
        with pytest.raises(NotFound, match="not found"):
            await resolve_upload(store, first.upload_id, "globex")
        with pytest.raises(NotFound, match="not found"):
            await resolve_upload(store, first.upload_id, None)
        with pytest.raises(InvalidArgument) as bad:
            await resolve_upload(store, "../../etc/passwd", "acme")
        assert bad.value.field == "input_image"
        with pytest.raises(InvalidArgument) as bomb:
            await store_upload(store, _png_claiming(9000, 9000), "acme", UploadLimits())
        assert bomb.value.field == "data"
        files = [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]
        assert [p.name for p in files] == [first.upload_id]  # one object, the bomb not stored

    asyncio.run(scenario())
