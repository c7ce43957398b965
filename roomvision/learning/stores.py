"""Append-only stores of human labels (photo quality; room corrections): atomic, locked appends; tolerant reads;
merged view."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import os
import re
import time
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from filelock import FileLock

from ..config import CLASSES

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
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # line breaks and other control characters


MAX_PATH_CHARS = 4096  # the longest path a label row stores (Linux PATH_MAX)
MAX_ANNOTATOR_CHARS = 80


class LabelError(ValueError):
    """A label row that cannot be stored as given."""


def normalise_annotator(name: str) -> str:
    """One spelling per person: Unicode NFC, invisible format characters (zero-width spaces, joiners, a byte-order
    mark) removed, outer spaces stripped, at most 80 characters."""
    text = unicodedata.normalize("NFC", str(name))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return text.strip()[:MAX_ANNOTATOR_CHARS]


def safe_relative_path(path: str) -> str:
    """The path as a clean POSIX path relative to the dataset root; LabelError if it escapes it."""
    text = str(path).replace("\\", "/")
    if len(text) > MAX_PATH_CHARS:
        raise LabelError(f"path longer than {MAX_PATH_CHARS} characters ({len(text):,})")
    p = PurePosixPath(text)
    if not text or p.is_absolute() or ".." in p.parts or (len(text) > 1 and text[1] == ":"):
        raise LabelError(f"path must be relative to the dataset root and stay inside it: {path!r}")
    return p.as_posix()


def _check_text(name: str, value: str) -> str:
    """A field as stored: no control characters (a line break would let one field forge another row)."""
    if CONTROL.search(value):
        raise LabelError(f"{name} must not contain line breaks or control characters: {value!r}")
    return value


def _decode(raw: bytes) -> str:
    """A label file's text: UTF-8 (a byte-order mark dropped), else Windows-1252 as spreadsheets on Windows save
    it (a byte it does not define becomes U+FFFD, and the row check names that row)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


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
               "annotator": _check_text("annotator", normalise_annotator(annotator)),
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
        """Every well-formed row in order. A file edited by hand is read whatever its encoding (UTF-8, else
        Windows-1252) and line endings (LF, CRLF, CR); each row that cannot be used (a torn last line, a wrong number
        of fields, an unknown label, a rating outside 1-5, control characters, an unsafe path) is skipped and named,
        with its line and why, in one warning and in `self.problems`."""
        columns = list(self.schema.columns)
        self.problems: list[str] = []
        if not self.path.is_file():
            return pd.DataFrame(columns=columns)
        text = _decode(self.path.read_bytes())
        rows = []
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        line = 0
        while True:
            line = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                self.problems.append(f"line {line}: {exc}")
                continue
            if values == columns or not values:
                continue
            try:
                rows.append(self._parse(values))
            except LabelError as exc:
                self.problems.append(f"line {line}: {exc}")
        if self.problems:
            warnings.warn(f"{self.path}: ignored {len(self.problems)} malformed or unsafe row(s): "
                          + "; ".join(self.problems[:5]) + (" …" if len(self.problems) > 5 else ""))
        return pd.DataFrame(rows, columns=columns)

    def _parse(self, values: list[str]) -> dict:
        """One row of the file as stored; LabelError saying why it cannot be used."""
        columns = list(self.schema.columns)
        if len(values) != len(columns):
            raise LabelError(f"{len(values)} fields, expected {len(columns)} (a torn or hand-edited line)")
        row = dict(zip(columns, values))
        if row["human_label"] not in self.schema.decisions:
            raise LabelError(f"unknown label {row['human_label'][:40]!r}")
        for name, value in row.items():
            if CONTROL.search(value) or "\ufffd" in value:
                raise LabelError(f"{name} holds control characters or undecodable bytes")
        if row.get("rating", "") != "" and row["rating"] not in {"1", "2", "3", "4", "5"}:
            raise LabelError(f"rating must be an integer from 1 to 5, not {row['rating'][:40]!r}")
        row["path"] = safe_relative_path(row["path"])
        row["annotator"] = normalise_annotator(row["annotator"])
        return row

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
    """Short claims on photos, so that two people labelling at once are not shown the same photos: a JSON file
    of key -> {annotator, until} next to the label file, changed under its lock. Each annotator holds the photos on
    their screen (one, or a grid of them); expired claims, entries of another shape and claims longer than a claim
    lasts are dropped on read, so a damaged or hand-edited file never blocks anybody for long nor stops the page."""

    def __init__(self, label_file: str | Path, seconds: float = CLAIM_SECONDS):
        self.path = Path(str(label_file) + ".claims.json")
        self.lock = FileLock(str(self.path) + ".lock")
        self.seconds = seconds

    def _live(self, now: float) -> dict[str, dict]:
        import json
        try:
            claims = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(claims, dict):
            return {}
        live = {}
        for key, claim in claims.items():
            if not isinstance(claim, dict):
                continue
            who, until = claim.get("annotator"), claim.get("until")
            if (isinstance(who, str) and normalise_annotator(who) and isinstance(until, (int, float))
                    and not isinstance(until, bool) and math.isfinite(until) and now < until <= now + self.seconds):
                live[key] = {"annotator": normalise_annotator(who), "until": float(until)}
        return live

    def claim(self, keys, annotator: str) -> set[str]:
        """Claim the photos now on `annotator`'s screen (a key or several), replacing what they held before; returns
        the keys they now hold, without those someone else holds. Claims are best effort: where the claims file
        cannot be written, nobody is kept from a photo (saving a decision there reports the error)."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        annotator = normalise_annotator(annotator)
        try:
            return self._claim(keys, annotator)
        except OSError:
            return set(keys)

    def _claim(self, keys: list[str], annotator: str) -> set[str]:
        import json
        now = time.time()
        with self.lock:
            claims = self._live(now)
            mine = {k for k in keys if k not in claims or claims[k]["annotator"] == annotator}
            claims = {k: c for k, c in claims.items() if c["annotator"] != annotator}
            claims.update({k: {"annotator": annotator, "until": now + self.seconds} for k in mine})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(claims), encoding="utf-8")
            tmp.replace(self.path)
        return mine

    def held_by_others(self, annotator: str) -> set[str]:
        annotator = normalise_annotator(annotator)
        return {k for k, c in self._live(time.time()).items() if c["annotator"] != annotator}


def _replay(rows: list[dict]) -> list[tuple[dict, dict | None]]:
    """Each row of one photo with the decision standing after it. Every annotator has their own stack (an UNDO
    takes back only the undoer's own latest decision); the photo's standing decision is the latest label, in file
    order, among the annotators' standing decisions (latest wins; a SKIP stands only where nobody gave a label)."""
    stacks: dict[str, list[tuple[int, dict]]] = {}
    out = []
    for i, row in enumerate(rows):
        stack = stacks.setdefault(row["annotator"], [])
        if row["human_label"] != "UNDO":
            stack.append((i, row))
        elif stack:
            stack.pop()
        tops = [s[-1] for s in stacks.values() if s]
        out.append((row, max(tops, key=lambda t: (t[1]["human_label"] != "SKIP", t[0]))[1] if tops else None))
    return out


def standing(raw: pd.DataFrame) -> dict[str, dict]:
    """Per image (sha256, else path) the decision standing after undos (see `_replay`), from rows in file order."""
    photos: dict[str, list[dict]] = {}
    for row in raw.to_dict("records"):
        photos.setdefault(row["sha256"] or row["path"], []).append(row)
    result = {}
    for key, rows in photos.items():
        last = _replay(rows)[-1][1]
        if last is not None:
            result[key] = last
    return result


def my_decision(raw: pd.DataFrame, key: str, annotator: str) -> str:
    """`annotator`'s own standing decision on one photo (sha256, else path), '' when none stands."""
    rows = raw[(raw["sha256"] == key) | (raw["path"] == key)]
    rows = rows[rows["annotator"] == normalise_annotator(annotator)]
    last = _replay(rows.to_dict("records"))[-1][1] if len(rows) else None
    return last["human_label"] if last else ""


def photo_history(raw: pd.DataFrame, sha256: str, path: str) -> pd.DataFrame:
    """Every decision recorded for one photo, oldest first: when, who, the label standing before (the proxy or
    given label at first) and after it (an undo restores that annotator's previous decision)."""
    rows = raw[(raw["sha256"] == sha256) if sha256 else (raw["path"] == path)].to_dict("records")
    given = "given_label" if "given_label" in raw else "proxy_label"
    start = next((r[given] for r in rows if r[given]), "(none)")
    out, before = [], None
    for row, now in _replay(rows):
        out.append({"when": row["timestamp"], "who": row["annotator"],
                    "before": before["human_label"] if before else start,
                    "after": now["human_label"] if now else start, "decision": row["human_label"]})
        before = now
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


def human_lookup(merged: pd.DataFrame, sha256s, paths) -> list[dict | None]:
    """The merged human decision for each (sha256, path), matched by hash first."""
    records = merged.to_dict("records")
    by_sha = {r["sha256"]: r for r in records if r["sha256"]}
    by_path = {r["path"]: r for r in records}
    return [by_sha.get(h) or by_path.get(p) for h, p in zip(sha256s, paths)]
