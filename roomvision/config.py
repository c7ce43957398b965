"""Single source of truth: classes, paths, quality thresholds and aesthetic proxy settings."""
from __future__ import annotations

import os
import re
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
DATA_DIR = PROJECT_ROOT / "data"
DEFAULT_MANIFEST = DATA_DIR / "manifest.csv"
DEFAULT_RELABELS = DATA_DIR / "labels" / "quality_relabels.csv"
CACHE_DIR = DATA_DIR / "cache"
DEFAULT_DATASET_ROOTS = (
    PROJECT_ROOT.parent / "shared" / "datasets" / "house-rooms",
    PROJECT_ROOT.parent / "shared" / "datasets" / "places365-rooms",
)
ENV_DATA_ROOT = "ROOMVISION_DATA_ROOT"  # os.pathsep-separated dataset roots
ENV_WEIGHTS = "ROOMVISION_WEIGHTS"
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
}
DEFAULT_QUALITY_THRESHOLD = 0.5     # P(GOOD) decision threshold until a checkpoint calibrates one

# --- Aesthetic proxy -----------------------------------------------------------------------------
AESTHETIC_BINS = 10                 # scores 1..10
AESTHETIC_TARGET_STD = 1.0          # spread of the proxy target distribution, in score units
LISTING_READY_MIN_AESTHETIC = 5.5   # default minimum aesthetic score for the "listing-ready" flag
MIN_ROOM_CONFIDENCE = 0.5           # below this the room shows as "uncertain"

# --- Image input limits ---------------------------------------------------------------------------
MAX_IMAGE_PIXELS = 80_000_000       # decompression-bomb limit
MAX_UPLOAD_BYTES = 40 * 1024 * 1024


def normalise_class_name(folder_name: str) -> str | None:
    """Map a folder name such as 'Living room' or 'dinning' to a class, or None."""
    key = re.sub(r"[\s_\-]+", "", folder_name.strip().lower())
    return CLASS_ALIASES.get(key)


def dataset_roots_from_env() -> list[Path]:
    """Dataset roots from $ROOMVISION_DATA_ROOT, else the defaults that exist."""
    value = os.environ.get(ENV_DATA_ROOT)
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return [p for p in DEFAULT_DATASET_ROOTS if p.is_dir()]


def default_weights_path() -> Path:
    """The weights file to serve: $ROOMVISION_WEIGHTS or the committed default."""
    return Path(os.environ.get(ENV_WEIGHTS, DEFAULT_WEIGHTS))
