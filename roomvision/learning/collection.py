"""Collections: named sets of photos with their own label stores. A team imports its own photos (any folder layout,
no labels needed) and the learning loop works on them; House Rooms and Places365 are the built-in collections (the
project manifest and the default label files).

A collection lives in `data/collections/NAME/` (`$ROOMVISION_COLLECTIONS_DIR`; git-ignored): `manifest.csv` (the
same columns as the project manifest, plus the listing `group`; `class` is empty where no room label is known),
`manifest.json` (where the photos are: they are never copied) and the label files `quality_relabels.csv` and
`room_relabels.csv`.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from tqdm import tqdm

from ..config import SPLIT_SEED, normalise_class_name, settings
from ..data import (MANIFEST_COLUMNS, PrepareReport, analyse_bytes, analyse_file, assign_splits, load_manifest,
                    near_duplicate_groups)
from ..images import IMAGE_SUFFIXES
from .stores import QUALITY, ROOM, LabelStore

BUILT_IN = {"house-rooms": "house-rooms", "places365-rooms": "places365-rooms"}  # name -> manifest source
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Collection:
    """Where a collection's photos are listed and where its labels go."""
    name: str
    manifest: Path
    relabels: Path
    room_relabels: Path
    source: str = ""  # built-in collections: the project manifest's rows of this source

    @property
    def built_in(self) -> bool:
        return bool(self.source)

    def photos(self) -> pd.DataFrame:
        """The collection's manifest rows."""
        df = load_manifest(self.manifest)
        return df[df["source"] == self.source].reset_index(drop=True) if self.source else df

    def summary(self) -> dict:
        """Counts for `roomvision collections`."""
        photos = self.photos() if self.manifest.is_file() else pd.DataFrame(columns=["sha256", "class", "split"])
        keys = set(photos["sha256"])

        def decided(path: Path, schema) -> int:
            merged = LabelStore(path, schema).merged()
            return int(merged["sha256"].isin(keys).sum())
        return {"collection": self.name, "kind": "built-in" if self.built_in else "imported",
                "photos": len(photos), "with room label": int((photos["class"] != "").sum()),
                "room corrections": decided(self.room_relabels, ROOM),
                "quality decisions": decided(self.relabels, QUALITY), "manifest": str(self.manifest)}


def check_name(name: str) -> str:
    """A collection name usable as a folder name; ValueError saying what is allowed."""
    if not NAME.match(name or ""):
        raise ValueError(f"collection name {name!r}: use 1-64 lower-case letters, digits, '-' or '_', starting with "
                         "a letter or digit")
    return name


def get_collection(name: str) -> Collection:
    """A collection by name: built-in or imported; ValueError naming the known ones otherwise."""
    s = settings()
    if name in BUILT_IN:
        return Collection(name, s.manifest, s.relabels, s.room_relabels, source=BUILT_IN[name])
    folder = settings().collections_dir / check_name(name)
    if not (folder / "manifest.csv").is_file():
        known = ", ".join(c.name for c in list_collections())
        raise ValueError(f"no collection named {name!r} (known: {known}); create it with "
                         f"`python -m roomvision import DIR --collection {name}`")
    return _imported(folder)


def _imported(folder: Path) -> Collection:
    return Collection(folder.name, folder / "manifest.csv", folder / "quality_relabels.csv",
                      folder / "room_relabels.csv")


def list_collections() -> list[Collection]:
    """Built-in collections first, then the imported ones by name."""
    s = settings()
    built = [Collection(n, s.manifest, s.relabels, s.room_relabels, source=src) for n, src in BUILT_IN.items()]
    folder = settings().collections_dir
    imported = sorted(folder.glob("*/manifest.csv")) if folder.is_dir() else []
    return built + [_imported(p.parent) for p in imported]


def scan_any(root: Path, rooms_from_folders: bool) -> list[tuple[str, str]]:
    """(relative path, room label or '') for every image under `root`, in any folder layout; with
    `rooms_from_folders`, the first folder's name gives the room where it names one."""
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {root}")
    items = []
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in f.parts):
            rel = f.relative_to(root).as_posix()
            room = normalise_class_name(rel.split("/")[0]) if rooms_from_folders and "/" in rel else None
            items.append((rel, room or ""))
    return items


