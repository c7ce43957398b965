"""Photo-quality metrics, proxy GOOD/BAD rules, aesthetic proxy targets and realistic degradations.

Each property follows calculate -> score -> threshold: `compute_metrics` measures, `quality_reasons`
applies the thresholds from `config.QUALITY_THRESHOLDS` and explains every rule that fires.
"""
from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from .config import AESTHETIC_BINS, AESTHETIC_TARGET_STD, METRIC_SIZE, QUALITY_THRESHOLDS
from .decisions import rule_fires

METRIC_NAMES = ("sharpness", "lum_p05", "lum_p50", "lum_p95", "dark_clip", "bright_clip", "width", "height",
                "noise", "blockiness", "contrast", "colourfulness", "tilt_deg", "border_frac")
DEGRADATIONS = ("defocus", "motion", "dark", "bright", "downscale", "jpeg", "noise")


def crop_borders(rgb: np.ndarray, tol: float = 12.0, min_keep: float = 0.3) -> np.ndarray:
    """Remove uniform letterbox borders (white, black or any flat colour) from the edges."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = gray.shape

    def flat(lines: np.ndarray, ref: float) -> np.ndarray:
        return (np.abs(lines - ref).max(axis=1) <= tol)

    def extent(mask: np.ndarray) -> int:
        n = 0
        while n < len(mask) and mask[n]:
            n += 1
        return n

    top = extent(flat(gray, gray[0].mean())) if np.ptp(gray[0]) <= tol else 0
    bottom = extent(flat(gray[::-1], gray[-1].mean())) if np.ptp(gray[-1]) <= tol else 0
    left = extent(flat(gray.T, gray[:, 0].mean())) if np.ptp(gray[:, 0]) <= tol else 0
    right = extent(flat(gray.T[::-1], gray[:, -1].mean())) if np.ptp(gray[:, -1]) <= tol else 0
    if h - top - bottom < min_keep * h or w - left - right < min_keep * w:
        return rgb  # (nearly) blank image: nothing sensible to crop to
    return rgb[top:h - bottom, left:w - right]


def _resize_short(gray: np.ndarray, short: int = METRIC_SIZE) -> np.ndarray:
    h, w = gray.shape[:2]
    scale = short / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(gray, size, interpolation=interp)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian on a copy resized to METRIC_SIZE on the short side."""
    return float(cv2.Laplacian(_resize_short(gray).astype(np.float64), cv2.CV_64F).var())


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (sigma in 0-255 units) on the METRIC_SIZE copy."""
    g = _resize_short(gray).astype(np.float64)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    conv = cv2.filter2D(g, cv2.CV_64F, kernel)[1:-1, 1:-1]
    # Ignore strong edges so texture does not count as noise.
    edges = cv2.Canny(g.astype(np.uint8), 50, 150)[1:-1, 1:-1] > 0
    edges = cv2.dilate(edges.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    values = np.abs(conv[~edges]) if (~edges).sum() > 100 else np.abs(conv).ravel()
    return float(math.sqrt(math.pi / 2) * values.mean() / 6.0)


def blockiness(gray: np.ndarray) -> float:
    """Ratio of the luminance jumps across 8-pixel block edges to jumps elsewhere (1 = no blocking)."""
    g = gray.astype(np.float64)
    if min(g.shape) < 32:
        return 1.0
    dx = np.abs(np.diff(g, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(g, axis=0)).mean(axis=1)

    def ratio(d: np.ndarray) -> float:
        idx = np.arange(len(d))
        on = d[idx % 8 == 7].mean()
        off = d[idx % 8 != 7].mean()
        return float(on / max(off, 1e-6))

    return max(ratio(dx), ratio(dy))


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk colourfulness (0 = grey; about 20-60 for ordinary photos)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def vertical_tilt(gray: np.ndarray) -> float:
    """Median deviation (degrees) from vertical of near-vertical line segments; 0 when none found."""
    g = _resize_short(gray)
    edges = cv2.Canny(g, 60, 180)
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=40, minLineLength=g.shape[0] // 5, maxLineGap=4)
    if lines is None:
        return 0.0
    devs = []
    for x1, y1, x2, y2 in lines.reshape(-1, 4):
        angle = math.degrees(math.atan2(abs(x2 - x1), abs(y2 - y1)))  # 0 = vertical
        if angle < 20:
            devs.append(angle)
    return float(np.median(devs)) if devs else 0.0


def compute_metrics(img: Image.Image | np.ndarray, original_size: tuple[int, int] | None = None) -> dict:
    """All quality metrics of one RGB image (letterbox borders cropped first)."""
    rgb = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    full_h, full_w = rgb.shape[:2]
    cropped = crop_borders(rgb)
    gray = cv2.cvtColor(cropped, cv2.COLOR_RGB2GRAY)
    p05, p50, p95 = np.percentile(gray, [5, 50, 95])
    width, height = original_size or (full_w, full_h)
    return {
        "sharpness": sharpness(gray),
        "lum_p05": float(p05), "lum_p50": float(p50), "lum_p95": float(p95),
        "dark_clip": float((gray <= 8).mean()),
        "bright_clip": float((gray >= 250).mean()),
        "width": int(width), "height": int(height),
        "noise": noise_sigma(gray),
        "blockiness": blockiness(gray),
        "contrast": float(gray.std() / 255.0),
        "colourfulness": colourfulness(cropped),
        "tilt_deg": vertical_tilt(gray),
        "border_frac": float(1.0 - cropped.shape[0] * cropped.shape[1] / (full_h * full_w)),
    }


# Each proxy rule once: (threshold key, metric, BAD when the metric is "below" or "above" the threshold, reason).
RULES = (
    ("sharpness_min", "sharpness", "below", "blurry: sharpness {v:.1f} < {t:g}"),
    ("dark_p50_max", "lum_p50", "below", "too dark: median luminance {v:.0f} < {t:g}"),
    ("dark_clip_max", "dark_clip", "above", "too dark: {v:.0%} of pixels crushed to black > {t:.0%}"),
    ("bright_p50_min", "lum_p50", "above", "overexposed: median luminance {v:.0f} > {t:g}"),
    ("bright_clip_max", "bright_clip", "above", "overexposed: {v:.0%} of pixels clipped white > {t:.0%}"),
    ("resolution_min", "short_side", "below", "low resolution: short side {v:.0f}px < {t:g}px"),
    ("noise_max", "noise", "above", "noisy: noise sigma {v:.1f} > {t:g}"),
    ("blockiness_max", "blockiness", "above", "compression artefacts: blockiness {v:.2f} > {t:g}"),
    ("tilt_max", "tilt_deg", "above", "tilted verticals: {v:.1f} deg > {t:g} deg"),
)


def rule_metric(m, metric: str):
    """A rule's metric from a metrics dict or frame (the short side is derived from width and height)."""
    if metric == "short_side":
        return np.minimum(m["width"], m["height"])
    return m[metric]


