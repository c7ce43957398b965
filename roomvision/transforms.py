"""Pixel preprocessing shared by training and serving, derived from the checkpoint's `Preprocess`."""
from __future__ import annotations

from torchvision import transforms as T

from .model import Preprocess

_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
           "nearest": T.InterpolationMode.NEAREST}


def eval_transform(pre: Preprocess) -> T.Compose:
    """Resize the short side, centre crop, scale to [0, 1], normalise."""
    return T.Compose([
        T.Resize(pre.resize_size, interpolation=_INTERP[pre.interpolation]),
        T.CenterCrop(pre.input_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def train_transform(pre: Preprocess, min_crop: float = 0.45) -> T.Compose:
    """Geometric augmentation only: colour changes would alter the quality and aesthetic targets."""
    return T.Compose([
        T.RandomResizedCrop(pre.input_size, scale=(min_crop, 1.0), ratio=(0.8, 1.25),
                            interpolation=_INTERP[pre.interpolation]),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])
