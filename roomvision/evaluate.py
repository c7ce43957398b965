"""Evaluation on the test split or any folder of class sub-folders: metrics JSON, confusion matrix, failures CSV."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (accuracy_score, average_precision_score, classification_report, confusion_matrix,
                             f1_score, precision_recall_curve, roc_auc_score, roc_curve)

from .calibration import best_quality_threshold, expected_calibration_error, reliability_curve
from .config import settings
from .data import load_manifest, manifest_roots, resolve_paths, scan_root
from .inference import Predictor, room_probabilities
from .learning.stores import LabelStore, room_corrections
from .reports import report_paths
from .samples import degraded_cache_path, degraded_samples, real_samples


def _thin(xs: np.ndarray, n: int = 200) -> list[float]:
    idx = np.linspace(0, len(xs) - 1, min(n, len(xs))).round().astype(int)
    return [round(float(v), 5) for v in np.asarray(xs)[idx]]


def quality_metrics(p_good: np.ndarray, good: np.ndarray) -> dict:
    """ROC-AUC, PR-AUC (BAD as the positive class), best-F1 threshold and curves."""
    if len(np.unique(good)) < 2:
        return {"n": int(len(good)), "note": "only one class present; AUC undefined"}
    p_bad, bad = 1 - p_good, 1 - good
    fpr, tpr, _ = roc_curve(bad, p_bad)
    prec, rec, _ = precision_recall_curve(bad, p_bad)
    threshold, f1 = best_quality_threshold(p_good, good)
    return {"n": int(len(good)), "bad_share": float(bad.mean()), "roc_auc": float(roc_auc_score(bad, p_bad)),
            "pr_auc": float(average_precision_score(bad, p_bad)), "best_f1_threshold": threshold,
            "best_macro_f1": f1, "roc_curve": {"fpr": _thin(fpr), "tpr": _thin(tpr)},
            "pr_curve": {"precision": _thin(prec), "recall": _thin(rec)}}


def room_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1 over the classes present, per-class report and confusion matrix."""
    pred = probs.argmax(1)
    present = sorted(np.unique(y).tolist())
    report = classification_report(y, pred, labels=present, target_names=[classes[i] for i in present],
                                   output_dict=True, zero_division=0)
    return {"n": int(len(y)), "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
            "per_class": {classes[i]: {k: float(v) for k, v in report[classes[i]].items()} for i in present},
            "confusion_matrix": confusion_matrix(y, pred, labels=list(range(len(classes)))).tolist()}