def rule_flags(metrics: pd.DataFrame, t: dict = QUALITY_THRESHOLDS) -> pd.DataFrame:
    """Which rules fire for each photo of a metrics frame (one boolean column per threshold key)."""
    return pd.DataFrame({key: rule_fires(rule_metric(metrics, metric), side, t[key]) for key, metric, side, _ in RULES},
                        index=metrics.index)


def quality_reasons(m: dict, t: dict = QUALITY_THRESHOLDS) -> list[str]:
    """Human-readable reasons for every proxy rule that fires (the same comparison as `rule_flags`); empty means
    GOOD."""
    return [text.format(v=float(rule_metric(m, metric)), t=t[key]) for key, metric, side, text in RULES
            if rule_fires(float(rule_metric(m, metric)), side, t[key])]


def quality_label(m: dict) -> tuple[str, str]:
    """('GOOD' or 'BAD', '; '-joined reasons)."""
    reasons = quality_reasons(m)
    return ("BAD" if reasons else "GOOD"), "; ".join(reasons)


AESTHETIC_WEIGHTS = {"exposure": 0.25, "contrast": 0.2, "colourfulness": 0.15, "sharpness": 0.25, "level": 0.15}


def aesthetic_components(m: dict) -> dict:
    """Interpretable 0-1 sub-scores behind the aesthetic proxy target."""
    clipped = min(1.0, 2 * (m["dark_clip"] + m["bright_clip"]))
    return {
        "exposure": math.exp(-((m["lum_p50"] - 125) / 50) ** 2) * (1 - clipped),   # mid-grey median, little clipping
        "contrast": math.exp(-((m["contrast"] - 0.25) / 0.08) ** 2),              # RMS contrast near 0.25
        "colourfulness": 1 - math.exp(-m["colourfulness"] / 30),                  # saturating colour reward
        "sharpness": float(np.clip((math.log10(max(m["sharpness"], 1.0)) - 1.5) / 2.0, 0, 1)),
        "level": math.exp(-m["tilt_deg"] / 5),                                    # converging verticals cost
    }


def aesthetic_target(m: dict) -> float:
    """Proxy aesthetic score in [1, 10]: 1 + 9 * (weighted sub-scores)^2; photos failing a quality rule cap at 3.5.

    Squaring spreads the scores (median about 5.3 on the real photos) so that only photos good on
    every property score high.
    """
    w = sum(AESTHETIC_WEIGHTS[k] * v for k, v in aesthetic_components(m).items())
    score = 1 + 9 * w ** 2
    return float(min(score, 3.5) if quality_reasons(m) else score)


def score_distribution(score: float, std: float = AESTHETIC_TARGET_STD) -> np.ndarray:
    """A discretised normal over the bins 1..10 centred on `score` (NIMA-style target)."""
    bins = np.arange(1, AESTHETIC_BINS + 1, dtype=np.float64)
    p = np.exp(-0.5 * ((bins - score) / std) ** 2)
    return (p / p.sum()).astype(np.float32)


def degrade(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """A realistically degraded copy: defocus/motion blur, under/over exposure, downscale, JPEG, noise."""
    rgb = np.asarray(img.convert("RGB"))
    h, w = rgb.shape[:2]
    scale = min(h, w) / 256.0  # degrade relative to what the model sees
    if kind == "defocus":
        out = cv2.GaussianBlur(rgb, (0, 0), sigmaX=float(rng.uniform(2.0, 5.0)) * scale)
    elif kind == "motion":
        length = max(3, int(rng.uniform(9, 25) * scale))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        out = cv2.filter2D(rgb, -1, kernel / max(kernel.sum(), 1e-6))
    elif kind == "dark":
        gain = rng.uniform(0.12, 0.3)
        out = np.clip(255 * (rgb / 255.0) ** rng.uniform(1.3, 2.2) * gain, 0, 255).astype(np.uint8)
    elif kind == "bright":
        out = np.clip(rgb.astype(np.float32) * rng.uniform(2.2, 3.5) + rng.uniform(20, 60), 0, 255).astype(np.uint8)
    elif kind == "downscale":
        f = rng.uniform(4.0, 8.0)
        small = cv2.resize(rgb, (max(8, int(w / f)), max(8, int(h / f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    elif kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=int(rng.integers(2, 8)))
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    elif kind == "noise":
        sigma = rng.uniform(18, 40)
        out = np.clip(rgb + rng.normal(0, sigma, rgb.shape), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATIONS)}")
    return Image.fromarray(out)