def read_groups(path: Path | None, column: str) -> dict[str, str]:
    """Listing groups given by the caller: a CSV with a path column ('path' or 'file', relative to the imported
    folder) and `column`."""
    if path is None:
        return {}
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    key = next((c for c in ("path", "file") if c in df.columns), None)
    if key is None or column not in df.columns:
        raise ValueError(f"{path} needs a 'path' (or 'file') column and a {column!r} column; it has "
                         f"{', '.join(df.columns)}")
    return dict(zip(df[key], df[column]))


def import_photos(dirs: list[Path], name: str, rooms_from_folders: bool = False, groups: Path | None = None,
                  group_column: str = "listing_group", seed: int = SPLIT_SEED,
                  workers: int = os.cpu_count() or 1) -> tuple[pd.DataFrame, PrepareReport]:
    """Add the photos under `dirs` to collection `name` (created when new) with the cleaning of `prepare`:
    unreadable files listed with the reason, exact duplicates dropped, near-duplicate groups, proxy metrics. The
    split keeps near-duplicates and listings (the caller's `groups`, else each photo's folder) on one side; photos
    already in the collection keep their split. Photos are never copied."""
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in collection; choose another name")
    folder = settings().collections_dir / check_name(name)
    given = read_groups(groups, group_column)
    entries = []
    for i, root in enumerate(dirs):
        source = root.resolve().name or f"root{i}"
        entries += [(source, root, rel, room) for rel, room in scan_any(root, rooms_from_folders)]
    sources = {}
    for source, root, *_ in entries:
        if sources.setdefault(source, root.resolve()) != root.resolve():
            raise ValueError(f"two folders named {source!r}; import them into the collection one at a time")
    if not entries:
        raise ValueError(f"no image files under {', '.join(map(str, dirs))} ({', '.join(sorted(IMAGE_SUFFIXES))})")
    report = PrepareReport()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(analyse_file, [str(r / rel) for _, r, rel, _ in entries], chunksize=32),
                            total=len(entries), desc="analysing photos", unit="img"))
    previous = load_manifest(folder / "manifest.csv") if (folder / "manifest.csv").is_file() else None
    seen = dict(zip(previous["sha256"], previous["source"] + "/" + previous["path"])) if previous is not None else {}
    rows = []
    for (source, _, rel, room), res in zip(entries, results):
        where = f"{source}/{rel}"
        if "error" in res:
            report.unreadable.append((where, res["error"]))
            continue
        if res["sha256"] in seen:
            if seen[res["sha256"]] != where:
                report.exact_duplicates.append((where, seen[res["sha256"]]))
            continue
        seen[res["sha256"]] = where
        rows.append({"source": source, "path": rel, "class": room, **res,
                     "group": f"{source}:{given.get(rel, rel.rsplit('/', 1)[0] if '/' in rel else rel)}"})
    new = pd.DataFrame(rows)
    df = pd.concat([previous, new], ignore_index=True) if previous is not None else new
    if df.empty:
        raise ValueError("no readable new photos to import")
    df["group"] = df["group"].astype(str)
    near = near_duplicate_groups(df["phash"].tolist())
    df["dup_group"] = _merge_groups(near, df["group"].to_numpy())
    report.near_duplicate_groups = int((pd.Series(near).value_counts() > 1).sum())
    split = assign_splits(df.assign(**{"class": df["class"].replace("", "unknown")}), seed)
    if previous is not None:
        kept = dict(zip(previous["sha256"], previous["split"]))
        split = pd.Series([kept.get(h, s) for h, s in zip(df["sha256"], split)], index=df.index)
    df["split"] = split
    return _write_manifest(folder, df, sources), report


def _write_manifest(folder: Path, df: pd.DataFrame, roots: dict[str, Path]) -> pd.DataFrame:
    """Replace the collection's manifest atomically (its columns, in order) and add `roots` to its sidecar."""
    df = df[[*MANIFEST_COLUMNS, "group"]]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"manifest.{os.getpid()}.tmp"
    df.to_csv(tmp, index=False, float_format="%.5g")
    tmp.replace(folder / "manifest.csv")
    sidecar = folder / "manifest.json"
    old_roots = json.loads(sidecar.read_text())["roots"] if sidecar.is_file() else {}
    sidecar.write_text(json.dumps({"roots": {**old_roots, **{s: str(r) for s, r in roots.items()}}}, indent=2) + "\n")
    return df