def save_confusion(cm: list[list[int]], classes: list[str], csv_path: Path, png_path: Path) -> None:
    """Confusion matrix as CSV and PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay
    pd.DataFrame(cm, index=[f"true_{c}" for c in classes], columns=[f"pred_{c}" for c in classes]).to_csv(
        csv_path)
    fig, ax = plt.subplots(figsize=(6, 5))
    ConfusionMatrixDisplay(np.array(cm), display_labels=classes).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title("Room confusion matrix")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def evaluate(predictor: Predictor, samples: pd.DataFrame, batch_size: int = 64, human: pd.DataFrame | None = None,
             progress: str | None = "evaluating") -> tuple[dict, pd.DataFrame]:
    """All metrics for real (and optional degraded) samples; returns metrics and per-sample outputs."""
    raw = predictor.run_samples(samples, predictor.head_outputs, batch_size, progress=progress)
    cal = predictor.calibration
    served = predictor.scores(raw, samples.reset_index(drop=True) if predictor.needs_metrics else None)
    probs_raw, probs = room_probabilities(raw["room"]), served["probs"]
    p_good, aest = served["p_good"], served["aesthetic"]  # the heads learned from people where the model has them
    clean = (samples["degrade"] == "").values
    y = samples["class_idx"].values
    m = {"room": room_metrics(probs[clean], y[clean], predictor.classes)}
    m["room_degraded"] = ({"n": int((~clean).sum()), "accuracy": float((probs[~clean].argmax(1) == y[~clean]).mean())}
                          if (~clean).any() else {})
    m["calibration"] = {"temperature": cal.temperature,
                        "ece_before": expected_calibration_error(probs_raw[clean], y[clean]),
                        "ece_after": expected_calibration_error(probs[clean], y[clean]),
                        "reliability_after": reliability_curve(probs[clean], y[clean])}
    m["quality_vs_proxy"] = quality_metrics(p_good, samples["quality"].values)
    m["quality_vs_proxy"]["threshold_in_use"] = cal.quality
    if human is not None and len(human):
        hq = samples["human_quality"].values
        has = hq != ""
        m["quality_vs_human"] = quality_metrics(p_good[has], (hq[has] == "GOOD").astype(float))
    m["aesthetic"] = {"srcc": float(spearmanr(aest, samples["aesthetic"]).statistic),
                      "plcc": float(pearsonr(aest, samples["aesthetic"]).statistic),
                      "histogram": np.histogram(aest[clean], bins=np.arange(1, 11.5, 0.5))[0].tolist(),
                      "note": "targets are proxy scores from photo properties until humans rate"}
    out = samples.copy()
    for j, c in enumerate(predictor.classes):
        out[f"prob_{c}"] = probs[:, j]
    out["pred_idx"] = probs.argmax(1)
    out["loss"] = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))
    out["quality_prob_good"], out["aesthetic_score"] = p_good, aest
    return m, out


def corrected_room_metrics(out: pd.DataFrame, corrections: pd.Series, classes: list[str]) -> dict:
    """Room metrics of the clean samples against the labels people corrected (photos they called ambiguous or not a
    room left out), to report beside the original figures."""
    clean = out[out["degrade"] == ""].reset_index(drop=True)
    labels = corrections.reset_index(drop=True).fillna(pd.Series([classes[i] for i in clean["class_idx"]]))
    keep = labels.isin(classes).to_numpy()
    probs = clean[[f"prob_{c}" for c in classes]].to_numpy()[keep]
    metrics = room_metrics(probs, labels[keep].map(classes.index).to_numpy(), classes)
    metrics.update(photos_corrected=int(corrections.notna().sum()), photos_left_out=int((~keep).sum()))
    return metrics


def failures_frame(out: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Misclassified clean samples: path, source, true, predicted, probabilities, loss."""
    wrong = out[(out["degrade"] == "") & (out["pred_idx"] != out["class_idx"])]
    f = pd.DataFrame({"path": wrong["path"], "source": wrong["source"],
                      "true": [classes[i] for i in wrong["class_idx"]],
                      "predicted": [classes[i] for i in wrong["pred_idx"]]})
    for c in classes:
        f[f"prob_{c}"] = wrong[f"prob_{c}"].round(5)
    f["confidence"] = wrong[[f"prob_{c}" for c in classes]].max(axis=1).round(5)
    f["loss"] = wrong["loss"].round(5)
    return f.sort_values("loss", ascending=False).reset_index(drop=True)


def folder_samples(folder: Path) -> pd.DataFrame:
    """A manifest-like frame (with proxy labels measured now) for a folder of class sub-folders."""
    from .data import analyse_file
    items, unknown = scan_root(folder)
    for u in unknown:
        print(f"skipped folder (no matching class): {u}", file=sys.stderr)
    rows = []
    for rel, cls in items:
        res = analyse_file(str(folder / rel))
        if "error" in res:
            print(f"unreadable {rel}: {res['error']}", file=sys.stderr)
            continue
        rows.append({"source": folder.name, "path": rel, "class": cls, "split": "test", **res})
    if not rows:
        raise ValueError(f"no readable images under class folders of {folder}")
    return pd.DataFrame(rows)


def robustness_cli(a: argparse.Namespace, manifest: Path) -> int:
    """`evaluate --robustness`: the report on the split's photos, side by side with `--compare` models."""
    df = load_manifest(manifest)
    df = df[df["split"] == a.split].reset_index(drop=True)
    files = resolve_paths(df, manifest_roots(manifest, a.data_roots))
    samples = real_samples(df, files, None)
    predictors = [Predictor(w, device=a.device) for w in [a.weights, *a.compare]]
    report = robustness_report(predictors, samples, files)
    table = report.pivot_table(index=["source", "condition"], columns="model", values="accuracy", sort=False)
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    worst = report[report["condition"] != "as is"].groupby("model")["change_points"].min()
    print("largest drop in points: " + ", ".join(f"{m} {v:+.1f}" for m, v in worst.items()))
    out = report_paths(predictors[0].weights, f"{a.split}-robustness", a.out_dir)["metrics"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict("records"), indent=2) + "\n")
    print(f"written: {out}")
    return 0


