"""Photos that are none of the five rooms, of kinds the out-of-scope decision never trains on.

Real photos shipped inside installed packages (scikit-image's and scikit-learn's sample images: people, animals,
objects, a temple exterior, the sky, textures, scanned pages) cut into random crops, and synthesised listing
extras (floor plans, documents, charts, blank frames). Deterministic for a seed; nothing is downloaded.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PACKAGE_PHOTOS = {  # kind -> scikit-image sample files
    "people_animals_objects": ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "motorcycle_left.png",
                               "rocket.jpg", "horse.png", "coins.png"],
    "textures_close_ups": ["brick.png", "grass.png", "gravel.png"],
    "scanned_pages": ["page.png", "text.png"],
    "sky_and_science": ["hubble_deep_field.jpg", "moon.png", "retina.jpg", "ihc.png", "cell.png"],
}


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _crops(img: Image.Image, n: int, rng: random.Random, size: int = 320) -> list[Image.Image]:
    img = img.convert("RGB")
    out = []
    for _ in range(n):
        scale = rng.uniform(0.5, 1.0)
        w, h = int(img.width * scale), int(img.height * scale)
        x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
        out.append(img.crop((x, y, x + w, y + h)).resize((size, size * h // max(w, 1) or 1)))
    return out


def package_photos(per_file: int, rng: random.Random) -> dict[str, list[Image.Image]]:
    """Random crops of the sample photos that scikit-image and scikit-learn install."""
    import skimage
    from sklearn.datasets import load_sample_images
    folder = Path(skimage.__file__).parent / "data"
    kinds = {kind: [c for name in files for c in _crops(Image.open(folder / name), per_file, rng)]
             for kind, files in PACKAGE_PHOTOS.items()}
    kinds["exteriors_gardens"] = [c for arr in load_sample_images().images
                                  for c in _crops(Image.fromarray(arr), per_file * 3, rng)]
    return kinds


def whole_package_photos() -> dict[str, list[Image.Image]]:
    """The installed sample photos whole, one kind: what a user would upload by mistake."""
    import skimage
    from sklearn.datasets import load_sample_images
    folder = Path(skimage.__file__).parent / "data"
    photos = [Image.open(folder / name).convert("RGB") for files in PACKAGE_PHOTOS.values() for name in files]
    return {"package photos, whole": photos + [Image.fromarray(a) for a in load_sample_images().images]}


def floor_plan(rng: random.Random, size: int = 384) -> Image.Image:
    """A black-on-white floor plan: outer walls, partitions, door swings, room names and a dimension line."""
    img = Image.new("RGB", (size, size), (255, 255, 255) if rng.random() < 0.7 else (245, 242, 232))
    d = ImageDraw.Draw(img)
    m = rng.randint(20, 50)
    wall = rng.randint(3, 7)
    d.rectangle((m, m, size - m, size - m), outline=(0, 0, 0), width=wall)
    xs = sorted(rng.sample(range(m + 60, size - m - 60), 2))
    ys = sorted(rng.sample(range(m + 60, size - m - 60), 1))
    for x in xs:
        d.line((x, m, x, size - m), fill=(0, 0, 0), width=wall - 1)
    for y in ys:
        d.line((m, y, size - m, y), fill=(0, 0, 0), width=wall - 1)
    for _ in range(rng.randint(2, 5)):
        cx, cy, r = rng.randint(m + 20, size - m - 20), rng.randint(m + 20, size - m - 20), rng.randint(15, 30)
        d.arc((cx - r, cy - r, cx + r, cy + r), 0, 90, fill=(0, 0, 0), width=1)
        d.line((cx, cy, cx + r, cy), fill=(0, 0, 0), width=2)
    names = ["KITCHEN", "BED 1", "BED 2", "BATH", "LIVING", "DINING", "HALL", "WC"]
    for name in rng.sample(names, 4):
        d.text((rng.randint(m + 10, size - m - 80), rng.randint(m + 10, size - m - 30)), name, fill=(40, 40, 40),
               font=_font(rng.randint(10, 16)))
    d.line((m, size - m // 2, size - m, size - m // 2), fill=(90, 90, 90), width=1)
    d.text((size // 2 - 20, size - m // 2 - 14), f"{rng.randint(8, 15)}.{rng.randint(0, 9)} m", fill=(90, 90, 90),
           font=_font(11))
    return img


def document(rng: random.Random, size: int = 384) -> Image.Image:
    """A page of text: title, paragraphs, sometimes a table (an energy certificate, a contract)."""
    img = Image.new("RGB", (size * 3 // 4, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    y = 20
    d.text((20, y), rng.choice(["Energy Performance Certificate", "Tenancy Agreement", "Property Details"]),
           fill=(0, 0, 0), font=_font(rng.randint(14, 20)))
    y += 34
    words = "the property offers rooms with light and a garden near schools transport shops".split()
    while y < size - 30:
        if rng.random() < 0.15:
            for row in range(4):
                for col in range(3):
                    d.rectangle((20 + col * 80, y + row * 16, 100 + col * 80, y + 16 + row * 16), outline=(0, 0, 0))
            y += 72
        else:
            d.text((20, y), " ".join(rng.choices(words, k=rng.randint(5, 9))), fill=(30, 30, 30),
                   font=_font(rng.randint(9, 12)))
            y += rng.randint(14, 20)
    return img


def chart(rng: random.Random, size: int = 320) -> Image.Image:
    """A bar chart with axes: price history or room sizes."""
    img = Image.new("RGB", (size, size * 3 // 4), (255, 255, 255))
    d = ImageDraw.Draw(img)
    h = img.height
    d.line((30, 10, 30, h - 30), fill=(0, 0, 0), width=2)
    d.line((30, h - 30, size - 10, h - 30), fill=(0, 0, 0), width=2)
    colour = tuple(rng.randint(0, 200) for _ in range(3))
    n = rng.randint(4, 10)
    for i in range(n):
        x = 40 + i * (size - 60) // n
        d.rectangle((x, rng.randint(20, h - 50), x + (size - 60) // n - 6, h - 31), fill=colour)
    return img


def blank(rng: random.Random, size: int = 320) -> Image.Image:
    """A flat or gradient frame (a lens cap, a wall filling the view, a failed capture)."""
    a = np.array([rng.randint(0, 255) for _ in range(3)], np.float32)
    b = a if rng.random() < 0.5 else np.array([rng.randint(0, 255) for _ in range(3)], np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grid = np.broadcast_to(a + (b - a) * t, (size, size, 3))
    noise = np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 3, grid.shape)
    return Image.fromarray(np.clip(grid + noise, 0, 255).astype(np.uint8))


def unseen_kinds(per_kind: int = 40, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Kind name -> RGB images; about `per_kind` of each."""
    rng = random.Random(seed)
    kinds = {k: v[:per_kind] for k, v in package_photos(max(2, per_kind // 3), rng).items()}
    for name, make in (("floor_plans", floor_plan), ("documents", document), ("charts", chart), ("blank", blank)):
        kinds[name] = [make(rng) for _ in range(per_kind)]
    return kinds
