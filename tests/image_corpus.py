"""A generated corpus of unusual and malformed image files: (name, bytes, should_decode)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def make_corpus(max_upload_bytes: int) -> list[tuple[str, bytes, bool]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    gray = rgb.convert("L")
    good_jpeg = _save(rgb, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))))
    palette_t = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    palette_t.info["transparency"] = 0
    frames = [Image.fromarray(np.full((60, 80, 3), v, np.uint8)) for v in (30, 200, 90)]
    anim_gif, anim_webp = io.BytesIO(), io.BytesIO()
    frames[0].save(anim_gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(anim_webp, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    i16 = Image.fromarray((np.arange(120 * 160).reshape(120, 160) * 3).astype(np.uint16))
    i32 = Image.fromarray((np.arange(120 * 160).reshape(120, 160)).astype(np.int32))
    f32 = Image.fromarray(np.linspace(0, 1, 120 * 160, dtype=np.float32).reshape(120, 160))
    import cv2
    ok16, png16 = cv2.imencode(".png", (rng.integers(0, 65535, (50, 70, 3))).astype(np.uint16))
    bomb = _save(Image.new("1", (12000, 12000)), "PNG")
    good_png = _save(rgb, "PNG")
    return [
        ("rgb.jpg", good_jpeg, True),
        ("gray.png", _save(gray, "PNG"), True),
        ("gray.jpg", _save(gray, "JPEG"), True),
        ("la.png", _save(gray.convert("LA"), "PNG"), True),
        ("palette.png", _save(rgb.convert("P"), "PNG"), True),
        ("palette_transparent.png", _save(palette_t, "PNG"), True),
        ("rgba.png", _save(rgba, "PNG"), True),
        ("cmyk.jpg", _save(rgb.convert("CMYK"), "JPEG"), True),
        ("i16.png", _save(i16, "PNG"), True),
        ("i32.tif", _save(i32, "TIFF"), True),
        ("float.tif", _save(f32, "TIFF"), True),
        ("rgb16.png", png16.tobytes(), True),
        ("bilevel.png", _save(gray.convert("1"), "PNG"), True),
        ("exif_rotated.jpg", _save(rgb, "JPEG", exif=exif), True),
        ("animated.gif", anim_gif.getvalue(), True),
        ("animated.webp", anim_webp.getvalue(), True),
        ("still.webp", _save(rgb, "WEBP"), True),
        ("image.bmp", _save(rgb, "BMP"), True),
        ("image.tiff", _save(rgb, "TIFF"), True),
        ("one_pixel.png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), True),
        ("very_wide.png", _save(Image.new("RGB", (4000, 8), (90, 90, 90)), "PNG"), True),
        ("progressive.jpg", _save(rgb, "JPEG", progressive=True), True),
        ("empty.jpg", b"", False),
        ("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], False),
        ("truncated.png", good_png[: len(good_png) // 2], False),
        ("header_only.jpg", good_jpeg[:20], False),
        ("random.bin", rng.integers(0, 255, 5000, dtype=np.uint8).tobytes(), False),
        ("text.jpg", b"hello, I am not a photo\n", False),
        ("page.html", b"<!doctype html><html><body>hi</body></html>", False),
        ("doc.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", False),
        ("vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', False),
        ("gif_garbage.gif", b"GIF89a" + bytes(40), False),
        ("png_bad_crc.png", good_png[:40] + bytes([good_png[40] ^ 0xFF]) + good_png[41:], False),
        ("bomb.png", bomb, False),
        ("too_big.jpg", good_jpeg + bytes(max_upload_bytes), False),
    ]