def evaluate_cli(a: argparse.Namespace) -> int:
    manifest, relabels = a.manifest or settings().manifest, a.relabels or settings().relabels
    if a.robustness:
        return robustness_cli(a, manifest)
    predictor = Predictor(a.weights, device=a.device, backend="torch")  # evaluation runs the PyTorch model
    if a.folder:
        df = folder_samples(a.folder)
        paths = [a.folder / p for p in df["path"]]
        tag, degraded_cache = f"folder-{a.folder.name}", None
    else:
        df = load_manifest(manifest)
        df = df[df["split"] == a.split]
        if a.source:
            df = df[df["source"] == a.source]
        if df.empty:
            raise ValueError(f"no manifest rows for split={a.split!r} source={a.source!r}")
        paths = resolve_paths(df, manifest_roots(manifest, a.data_roots))
        tag = a.split + (f"-{a.source}" if a.source else "")
        degraded_cache = degraded_cache_path(manifest)
    df = df.reset_index(drop=True)
    real = real_samples(df, paths, relabels)
    corrections = None if a.folder else room_corrections(df, a.room_relabels or settings().room_relabels)
    parts = [real]
    if degraded_cache is not None:
        parts.append(degraded_samples(real, degraded_cache))
    samples = pd.concat(parts, ignore_index=True)
    human = LabelStore(relabels).merged() if Path(relabels).is_file() else None
    metrics, out = evaluate(predictor, samples, a.batch_size, human)
    metrics.update(model_version=predictor.version, weights=str(predictor.weights), evaluated_on=tag,
                   sources=sorted(df["source"].unique().tolist()))
    if corrections is not None and corrections.notna().any():
        metrics["room_corrected_labels"] = corrected_room_metrics(out, corrections, predictor.classes)
    paths = report_paths(predictor.weights, tag, a.out_dir)
    paths["metrics"].parent.mkdir(parents=True, exist_ok=True)
    paths["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    save_confusion(metrics["room"]["confusion_matrix"], predictor.classes, paths["confusion"],
                   paths["confusion_image"])
    if tag.startswith("test") or a.folder:
        failures_frame(out, predictor.classes).to_csv(paths["failures"], index=False)
    r, q = metrics["room"], metrics["quality_vs_proxy"]
    print(f"{tag}: n={r['n']} accuracy {r['accuracy']:.4f} macro-F1 {r['macro_f1']:.4f}; "
          f"quality ROC-AUC {q.get('roc_auc', float('nan')):.4f} (n={q['n']}); "
          f"ECE {metrics['calibration']['ece_before']:.4f} -> {metrics['calibration']['ece_after']:.4f}; "
          f"aesthetic SRCC {metrics['aesthetic']['srcc']:.3f}")
    if "room_corrected_labels" in metrics:
        c = metrics["room_corrected_labels"]
        print(f"{tag} against people's corrected labels ({c['photos_corrected']} corrected, {c['photos_left_out']} "
              f"ambiguous or not a room left out): n={c['n']} accuracy {c['accuracy']:.4f} macro-F1 "
              f"{c['macro_f1']:.4f} (original labels: {r['accuracy']:.4f} / {r['macro_f1']:.4f})")
    print(f"written: {paths['metrics']}")
    return 0


def robustness_report(predictors: list[Predictor], samples: pd.DataFrame, files: list[Path], seed: int = 0,
                      progress: bool = True) -> pd.DataFrame:
    """Room accuracy per source on the photos as they are and under each REPORT_TRANSFORMS change, per model."""
    from concurrent.futures import ThreadPoolExecutor
    from tqdm import tqdm
    from .robustness import REPORT_TRANSFORMS
    conditions = {"as is": lambda img, rng: img, **REPORT_TRANSFORMS}
    rows = []
    y = samples["class_idx"].to_numpy()
    for predictor in predictors:
        def load(i: int) -> list[np.ndarray]:
            img = predictor.decode(files[i])
            rng = np.random.default_rng(seed + i)
            return [predictor.transform(change(img, rng)) for change in conditions.values()]

        preds = np.zeros((len(conditions), len(files)), int)
        with ThreadPoolExecutor(2) as pool, tqdm(total=len(files), desc=f"robustness {predictor.version}",
                                                 disable=not progress) as bar:
            for start in range(0, len(files), 32):
                batch = list(pool.map(load, range(start, min(start + 32, len(files)))))
                x = np.stack([a for per_photo in batch for a in per_photo])
                room = predictor.run(x, ("room",))["room"].argmax(1).reshape(len(batch), len(conditions))
                preds[:, start:start + len(batch)] = room.T
                bar.update(len(batch))
        for source in sorted(samples["source"].unique()):
            keep = (samples["source"] == source).to_numpy()
            base = float((preds[0, keep] == y[keep]).mean())
            for k, name in enumerate(conditions):
                acc = float((preds[k, keep] == y[keep]).mean())
                rows.append({"model": predictor.version, "source": source, "condition": name, "n": int(keep.sum()),
                             "accuracy": round(acc, 4), "change_points": round(100 * (acc - base), 1)})
    return pd.DataFrame(rows)
