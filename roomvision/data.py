"""Dataset import (`prepare`): class folders -> cleaned, de-duplicated, split manifest with proxy labels."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from .config import CLASSES, QUALITY_THRESHOLDS, SPLIT_FRACTIONS, SPLIT_SEED, normalise_class_name
from .images import IMAGE_SUFFIXES, ImageDecodeError, load_image
from .quality import METRIC_NAMES, aesthetic_target, compute_metrics, quality_label

NEAR_DUPLICATE_BITS = 4      # perceptual-hash Hamming distance that still counts as the same photo
MANIFEST_COLUMNS = ["source", "path", "class", "sha256", "phash", "width", "height", "split", "dup_group",
                    "quality_label", "quality_reasons", "aesthetic_target", *METRIC_NAMES[:6], *METRIC_NAMES[8:]]


@dataclass
class PrepareReport:
    """What `prepare` found besides the manifest rows."""
    unknown_folders: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    exact_duplicates: list[tuple[str, str]] = field(default_factory=list)
    near_duplicate_groups: int = 0
    dark_or_blank: list[str] = field(default_factory=list)


def scan_root(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(relative path, class) pairs under the class folders of `root`, and folders that match no class."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    items, unknown = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cls = normalise_class_name(folder.name)
        if cls is None:
            unknown.append(str(folder))
            continue
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f.relative_to(root).as_posix(), cls))
    return items, unknown


def analyse_file(path: str) -> dict:
    """Hash, decode and measure one file; {'error': reason} when it cannot be read."""
    try:
        return analyse_bytes(Path(path).read_bytes())
    except OSError as exc:
        return {"error": str(exc)}


def analyse_bytes(data: bytes) -> dict:
    """Hash, decode and measure one photo's bytes; {'error': reason} when they are not a readable image."""
    try:
        img = load_image(data)
    except ImageDecodeError as exc:
        return {"error": str(exc)}
    metrics = compute_metrics(img)
    label, reasons = quality_label(metrics)
    return {"sha256": hashlib.sha256(data).hexdigest(), "phash": str(imagehash.phash(img)),
            "quality_label": label, "quality_reasons": reasons, "aesthetic_target": aesthetic_target(metrics),
            **metrics}


def near_duplicate_groups(phashes: list[str], max_bits: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """Group id per image: connected components of the graph linking hashes within `max_bits` bits."""
    n = len(phashes)
    if n == 0:
        return np.zeros(0, int)
    bits = np.unpackbits(np.frombuffer(b"".join(bytes.fromhex(h) for h in phashes), np.uint8).reshape(n, 8), axis=1)
    rows, cols = [], []
    for start in range(0, n, 512):  # bounded memory: 512 x n distances at a time
        a, b = np.nonzero((bits[start:start + 512, None, :] != bits[None, :, :]).sum(axis=2) <= max_bits)
        rows.append(a + start)
        cols.append(b)
    edges = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(edges[0]), np.int8), edges), shape=(n, n))
    return connected_components(graph, directed=False)[1]


SPLIT_FOLDS = 20  # the split fractions are multiples of 1/20


def assign_splits(df: pd.DataFrame, seed: int = SPLIT_SEED, fractions: dict = SPLIT_FRACTIONS) -> pd.Series:
    """Stratified, group-aware, deterministic split: a near-duplicate group never spans two splits.

    scikit-learn's StratifiedGroupKFold deals the photos into 20 folds (fewer for tiny sets); consecutive folds make up each split.
    """
    folds = min(SPLIT_FOLDS, int(df["dup_group"].nunique()), int(df["class"].value_counts().max()))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed % 2 ** 32)
    fold = np.zeros(len(df), int)
    for k, (_, idx) in enumerate(cv.split(np.zeros(len(df)), df["class"], groups=df["dup_group"])):
        fold[idx] = k
    edges = np.cumsum([0, *fractions.values()]) * folds
    names = np.array(list(fractions))[np.searchsorted(edges[1:], fold + 0.5)]
    return pd.Series(names, index=df.index, dtype=object)


def _relative_to_project(path: Path) -> str:
    from .config import PROJECT_ROOT
    try:
        return os.path.relpath(path.resolve(), PROJECT_ROOT)
    except ValueError:
        return str(path.resolve())


def prepare(roots: list[Path], out: Path, seed: int = SPLIT_SEED, resplit: bool = False,
            workers: int = os.cpu_count() or 1) -> tuple[pd.DataFrame, PrepareReport]:
    """Import class folders from several roots into a manifest CSV (plus a JSON sidecar of roots)."""
    report = PrepareReport()
    entries = []
    for root in roots:
        items, unknown = scan_root(root)
        report.unknown_folders += unknown
        entries += [(root, rel, cls) for rel, cls in items]
    if not entries:
        raise ValueError("no images found: each root needs sub-folders named after the classes "
                         f"({', '.join(CLASSES)})")
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(analyse_file, [str(r / rel) for r, rel, _ in entries], chunksize=32),
                            total=len(entries), desc="analysing images", unit="img"))
    rows, seen = [], {}
    for (root, rel, cls), res in zip(entries, results):
        where = f"{root.name}/{rel}"
        if "error" in res:
            report.unreadable.append((where, res["error"]))
            continue
        if res["sha256"] in seen:
            report.exact_duplicates.append((where, seen[res["sha256"]]))
            continue
        seen[res["sha256"]] = where
        if res["lum_p95"] < 30 or res["contrast"] < 0.02:
            report.dark_or_blank.append(where)
        rows.append({"source": root.name, "path": rel, "class": cls, **res})
    df = pd.DataFrame(rows)
    groups = near_duplicate_groups(df["phash"].tolist())
    df["dup_group"] = groups
    report.near_duplicate_groups = int((pd.Series(groups).value_counts() > 1).sum())
    df["split"] = assign_splits(df, seed)
    if out.exists() and not resplit:
        df = _keep_previous_splits(df, pd.read_csv(out))
    df = df[MANIFEST_COLUMNS]
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.5g")
    sidecar = {"roots": {r.name: _relative_to_project(r) for r in roots}, "seed": seed,
               "quality_thresholds": QUALITY_THRESHOLDS}
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return df, report


