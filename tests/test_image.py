"""Image probing and thumbnails: what is accepted, what is refused, and what never leaks.

Every image is generated in memory with Pillow, so the cases say exactly what they contain.
Decompression bombs are crafted headers (or a real, highly compressible canvas) and must be
refused before Pillow opens them: a refusal after allocating the canvas would still let one
upload take the server's memory.
"""

from __future__ import annotations

import io
import random
import struct
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio
from PIL import ExifTags, Image, ImageCms, ImageOps, PngImagePlugin

from voxer_stream.media import image
from voxer_stream.media.image import (
    ACCEPTED,
    MAX_BYTES,
    MAX_PIXELS,
    ImageError,
    ImageInfo,
    probe,
    thumbnail,
)

RED = (220, 20, 30)
GREEN = (20, 200, 40)
BLUE = (30, 40, 220)
WHITE = (255, 255, 255)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **params)
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def noise(size: tuple[int, int]) -> Image.Image:
    """Incompressible content, so truncating the file really cuts pixel data."""
    return Image.effect_noise(size, 64).convert("RGB")


def quadrants(size: tuple[int, int] = (200, 100)) -> Image.Image:
    """Four solid colours, so any flip or rotation is visible in the corners."""
    width, height = size
    im = Image.new("RGB", size, WHITE)
    im.paste(RED, (0, 0, width // 2, height // 2))
    im.paste(GREEN, (width // 2, 0, width, height // 2))
    im.paste(BLUE, (0, height // 2, width // 2, height))
    return im


def corner_colours(im: Image.Image) -> list[tuple[int, ...]]:
    rgb = im.convert("RGB")
    w, h = rgb.size
    points = [
        (w // 4, h // 4),
        (3 * w // 4, h // 4),
        (w // 4, 3 * h // 4),
        (3 * w // 4, 3 * h // 4),
    ]
    return [tuple(rgb.getpixel(p)) for p in points]


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def with_orientation(im: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(im, fmt, exif=exif.tobytes())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A well-formed PNG container whose header declares any size, with tiny pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def uniform_png(width: int, height: int) -> bytes:
    """A genuine, fully decodable all-black PNG: a few KB per million pixels on the wire."""
    row = b"\0" * (1 + width)  # filter byte + one byte per greyscale pixel
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_declaring(width, height, idat)


def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    return data[:offset] + struct.pack(fmt, *values) + data[offset + struct.calcsize(fmt) :]


def jpeg_declaring(width: int, height: int) -> bytes:
    data = encode(Image.new("RGB", (16, 16), RED), "JPEG")
    sof = data.index(b"\xff\xc0")
    return patched(data, sof + 5, ">HH", height, width)


def webp_declaring(width: int, height: int) -> bytes:
    data = encode(Image.new("RGBA", (16, 16), (*RED, 128)), "WEBP")  # alpha: extended format
    assert data[12:16] == b"VP8X"
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return data[:24] + canvas + data[30:]


def gif_declaring(width: int, height: int) -> bytes:
    """A 16x16 logical screen whose first frame claims a far larger extent (Pillow grows
    the canvas to fit it)."""
    data = encode(Image.new("P", (16, 16)), "GIF")
    descriptor = data.index(b"\x2c\x00\x00\x00\x00\x10\x00\x10\x00")
    return patched(data, descriptor + 5, "<HH", width, height)


# --- accepted formats -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "params"),
    [
        ("JPEG", "image/jpeg", {}),
        ("PNG", "image/png", {}),
        ("WEBP", "image/webp", {}),
        ("WEBP", "image/webp", {"lossless": True}),
        ("GIF", "image/gif", {}),
        ("MPO", "image/jpeg", {}),  # phone JPEGs with a multi-picture index
    ],
)
def test_probe_identifies_each_accepted_format(
    fmt: str, content_type: str, params: dict[str, object]
) -> None:
    data = encode(quadrants((123, 45)), fmt, **params)
    assert probe(data) == ImageInfo(content_type=content_type, width=123, height=45)


def test_accepted_is_the_four_web_formats() -> None:
    assert {"image/jpeg", "image/png", "image/webp", "image/gif"} == ACCEPTED


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")]
)
def test_probe_reports_displayed_size_after_exif_rotation(fmt: str, content_type: str) -> None:
    data = with_orientation(quadrants((200, 100)), 6, fmt=fmt)
    assert probe(data) == ImageInfo(content_type=content_type, width=100, height=200)


def test_probe_animated_gif_reports_canvas() -> None:
    frames = [Image.new("RGB", (60, 40), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert probe(data) == ImageInfo(content_type="image/gif", width=60, height=40)


# --- thumbnails -------------------------------------------------------------------------


def test_png_with_transparency_gives_png_thumbnail() -> None:
    source = Image.new("RGBA", (400, 400), (*RED, 255))
    source.paste((0, 0, 0, 0), (0, 0, 200, 400))  # left half transparent
    data, info = thumbnail(encode(source, "PNG"))
    assert info == ImageInfo(content_type="image/png", width=320, height=320)
    out = opened(data)
    assert out.format == "PNG"
    assert out.mode == "RGBA"
    assert out.getpixel((10, 160))[3] == 0
    assert out.getpixel((310, 160)) == (*RED, 255)


def test_palette_gif_with_transparency_gives_png_thumbnail() -> None:
    source = Image.new("RGBA", (50, 50), (*GREEN, 255))
    source.paste((0, 0, 0, 0), (0, 0, 25, 50))
    data, info = thumbnail(encode(source, "GIF"))
    assert info.content_type == "image/png"
    assert opened(data).getpixel((5, 25))[3] == 0


def test_opaque_jpeg_gives_jpeg_thumbnail() -> None:
    data, info = thumbnail(encode(noise((800, 600)), "JPEG"))
    assert info == ImageInfo(content_type="image/jpeg", width=320, height=240)
    out = opened(data)
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (320, 240))


def test_fully_opaque_alpha_channel_gives_jpeg() -> None:
    # An alpha channel nobody uses (screenshots, exports) should not cost a PNG.
    data, info = thumbnail(encode(quadrants().convert("RGBA"), "PNG"))
    assert info.content_type == "image/jpeg"
    assert opened(data).format == "JPEG"


def test_large_photo_fits_box_with_aspect_ratio_kept() -> None:
    source = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    data, info = thumbnail(encode(source, "JPEG", quality=70))
    assert (info.width, info.height) == (320, 240)
    assert opened(data).size == (320, 240)


@pytest.mark.parametrize("size", [(1750, 1375), (2001, 1333), (1283, 4001)])
def test_jpeg_draft_decoding_does_not_change_the_thumbnail_shape(size: tuple[int, int]) -> None:
    # JPEG is decoded at a reduced scale whose rounding must not leak into the result.
    width, height = size
    scale = 320 / max(size)
    expected = (round(width * scale), round(height * scale))
    source = Image.new("RGB", size, BLUE)
    for fmt in ("JPEG", "PNG"):
        _, info = thumbnail(encode(source, fmt))
        assert (info.width, info.height) == expected, fmt


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((4000, 3000), 320, (320, 240)),
        ((3000, 4000), 320, (240, 320)),
        ((4000, 3000), 100, (100, 75)),
        ((1000, 1000), 320, (320, 320)),
        ((3000, 10), 320, (320, 1)),
    ],
)
def test_thumbnail_box(size: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    _, info = thumbnail(encode(Image.new("RGB", size, BLUE), "PNG"), max_side=max_side)
    assert (info.width, info.height) == expected


def test_small_image_is_not_upscaled_but_is_reencoded() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SpyCam"
    source = encode(quadrants((50, 30)), "JPEG", exif=exif.tobytes())
    data, info = thumbnail(source)
    assert info == ImageInfo(content_type="image/jpeg", width=50, height=30)
    assert opened(data).size == (50, 30)
    assert data != source
    assert b"SpyCam" not in data


def test_exif_orientation_6_rotates_a_quarter_turn() -> None:
    data, info = thumbnail(with_orientation(quadrants((400, 200)), 6))
    assert (info.width, info.height) == (160, 320)  # 320x160, then width/height swap
    out = opened(data)
    assert out.size == (160, 320)
    # Orientation 6: the stored top-left (red) is displayed at the top-right.
    top_left, top_right, bottom_left, bottom_right = corner_colours(out)
    assert close(top_right, RED)
    assert close(top_left, BLUE)
    assert close(bottom_right, GREEN)
    assert close(bottom_left, WHITE)
    assert not out.getexif()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_imageops(orientation: int) -> None:
    data = with_orientation(quadrants((200, 100)), orientation, fmt="PNG")
    expected = ImageOps.exif_transpose(opened(data))
    out, info = thumbnail(data)
    result = opened(out)
    assert result.size == expected.size == (info.width, info.height)
    assert all(
        close(a, b) for a, b in zip(corner_colours(result), corner_colours(expected), strict=True)
    )


def test_corrupt_exif_is_ignored_not_warned() -> None:
    # Pillow's own EXIF reader warns on this; warnings are errors in this suite.
    junk_exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff\x00\x01"
    data = encode(quadrants(), "JPEG", exif=junk_exif)
    with pytest.warns(UserWarning, match="Corrupt EXIF"):  # what Pillow alone would do
        Image.open(io.BytesIO(data))
    assert probe(data).width == 200
    assert thumbnail(data)[1].width == 200


def test_gps_exif_xmp_and_comments_are_stripped() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SpyCam"
    exif[ExifTags.Base.BodySerialNumber] = "SERIAL-12345"
    exif[ExifTags.Base.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (51.0, 30.0, 26.0),
        ExifTags.GPS.GPSLongitudeRef: "W",
        ExifTags.GPS.GPSLongitude: (0.0, 7.0, 39.0),
    }
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret-xmp</x:xmpmeta>'
    source = encode(noise((640, 480)), "JPEG", exif=exif, comment=b"secret-comment", xmp=xmp)
    assert opened(source).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the fixture has GPS

    data, _ = thumbnail(source)
    out = opened(data)
    assert not out.getexif()
    assert not out.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert {"exif", "comment", "xmp", "icc_profile"}.isdisjoint(out.info)
    for secret in (b"Exif", b"SpyCam", b"SERIAL-12345", b"secret-comment", b"secret-xmp"):
        assert secret not in data


def test_png_text_and_exif_are_stripped_from_png_thumbnail() -> None:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("Comment", "secret-text")
    meta.add_itxt("Author", "secret-author", zip=True)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SpyCam"
    source = Image.new("RGBA", (64, 64), (*GREEN, 128))
    data, info = thumbnail(encode(source, "PNG", pnginfo=meta, exif=exif.tobytes()))
    assert info.content_type == "image/png"
    out = opened(data)
    assert not out.getexif()
    assert {"Comment", "Author", "exif"}.isdisjoint(out.info)
    assert b"secret" not in data
    assert b"SpyCam" not in data


def test_icc_profile_is_applied_then_dropped() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data, _ = thumbnail(encode(quadrants(), "PNG", icc_profile=srgb))
    out = opened(data)
    assert "icc_profile" not in out.info
    assert close(corner_colours(out)[0], RED)


def test_icc_conversion_keeps_transparency() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = Image.new("RGBA", (40, 40), (*RED, 255))
    source.paste((0, 0, 0, 0), (0, 0, 20, 40))
    data, info = thumbnail(encode(source, "PNG", icc_profile=srgb))
    out = opened(data)
    assert info.content_type == "image/png"
    assert out.getpixel((5, 20))[3] == 0
    assert close(out.getpixel((35, 20)), (*RED, 255))


def test_unusable_icc_profile_still_gives_a_thumbnail() -> None:
    data, info = thumbnail(encode(quadrants(), "PNG", icc_profile=b"not a profile"))
    assert info.content_type == "image/jpeg"
    assert close(corner_colours(opened(data))[0], RED)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (80, 60), colour) for colour in (RED, GREEN, BLUE)]
    source = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(opened(source), "n_frames", 1) == 3
    data, info = thumbnail(source)
    assert info == ImageInfo(content_type="image/jpeg", width=80, height=60)
    out = opened(data)
    assert getattr(out, "n_frames", 1) == 1
    assert close(corner_colours(out)[0], RED)


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (80, 60), colour) for colour in (GREEN, RED, BLUE)]
    source = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    assert probe(source) == ImageInfo(content_type="image/webp", width=80, height=60)
    data, _ = thumbnail(source)
    assert close(corner_colours(opened(data))[0], GREEN)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    source = Image.new("I;16", (40, 40), 32768)  # mid grey
    data, info = thumbnail(encode(source, "PNG"))
    assert info.content_type == "image/jpeg"
    assert close(corner_colours(opened(data))[0], (128, 128, 128), tolerance=8)


def test_cmyk_jpeg_gives_rgb_thumbnail() -> None:
    data, info = thumbnail(encode(quadrants().convert("CMYK"), "JPEG"))
    out = opened(data)
    assert (info.content_type, out.mode) == ("image/jpeg", "RGB")
    assert close(corner_colours(out)[0], RED, tolerance=60)


def test_max_side_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_side") as caught:
        thumbnail(encode(quadrants(), "PNG"), max_side=0)
    assert not isinstance(caught.value, ImageError)  # a caller bug, not the client's


# --- refused ----------------------------------------------------------------------------


def truncated_png() -> bytes:
    data = encode(noise((200, 200)), "PNG")
    return data[: len(data) // 2]


def truncated_jpeg() -> bytes:
    data = encode(noise((200, 200)), "JPEG")
    return data[: len(data) // 2]


def truncated_gif() -> bytes:
    data = encode(noise((200, 200)).convert("P"), "GIF")
    return data[: len(data) // 2]


REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "empty"),
    "random bytes": (lambda: random.Random(1234).randbytes(4096), "not a recognised image"),
    "text file": (lambda: b"Dear server,\nthis is not a picture.\n" * 20, "not a recognised"),
    "BMP": (lambda: encode(quadrants(), "BMP"), "BMP images are not accepted"),
    "TIFF": (lambda: encode(quadrants(), "TIFF"), "TIFF images are not accepted"),
    "HEIC": (
        lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64,
        "HEIC images are not accepted",
    ),
    "truncated PNG": (truncated_png, "PNG image"),
    "truncated JPEG": (truncated_jpeg, "JPEG image does not decode"),
    "truncated GIF": (truncated_gif, "GIF image"),
    "PNG signature only": (lambda: b"\x89PNG\r\n\x1a\n", "PNG header is truncated"),
    "GIF without an image": (lambda: b"GIF89a\x10\x00\x10\x00\x00\x00\x00;", "GIF header"),
    "JPEG without a frame": (lambda: b"\xff\xd8\xff\xd9", "JPEG header"),
    "WebP without a bitstream": (lambda: b"RIFF\x04\x00\x00\x00WEBP", "WebP header"),
    "zero-size PNG": (lambda: png_declaring(0, 10), "PNG image is empty"),
    "over MAX_BYTES": (lambda: encode(quadrants(), "PNG") + b"\0" * MAX_BYTES, "limit is"),
    # Floods of tiny structures: seconds of header parsing if not cut short.
    "JPEG segment flood": (
        lambda: b"\xff\xd8" + b"\xff\xfe\x00\x02" * 2_000_000,
        "more than 50000 segments",
    ),
    "PNG chunk flood": (
        lambda: (
            png_declaring(10, 10)[:33]
            + png_chunk(b"abCd", b"") * 600_000
            + png_declaring(10, 10)[33:]
        ),
        "more than 50000 chunks",
    ),
    "GIF sub-block flood": (
        lambda: b"GIF89a\x10\x00\x10\x00\x00\x00\x00\x21\xfe" + b"\x01a" * 3_000_000,
        "more than 50000 blocks",
    ),
}


@pytest.mark.parametrize("function", [probe, thumbnail], ids=["probe", "thumbnail"])
@pytest.mark.parametrize("case", REFUSED)
def test_refused(function: Callable[[bytes], object], case: str) -> None:
    make, message = REFUSED[case]
    with pytest.raises(ImageError, match=message):
        function(make())


def test_corrupt_png_crc_is_refused_by_probe() -> None:
    data = bytearray(encode(noise((64, 64)), "PNG"))
    data[data.index(b"IDAT") + 100] ^= 0xFF
    with pytest.raises(ImageError, match="PNG image is corrupt"):
        probe(bytes(data))


def test_image_error_is_a_value_error() -> None:
    assert issubclass(ImageError, ValueError)


BOMBS: dict[str, Callable[[], bytes]] = {
    "PNG 50000x50000": lambda: png_declaring(50_000, 50_000),
    # Over our limit but inside the band where Pillow would only warn (89-179 Mpx).
    "PNG 10000x10000": lambda: png_declaring(10_000, 10_000),
    "PNG just over the limit": lambda: png_declaring(8000, MAX_PIXELS // 8000 + 1),
    "JPEG 60000x60000": lambda: jpeg_declaring(60_000, 60_000),
    # Pillow's WebP loader allocates the canvas before its own (error-only) check.
    "WebP 16384x16384": lambda: webp_declaring(16_384, 16_384),
    "WebP 10000x10000": lambda: webp_declaring(10_000, 10_000),
    "GIF frame growing the canvas": lambda: gif_declaring(60_000, 60_000),
}


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("function", [probe, thumbnail], ids=["probe", "thumbnail"])
@pytest.mark.parametrize("case", BOMBS)
def test_decompression_bomb_refused_before_pillow_opens_it(
    function: Callable[[bytes], object], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = BOMBS[case]()
    assert len(data) < 2000

    def never(*args: object, **kwargs: object) -> Image.Image:
        raise AssertionError("a bomb reached Image.open")

    monkeypatch.setattr(Image, "open", never)
    started = time.perf_counter()
    with pytest.raises(ImageError, match="megapixels"):
        function(data)
    assert time.perf_counter() - started < 0.5


@pytest.mark.filterwarnings("error")
def test_real_compressible_bomb_is_refused_quickly() -> None:
    # 48 Mpx of black is 48 MB decoded but a few tens of KB on the wire, well under
    # Pillow's own limits: only our check stands between it and the decoder.
    data = uniform_png(8000, 6000)
    assert len(data) < 100_000
    assert Image.open(io.BytesIO(data)).size == (8000, 6000)  # Pillow itself would open it
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"8000x6000 \(48\.0 megapixels\)"):
        probe(data)
    with pytest.raises(ImageError, match="limit is 40 megapixels"):
        thumbnail(data)
    assert time.perf_counter() - started < 0.5


def test_pillow_bomb_error_is_an_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # If something else in the process lowers Pillow's global limit below ours, Pillow
    # refuses first; that must still reach the client as an ImageError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        probe(encode(quadrants((200, 100)), "PNG"))


# --- purity -----------------------------------------------------------------------------


def test_calls_leave_pillow_globals_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    probe(encode(quadrants(), "PNG"))
    thumbnail(encode(quadrants(), "JPEG"))
    assert before == Image.MAX_IMAGE_PIXELS
    assert before is None or before > MAX_PIXELS  # ours is the stricter limit


def test_concurrent_calls_agree_with_serial_calls() -> None:
    inputs = [
        encode(noise((300 + 10 * i, 200)), fmt)
        for i, fmt in enumerate(["JPEG", "PNG", "WEBP", "GIF"] * 4)
    ]
    serial = [(probe(data), thumbnail(data)) for data in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda data: (probe(data), thumbnail(data)), inputs))
    assert parallel == serial


async def test_runs_in_a_trio_worker_thread() -> None:
    data = encode(quadrants((640, 480)), "WEBP")
    info = await trio.to_thread.run_sync(probe, data)
    thumb, thumb_info = await trio.to_thread.run_sync(thumbnail, data)
    assert info == ImageInfo(content_type="image/webp", width=640, height=480)
    assert thumb_info == ImageInfo(content_type="image/jpeg", width=320, height=240)
    assert opened(thumb).size == (320, 240)


def test_module_exports() -> None:
    assert set(image.__all__) == {
        "ACCEPTED",
        "MAX_BYTES",
        "MAX_PIXELS",
        "ImageError",
        "ImageInfo",
        "probe",
        "thumbnail",
    }
    assert MAX_BYTES == 10 * 1024 * 1024
