"""Append-only stores of human labels (photo quality; room corrections): atomic, locked appends; tolerant reads;
merged view."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from filelock import FileLock

from .config import CLASSES
from .decisions import quality_decision

COLUMNS = ["path", "sha256", "proxy_label", "human_label", "rating", "annotator", "timestamp", "model_version"]
DECISIONS = ("GOOD", "BAD", "SKIP", "UNDO")
AMBIGUOUS, NOT_A_ROOM = "AMBIGUOUS", "NOT_A_ROOM"  # room corrections besides the five classes
ROOM_COLUMNS = ["path", "sha256", "given_label", "human_label", "annotator", "timestamp", "model_version"]
ROOM_DECISIONS = (*CLASSES, AMBIGUOUS, NOT_A_ROOM, "SKIP", "UNDO")


@dataclass(frozen=True)
class Schema:
    """What one label file holds: its columns, the decisions it accepts, those that count as labels."""
    columns: tuple[str, ...]
    decisions: tuple[str, ...]
    labels: tuple[str, ...]


QUALITY = Schema(tuple(COLUMNS), DECISIONS, ("GOOD", "BAD"))
ROOM = Schema(tuple(ROOM_COLUMNS), ROOM_DECISIONS, (*CLASSES, AMBIGUOUS, NOT_A_ROOM))
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# characters a spreadsheet skips before deciding that a cell is a formula
INVISIBLE_LEAD = " \t\r\n\u00a0\u2000\u2001\u2002\u2003\u2007\u2009\u200a\u200b\u200c\u200d\u2060\u3000\ufeff"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # line breaks and other control characters


class LabelError(ValueError):
    """A label row that cannot be stored as given."""


def safe_relative_path(path: str) -> str:
    """The path as a clean POSIX path relative to the dataset root; LabelError if it escapes it."""
    text = str(path).replace("\\", "/")
    p = PurePosixPath(text)
    if not text or p.is_absolute() or ".." in p.parts or (len(text) > 1 and text[1] == ":"):
        raise LabelError(f"path must be relative to the dataset root and stay inside it: {path!r}")
    return p.as_posix()


def _check_text(name: str, value: str) -> str:
    """A field as stored: no control characters (a line break would let one field forge another row)."""
    if CONTROL.search(value):
        raise LabelError(f"{name} must not contain line breaks or control characters: {value!r}")
    return value


def _encode_row(row: dict, columns) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row.get(c, "") for c in columns])
    return buf.getvalue().encode("utf-8")


class LabelStore:
    """One CSV of decisions; each append is a single locked, fsynced write of one complete line.

    `schema` QUALITY (GOOD/BAD with an optional 1-5 rating) or ROOM (a class, AMBIGUOUS or NOT_A_ROOM)."""

    def __init__(self, path: str | Path, schema: Schema = QUALITY):
        self.path = Path(path)
        self.schema = schema
        self.lock = FileLock(str(self.path) + ".lock")

    def _label(self, human_label: str) -> str:
        match = [d for d in self.schema.decisions if d.upper() == str(human_label).strip().upper()]
        if not match:
            raise LabelError(f"label must be one of {', '.join(self.schema.decisions)}, not {human_label!r}")
        return match[0]

    def append(self, path: str, human_label: str, sha256: str = "", proxy_label: str = "",
               rating: int | None = None, annotator: str = "", model_version: str = "", given_label: str = "") -> dict:
        """Validate and durably append one decision; returns the stored row."""
        label = self._label(human_label)
        if rating not in (None, "") and not (isinstance(rating, int) and 1 <= rating <= 5):
            raise LabelError(f"rating must be an integer from 1 to 5, not {rating!r}")
        row = {"path": safe_relative_path(_check_text("path", path)), "sha256": _check_text("sha256", sha256),
               "proxy_label": _check_text("proxy label", proxy_label),
               "given_label": _check_text("given label", given_label), "human_label": label,
               "rating": "" if rating in (None, "") else rating,
               "annotator": _check_text("annotator", annotator.strip()[:80]),
               "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
               "model_version": _check_text("model version", model_version)}
        line = _encode_row(row, self.schema.columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                prefix = b""
                if size == 0:
                    prefix = _encode_row(dict(zip(self.schema.columns, self.schema.columns)), self.schema.columns)
                elif not self._ends_with_newline(size):
                    prefix = b"\n"  # a torn line from a crash stays isolated on its own line
                data = prefix + line
                written = os.write(fd, data)
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        return row

    def _ends_with_newline(self, size: int) -> bool:
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"

    def read_raw(self) -> pd.DataFrame:
        """Every well-formed row in order, the file parsed as CSV; a torn last line, rows whose fields hold control
        characters (a quoted line break) and unsafe paths are reported with a warning and skipped."""
        columns = list(self.schema.columns)
        if not self.path.is_file():
            return pd.DataFrame(columns=columns)
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            warnings.warn(f"{self.path}: ignoring an incomplete last line (interrupted write)")
            raw = raw[:raw.rfind(b"\n") + 1]
        rows, bad = [], 0
        reader = csv.reader(io.StringIO(raw.decode("utf-8", errors="replace"), newline=""), strict=True)
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error:
                bad += 1
                continue
            if values == columns:
                continue
            if (len(values) != len(columns) or values[columns.index("human_label")] not in self.schema.decisions
                    or any(CONTROL.search(v) or "\ufffd" in v for v in values)):
                bad += 1
                continue
            row = dict(zip(columns, values))
            try:
                row["path"] = safe_relative_path(row["path"])
            except LabelError:
                bad += 1
                continue
            rows.append(row)
        if bad:
            warnings.warn(f"{self.path}: ignored {bad} malformed or unsafe row(s)")
        return pd.DataFrame(rows, columns=columns)

    def _standing(self) -> dict[str, dict]:
        return standing(self.read_raw())

    def merged(self) -> pd.DataFrame:
        """Latest label per image (GOOD/BAD; a room correction) with undo honoured: what training reads."""
        latest = [r for r in self._standing().values() if r["human_label"] in self.schema.labels]
        df = pd.DataFrame(latest, columns=list(self.schema.columns))
        if "rating" in df:
            df["rating"] = pd.to_numeric(df["rating"], errors="coerce")
        return df.reset_index(drop=True)

    def decided_keys(self) -> set[str]:
        """Images (sha256, else path) with a standing decision, skips included."""
        return set(self._standing())


CLAIM_SECONDS = 120  # how long a photo shown to one annotator is kept from the others


class ClaimBoard:
    """Short claims on photos, so that two people labelling at once are not shown the same photo: a JSON file
    of key -> (annotator, expiry) next to the label file, changed under its lock; expired claims are dropped."""

    def __init__(self, label_file: str | Path, seconds: float = CLAIM_SECONDS):
        self.path = Path(str(label_file) + ".claims.json")
        self.lock = FileLock(str(self.path) + ".lock")
        self.seconds = seconds

    def _live(self, now: float) -> dict[str, dict]:
        import json
        try:
            claims = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: c for k, c in claims.items() if isinstance(c, dict) and c.get("until", 0) > now}

    def claim(self, key: str, annotator: str) -> bool:
        """Claim a photo for `annotator` (renewing their own claim); False when someone else holds it. Claims are
        best effort: where the claims file cannot be written, nobody is kept from a photo (saving a decision there
        reports the error)."""
        try:
            return self._claim(key, annotator)
        except OSError:
            return True

    def _claim(self, key: str, annotator: str) -> bool:
        import json
        import time
        now = time.time()
        with self.lock:
            claims = self._live(now)
            holder = claims.get(key)
            if holder and holder["annotator"] != annotator:
                return False
            claims = {k: c for k, c in claims.items() if c["annotator"] != annotator}  # one photo per person
            claims[key] = {"annotator": annotator, "until": now + self.seconds}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(claims))
            tmp.replace(self.path)
        return True

    def held_by_others(self, annotator: str) -> set[str]:
        import time
        return {k for k, c in self._live(time.time()).items() if c["annotator"] != annotator}


def standing(raw: pd.DataFrame) -> dict[str, dict]:
    """Per image (sha256, else path) the decision still standing after undos, from rows in file order."""
    stacks: dict[str, list[dict]] = {}
    for row in raw.to_dict("records"):
        stack = stacks.setdefault(row["sha256"] or row["path"], [])
        if row["human_label"] != "UNDO":
            stack.append(row)
        elif stack:
            stack.pop()
    return {k: s[-1] for k, s in stacks.items() if s}


def photo_history(raw: pd.DataFrame, sha256: str, path: str) -> pd.DataFrame:
    """Every decision recorded for one photo, oldest first: when, who, the label standing before (the proxy or
    given label at first) and after it (an undo restores the one before)."""
    rows = raw[(raw["sha256"] == sha256) if sha256 else (raw["path"] == path)].to_dict("records")
    given = "given_label" if "given_label" in raw else "proxy_label"
    stack, out = [], []
    for row in rows:
        before = stack[-1] if stack else row[given] or "(none)"
        if row["human_label"] != "UNDO":
            stack.append(row["human_label"])
        elif stack:
            stack.pop()
        out.append({"when": row["timestamp"], "who": row["annotator"], "before": before,
                    "after": stack[-1] if stack else row[given] or "(none)", "decision": row["human_label"]})
    return pd.DataFrame(out, columns=["when", "who", "before", "after", "decision"])


def annotator_agreement(raw: pd.DataFrame, labels: tuple[str, ...] = ("GOOD", "BAD")) -> pd.DataFrame:
    """Cohen's kappa for each pair of annotators over the photos both decided (each one's latest decision, undo
    honoured); one row per pair with the number of shared photos."""
    from itertools import combinations
    from sklearn.metrics import cohen_kappa_score
    latest = {annotator: {k: r["human_label"] for k, r in standing(rows).items() if r["human_label"] in labels}
              for annotator, rows in raw.groupby("annotator", sort=True)}
    out = []
    for a, b in combinations(sorted(latest), 2):
        shared = sorted(set(latest[a]) & set(latest[b]))
        x, y = [latest[a][k] for k in shared], [latest[b][k] for k in shared]
        kappa = float(cohen_kappa_score(x, y, labels=list(labels))) if shared and len(set(x + y)) > 1 else (
            1.0 if shared else float("nan"))
        out.append({"annotators": f"{a} / {b}", "photos": len(shared), "agreement": float(np.mean(
            [u == v for u, v in zip(x, y)])) if shared else float("nan"), "kappa": kappa})
    return pd.DataFrame(out, columns=["annotators", "photos", "agreement", "kappa"])


def room_corrections(manifest: pd.DataFrame, room_relabels: Path | str | None) -> pd.Series:
    """Per manifest row the room label people gave (a class, AMBIGUOUS or NOT_A_ROOM), NaN where none."""
    merged = LabelStore(room_relabels, ROOM).merged() if room_relabels else pd.DataFrame(columns=ROOM_COLUMNS)
    found = human_lookup(merged, manifest["sha256"], manifest["path"])
    return pd.Series([r["human_label"] if r else np.nan for r in found], index=manifest.index, dtype=object)


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """Prefix cells that a spreadsheet would run as formulas with a quote (CSV injection), also when invisible
    characters (spaces, no-break or zero-width spaces, a byte-order mark) come before the formula sign."""
    def fix(v):
        return "'" + v if isinstance(v, str) and (v.startswith(FORMULA_PREFIXES) or
                                                  v.lstrip(INVISIBLE_LEAD).startswith(FORMULA_PREFIXES)) else v
    return df.map(fix)


def export_csv(df: pd.DataFrame) -> bytes:
    """Merged labels as CSV bytes, safe to open in a spreadsheet."""
    return neutralise_formulas(df).to_csv(index=False).encode("utf-8")


def human_lookup(merged: pd.DataFrame, sha256s, paths) -> list[dict | None]:
    """The merged human decision for each (sha256, path), matched by hash first."""
    records = merged.to_dict("records")
    by_sha = {r["sha256"]: r for r in records if r["sha256"]}
    by_path = {r["path"]: r for r in records}
    return [by_sha.get(h) or by_path.get(p) for h, p in zip(sha256s, paths)]


def relabel_queue(manifest: pd.DataFrame, p_good: pd.Series | None, threshold: float, decided: set[str],
                  order: str = "informative", include_labelled: bool = False, seed: int = 0,
                  priority: pd.Series | None = None) -> pd.DataFrame:
    """Manifest rows to label next.

    'informative': the active-learning `priority` (rank by sha256, from the human labels so far) first when given;
    then model and proxy disagree, then P(GOOD) nearest the threshold; 'random'; 'file'.
    `p_good` is indexed by sha256 (missing photos sort last under 'informative').
    """
    q = manifest.copy()
    if not include_labelled:
        q = q[~(q["sha256"].isin(decided) | q["path"].isin(decided))]
    q["p_good"] = q["sha256"].map(p_good) if p_good is not None else np.nan
    if order == "random":
        return q.sample(frac=1, random_state=seed).reset_index(drop=True)
    if order == "file":
        return q.sort_values(["source", "path"]).reset_index(drop=True)
    if order != "informative":
        raise ValueError(f"unknown queue order {order!r}")
    model_label = q["p_good"].map(lambda p: quality_decision(p, threshold) if p == p else "")
    q["disagree"] = q["p_good"].notna() & (model_label != q["quality_label"])
    q["margin"] = (q["p_good"] - threshold).abs().fillna(np.inf)
    q["priority"] = q["sha256"].map(priority).fillna(np.inf) if priority is not None else np.inf
    return q.sort_values(["priority", "disagree", "margin", "path"],
                         ascending=[True, False, True, True]).reset_index(drop=True)
