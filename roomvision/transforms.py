"""PyTorch tensors from the shared preprocessing (`roomvision.preprocess`), plus training augmentation."""
from __future__ import annotations

import torch
from torchvision import transforms as T

from .preprocess import INTERPOLATIONS, EvalPreprocess, Normalise, Preprocess

_INTERP = {name: T.InterpolationMode(name) for name in INTERPOLATIONS}


def eval_transform(pre: Preprocess) -> T.Compose:
    """Resize the short side, centre crop, scale to [0, 1], normalise; as a tensor."""
    return T.Compose([EvalPreprocess(pre), torch.from_numpy])


def train_transform(pre: Preprocess, min_crop: float = 0.45) -> T.Compose:
    """Geometric augmentation only: colour changes would alter the quality and aesthetic targets."""
    return T.Compose([
        T.RandomResizedCrop(pre.input_size, scale=(min_crop, 1.0), ratio=(0.8, 1.25), interpolation=_INTERP[pre.interpolation]),
        T.RandomHorizontalFlip(),
        Normalise(pre),
        torch.from_numpy,
    ])
