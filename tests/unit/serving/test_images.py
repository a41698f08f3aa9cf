from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from stageflow.core.errors import FailedPrecondition
from stageflow.stage.images import decode_image, encode_png


def gradient(mode: str = "RGB", size: tuple[int, int] = (16, 8)) -> Image.Image:
    img = Image.new("RGB", size)
    img.putdata([(x * 16, y * 32, (x + y) * 8) for y in range(size[1]) for x in range(size[0])])
    return img.convert(mode)


def test_encode_is_deterministic_and_lossless() -> None:
    img = gradient()
    data = encode_png(img)
    assert data == encode_png(gradient())
    back = decode_image(data, field="image")
    assert back.mode == "RGB" and back.size == img.size
    assert back.tobytes() == img.tobytes()


def test_encode_drops_metadata_carried_from_a_source_file() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "something else")
    buf = io.BytesIO()
    gradient().save(buf, format="PNG", pnginfo=info, dpi=(300, 300))
    loaded = Image.open(io.BytesIO(buf.getvalue()))
    loaded.load()
    assert loaded.info  # the source did carry metadata
    assert encode_png(loaded) == encode_png(gradient())
    assert b"tEXt" not in encode_png(loaded) and b"pHYs" not in encode_png(loaded)


def test_grayscale_is_kept_and_alpha_is_dropped() -> None:
    assert decode_image(encode_png(gradient("L")), field="mask").mode == "L"
    rgba = gradient("RGBA")
    decoded = decode_image(encode_png(rgba), field="image")
    assert decoded.mode == "RGB"
    assert decoded.tobytes() == rgba.convert("RGB").tobytes()


@pytest.mark.parametrize("data", [b"", b"not an image", encode_png(gradient())[:60]])
def test_undecodable_bytes_name_the_field(data: bytes) -> None:
    with pytest.raises(FailedPrecondition, match=r"^mask: not a decodable image"):
        decode_image(data, field="mask")
