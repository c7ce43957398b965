"""A generated corpus of unusual, malformed and hostile image files: (name, bytes, expected).

`expected` is None for a file that must decode, else a phrase its error message must contain.
"""
from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

NOT_IMAGE = "not an image, or an unsupported image format"
CORRUPT = "corrupt or truncated"
TOO_LARGE = "too large"
ASPECT = "unsupported aspect ratio"
NAN = "NaN or infinite"


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def many_ifd_tiff(n: int) -> bytes:
    """A 1x1 grayscale TIFF whose IFD chain has `n` pages (counting them takes quadratic time)."""
    entry = struct.Struct("<HHII")
    ifd_size = 2 + 9 * 12 + 4
    pixel_at = 8
    out = bytearray(b"II*\x00" + struct.pack("<I", 9) + b"\x80")
    for i in range(n):
        here = 9 + i * ifd_size
        following = here + ifd_size if i + 1 < n else 0
        out += struct.pack("<H", 9)
        for tag, kind, value in ((256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                                 (273, 4, pixel_at), (277, 3, 1), (278, 3, 1), (279, 4, 1)):
            out += entry.pack(tag, kind, 1, value)
        out += struct.pack("<I", following)
    return bytes(out)


def many_frame_gif(n: int) -> bytes:
    """A 1x1 GIF with `n` frames."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * n + b"\x3b"


def png_with_header(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG that declares any size (its pixel data may be missing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def make_corpus(max_upload_bytes: int) -> list[tuple[str, bytes, str | None]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    gray = rgb.convert("L")
    good_jpeg = _save(rgb, "JPEG", quality=90)
    good_png = _save(rgb, "PNG")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))))
    palette_t = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    palette_t.info["transparency"] = 0
    frames = [Image.fromarray(np.full((60, 80, 3), v, np.uint8)) for v in (30, 200, 90)]
    anim_gif, anim_webp, apng = io.BytesIO(), io.BytesIO(), io.BytesIO()
    frames[0].save(anim_gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(anim_webp, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:], duration=100)
    i16 = Image.fromarray((np.arange(120 * 160).reshape(120, 160) * 3).astype(np.uint16))
    i32 = Image.fromarray((np.arange(120 * 160).reshape(120, 160)).astype(np.int32))
    f32 = np.linspace(0, 1, 120 * 160, dtype=np.float32).reshape(120, 160)
    f_nan, f_inf = f32.copy(), f32.copy()
    f_nan[5, 5], f_inf[7, 7] = np.nan, np.inf
    import cv2
    _, png16 = cv2.imencode(".png", (rng.integers(0, 65535, (50, 70, 3))).astype(np.uint16))
    big_photo = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).resize((4032, 3024))
    corpus: list[tuple[str, bytes, str | None]] = [
        ("rgb.jpg", good_jpeg, None),
        ("gray.png", _save(gray, "PNG"), None),
        ("gray.jpg", _save(gray, "JPEG"), None),
        ("la.png", _save(gray.convert("LA"), "PNG"), None),
        ("palette.png", _save(rgb.convert("P"), "PNG"), None),
        ("palette_transparent.png", _save(palette_t, "PNG"), None),
        ("rgba.png", _save(rgba, "PNG"), None),
        ("rgba.webp", _save(rgba, "WEBP"), None),
        ("cmyk.jpg", _save(rgb.convert("CMYK"), "JPEG"), None),
        ("cmyk.tif", _save(rgb.convert("CMYK"), "TIFF"), None),
        ("i16.png", _save(i16, "PNG"), None),
        ("i16.tif", _save(i16, "TIFF"), None),
        ("i32.tif", _save(i32, "TIFF"), None),
        ("float.tif", _save(Image.fromarray(f32), "TIFF"), None),
        ("float_nan.tif", _save(Image.fromarray(f_nan), "TIFF"), NAN),
        ("float_inf.tif", _save(Image.fromarray(f_inf), "TIFF"), NAN),
        ("rgb16.png", png16.tobytes(), None),
        ("bilevel.png", _save(gray.convert("1"), "PNG"), None),
        ("bilevel.tif", _save(gray.convert("1"), "TIFF", compression="group4"), None),
        ("lzw.tif", _save(rgb, "TIFF", compression="tiff_lzw"), None),
        ("deflate.tif", _save(rgb, "TIFF", compression="tiff_adobe_deflate"), None),
        ("jpeg_in.tif", _save(rgb, "TIFF", compression="jpeg"), None),
        ("animated.gif", anim_gif.getvalue(), None),
        ("animated.webp", anim_webp.getvalue(), None),
        ("animated.png", apng.getvalue(), None),
        ("still.webp", _save(rgb, "WEBP"), None),
        ("lossless.webp", _save(rgb, "WEBP", lossless=True), None),
        ("image.bmp", _save(rgb, "BMP"), None),
        ("gray.bmp", _save(gray, "BMP"), None),
        ("image.tiff", _save(rgb, "TIFF"), None),
        ("interlaced.png", _save(rgb, "PNG", optimize=True), None),
        ("one_pixel.png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), None),
        ("two_by_one.gif", _save(Image.new("P", (2, 1)), "GIF"), None),
        ("ten_to_one.png", _save(Image.new("RGB", (1000, 100), (90, 90, 90)), "PNG"), None),
        ("progressive.jpg", _save(rgb, "JPEG", progressive=True), None),
        ("subsampled.jpg", _save(rgb, "JPEG", subsampling=2, quality=30), None),
        ("phone_4032x3024.jpg", _save(big_photo, "JPEG", quality=85), None),
        ("phone_8000x6000.jpg", _save(big_photo.resize((8000, 6000)), "JPEG", quality=80), None),
        ("black_79mp.png", _save(Image.new("L", (8888, 8888)), "PNG"), None),
        ("png_named.jpg", good_png, None),
        ("trailing_zip.jpg", good_jpeg + _zip_bytes(), None),
        ("trailing_garbage.png", good_png + bytes(rng.integers(0, 255, 500, dtype=np.uint8)), None),
        ("many_ifds.tif", many_ifd_tiff(60000), None),
        ("many_frames.gif", many_frame_gif(300000), None),
        ("empty.jpg", b"", "empty"),
        ("one_byte.jpg", b"\xff", NOT_IMAGE),
        ("soi_only.jpg", b"\xff\xd8", NOT_IMAGE),
        ("bom_only.jpg", b"\xef\xbb\xbf", NOT_IMAGE),
        ("nul_bytes.png", bytes(1000), NOT_IMAGE),
        ("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], CORRUPT),
        ("truncated.png", good_png[: len(good_png) // 2], CORRUPT),
        ("truncated.webp", _save(rgb, "WEBP")[:200], CORRUPT),
        ("truncated.bmp", _save(rgb, "BMP")[:5000], CORRUPT),
        ("truncated.tif", _save(rgb, "TIFF")[:3000], CORRUPT),
        ("truncated.gif", anim_gif.getvalue()[:60], NOT_IMAGE),
        ("header_only.jpg", good_jpeg[:20], NOT_IMAGE),
        ("random.bin", rng.integers(0, 255, 5000, dtype=np.uint8).tobytes(), NOT_IMAGE),
        ("text.jpg", b"hello, I am not a photo\n", NOT_IMAGE),
        ("page.html", b"<!doctype html><html><body>hi</body></html>", NOT_IMAGE),
        ("img_tag.html", b'<html><img src="http://127.0.0.1/x.jpg"></html>', NOT_IMAGE),
        ("doc.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", NOT_IMAGE),
        ("vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', NOT_IMAGE),
        ("xxe.svg", b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]><svg>&x;</svg>',
         NOT_IMAGE),
        ("data.json", b'{"image": "kitchen.jpg"}', NOT_IMAGE),
        ("table.csv", b"path,label\n=cmd|' /C calc'!A0,GOOD\n", NOT_IMAGE),
        ("archive.zip", _zip_bytes(), NOT_IMAGE),
        ("compressed.jpg.gz", gzip.compress(good_jpeg), NOT_IMAGE),
        ("script.jpg", b"#!/bin/sh\nrm -rf /\n", NOT_IMAGE),
        ("eps.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", NOT_IMAGE),
        ("gif_garbage.gif", b"GIF89a" + bytes(40), NOT_IMAGE),
        ("png_bad_crc.png", good_png[:40] + bytes([good_png[40] ^ 0xFF]) + good_png[41:], NOT_IMAGE),
        ("jpeg_flipped_bits.jpg", _flip(good_jpeg, 300, 600), CORRUPT),
        ("bomb.png", _save(Image.new("1", (12000, 12000)), "PNG"), TOO_LARGE),
        ("declared_huge.png", png_with_header(100000, 100000), TOO_LARGE),
        ("declared_zero.png", png_with_header(0, 10), NOT_IMAGE),
        ("too_big.jpg", good_jpeg + bytes(max_upload_bytes), TOO_LARGE),
        ("tall_1x20000.png", _save(Image.new("RGB", (1, 20000)), "PNG"), ASPECT),
        ("wide_100000x1.png", _save(Image.new("L", (100000, 1)), "PNG"), ASPECT),
        ("wide_4000x8.png", _save(Image.new("RGB", (4000, 8), (90, 90, 90)), "PNG"), ASPECT),
        ("wide_1100x100.jpg", _save(Image.new("RGB", (1100, 100)), "JPEG"), ASPECT),
        ("tall_1x11.bmp", _save(Image.new("RGB", (1, 11)), "BMP"), ASPECT),
        ("wide_20000x1.gif", _save(Image.new("P", (20000, 1)), "GIF"), ASPECT),
        ("wide.tif", _save(Image.new("L", (30000, 2)), "TIFF"), ASPECT),
        ("wide.webp", _save(Image.new("RGB", (16000, 10)), "WEBP"), ASPECT),
    ]
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        corpus.append((f"exif_orientation_{orientation}.jpg", _save(rgb, "JPEG", exif=exif), None))
    exif = Image.Exif()
    exif[0x0112] = 99
    corpus.append(("exif_orientation_invalid.jpg", _save(rgb, "JPEG", exif=exif), None))
    for fmt, ext in (("ICO", "ico"), ("PCX", "pcx"), ("TGA", "tga"), ("PPM", "ppm"), ("SGI", "sgi"),
                     ("JPEG2000", "jp2"), ("QOI", "qoi"), ("IM", "im"), ("XBM", "xbm"), ("DDS", "dds"),
                     ("SPIDER", "spi"), ("MSP", "msp")):
        img = {"XBM": gray.convert("1"), "MSP": gray.convert("1"), "SPIDER": gray.convert("F")}.get(fmt, rgb)
        corpus.append((f"format.{ext}", _save(img, fmt), NOT_IMAGE))
    return corpus


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "not a photo")
    return buf.getvalue()


def _flip(data: bytes, start: int, stop: int) -> bytes:
    """Invert the bits of a byte range (corruption in the middle of entropy-coded data)."""
    return data[:start] + bytes(b ^ 0xFF for b in data[start:stop]) + data[stop:]
