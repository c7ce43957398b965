"""The files `evaluate` writes next to a model (metrics, failures, confusion matrix) and how the app reads them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def report_paths(weights: Path, tag: str = "test", out_dir: Path | None = None) -> dict[str, Path]:
    """Where `evaluate` writes its outputs for a weights file: <dir>/<weights stem>.<tag>.<kind>.<ext>."""
    folder = Path(out_dir) if out_dir else Path(weights).parent
    stem = f"{Path(weights).stem}.{tag}"
    return {k: folder / f"{stem}.{k}.{ext}" for k, ext in
            (("metrics", "json"), ("failures", "csv"), ("confusion", "csv"), ("confusion_image", "png"))}


def filter_failures(df: pd.DataFrame, true: str | None = None, predicted: str | None = None,
                    confidence: tuple[float, float] = (0.0, 1.0), sort_by: str = "loss") -> pd.DataFrame:
    """Failures for one confusion cell / class filter and confidence range, most telling first."""
    keep = df["confidence"].between(*confidence)
    if true:
        keep &= df["true"] == true
    if predicted:
        keep &= df["predicted"] == predicted
    return df[keep].sort_values(sort_by, ascending=False).reset_index(drop=True)
