"""PNG bytes <-> PIL images at the storage boundary.

Artifacts are content-addressed, so the same pixels must always encode to the
same bytes: no metadata chunks, a fixed compression level.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from stageflow.core.errors import FailedPrecondition

# zlib level 6 is Pillow's default; fixed here so a Pillow change of default
# cannot silently change every artifact key.
PNG_COMPRESS_LEVEL = 6


def encode_png(img: Image.Image) -> bytes:
    """Encode to PNG with no metadata (no text, ICC, gamma or timestamps)."""
    clean = img.copy()
    # The PNG writer picks some chunks (ICC profile, transparency) out of
    # `info`, which a decoded image carries from its source file.
    clean.info = {}
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def decode_image(data: bytes, *, field: str) -> Image.Image:
    """Decode stored bytes to an RGB or L image; `field` names the request
    field the bytes came from, for the error a caller sees."""
    try:
        with warnings.catch_warnings():
            # An oversized image is an input problem, not a log warning.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
            if img.mode in ("RGB", "L"):
                return img
            # Alpha and palettes are dropped: stages work on opaque pixels.
            return img.convert("L" if img.mode in ("1", "LA", "I;16", "I") else "RGB")
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:
        raise FailedPrecondition(f"{field}: not a decodable image: {e}") from None
