"""Features for grey listing thumbnails: EfficientNet-Lite2's last two stages and head convolution fine-tuned on the
project's training photos rendered as such thumbnails (grey, a 128 px square, JPEG), never on a market's photos.
A market head reads them beside the served features and Lite2's ImageNet ones; the stages before are Lite2's
ImageNet stages, shared by both, so their outputs are computed once per photo (cached here while training)."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import CLASSES
from ..model import THUMBNAIL_TUNED_PREFIXES, reference_backbone, thumbnail_split
from ..modelinfo import IMAGENET_REFERENCE
from ..images import load_image
from ..preprocess import EvalPreprocess, Preprocess

THUMBNAIL_SIZE = 128
JPEG_QUALITY = (60, 90)           # drawn per photo, both ends included
EPOCHS = 3
BATCH = 64
LEARNING_RATE = 5e-4              # tuned stages, peak of the one-cycle schedule
HEAD_LEARNING_RATE = 3e-3
WEIGHT_DECAY = 0.01
LABEL_SMOOTHING = 0.1


def render_thumbnail(image: Image.Image, quality: int) -> Image.Image:
    """`image` as a market's thumbnail: grey, its centre square at THUMBNAIL_SIZE pixels, JPEG at `quality`."""
    grey = image.convert("L")
    side = min(grey.size)
    left, top = (grey.width - side) // 2, (grey.height - side) // 2
    grey = grey.crop((left, top, left + side, top + side)).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE),
                                                                   Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    grey.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


class ThumbnailStages(nn.Module):
    """The tuned stages (shared with `backbone`) with the room head they are trained under (the head is not served)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.stages = thumbnail_split(backbone)[1]
        self.room_head = nn.Linear(backbone.num_features, len(CLASSES))

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        return self.room_head(self.stages(shared).mean(dim=(2, 3)))


@torch.inference_mode()
def rendered_shared_outputs(shared: nn.Module, files: list, preprocess: Preprocess, seed: int, batch_size: int = 32,
                            on_progress=None) -> torch.Tensor:
    """The shared stages' output (float16) for each photo rendered as a thumbnail (JPEG quality drawn by `seed`)."""
    rng = np.random.default_rng(seed)
    transform = EvalPreprocess(preprocess)
    out = []
    for start in range(0, len(files), batch_size):
        images = [render_thumbnail(load_image(f, min_side=2 * THUMBNAIL_SIZE),
                                   int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
                  for f in files[start:start + batch_size]]
        out.append(shared(torch.from_numpy(transform.batch(images))).half())
        if on_progress is not None:
            done = min(start + batch_size, len(files))
            on_progress(done, len(files), f"rendering thumbnails: {done}/{len(files)}")
    return torch.cat(out)


def train_thumbnail_stages(train: tuple[list, np.ndarray], val: tuple[list, np.ndarray], preprocess: Preprocess,
                           epochs: int = EPOCHS, seed: int = 0, on_progress=None) -> tuple[dict, dict]:
    """Fine-tune Lite2's last stages on `train` (files, class indices) rendered as thumbnails: the tuned tensors
    (float16) and the room accuracy on `val` rendered the same way after each epoch."""
    torch.manual_seed(seed)
    backbone = reference_backbone(IMAGENET_REFERENCE)
    shared = thumbnail_split(backbone)[0].eval()
    x_train = rendered_shared_outputs(shared, train[0], preprocess, seed, on_progress=on_progress)
    x_val = rendered_shared_outputs(shared, val[0], preprocess, seed + 1, on_progress=on_progress)
    y_train, y_val = torch.tensor(np.asarray(train[1]), dtype=torch.long), np.asarray(val[1])
    model = ThumbnailStages(backbone)
    head_params = list(model.room_head.parameters())
    stage_params = [p for n, p in model.named_parameters() if not n.startswith("room_head.")]
    optimiser = torch.optim.AdamW([{"params": stage_params, "lr": LEARNING_RATE},
                                   {"params": head_params, "lr": HEAD_LEARNING_RATE}], weight_decay=WEIGHT_DECAY)
    steps = epochs * int(np.ceil(len(y_train) / BATCH))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, [LEARNING_RATE, HEAD_LEARNING_RATE],
                                                   total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        model.train()
        started, total, order = time.monotonic(), 0.0, torch.as_tensor(rng.permutation(len(y_train)))
        for start in range(0, len(y_train), BATCH):
            rows = order[start:start + BATCH]
            inputs = x_train[rows].float()
            if rng.random() < 0.5:
                inputs = inputs.flip(3)
            loss = loss_fn(model(inputs), y_train[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(rows)
        model.eval()
        with torch.inference_mode():
            predicted = torch.cat([model(x_val[s:s + 256].float()).argmax(1) for s in range(0, len(x_val), 256)])
        history.append({"epoch": epoch + 1, "loss": total / len(y_train),
                        "val_room_accuracy": float((predicted.numpy() == y_val).mean()),
                        "seconds": time.monotonic() - started})
        if on_progress is not None:
            on_progress(epoch + 1, epochs, f"epoch {epoch + 1}/{epochs}: rendered val room accuracy "
                                           f"{history[-1]['val_room_accuracy']:.3f}")
    tensors = {k: v.half() for k, v in backbone.state_dict().items() if k.startswith(THUMBNAIL_TUNED_PREFIXES)}
    return tensors, {"epochs": history}


def save_thumbnail_stages(path: Path, tensors: dict, metrics: dict) -> Path:
    """A self-describing file: the tuned tensors, how they were made and how they measured."""
    recipe = {"backbone": IMAGENET_REFERENCE, "tuned": list(THUMBNAIL_TUNED_PREFIXES),
              "thumbnail_size": THUMBNAIL_SIZE, "jpeg_quality": list(JPEG_QUALITY), "batch": BATCH,
              "learning_rate": LEARNING_RATE,
              "head_learning_rate": HEAD_LEARNING_RATE, "weight_decay": WEIGHT_DECAY,
              "label_smoothing": LABEL_SMOOTHING}
    torch.save({"recipe": recipe, "metrics": metrics, "state_dict": tensors}, path)
    return path
