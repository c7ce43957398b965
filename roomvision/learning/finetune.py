"""The PyTorch side of adapting to a market. Fine-tuning a market stage (model.MarketStage) on a market's corrected
photos: the backbone's last stage and head convolution, copied from the model and trained on the output of the
stage before (computed once per photo and for its mirror image), with a room head of the market's rooms started
from the model's own room head; about a minute on a CPU for 400 photos. Settings chosen on the validation listings
of a market unlike the training photos (benchmarks/adapt_loop.py). And the ImageNet backbone's features of the
corrected photos, which a market head can read beside the served ones."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..model import MarketStage, RoomVisionNet, reference_backbone
from ..preprocess import EvalPreprocess, Preprocess, decode_for_model

EPOCHS = 8
MIN_STEPS = 100          # fewer corrections train for more epochs: at least the steps of 8 epochs over 400 photos
LEARNING_RATE = 3e-3     # peak of the one-cycle schedule
WEIGHT_DECAY = 1e-4
BATCH = 32
LABEL_SMOOTHING = 0.1
DROPOUT = 0.2


def _photo_batches(files: list, preprocess: Preprocess, batch_size: int, on_progress=None):
    """Preprocessed batches of `files` as tensors, reporting `on_progress(done, total, message)` after each."""
    transform = EvalPreprocess(preprocess)
    for start in range(0, len(files), batch_size):
        yield torch.from_numpy(transform.batch([decode_for_model(f, preprocess)
                                                for f in files[start:start + batch_size]]))
        if on_progress is not None:
            done = min(start + batch_size, len(files))
            on_progress(done, len(files), f"reading corrected photos: {done}/{len(files)}")


@torch.inference_mode()
def stage_inputs(model: RoomVisionNet, files: list, preprocess: Preprocess, batch_size: int = 32,
                 mirror: bool = True, on_progress=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last stage's input (float16) for each photo and, with `mirror`, for its mirror image;
    `on_progress(done, total, message)`."""
    plain, mirrored = [], []
    for x in _photo_batches(files, preprocess, batch_size, on_progress):
        h = model.last_stage_input(torch.cat([x, x.flip(3)]) if mirror else x).half()
        plain.append(h[:len(x)])
        mirrored.append(h[len(x):])
    return torch.cat(plain), torch.cat(mirrored) if mirror else None


def saved_reference() -> torch.nn.Module:
    """The ImageNet backbone as a version stores it (float16 tensors), so that the features a head is fitted on are
    the ones the version computes."""
    return reference_backbone().half().float()


@torch.inference_mode()
def reference_features(reference: torch.nn.Module, files: list, preprocess: Preprocess, batch_size: int = 32,
                       on_progress=None) -> np.ndarray:
    """The ImageNet backbone's pooled features of each photo, on the model's own preprocessing."""
    return torch.cat([reference(x) for x in _photo_batches(files, preprocess, batch_size, on_progress)]).numpy()


def fine_tune_stage(model: RoomVisionNet, inputs: torch.Tensor, mirrored: torch.Tensor, y: np.ndarray,
                    classes: list[int], seed: int = 0, epochs: int | None = None, on_progress=None) -> MarketStage:
    """A market stage trained on `inputs` (each step draws a photo or its mirror image) with labels `y`, indices
    into `classes` (the model's class indices the market's corrections contain): class-balanced cross-entropy with
    label smoothing, AdamW on a one-cycle schedule; its BatchNorm statistics move to the market's photos. `epochs`
    by default: EPOCHS, or more where that would be fewer than MIN_STEPS steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=np.int64)
    steps_per_epoch = math.ceil(len(y) / BATCH)
    if epochs is None:
        epochs = max(EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
    stage = MarketStage(model.backbone, len(classes))
    with torch.no_grad():
        stage.head.weight.copy_(model.room_head.weight[classes])
        stage.head.bias.copy_(model.room_head.bias[classes])
    counts = np.bincount(y, minlength=len(classes))
    weight = torch.tensor(len(y) / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
    optimiser = torch.optim.AdamW(stage.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, LEARNING_RATE,
                                                   total_steps=max(1, epochs * steps_per_epoch))
    stage.train()
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            rows = torch.from_numpy(order[start:start + BATCH])
            flip = torch.from_numpy(rng.random(len(rows)) < 0.5)[:, None, None, None]
            h = torch.where(flip, mirrored[rows], inputs[rows]).float()
            logits = stage.head(nn.functional.dropout(stage.features(h), DROPOUT, training=True))
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(y[rows.numpy()]), weight=weight,
                                               label_smoothing=LABEL_SMOOTHING)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        if on_progress is not None:
            on_progress(epoch + 1, epochs, f"fine-tuning the market stage: epoch {epoch + 1}/{epochs}")
    return stage.eval()


@torch.inference_mode()
def stage_logits(stage: MarketStage, inputs: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The market stage's room logits for last-stage inputs."""
    return torch.cat([stage(inputs[i:i + batch_size].float()) for i in range(0, len(inputs), batch_size)]).numpy()
