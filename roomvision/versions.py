"""Model versions and the team-wide default.

Versions are checkpoint files: the shipped ones in `weights/`, the learned ones (from people, for a market) in the
versions folder. The team-wide default is a pointer — `default.json` in the versions folder naming a file, never a
copy of weights — with the one it replaced, so a change can be rolled back in one step. `$ROOMVISION_WEIGHTS`
overrides it; without either the committed default model serves. The app, CLI, API and batch scoring all resolve
the model they serve through `current_default()`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import pandas as pd

from .config import DEFAULT_WEIGHTS, ENV_WEIGHTS, settings
from .modelinfo import CheckpointError, read_model_info


def pointer_file() -> Path:
    return settings().versions_dir / "default.json"


def version_files() -> list[Path]:
    """Every checkpoint a team can choose: shipped ones, those beside the current default, then the learned ones."""
    folders = dict.fromkeys(p.resolve() for p in (DEFAULT_WEIGHTS.parent, current_default().parent,
                                                  settings().versions_dir))
    return [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.pt"))]


def versions_table(paths: list[Path], default: Path | None = None) -> pd.DataFrame:
    """One row per checkpoint: name, what it was learned for, headline validation metrics, whether it is the
    default, and why it cannot be used (a damaged or foreign file) where that is so."""
    rows = []
    for path in paths:
        row = {"version": path.stem, "file": path.name, "path": str(path),
               "default": default is not None and Path(path).resolve() == Path(default).resolve()}
        try:
            info = read_model_info(path, verify=True)
        except CheckpointError as exc:
            rows.append({**row, "error": str(exc)})
            continue
        val = info.metrics.get("validation", {})
        extras = [label for key, label in (("stage", "fine-tuned stage"), ("reference", "Lite2 features"))
                  if info.market.get(key)]
        market = info.market.get("name", "") + (f" ({', '.join(extras)})" if extras else "")
        rows.append({**row, "version": info.version, "market": market,
                     "learned from people": bool(info.human) or "learned_from_people" in info.metrics,
                     "backbone": info.backbone, "created": info.created,
                     "val_room_accuracy": val.get("room_accuracy"), "val_quality_roc_auc": val.get("quality_roc_auc"),
                     "error": ""})
    return pd.DataFrame(rows, columns=["version", "file", "path", "default", "market", "learned from people",
                                       "backbone", "created", "val_room_accuracy", "val_quality_roc_auc", "error"])


def find_version(name: str) -> Path:
    """A version by its file name, file stem or the version name it carries; ValueError naming the available
    ones."""
    for path in version_files():
        if name in (path.name, path.stem):
            return path
    for path in version_files():
        try:
            if read_model_info(path).version == name:
                return path
        except CheckpointError:
            continue
    raise ValueError(f"no model version {name!r}; available: {', '.join(p.stem for p in version_files())}")


def _read_pointer() -> dict:
    try:
        pointer = json.loads(pointer_file().read_text())
    except (OSError, ValueError):
        return {}
    return pointer if isinstance(pointer, dict) else {}


def team_default() -> Path | None:
    """The version the team chose as its default, if it is still there."""
    chosen = _read_pointer().get("weights")
    return Path(chosen) if isinstance(chosen, str) and Path(chosen).is_file() else None


def current_default() -> Path:
    """What serves when nothing else is chosen: $ROOMVISION_WEIGHTS, else the team default, else the committed
    model (read anew on each call, so a change reaches running apps and servers)."""
    return Path(os.environ.get(ENV_WEIGHTS) or team_default() or DEFAULT_WEIGHTS)


def set_team_default(weights: Path, who: str = "") -> dict:
    """Point the team default at `weights` (verified first); the previous choice is kept for `rollback`."""
    weights = Path(weights).resolve()
    read_model_info(weights, verify=True)
    previous = _read_pointer()
    pointer = {"weights": str(weights), "previous": previous.get("weights", ""), "set_by": who,
               "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    _write_pointer(pointer)
    return pointer


def rollback_team_default(who: str = "") -> dict:
    """Back to the version the last change replaced (the committed model when there was none)."""
    previous = _read_pointer().get("previous", "")
    if previous and not Path(previous).is_file():
        raise CheckpointError(f"the previous default {previous} is gone; choose a version instead")
    pointer = {"weights": previous, "previous": _read_pointer().get("weights", ""), "set_by": who,
               "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    _write_pointer(pointer)
    return pointer


def _write_pointer(pointer: dict) -> None:
    path = pointer_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(pointer, indent=2) + "\n")
    tmp.replace(path)
