"""What listing photos from elsewhere look like: small grayscale thumbnails, agency watermarks and captions, strong
JPEG, letterboxing and unusual aspect ratios. Used as training augmentation (room head only: these change the
photo's quality, not its room) and, with different parameters, as the robustness report of `evaluate`."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

AGENCY_WORDS = ("IMMO", "REALTY", "HOMES", "MAKLER", "ESTATES", "PROPERTY", "AGENCE", "CASA", "WOHNEN", "LETTINGS")


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def thumbnail(img: Image.Image, rng: np.random.Generator, side: int | None = None) -> Image.Image:
    """Shrink to a small thumbnail (short side 96-160 px, or `side`)."""
    side = side or int(rng.integers(96, 161))
    scale = side / min(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR) \
        if scale < 1 else img


def grayscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.convert("L").convert("RGB")


def watermark(img: Image.Image, rng: np.random.Generator, text: str | None = None) -> Image.Image:
    """A semi-transparent agency name across the photo, as agencies stamp their pictures."""
    text = text or f"{rng.choice(AGENCY_WORDS)} {rng.choice(AGENCY_WORDS).lower()}.{rng.choice(['com', 'de', 'fr'])}"
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(int(min(img.size) * rng.uniform(0.08, 0.16)))
    box = draw.textbbox((0, 0), text, font=font)
    x = rng.uniform(0, max(1, img.width - (box[2] - box[0])))
    y = rng.uniform(0, max(1, img.height - (box[3] - box[1])))
    shade = int(rng.choice([255, 0]))
    draw.text((x, y), text, font=font, fill=(shade, shade, shade, int(rng.integers(90, 170))))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def caption_bar(img: Image.Image, rng: np.random.Generator, text: str | None = None) -> Image.Image:
    """An opaque band with text (price, phone number, agency) along the top or bottom edge."""
    text = text or f"{rng.choice(AGENCY_WORDS)}  +{rng.integers(10, 99)} {rng.integers(100000, 999999)}"
    out = img.copy()
    draw = ImageDraw.Draw(out)
    band = max(6, int(img.height * rng.uniform(0.08, 0.15)))
    top = 0 if rng.random() < 0.5 else img.height - band
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    draw.rectangle([0, top, img.width, top + band], fill=colour)
    draw.text((band // 3, top + band // 6), text, font=_font(int(band * 0.6)),
              fill=(255, 255, 255) if sum(colour) < 384 else (0, 0, 0))
    return out


def strong_jpeg(img: Image.Image, rng: np.random.Generator, quality: int | None = None) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality or int(rng.integers(8, 25)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def letterbox(img: Image.Image, rng: np.random.Generator, aspect: float | None = None) -> Image.Image:
    """Pad to a wider (or taller) frame with white or black bars."""
    aspect = aspect or float(rng.choice([16 / 9, 2.0, 9 / 16]))
    w, h = img.size
    new = (max(w, round(h * aspect)), h) if aspect >= w / h else (w, max(h, round(w / aspect)))
    shade = int(rng.choice([255, 0]))
    canvas = Image.new("RGB", new, (shade, shade, shade))
    canvas.paste(img, ((new[0] - w) // 2, (new[1] - h) // 2))
    return canvas


def odd_aspect(img: Image.Image, rng: np.random.Generator, aspect: float | None = None) -> Image.Image:
    """Crop to a panorama (2:1 to 3:1) or a tall portrait strip."""
    aspect = aspect or float(rng.choice([rng.uniform(2.0, 3.0), 1 / rng.uniform(1.8, 2.5)]))
    w, h = img.size
    if aspect >= 1:
        ch = max(1, min(h, round(w / aspect)))
        top = int(rng.integers(0, h - ch + 1))
        return img.crop((0, top, w, top + ch))
    cw = max(1, min(w, round(h * aspect)))
    left = int(rng.integers(0, w - cw + 1))
    return img.crop((left, 0, left + cw, h))


TRAIN_AUGMENTATIONS = {"thumbnail": thumbnail, "grayscale": grayscale, "watermark": watermark,
                       "caption_bar": caption_bar, "strong_jpeg": strong_jpeg, "letterbox": letterbox,
                       "odd_aspect": odd_aspect}


def listing_augment(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One or two random listing-style changes; returns the image and their names."""
    names = list(rng.choice(list(TRAIN_AUGMENTATIONS), size=int(rng.integers(1, 3)), replace=False))
    for name in names:
        img = TRAIN_AUGMENTATIONS[name](img, rng)
    return img, "+".join(names)


# The robustness report: fixed settings, and text that training never draws.
REPORT_TRANSFORMS = {
    "thumbnail 128 px": lambda img, rng: thumbnail(img, rng, side=128),
    "grayscale": grayscale,
    "grayscale 128 px": lambda img, rng: grayscale(thumbnail(img, rng, side=128), rng),
    "watermark": lambda img, rng: watermark(img, rng, text="© Nordlicht Immobilien GmbH"),
    "caption bar": lambda img, rng: caption_bar(img, rng, text="3 pieces - 92 m2 - 415 000 EUR"),
    "JPEG quality 10": lambda img, rng: strong_jpeg(img, rng, quality=10),
    "letterbox 16:9": lambda img, rng: letterbox(img, rng, aspect=16 / 9),
    "panorama 2.5:1": lambda img, rng: odd_aspect(img, rng, aspect=2.5),
    "portrait 1:2": lambda img, rng: odd_aspect(img, rng, aspect=0.5),
}
