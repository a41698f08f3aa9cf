"""PNG bytes <-> PIL images at the storage boundary.

Artifacts are content-addressed, so the same pixels must always encode to the
same bytes: no metadata chunks, a fixed compression level.

Stored inputs are read in two steps: `open_image` parses the header only
(size, mode) and refuses an image too large to decode, so the caller checks
its sides before a single pixel is decoded; `decode_image` then decodes it.
A decompression bomb (a small file of a huge image) is never decoded.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from stageflow.core.errors import FailedPrecondition, InvalidArgument

# zlib level 6 is Pillow's default; fixed here so a Pillow change of default
# cannot silently change every artifact key.
PNG_COMPRESS_LEVEL = 6

# open_image checks every size itself and answers INVALID_ARGUMENT; Pillow's
# warning between MAX_IMAGE_PIXELS and twice that would only repeat it in the
# log (and catch_warnings, which could turn it into an error, is not thread-safe).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def encode_png(img: Image.Image) -> bytes:
    """Encode to PNG with no metadata (no text, ICC, gamma or timestamps)."""
    clean = img.copy()
    # The PNG writer picks some chunks (ICC profile, transparency) out of
    # `info`, which a decoded image carries from its source file.
    clean.info = {}
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def _sides(sides: tuple[int, int] | None) -> str:
    return f"; sides must be in [{sides[0]}, {sides[1]}] pixels" if sides else ""


def open_image(data: bytes, *, field: str, sides: tuple[int, int] | None = None) -> Image.Image:
    """The image in stored bytes, its header parsed and no pixel decoded.

    `field` names the request field the bytes came from; `sides` (min, max),
    when given, is the range each side must lie in, checked here from the
    header. Raises InvalidArgument for an image over its sides or over
    `Image.MAX_IMAGE_PIXELS` (the second guard, whatever `sides` says), and
    FailedPrecondition for bytes that are not an image.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        # Pillow refuses to even return the header past twice the limit.
        raise InvalidArgument(
            field,
            f"is over {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels, not decoded{_sides(sides)}",
        ) from None
    except (OSError, SyntaxError, ValueError):
        # Not Pillow's message: it carries the repr of our in-memory file.
        raise FailedPrecondition(
            f"{field}: not a decodable image ({len(data)} bytes, no known image header)"
        ) from None
    width, height = img.size
    if sides is not None and not all(sides[0] <= side <= sides[1] for side in img.size):
        raise InvalidArgument(
            field, f"must have sides in [{sides[0]}, {sides[1]}] pixels, got {width}x{height}"
        )
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise InvalidArgument(
            field, f"has {width}x{height} pixels, over the {limit} decoded at most{_sides(sides)}"
        )
    return img


def decode_image(data: bytes | Image.Image, *, field: str) -> Image.Image:
    """Decode stored bytes (or an image `open_image` returned) to an RGB or L
    image; `field` names the request field the bytes came from, for the
    error a caller sees."""
    img = open_image(data, field=field) if isinstance(data, bytes) else data
    try:
        img.load()
        if img.mode in ("RGB", "L"):
            return img
        # Alpha and palettes are dropped: stages work on opaque pixels.
        return img.convert("L" if img.mode in ("1", "LA", "I;16", "I") else "RGB")
    except (OSError, SyntaxError, ValueError):
        kind = img.format or "image"
        raise FailedPrecondition(
            f"{field}: not a decodable image (a {kind} of {img.width}x{img.height} "
            "whose data is truncated or damaged)"
        ) from None