def _merge_groups(near: np.ndarray, listing: np.ndarray) -> np.ndarray:
    """One group id per photo for photos linked by a near-duplicate group or a listing (connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    n = len(near)
    _, listing_ids = np.unique(listing, return_inverse=True)
    nodes = n + near.max() + 1 + listing_ids.max() + 1
    rows = np.concatenate([np.arange(n), np.arange(n)])
    cols = np.concatenate([n + near, n + near.max() + 1 + listing_ids])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(nodes, nodes))
    return connected_components(graph, directed=False)[1][:n]


UPLOADS = "uploads"  # the collection of photos people corrected where they saw them (Predict page, API feedback)


def add_upload(data: bytes, filename: str = "upload", name: str = UPLOADS) -> dict:
    """Keep an uploaded photo (content-addressed under the uploads folder: the same photo is stored once) and add it
    to collection `name`; returns its manifest row. ValueError when it is not a readable image."""
    measured = analyse_bytes(data)
    if "error" in measured:
        raise ValueError(f"{filename}: {measured['error']}")
    sha = measured["sha256"]
    suffix = Path(filename).suffix.lower() if Path(filename).suffix.lower() in IMAGE_SUFFIXES else ".jpg"
    rel = f"{sha[:2]}/{sha}{suffix}"
    store = settings().uploads_dir / rel
    if not store.is_file():
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(store)
    folder = settings().collections_dir / check_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "manifest.csv.lock")):
        manifest = folder / "manifest.csv"
        df = load_manifest(manifest) if manifest.is_file() else pd.DataFrame(columns=[*MANIFEST_COLUMNS, "group"])
        known = df[df["sha256"] == sha]
        if len(known):
            return known.iloc[0].to_dict()
        row = {"source": UPLOADS, "path": rel, "class": "", **measured, "split": "train", "dup_group": len(df),
               "group": f"{UPLOADS}:{sha}"}
        _write_manifest(folder, pd.concat([df, pd.DataFrame([row])], ignore_index=True),
                        {UPLOADS: settings().uploads_dir})
    return row


def record_feedback(collection: Collection, sha256: str, room: str | None = None, quality: str | None = None,
                    annotator: str = "", model_version: str = "") -> list[dict]:
    """Record a room correction and/or a GOOD/BAD decision for a photo of `collection` in its label stores (the
    stores' validation and guarantees); ValueError when the photo is not in the collection or nothing is given."""
    photos = collection.photos()
    match = photos[photos["sha256"] == sha256]
    if match.empty:
        raise ValueError(f"no photo with sha256 {sha256[:16]}… in collection {collection.name!r}; send the image")
    if not room and not quality:
        raise ValueError("give a room and/or a quality decision (GOOD or BAD)")
    if not str(annotator).strip():
        raise ValueError("an annotator name is required")
    row = match.iloc[0]
    saved = []
    if room:
        saved.append(LabelStore(collection.room_relabels, ROOM).append(
            row["path"], room, sha256=sha256, annotator=annotator, model_version=model_version,
            given_label=row["class"]))
    if quality:
        if str(quality).upper() not in ("GOOD", "BAD"):
            raise ValueError(f"quality must be GOOD or BAD, not {quality!r}")
        saved.append(LabelStore(collection.relabels, QUALITY).append(
            row["path"], quality, sha256=sha256, annotator=annotator, model_version=model_version,
            proxy_label=row["quality_label"]))
    return saved


def import_job(dirs: list[str], name: str, rooms_from_folders: bool = False, on_progress=None) -> dict:
    """`import_photos` as a background job (the Collections page): what was imported, in words and counts."""
    if on_progress is not None:
        on_progress(0, 1, f"reading and measuring the photos of {', '.join(dirs)}")
    df, report = import_photos([Path(d).expanduser() for d in dirs], name, rooms_from_folders, workers=2)
    return {"collection": name, "photos": len(df), "with room label": int((df["class"] != "").sum()),
            "unreadable": [f"{where}: {why}" for where, why in report.unreadable[:20]],
            "unreadable_count": len(report.unreadable), "exact_duplicates": len(report.exact_duplicates),
            "near_duplicate_groups": report.near_duplicate_groups}
