"""Text metadata in PNG, JPEG and WebP files, written and read without a decoder.

An export's recipe goes into the encoded bytes as the formats define it, so
no pixel is touched and no image library is needed (the slim client and the
CLI have none): PNG text chunks (tEXt, or iTXt when the text is not Latin-1,
as Pillow's PngInfo does), an XMP packet in a JPEG APP1 segment
(``http://ns.adobe.com/xap/1.0/``) or a WebP ``XMP `` chunk (the file made
extended with a VP8X header, its XMP flag set). Each writer replaces what a
previous write of the same key put there, so embedding twice gives one copy.
"""

from __future__ import annotations

import struct
import zlib
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from stageflow.core.errors import InvalidArgument

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")
XMP_JPEG_ID = b"http://ns.adobe.com/xap/1.0/\x00"
# One JPEG segment holds at most 65535 bytes, its 2-byte length included.
_JPEG_SEGMENT_MAX = 65535 - 2
XMP_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "stageflow": "https://stageflow.dev/ns/recipe/1.0/",
}
# VP8X flags (WebP container spec).
_VP8X_ICC, _VP8X_ALPHA, _VP8X_EXIF, _VP8X_XMP = 0x20, 0x10, 0x08, 0x04


def image_format(data: bytes) -> str:
    """png, jpeg or webp from the signature; INVALID_ARGUMENT otherwise."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise InvalidArgument("image", "not a PNG, JPEG or WebP file")


# -- PNG ----------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(PNG_SIGNATURE):
        raise InvalidArgument("image", "not a PNG file")
    chunks: list[tuple[bytes, bytes]] = []
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise InvalidArgument("image", "truncated PNG chunk")
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            return chunks
    raise InvalidArgument("image", "PNG without IEND")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _keyword(body: bytes) -> str:
    return body.split(b"\x00", 1)[0].decode("latin-1")


def png_with_text(data: bytes, text: dict[str, str]) -> bytes:
    """`data` with one text chunk per key, just before IEND; earlier text
    chunks of those keys are dropped. Latin-1 text is tEXt (what every reader
    knows), anything else an uncompressed UTF-8 iTXt."""
    chunks = [
        (k, b) for k, b in _png_chunks(data) if not (k in _TEXT_CHUNKS and _keyword(b) in text)
    ]
    added = []
    for key, value in text.items():
        name = key.encode("latin-1")
        if not 1 <= len(name) <= 79:
            raise InvalidArgument("key", f"a PNG keyword has 1-79 characters, got {key!r}")
        try:
            added.append((b"tEXt", name + b"\x00" + value.encode("latin-1")))
        except UnicodeEncodeError:
            added.append((b"iTXt", name + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")))
    out = [PNG_SIGNATURE]
    for kind, body in chunks[:-1] + added + chunks[-1:]:
        out.append(_png_chunk(kind, body))
    return b"".join(out)


def png_without_text(data: bytes) -> bytes:
    """`data` without its text chunks: the PNG as stored, before any export
    added a recipe (for comparing images whose recipes differ)."""
    chunks = [(k, b) for k, b in _png_chunks(data) if k not in _TEXT_CHUNKS]
    return PNG_SIGNATURE + b"".join(_png_chunk(kind, body) for kind, body in chunks)


def png_text(data: bytes) -> dict[str, str]:
    """Every tEXt, zTXt and iTXt chunk of a PNG: keyword -> text (CRCs checked)."""
    found: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    for kind, body in _png_chunks(data):
        (crc,) = struct.unpack(">I", data[pos + 8 + len(body) : pos + 12 + len(body)])
        pos += 12 + len(body)
        if kind not in _TEXT_CHUNKS:
            continue
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise InvalidArgument("image", f"bad CRC in a {kind.decode()} chunk")
        key, _, rest = body.partition(b"\x00")
        if kind == b"tEXt":
            found[key.decode("latin-1")] = rest.decode("latin-1")
        elif kind == b"zTXt":
            found[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        else:
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\x00")
            _translated, _, value = rest.partition(b"\x00")
            found[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode(
                "utf-8"
            )
    return found


# -- XMP ----------------------------------------------------------------------


def xmp_packet(description: str, fields: dict[str, str]) -> bytes:
    """An XMP packet: `description` as dc:description (where viewers show
    it) and each field as stageflow:<name>."""
    own = "".join(
        f"<stageflow:{name}>{escape(value)}</stageflow:{name}>" for name, value in fields.items()
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        f'<x:xmpmeta xmlns:x="{XMP_NS["x"]}"><rdf:RDF xmlns:rdf="{XMP_NS["rdf"]}">'
        f'<rdf:Description rdf:about="" xmlns:dc="{XMP_NS["dc"]}" '
        f'xmlns:stageflow="{XMP_NS["stageflow"]}">'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(description)}'
        f"</rdf:li></rdf:Alt></dc:description>{own}"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def parse_xmp(packet: bytes) -> dict[str, str]:
    """dc:description as "description" and every stageflow:<name> field."""
    text = packet.decode("utf-8")
    start, end = text.find("<x:xmpmeta"), text.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        raise InvalidArgument("image", "XMP packet without x:xmpmeta")
    root = ElementTree.fromstring(text[start : end + len("</x:xmpmeta>")])
    found: dict[str, str] = {}
    li = root.find(".//dc:description/rdf:Alt/rdf:li", XMP_NS)
    if li is not None:
        found["description"] = li.text or ""
    prefix = "{" + XMP_NS["stageflow"] + "}"
    for element in root.iter():
        if element.tag.startswith(prefix):
            found[element.tag.removeprefix(prefix)] = element.text or ""
    return found


# -- JPEG ---------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(marker, payload) of each segment before the scan, and the rest from SOS on."""
    if not data.startswith(b"\xff\xd8"):
        raise InvalidArgument("image", "not a JPEG file")
    segments: list[tuple[int, bytes]] = []
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise InvalidArgument("image", "malformed JPEG segment")
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            return segments, data[pos:]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    raise InvalidArgument("image", "JPEG without a scan")


