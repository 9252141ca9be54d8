"""Image messages and avatars: accept only real, bounded images, and make safe thumbnails.

Why this module is careful:

* Clients lie, by mistake or on purpose. A Content-Type header or a file name says nothing
  about the bytes, so the format is identified from the bytes themselves and only four
  formats that every client can display are accepted (`ACCEPTED`).
* Decoding runs C code (libjpeg, zlib, libwebp, Pillow's GIF decoder) over untrusted input.
  Before any decoder sees the data, the declared canvas size is read from the header by the
  small parsers below and checked against `MAX_PIXELS`. That check does not rely on Pillow's
  process-wide `Image.MAX_IMAGE_PIXELS`: Pillow only *warns* between 89 and 179 megapixels
  by default, its WebP loader allocates the whole canvas before its own check runs, and
  changing that global per call would race between the server's worker threads. A
  decompression bomb is therefore an `ImageError` raised in microseconds, never a warning,
  and never an allocation. Pillow's own `DecompressionBombError` (and the warning, when
  warnings are errors) is still mapped to `ImageError` in case another part of the process
  lowers Pillow's limit below ours.
* Thumbnails are re-encoded from pixels into a fresh image, so nothing from the original's
  metadata (EXIF with GPS position and camera serial, XMP, comments, PNG text chunks, ICC
  profiles) reaches other users, even when the original is already small.

Both public functions are CPU-bound and meant for `trio.to_thread.run_sync`. They are pure:
no module or Pillow global is read-modify-written per call, so concurrent calls are safe.
Each call may hold a decoded frame of up to `MAX_PIXELS` x 4 bytes (160 MB at the default
limit), so the caller should bound how many run at once (a `trio.CapacityLimiter`).

This is the one module of `voxer_stream.media` that depends on Pillow.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from PIL import (
    GifImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

__all__ = [
    "ACCEPTED",
    "MAX_BYTES",
    "MAX_PIXELS",
    "ImageError",
    "ImageInfo",
    "probe",
    "thumbnail",
]

# Importing the four plugins registers them with Pillow up front, so that opening an image
# never falls back to Pillow's lazy "load every plugin" initialisation mid-request.
_PLUGINS: Final = (GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin)

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
WEBP: Final = "image/webp"
GIF: Final = "image/gif"

#: Media types we accept: the formats every browser and mobile client displays natively.
ACCEPTED: Final = frozenset({JPEG, PNG, WEBP, GIF})

#: Largest canvas accepted (width x height). 40 megapixels covers common phone cameras
#: (12 to 24 Mpx) with room to spare while bounding a decoded RGBA frame to 160 MB.
MAX_PIXELS: Final = 40_000_000

#: Largest encoded image accepted, checked before any parsing.
MAX_BYTES: Final = 10 * 1024 * 1024

# Most chunks (PNG), blocks (GIF) or segments (JPEG) walked in a header. Real files have
# tens, or a few thousand for long animations; a flood of tiny ones within MAX_BYTES would
# otherwise cost seconds of Python, here and again in Pillow's own chunk loops.
_MAX_STRUCTURES: Final = 50_000

#: Thumbnail JPEG quality: visually clean at thumbnail sizes, a few tens of KB.
_JPEG_QUALITY: Final = 85

# The Pillow format each sniffed media type is opened as; Pillow is never asked to guess.
_PILLOW_FORMAT: Final[Mapping[str, str]] = {JPEG: "JPEG", PNG: "PNG", WEBP: "WEBP", GIF: "GIF"}

# How messages name each type.
_NAME: Final[Mapping[str, str]] = {JPEG: "JPEG", PNG: "PNG", WEBP: "WebP", GIF: "GIF"}

# What Pillow reports back. A JPEG carrying a Multi-Picture Format index (many phone photos:
# depth maps, HDR gain maps) is opened by Pillow as "MPO"; it is still a JPEG to a client.
_CONTENT_TYPE: Final[Mapping[str, str]] = {
    "JPEG": JPEG,
    "MPO": JPEG,
    "PNG": PNG,
    "WEBP": WEBP,
    "GIF": GIF,
}

# Formats we recognise only to refuse them with a useful message.
_REFUSED_MAGIC: Final = (
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\xff\x0a", "JPEG XL"),
)
_ISO_BMFF_BRANDS: Final[Mapping[bytes, str]] = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}

# EXIF orientation -> the transpose that displays the image upright. This is the table
# ImageOps.exif_transpose uses; we apply it ourselves so it runs on the small thumbnail
# rather than the full-size decode.
_ORIENTATION: Final[Mapping[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Everything Pillow raises for data it cannot identify or decode. DecompressionBombWarning
# is only ever raised (rather than printed) when warnings are errors; it is a refusal too.
_PILLOW_ERRORS: Final = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # Pillow's "not a valid PNG/JPEG" from inside plugins
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

# JPEG start-of-frame markers (SOF0-SOF15 minus DHT, JPG and DAC): they carry the size.
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-RST7, SOI, EOI.
_JPEG_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xDA)})
# The next marker: any run of 0xFF fill bytes followed by a byte that is neither 0xFF nor the
# 0x00 of an escaped 0xFF. Junk before it is skipped, as Pillow and libjpeg do.
_JPEG_MARKER: Final = re.compile(rb"\xff+([^\xff\x00])")


class ImageError(ValueError):
    """The bytes are not an image we accept.

    A ValueError because the fault is the client's data, not the server: the server maps it
    to an INVALID_REQUEST error carrying the message, so messages say what is wrong.
    """


@dataclass(frozen=True, kw_only=True)
class ImageInfo:
    """What a client needs to lay out an image before downloading it.

    `width` and `height` are as displayed, i.e. after EXIF orientation, because that is how
    browsers and the thumbnail show the image.
    """

    content_type: str
    width: int
    height: int


def probe(data: bytes) -> ImageInfo:
    """Identify an uploaded image by its content and check that it fully decodes.

    Raises ImageError for empty or oversized data, formats outside ACCEPTED, corrupt or
    truncated files and images larger than MAX_PIXELS. Pillow's `verify()` checks the
    container (PNG chunk CRCs); the image is then reopened, because a verified image cannot
    be used, and the first frame is decoded, which is what catches truncated pixel data.
    Later frames of an animation are not decoded: their cost is unbounded by MAX_BYTES
    (thousands of frames), and clients that fail on them still show the first frame.
    """
    upload = _preflight(data)
    with _open(upload) as im, _refusing(upload.content_type, "is corrupt"):
        im.verify()
    with _open(upload) as im:
        _decode(im, upload.content_type)
        width, height = im.size
        if _orientation(upload, im) in (5, 6, 7, 8):  # a quarter turn: displayed sideways
            width, height = height, width
    return ImageInfo(content_type=upload.content_type, width=width, height=height)


def thumbnail(data: bytes, *, max_side: int = 320) -> tuple[bytes, ImageInfo]:
    """Render a small, metadata-free preview of an accepted image.

    The result fits in max_side x max_side with the aspect ratio kept and is never
    upscaled. It is always re-encoded, even when the source is already small, because
    re-encoding from pixels is what guarantees no EXIF (GPS position), XMP or comment
    survives. EXIF orientation is applied, so the thumbnail is upright without metadata.
    Animated GIF/WebP/PNG give their first frame. Colours are converted to sRGB when the
    source embeds an ICC profile, since the profile itself is not carried over.

    The output is JPEG, or PNG when transparency is actually used (an alpha channel that
    is fully opaque gives JPEG, which is several times smaller for photos).

    Raises ImageError for anything probe() refuses at the header or decode stage, and
    ValueError for a max_side below 1 (a caller bug, not the client's).
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    upload = _preflight(data)
    with _open(upload) as im:
        target = _fit(im.size, max_side)
        if upload.content_type == JPEG:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the box:
            # far less memory and CPU for a large photo. Square box, so rotation is moot.
            im.draft(None, (max_side, max_side))
        _decode(im, upload.content_type)
        orientation = _orientation(upload, im)
        icc_profile = im.info.get("icc_profile")
        frame = _resizable(im)
        if frame.size != target:
            frame = frame.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        small = _to_srgb(frame, icc_profile if isinstance(icc_profile, bytes) else None)
    if orientation in _ORIENTATION:
        small = small.transpose(_ORIENTATION[orientation])
    # A fresh image carries pixels only: Pillow's savers copy some of `info` (JPEG comment,
    # PNG ICC profile and transparency) into the output unless told otherwise.
    clean = Image.new(small.mode, small.size)
    clean.paste(small)
    out = io.BytesIO()
    if clean.mode == "RGBA" and _uses_alpha(clean):
        clean.save(out, format="PNG", optimize=True)
        out_type = PNG
    else:
        clean.convert("RGB").save(out, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
        out_type = JPEG
    return out.getvalue(), ImageInfo(content_type=out_type, width=clean.width, height=clean.height)


@dataclass(frozen=True, slots=True)
class _Upload:
    """An upload that passed the header checks, as Pillow will see it.

    For JPEG, `data` lacks the APP1 segments (EXIF, XMP) and `exif` holds the EXIF payload
    taken out: Pillow parses JPEG EXIF while opening the file and warns when it is corrupt,
    which real cameras and editors often produce, so the EXIF is read here instead (for
    the orientation only). The pixels are untouched. Other formats keep their EXIF in a
    chunk Pillow stores without parsing, so theirs is read from Pillow's `info`.
    """

    content_type: str
    data: bytes
    exif: bytes | None = None


def _preflight(data: bytes) -> _Upload:
    """Sniff the media type and check the declared size, before any decoder runs.

    The size parsers only need the first few hundred bytes of a well-formed file; they are
    strict where Pillow is lenient, never the other way round, so an image that passes
    here cannot declare a larger canvas to Pillow.
    """
    if not data:
        raise ImageError("image is empty")
    if len(data) > MAX_BYTES:
        raise ImageError(f"image is {len(data)} bytes; the limit is {MAX_BYTES} bytes")
    content_type = _sniff(data)
    if content_type == JPEG:
        size, data, exif = _jpeg_scan(data)
        upload = _Upload(content_type, data, exif)
    else:
        size = _HEADER_SIZE[content_type](data)
        upload = _Upload(content_type, data)
    if size is None:
        raise ImageError(f"{_NAME[content_type]} header is truncated or malformed")
    _check_pixels(size, content_type)
    return upload


def _sniff(data: bytes) -> str:
    """Identify the format from magic bytes; name the refused formats we recognise."""
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return WEBP
    accepted = ", ".join(sorted(ACCEPTED))
    refused = _ISO_BMFF_BRANDS.get(data[8:12]) if data[4:8] == b"ftyp" else None
    for magic, name in _REFUSED_MAGIC:
        if refused is None and data.startswith(magic):
            refused = name
    if refused is not None:
        raise ImageError(f"{refused} images are not accepted; send one of {accepted}")
    raise ImageError(f"not a recognised image; send one of {accepted}")


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from IHDR, which PNG requires to be the first chunk.

    The chunk list is walked too, only to count it; whether it is complete and intact is
    left to Pillow's verify() and decoder.
    """
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    pos, chunks = 8, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            break
        chunks += 1
        if chunks > _MAX_STRUCTURES:
            raise ImageError(f"PNG image has more than {_MAX_STRUCTURES} chunks")
        pos += 12 + length
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def _gif_size(data: bytes) -> tuple[int, int] | None:
    """The canvas as Pillow will allocate it for the first frame.

    The logical screen size can be smaller than the first frame's extent, and Pillow grows
    the canvas to fit the frame, so walk the blocks to the first image descriptor. Bytes
    that are not a block introducer are refused rather than skipped one at a time.
    """
    try:
        width, height, flags = struct.unpack_from("<HHB", data, 6)
        pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table
        in_extension = False  # inside an extension: walking its length-prefixed sub-blocks
        for _ in range(_MAX_STRUCTURES):
            if in_extension:
                length = data[pos]
                pos += 1 + length
                in_extension = length != 0  # a zero length ends the extension
                continue
            introducer = data[pos]
            if introducer == 0x2C:  # image descriptor
                left, top, frame_w, frame_h = struct.unpack_from("<HHHH", data, pos + 1)
                return max(width, left + frame_w), max(height, top + frame_h)
            if introducer != 0x21:  # trailer before any image, or junk
                return None
            pos += 2  # introducer and extension label
            in_extension = True
    except (IndexError, struct.error):
        return None
    raise ImageError(f"GIF image has more than {_MAX_STRUCTURES} blocks before its first frame")


def _jpeg_scan(data: bytes) -> tuple[tuple[int, int] | None, bytes, bytes | None]:
    """The largest frame declared before the first scan; the file without APP1; its EXIF.

    Pillow takes the last start-of-frame marker before start-of-scan; a well-formed file
    has exactly one, and taking the largest can only be stricter. The EXIF payload is the
    first APP1 starting with the Exif identifier, as Pillow would have chosen.
    """
    largest: tuple[int, int] | None = None
    exif: bytes | None = None
    kept: list[bytes] = []
    kept_from = 0
    pos = 2
    for _ in range(_MAX_STRUCTURES):
        match = _JPEG_MARKER.search(data, pos)
        if match is None:
            return None, data, None
        marker, pos = match.group(1)[0], match.end()
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            kept.append(data[kept_from:])
            return largest, b"".join(kept) if len(kept) > 1 else data, exif
        if pos + 2 > len(data):
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > len(data):
            break
        if marker in _JPEG_SOF:
            if length < 7:
                break
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if largest is None or width * height > largest[0] * largest[1]:
                largest = width, height
        elif marker == 0xE1:  # APP1: EXIF or XMP
            payload = data[pos + 2 : pos + length]
            if exif is None and payload.startswith(b"Exif\x00\x00"):
                exif = payload
            kept.append(data[kept_from : match.start()])
            kept_from = pos + length
        pos += length
    else:
        raise ImageError(f"JPEG image has more than {_MAX_STRUCTURES} segments before its scan")
    return None, data, None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas libwebp will allocate, from the first chunk (VP8, VP8L or VP8X)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


_HEADER_SIZE: Final[Mapping[str, Callable[[bytes], tuple[int, int] | None]]] = {
    PNG: _png_size,
    GIF: _gif_size,
    WEBP: _webp_size,
}


def _check_pixels(size: tuple[int, int], content_type: str) -> None:
    """Refuse empty canvases and anything over MAX_PIXELS."""
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{_NAME[content_type]} image is empty ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{_NAME[content_type]} image is {width}x{height} "
            f"({width * height / 1e6:.1f} megapixels); "
            f"the limit is {MAX_PIXELS / 1e6:g} megapixels"
        )


@contextmanager
def _refusing(content_type: str, problem: str) -> Iterator[None]:
    """Turn whatever Pillow raises into an ImageError naming the problem."""
    try:
        yield
    except ImageError:
        raise
    except _PILLOW_ERRORS as exc:
        raise ImageError(f"{_NAME[content_type]} image {problem}: {exc}") from exc


def _open(upload: _Upload) -> ImageFile.ImageFile:
    """Open lazily as exactly the sniffed format and re-check the size Pillow read."""
    content_type = upload.content_type
    with _refusing(content_type, "cannot be read"):
        im = Image.open(io.BytesIO(upload.data), formats=[_PILLOW_FORMAT[content_type]])
    try:
        if im.format not in _CONTENT_TYPE:  # unreachable with `formats`; refuse, don't assume
            raise ImageError(f"{_NAME[content_type]} image was read as {im.format}")
        _check_pixels(im.size, content_type)
    except ImageError:
        im.close()
        raise
    return im


def _decode(im: ImageFile.ImageFile, content_type: str) -> None:
    """Decode the current (first) frame, refusing truncated or corrupt pixel data."""
    with _refusing(content_type, "does not decode"):
        im.load()
    _check_pixels(im.size, content_type)


def _orientation(upload: _Upload, im: Image.Image) -> int:
    """The EXIF orientation of an opened upload (see _Upload for where its EXIF lives)."""
    return _exif_orientation(upload.exif if upload.content_type == JPEG else im.info.get("exif"))


def _exif_orientation(raw: object) -> int:
    """The Orientation tag (1 to 8) in IFD0 of raw EXIF (a TIFF structure), else 1.

    1 (upright) also when the EXIF is absent, unreadable or the value is out of range.
    Read directly rather than through Pillow's getexif(), which warns on the corrupt EXIF
    that real cameras and editors produce and also honours XMP orientation, which browsers
    ignore; the thumbnail should match how clients display the original.
    """
    if not isinstance(raw, bytes):
        return 1
    tiff = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind, values = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == 0x0112:  # Orientation: one SHORT
            if kind != 3 or values != 1:
                return 1
            (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size within max_side x max_side with the same aspect ratio, never larger.

    Computed from the full-size header dimensions, before a JPEG draft decode rounds them,
    so a thumbnail's shape does not depend on how it was decoded.
    """
    width, height = size
    if width <= max_side and height <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale)))


