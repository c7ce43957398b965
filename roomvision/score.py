"""Batch scoring of folders or path lists to CSV/Parquet: streamed, resumable, locally or on Ray."""
from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from .decisions import Thresholds
from .images import find_images, printable_path
from .inference import Predictor, results_frame
from .tables import neutralise_formulas, restore_formulas


def read_inputs(source: Path) -> list[Path]:
    """A folder (recursive) or a text file with one path per line."""
    if source.is_dir():
        return find_images([source])
    if source.is_file() and source.suffix.lower() in (".txt", ".lst", ".list"):
        lines = [ln.strip() for ln in source.read_text(errors="surrogateescape").splitlines()]
        return [Path(ln) for ln in lines if ln and not ln.startswith("#")]
    raise ValueError(f"{source} is neither a folder nor a .txt list of image paths")


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.csv")


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so resume never trusts half a row."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class Journal:
    """Rows appended (and fsynced) batch by batch, so a crash loses at most the batch in flight.

    Paths are recorded as the caller gave them; resume skips those already recorded.
    """

    def __init__(self, path: Path, columns: list[str], resume: bool):
        self.path, self.columns = path, columns
        if not resume and path.exists():
            path.unlink()
        if path.exists():
            drop_torn_tail(path)
        self.done = set(pd.read_csv(path, usecols=["path"], keep_default_na=False)["path"]) if path.exists() and \
            path.stat().st_size else set()
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")
        if self.file.tell() == 0:
            self.writer.writeheader()

    def write(self, rows: list[dict]) -> None:
        self.writer.writerows(rows)
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def finish(journal: Path, out: Path) -> pd.DataFrame:
    """Turn the journal into the final file: Parquet with the values as they are, or a CSV safe to open in a
    spreadsheet (`read_scores` gives the exact values back). Returns the rows as they are."""
    df = pd.read_csv(journal, keep_default_na=False).drop_duplicates("path", keep="last")
    if out.suffix.lower() == ".parquet":
        df.to_parquet(out, index=False)
    else:
        neutralise_formulas(df).to_csv(out, index=False)
    journal.unlink()
    return df


def read_scores(path: Path) -> pd.DataFrame:
    """A file `score` wrote, with every value as scored (paths exactly as given)."""
    if Path(path).suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    return restore_formulas(pd.read_csv(path, keep_default_na=False))


def summary(df: pd.DataFrame) -> str:
    """Counts per room decision, BAD and listing-ready shares, errors."""
    ok = df[df["error"] == ""]
    rooms = ", ".join(f"{k} {v}" for k, v in sorted(Counter(ok["room_decision"]).items()))
    bad = (ok["quality_decision"] == "BAD").mean() if len(ok) else 0.0
    ready = ok["listing_ready"].astype(str).eq("True").mean() if len(ok) else 0.0
    return (f"{len(df)} images: {len(ok)} scored, {len(df) - len(ok)} errors | rooms: {rooms or 'none'} | "
            f"BAD share {bad:.1%} | listing-ready {ready:.1%}")


def _setup(weights, device, thresholds: dict | None,
           profile: str = "default") -> tuple[Predictor, Thresholds, list[str]]:
    predictor = Predictor(weights, device=device, profile=profile)
    chosen = predictor.thresholds.with_values(**(thresholds or {}))
    return predictor, chosen, list(results_frame([], predictor.classes, chosen).columns)


def score_local(paths: list[Path], out: Path, weights=None, device="auto", batch_size=64, workers=None,
                resume=False, progress=True, thresholds: dict | None = None, profile: str = "default") -> pd.DataFrame:
    """Score files in one process, journalled batch by batch; `thresholds` override the calibrated ones; `profile`
    "fast" serves the INT8 model."""
    predictor, chosen, columns = _setup(weights, device, thresholds, profile)
    journal = Journal(journal_path(out), columns, resume)
    todo = [p for p in paths if printable_path(p)[0] not in journal.done]
    if journal.done:
        print(f"resuming: {len(journal.done)} already scored, {len(todo)} to go", file=sys.stderr)
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc="scoring", unit="img", disable=not progress, file=sys.stderr)
    try:
        for rows in predictor.iter_predict_paths(todo, batch_size, workers):
            journal.write(results_frame(rows, predictor.classes, chosen).to_dict("records"))
            bar.update(len(rows))
    finally:
        journal.close()
        bar.close()
    return finish(journal.path, out)


class _RayScorer:
    """One predictor per Ray worker; scores a batch of raw files, reporting each under the path as given."""

    def __init__(self, weights, device, thresholds: Thresholds, given: dict[str, str], profile: str = "default"):
        self.predictor = Predictor(weights, device=device, profile=profile)
        self.thresholds, self.given = thresholds, given

    def __call__(self, batch: dict) -> dict:
        named = [(self.given[str(path)], bytes(data)) for path, data in zip(batch["path"], batch["bytes"])]
        df = results_frame([row for row, _ in self.predictor.predict_named(named)], self.predictor.classes,
                           self.thresholds)
        return {c: df[c].to_numpy() for c in df.columns}


def score_ray(paths: list[Path], out: Path, weights=None, device="auto", batch_size=64, address=None,
              resume=False, num_workers: int | None = None, thresholds: dict | None = None,
              profile: str = "default") -> pd.DataFrame:
    """The same scoring with Ray Data: files read by Ray, one predictor actor per worker (GPUs where present)."""
    import ray
    predictor_meta, chosen, columns = _setup(weights, "cpu", thresholds, profile)
    weights = str(predictor_meta.weights)
    journal = Journal(journal_path(out), columns, resume)
    named = [(p, *printable_path(p)) for p in paths]
    journal.write(results_frame([{"path": shown, "error": err} for _, shown, err in named
                                 if err and shown not in journal.done], predictor_meta.classes, chosen)
                  .to_dict("records"))
    given = {str(Path(p).resolve()): shown for p, shown, err in named if not err and shown not in journal.done}
    todo = list(given)
    # workers import this package from a copy Ray ships, whatever their working directory or cluster node
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]})
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        workers = num_workers or max(1, int(gpus) or int(ray.cluster_resources().get("CPU", 1)) // 2)
        if todo:
            ds = ray.data.read_binary_files(todo, include_paths=True)
            worker_device = "cpu" if profile == "fast" else "cuda" if gpus else device  # INT8 runs on the CPU
            scored = ds.map_batches(_RayScorer, fn_constructor_args=(weights, worker_device, chosen, given, profile),
                                    batch_size=batch_size, concurrency=workers, num_gpus=1 if gpus else 0,
                                    batch_format="numpy")
            for batch in scored.iter_batches(batch_size=batch_size * 4, batch_format="pandas"):
                journal.write(batch.to_dict("records"))
    finally:
        journal.close()
        ray.shutdown()
    return finish(journal.path, out)