def _keep_previous_splits(df: pd.DataFrame, previous: pd.DataFrame) -> pd.DataFrame:
    """Keep the split each photo already had; whole near-duplicate groups follow their earlier members."""
    old = dict(zip(previous["sha256"], previous["split"]))
    df["split"] = [old.get(h, s) for h, s in zip(df["sha256"], df["split"])]
    for g, members in df.groupby("dup_group"):
        earlier = [old[h] for h in members["sha256"] if h in old]
        if earlier:
            df.loc[members.index, "split"] = Counter(earlier).most_common(1)[0][0]
    return df


def load_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest, with a clear error when it is missing or malformed."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"manifest not found: {path} (create it with `python -m roomvision prepare ROOT…`)")
    df = pd.read_csv(path, keep_default_na=False)
    missing = {"source", "path", "class", "split", "sha256"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} is not a roomvision manifest (missing columns: {', '.join(sorted(missing))})")
    return df


def manifest_roots(manifest: Path, overrides: list[Path] | None = None) -> dict[str, Path]:
    """Source name -> dataset root: explicit overrides (matched by folder name) win over the sidecar."""
    from .config import PROJECT_ROOT, settings
    roots: dict[str, Path] = {}
    sidecar = Path(manifest).with_suffix(".json")
    if sidecar.is_file():
        for name, p in json.loads(sidecar.read_text())["roots"].items():
            roots[name] = (PROJECT_ROOT / p).resolve() if not os.path.isabs(p) else Path(p)
    for root in (overrides if overrides is not None else settings().data_roots):
        roots[Path(root).name] = Path(root)
    return roots


def load_out_of_scope(root: Path) -> pd.DataFrame:
    """The photos of none of the five rooms under `root` (its manifest.csv: class = kind, file): absolute path,
    kind, sha256 and a split fixed by content."""
    from .learning.scope import out_of_scope_split
    listing = Path(root) / "manifest.csv"
    if not listing.is_file():
        raise FileNotFoundError(f"no out-of-scope photos: {listing} not found (set ROOMVISION_OUT_OF_SCOPE_ROOT)")
    df = pd.read_csv(listing, keep_default_na=False)
    missing = {"class", "file", "sha256"} - set(df.columns)
    if missing:
        raise ValueError(f"{listing} lacks the columns {', '.join(sorted(missing))}")
    return pd.DataFrame({"path": [Path(root) / f for f in df["file"]], "kind": df["class"], "sha256": df["sha256"],
                         "split": [out_of_scope_split(h) for h in df["sha256"]]})


def resolve_paths(df: pd.DataFrame, roots: dict[str, Path]) -> list[Path]:
    """Absolute file paths for manifest rows; a clear error naming any source without a root."""
    missing = sorted(set(df["source"]) - set(roots))
    if missing:
        raise FileNotFoundError(f"no dataset root for source(s) {', '.join(missing)}: pass --data-root "
                                "or set ROOMVISION_DATA_ROOT")
    return [roots[s] / p for s, p in zip(df["source"], df["path"])]


def describe_distribution(df: pd.DataFrame) -> str:
    """Percentiles of each quality metric over the real photos (the basis of the thresholds)."""
    cols = ["sharpness", "lum_p50", "dark_clip", "bright_clip", "noise", "blockiness", "contrast",
            "colourfulness", "tilt_deg", "aesthetic_target"]
    q = df[cols].quantile([0.001, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999]).T
    q.columns = ["p0.1", "p1", "p5", "p50", "p95", "p99", "p99.9"]
    return q.to_string(float_format=lambda v: f"{v:.3g}")


def summarise(df: pd.DataFrame, report: PrepareReport) -> str:
    lines = [f"{len(df)} images kept from {df['source'].nunique()} source(s)"]
    lines.append(pd.crosstab(df["class"].replace("", "(no room label)"), df["split"], margins=True).to_string())
    lines.append(f"proxy quality labels: {dict(Counter(df['quality_label']))}")
    reasons = Counter(r.split(":")[0] for rs in df["quality_reasons"] if rs for r in rs.split("; "))
    lines.append(f"BAD reasons: {dict(reasons) or 'none'}")
    lines.append(f"exact duplicates dropped: {len(report.exact_duplicates)}; near-duplicate groups: "
                 f"{report.near_duplicate_groups}; unreadable: {len(report.unreadable)}; "
                 f"dark or blank: {len(report.dark_or_blank)}")
    for where, why in report.unreadable[:20]:
        lines.append(f"  unreadable {where}: {why}")
    for where in report.dark_or_blank[:20]:
        lines.append(f"  dark or blank {where}")
    for folder in report.unknown_folders:
        lines.append(f"  skipped folder (no matching class): {folder}")
    lines.append("metric distribution over kept photos:\n" + describe_distribution(df))
    return "\n".join(lines)