def _resizable(im: Image.Image) -> Image.Image:
    """The frame in a mode that resizes with proper filtering, converting only if needed.

    Palette and bilevel images only resize by nearest neighbour, so they become RGB(A)
    first; 16-bit greyscale is scaled to 8 bits (a plain conversion clips it to white).
    A colour-key transparency becomes an alpha channel first, as resampling would blur the
    key colour. Other 8-bit images are resized as they are, so colour conversion runs on
    the small image.
    """
    if im.mode in ("RGB", "RGBA", "L", "LA", "CMYK") and "transparency" not in im.info:
        return im
    if im.mode.startswith("I"):
        return im.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return im.convert("RGBA" if im.has_transparency_data else "RGB")


def _to_srgb(im: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """RGB or RGBA pixels in sRGB, the only colour space a profile-less thumbnail can mean.

    An unusable embedded profile is ignored rather than refused: the pixels decoded, and
    slightly-off colours in a preview are better than no preview.
    """
    mode = "RGBA" if im.has_transparency_data else "RGB"
    if icc_profile:
        source = im if im.mode in ("RGB", "RGBA", "L", "CMYK") else im.convert(mode)
        try:
            converted = ImageCms.profileToProfile(
                source,
                ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)),
                ImageCms.createProfile("sRGB"),
                outputMode=mode,
            )
        except (OSError, ValueError, TypeError, ImportError):  # PyCMSError is an OSError
            converted = None
        if converted is not None:
            return converted
    return im.convert(mode)


def _uses_alpha(im: Image.Image) -> bool:
    """Whether any pixel is less than fully opaque."""
    lowest, _ = im.getchannel("A").getextrema()
    return isinstance(lowest, int) and lowest < 255