def jpeg_with_xmp(data: bytes, packet: bytes) -> bytes:
    """`data` with `packet` as its XMP APP1 segment (after JFIF/Exif, as the
    XMP spec places it), replacing an earlier one."""
    payload = XMP_JPEG_ID + packet
    if len(payload) > _JPEG_SEGMENT_MAX:
        raise InvalidArgument(
            "xmp",
            f"at most {_JPEG_SEGMENT_MAX - len(XMP_JPEG_ID)} bytes fit a JPEG segment, "
            f"got {len(packet)}",
        )
    segments, rest = _jpeg_segments(data)
    kept = [(m, p) for m, p in segments if not (m == 0xE1 and p.startswith(XMP_JPEG_ID))]
    at = 0
    while at < len(kept) and kept[at][0] in (0xE0, 0xE1):  # JFIF, Exif first
        at += 1
    kept.insert(at, (0xE1, payload))
    out = [b"\xff\xd8"]
    for marker, body in kept:
        out.append(bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body)
    return b"".join(out) + rest


def jpeg_xmp(data: bytes) -> bytes | None:
    segments, _ = _jpeg_segments(data)
    for marker, body in segments:
        if marker == 0xE1 and body.startswith(XMP_JPEG_ID):
            return body[len(XMP_JPEG_ID) :]
    return None


# -- WebP ---------------------------------------------------------------------


def _webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        raise InvalidArgument("image", "not a WebP file")
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise InvalidArgument("image", "truncated WebP chunk")
        chunks.append((kind, body))
        pos += 8 + length + (length & 1)
    return chunks


def _webp_canvas(chunks: list[tuple[bytes, bytes]]) -> tuple[int, int, bool]:
    """Width, height and whether it has alpha, from a simple file's bitstream header."""
    kind, body = chunks[0]
    if kind == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF, False
    if kind == b"VP8L" and body[:1] == b"\x2f":
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)
    raise InvalidArgument("image", "WebP without a VP8/VP8L/VP8X header")


def webp_with_xmp(data: bytes, packet: bytes) -> bytes:
    """`data` as an extended WebP with `packet` as its XMP chunk (last, as the
    container spec orders it) and the VP8X XMP flag set."""
    chunks = [(k, b) for k, b in _webp_chunks(data) if k != b"XMP "]
    if chunks[0][0] == b"VP8X":
        header = bytearray(chunks[0][1])
        header[0] |= _VP8X_XMP
        chunks[0] = (b"VP8X", bytes(header))
    else:
        width, height, alpha = _webp_canvas(chunks)
        flags = _VP8X_XMP | (_VP8X_ALPHA if alpha else 0)
        canvas = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
        chunks.insert(0, (b"VP8X", bytes([flags, 0, 0, 0]) + canvas))
    chunks.append((b"XMP ", packet))
    body = b"".join(
        kind + struct.pack("<I", len(b)) + b + (b"\x00" if len(b) & 1 else b"")
        for kind, b in chunks
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def webp_xmp(data: bytes) -> bytes | None:
    for kind, body in _webp_chunks(data):
        if kind == b"XMP ":
            return body
    return None


def with_xmp(data: bytes, packet: bytes) -> bytes:
    """The JPEG or WebP `data` with `packet` as its XMP."""
    fmt = image_format(data)
    if fmt == "jpeg":
        return jpeg_with_xmp(data, packet)
    if fmt == "webp":
        return webp_with_xmp(data, packet)
    raise InvalidArgument("image", "XMP is written into JPEG or WebP here, not PNG")


def read_xmp(data: bytes) -> bytes | None:
    """The XMP packet of a JPEG or WebP file, None without one."""
    fmt = image_format(data)
    if fmt == "jpeg":
        return jpeg_xmp(data)
    if fmt == "webp":
        return webp_xmp(data)
    return None
