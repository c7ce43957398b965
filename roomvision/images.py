"""The one image decoding function used by the CLI, the app and the API."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from pillow_heif import register_heif_opener
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DECODE_FORMATS, MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
register_heif_opener()  # PIL opens HEIF only when asked for it by name (DECODE_FORMATS)


class ImageDecodeError(ValueError):
    """An input that is not a usable image; the message is meant for the user."""


def printable_path(path: str | Path) -> tuple[str, str]:
    """The path as a table records it, and '' or why it cannot be recorded faithfully: a name that is not valid
    UTF-8 (its bytes shown as \\x escapes) or holds a line break or another control character (escaped too)."""
    text = str(path)
    shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in shown):
        shown = shown.encode("unicode_escape").decode("ascii")
        return shown, "the file name holds a line break or control character; rename the file to score it"
    if shown != text:
        return shown, "the file name is not valid UTF-8 (shown with \\x escapes); rename the file to score it"
    return text, ""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited on white, 16-bit scaled down)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageDecodeError("image holds NaN or infinite values (a float TIFF with invalid pixels)")
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0) if img.mode == "F" else 255.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _reduce_to(img: Image.Image, min_side: int) -> Image.Image:
    """Shrink by an integer factor (box average) while the short side stays at least `min_side`."""
    factor = min(img.size) // min_side
    if factor < 2:
        return img
    if img.mode not in ("L", "RGB", "RGBA", "LA", "I", "F", "CMYK"):
        img = _to_rgb(img)
    return img.reduce(factor)


def load_image(source: str | Path | bytes | io.IOBase, max_bytes: int = MAX_UPLOAD_BYTES,
               min_side: int | None = None) -> Image.Image:
    """Decode a path, bytes or file object into an upright RGB image, or raise ImageDecodeError.

    Only DECODE_FORMATS are parsed, the first frame only; sizes beyond MAX_IMAGE_PIXELS and aspect ratios beyond
    MAX_ASPECT_RATIO are refused before any pixel is decoded. With `min_side`, the image comes back as small as
    the model needs, bounding memory: JPEGs are decoded at a reduced DCT scale (draft mode), other formats are
    reduced by an integer factor, both keeping the short side at least `min_side`; `info["original_size"]`
    keeps the size of the file.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(f"file not found: {path}")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageDecodeError(f"file too large: {size:,} bytes (limit {max_bytes:,})")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = source.read(max_bytes + 1)
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageDecodeError(f"file too large: more than {max_bytes:,} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            img = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)  # frame 0; frames are never counted
            original_size = img.size
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(
                    f"image too large: {img.width}x{img.height} pixels (limit {MAX_IMAGE_PIXELS:,})")
            if max(img.size) > MAX_ASPECT_RATIO * max(1, min(img.size)):
                raise ImageDecodeError(f"unsupported aspect ratio: {img.width}x{img.height} pixels is more than "
                                       f"{MAX_ASPECT_RATIO:g}:1")
            if min_side and img.format in ("JPEG", "MPO"):
                img.draft("RGB", (min_side, min_side))
            img.load()
            if min_side:
                img = _reduce_to(img, min_side)
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(img)
            turned = (rgb.width > rgb.height) != (original_size[0] > original_size[1])
            rgb.info["original_size"] = original_size[::-1] if turned else original_size
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image too large (decompression-bomb limit): {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image, or an unsupported image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
            ZeroDivisionError, MemoryError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise ImageDecodeError("image has no pixels")
    return rgb


def find_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of candidate image files."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(p)
    return found
