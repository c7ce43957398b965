"""Pixel preprocessing: the one implementation used by training, evaluation and serving (NumPy + PIL, no PyTorch).

It reproduces torchvision's Resize (PIL) -> CenterCrop -> ToTensor -> Normalize exactly, so a process that only
serves (the app, the API) never has to import PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import load_image

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST}


@dataclass
class Preprocess:
    """How pixels become model input; derived from the backbone and stored in every checkpoint."""
    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def decode_for_model(source, pre: Preprocess) -> Image.Image:
    """The one decode policy of every entry point (serving, training, evaluation): bounded decoding, with JPEGs
    decoded at the smallest DCT scale that keeps the short side at least the model's resize size."""
    return load_image(source, min_side=pre.resize_size)


def resize_short_side(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Scale so the short side is `size` (the long side truncated, as torchvision does)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    return img.resize((new_w, new_h), INTERPOLATIONS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


class Normalise:
    """RGB PIL image -> float32 CHW array scaled to [0, 1] and normalised with the checkpoint's mean and std."""

    def __init__(self, pre: Preprocess):
        mean, std = np.asarray(pre.mean, np.float64), np.asarray(pre.std, np.float64)
        # (v / 255 - mean) / std as one multiply-add per pixel, written straight into the CHW array
        self.scale = (1 / (255 * std)).astype(np.float32).reshape(3, 1, 1)
        self.offset = (-mean / std).astype(np.float32).reshape(3, 1, 1)

    def __call__(self, img: Image.Image) -> np.ndarray:
        pixels = np.stack([np.asarray(band) for band in img.convert("RGB").split()])  # CHW without a strided copy
        x = np.multiply(pixels, self.scale, dtype=np.float32)
        x += self.offset
        return x


class EvalPreprocess:
    """Resize the short side, centre crop, normalise: image -> float32 CHW array (picklable for workers)."""

    def __init__(self, pre: Preprocess):
        self.pre, self.normalise = pre, Normalise(pre)

    def __call__(self, img: Image.Image) -> np.ndarray:
        img = resize_short_side(img, self.pre.resize_size, self.pre.interpolation)
        return self.normalise(center_crop(img, self.pre.input_size))

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        return np.stack([self(img) for img in images]) if images else np.zeros(
            (0, 3, self.pre.input_size, self.pre.input_size), np.float32)
