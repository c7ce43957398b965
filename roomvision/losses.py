"""The one training objective, shared by full training and head retraining."""
from __future__ import annotations

import torch
import torch.nn.functional as F

AESTHETIC_WEIGHT = 2.0


def emd_loss(pred_probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """NIMA's earth mover's distance (r = 2) between score distributions (optionally weighted per sample)."""
    cdf_diff = torch.cumsum(pred_probs, 1) - torch.cumsum(target, 1)
    per_sample = torch.sqrt((cdf_diff ** 2).mean(1) + 1e-12)
    return per_sample.mean() if weight is None else (per_sample * weight).sum() / weight.sum().clamp(min=1e-6)


def room_class_weight(class_idx, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights (mean 1) from the training labels (negative ones: no room target)."""
    labels = torch.tensor(list(class_idx))
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


def multitask_loss(out: dict, room: torch.Tensor, quality: torch.Tensor, aesthetic: torch.Tensor,
                   class_weight: torch.Tensor | None = None, label_smoothing: float = 0.1,
                   sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Room cross-entropy (class-weighted, smoothed) + quality BCE (balanced within the batch) + weighted EMD.

    `sample_weight` scales the quality and aesthetic terms per sample (human labels count more). Returns the
    total and its parts for logging.
    """
    w = torch.ones_like(quality) if sample_weight is None else sample_weight
    loss_room = F.cross_entropy(out["room"].float(), room, weight=class_weight, label_smoothing=label_smoothing)
    pos_weight = ((1 - quality) * w).sum() / (quality * w).sum().clamp(min=1e-6)
    per_sample = F.binary_cross_entropy_with_logits(out["quality"].float(), quality, reduction="none",
                                                    pos_weight=pos_weight.clamp(0.2, 5).detach())
    loss_quality = (per_sample * w).sum() / w.sum().clamp(min=1e-6)
    loss_aesthetic = emd_loss(torch.softmax(out["aesthetic"].float(), 1), aesthetic, w)
    total = loss_room + loss_quality + AESTHETIC_WEIGHT * loss_aesthetic
    return total, {"room": loss_room.item(), "quality": loss_quality.item(), "aesthetic": loss_aesthetic.item()}
