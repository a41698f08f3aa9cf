"""Stored inputs are checked from their header before a pixel is decoded: an
oversize image is INVALID_ARGUMENT naming the field and the allowed range, a
decompression bomb is never decoded, and no message carries a Python repr."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import pytest
from PIL import Image, ImageFile

from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.stage.images import decode_image, encode_png, open_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` 8-bit grey pixels and holds none."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """A real bomb: all of its 1-bit rows, zeros that compress ~1000:1."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(height // 1000))
    idat += packer.compress(row * (height % 1000)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """The sizes of every image whose pixels were decoded."""
    seen: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def counting(self: ImageFile.ImageFile) -> object:
        seen.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    yield seen


def test_the_header_gives_the_size_without_decoding(decodes: list[tuple[int, int]]) -> None:
    img = open_image(png_header(9000, 9000), field="image")
    assert img.size == (9000, 9000)
    assert decodes == []


@pytest.mark.parametrize("size", [(9000, 9000), (65, 10), (10, 0x7FFF)])
def test_an_image_over_its_sides_is_refused_from_its_header(
    size: tuple[int, int], decodes: list[tuple[int, int]]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        open_image(png_header(*size), field="mask", sides=(1, 64))
    assert caught.value.field == "mask"
    assert "[1, 64] pixels" in caught.value.message
    assert f"{size[0]}x{size[1]}" in caught.value.message
    assert decodes == []


def test_a_decompression_bomb_is_never_decoded(decodes: list[tuple[int, int]]) -> None:
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 200_000  # 400 M pixels in a small file
    with pytest.raises(InvalidArgument) as caught:
        open_image(bomb, field="image", sides=(1, 1024))
    assert caught.value.field == "image"
    assert "sides must be in [1, 1024] pixels" in caught.value.message
    with pytest.raises(InvalidArgument, match=r"^image: is over"):
        decode_image(bomb, field="image")
    assert decodes == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_max_image_pixels_is_the_second_guard(
    monkeypatch: pytest.MonkeyPatch, decodes: list[tuple[int, int]]
) -> None:
    """Past Image.MAX_IMAGE_PIXELS an image is refused whatever its sides may be
    (between once and twice that limit Pillow itself only warns)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for size in ((40, 40), (50, 30)):  # 1600 and 1500 pixels: under twice the limit
        with pytest.raises(InvalidArgument, match=r"^image: has \d+x\d+ pixels, over the 1000"):
            open_image(png_header(*size), field="image", sides=(1, 64))
    with pytest.raises(InvalidArgument, match=r"^image: is over 2000 pixels, not decoded"):
        open_image(png_header(64, 64), field="image", sides=(1, 64))
    assert decodes == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image",
        encode_png(Image.frombytes("RGB", (16, 8), bytes(range(256)) * 1 + bytes(range(128))))[:60],
    ],
    ids=["empty", "junk", "truncated"],
)
def test_undecodable_bytes_say_so_without_a_python_repr(data: bytes) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        decode_image(data, field="image")
    message = caught.value.message
    assert message.startswith("image: not a decodable image (")
    assert "0x" not in message and "BytesIO" not in message and "<" not in message
