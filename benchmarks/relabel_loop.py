"""Does relabeling teach the model? Simulated annotators label N photos, the human heads are refitted, and the result
is scored against the same annotator on held-out photos.

python benchmarks/relabel_loop.py [--weights W] [--pool 3000] [--held-out 1500]

Annotators (each calls about 15% of the photos BAD, with 2% of decisions flipped at random, as people err):
stricter exposure, stricter sharpness, level verticals, a mix of two, and five whose criterion no proxy rule
measures (a colour cast, dark corners, low contrast, garish colour, black bars), so refitting rules cannot learn them
and the head must learn from the image; and one whose standard depends on the room (kitchens and bathrooms must be
bright, a bedroom may be dim), which the head can learn only by reading the model's room probabilities.
Labels are chosen (a) at random and (b) in the Relabel page's queue order (50 photos at random first, then active
learning: the photos the refitted head is least sure of, spread out, alternating with photos drawn at random). Two
simulated raters give 1-5 aesthetic ratings. The photos come from the manifest's train split (labelling pool) and
test split (held out).
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomvision.config import DEFAULT_WEIGHTS, settings  # noqa: E402
from roomvision.data import load_manifest, manifest_roots, resolve_paths  # noqa: E402
from roomvision.decisions import is_good  # noqa: E402
from roomvision.learning.heads import fit_human_aesthetic, fit_human_quality  # noqa: E402
from roomvision.learning.queue import active_queue  # noqa: E402
from roomvision.inference import Predictor, head_scores  # noqa: E402
from roomvision.modelinfo import GRAPH_KEY, file_sha256  # noqa: E402

SIZES = (50, 100, 200, 400)
BATCH = 50
NOISE = 0.02


def image_stats(img) -> dict:
    """Two properties no proxy metric measures: colour cast (red minus blue) and dark corners (vignetting)."""
    a = np.asarray(img.convert("RGB"), np.float32) / 255
    lum = a.mean(axis=2)
    h, w = lum.shape
    ch, cw = max(1, h // 5), max(1, w // 5)
    corners = np.mean([lum[:ch, :cw].mean(), lum[:ch, -cw:].mean(), lum[-ch:, :cw].mean(), lum[-ch:, -cw:].mean()])
    centre = lum[2 * ch:h - 2 * ch, 2 * cw:w - 2 * cw].mean()
    return {"cast": float((a[..., 0] - a[..., 2]).mean()), "corner_ratio": float(corners / max(centre, 1e-3))}


def extract(predictor: Predictor, files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                              pd.DataFrame]:
    """Quality features, proxy P(GOOD), aesthetic score and room probabilities of the model, and image statistics,
    per photo."""
    def load(f):
        img = predictor.decode(f)
        return predictor.transform(img), image_stats(img)

    feats, p_good, aesthetic, rooms, stats = [], [], [], [], []
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(files), 64):
            items = list(pool.map(load, files[start:start + 64]))
            raw = predictor.run(np.stack([x for x, _ in items]), ("room", "quality", "aesthetic", "quality_features"))
            feats.append(raw["quality_features"].astype(np.float32))
            heads = head_scores(raw, predictor.calibration.temperature)
            p_good.append(heads["p_good"])
            aesthetic.append(heads["aesthetic"])
            rooms.append(heads["probs"])
            stats += [s for _, s in items]
            print(f"\rfeatures {start + len(items)}/{len(files)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return (np.concatenate(feats), np.concatenate(p_good), np.concatenate(aesthetic), np.concatenate(rooms),
            pd.DataFrame(stats))


def annotators(m: pd.DataFrame, pool: np.ndarray) -> dict[str, np.ndarray]:
    """BAD (True) per photo for each simulated annotator; cut-offs put about 15% of the pool BAD (the letterboxed
    photos are about as many)."""
    def q(series, share):  # the pool value below which `share` of the photos fall
        return float(np.quantile(series[pool], share))

    exposure = (m.lum_p50 < q(m.lum_p50, 0.10)) | (m.lum_p50 > q(m.lum_p50, 0.95))
    return {
        "stricter exposure": exposure.to_numpy(),
        "stricter sharpness": (m.sharpness < q(m.sharpness, 0.15)).to_numpy(),
        "level verticals": (m.tilt_deg > q(m.tilt_deg, 0.85)).to_numpy(),
        "dark or blurry (mix)": ((m.lum_p50 < q(m.lum_p50, 0.08)) | (m.sharpness < q(m.sharpness, 0.08))).to_numpy(),
        "colour cast (unmeasured)": ((m.cast - m.cast[pool].median()).abs() > (m.cast - m.cast[pool].median()).abs()
                                     .pipe(lambda s: np.quantile(s[pool], 0.85))).to_numpy(),
        "dark corners (unmeasured)": (m.corner_ratio < q(m.corner_ratio, 0.15)).to_numpy(),
        "low contrast (unmeasured)": (m.contrast < q(m.contrast, 0.15)).to_numpy(),
        "garish colour (unmeasured)": (m.colourfulness > q(m.colourfulness, 0.85)).to_numpy(),
        "letterboxed (unmeasured)": (m.border_frac > 0).to_numpy(),
        "bright kitchens (per room)": room_dependent_darkness(m, pool),
    }


def room_dependent_darkness(m: pd.DataFrame, pool: np.ndarray) -> np.ndarray:
    """A standard that depends on what the photo shows: kitchens and bathrooms must be bright (the darkest 35% of
    them are BAD), a bedroom may be dim (only its darkest 3%), other rooms in between (10%)."""
    share = m["class"].map({"Kitchen": 0.35, "Bathroom": 0.35, "Bedroom": 0.03}).fillna(0.10)
    bad = np.zeros(len(m), bool)
    for room, rows in m.groupby("class").groups.items():
        rows = np.asarray(rows)
        cut = np.quantile(m.lum_p50.to_numpy()[np.intersect1d(rows, pool)], share[rows[0]])
        bad[rows] = m.lum_p50.to_numpy()[rows] < cut
    return bad


def raters(m: pd.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """1-10 scores (from 1-5 stars) of two simulated raters with different tastes."""
    def z(s):
        return (s - s.mean()) / s.std()

    def stars(latent):
        noisy = latent + rng.normal(0, 0.3, len(latent))
        return 1 + (np.digitize(noisy, np.quantile(noisy, [0.1, 0.3, 0.7, 0.9])) * 9 / 4)

    return {"likes vivid colour": stars(z(m.colourfulness) + z(m.contrast)),
            "likes bright, level, crisp": stars(z(m.lum_p50) - z(m.tilt_deg) + z(np.log1p(m.sharpness)))}


def scores(head, features, metrics, rooms, truth_bad, held) -> tuple[float, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    p = head.p_good(features[held], metrics.iloc[held], rooms[held])
    good = ~truth_bad[held]
    return balanced_accuracy_score(good, is_good(p, head.threshold)), roc_auc_score(good, p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--pool", type=int, default=3000, help="train-split photos people may label")
    parser.add_argument("--held-out", type=int, default=1500, help="test-split photos scored afterwards")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    rng = np.random.default_rng(a.seed)
    manifest = settings().manifest
    df = load_manifest(manifest)
    df = pd.concat([df[df.split == "train"].sample(a.pool, random_state=a.seed),
                    df[df.split == "test"].sample(a.held_out, random_state=a.seed)], ignore_index=True)
    cache = settings().cache_dir / (f"relabel-bench-rooms-{GRAPH_KEY}-{file_sha256(a.weights)[:12]}-"
                                    f"{file_sha256(manifest)[:12]}-{a.pool}-{a.held_out}-{a.seed}.npz")
    predictor = Predictor(a.weights, device="cpu")
    if cache.is_file():
        z = np.load(cache)
        feats, proxy_p, proxy_aes, rooms, stats = z["feats"], z["proxy_p"], z["proxy_aes"], z["rooms"], pd.DataFrame(
            {"cast": z["cast"], "corner_ratio": z["corner_ratio"]})
    else:
        feats, proxy_p, proxy_aes, rooms, stats = extract(predictor, resolve_paths(df, manifest_roots(manifest)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, feats=feats, proxy_p=proxy_p, proxy_aes=proxy_aes, rooms=rooms, cast=stats.cast.values,
                 corner_ratio=stats.corner_ratio.values)
    m = pd.concat([df.reset_index(drop=True), stats], axis=1)
    pool, held = np.flatnonzero(m.split == "train"), np.flatnonzero(m.split == "test")

    print(f"{len(pool)} photos to label, {len(held)} held out; {NOISE:.0%} of each annotator's decisions flipped; "
          f"balanced accuracy / ROC-AUC of P(GOOD) against the annotator on the held-out photos")
    header = f"{'annotator':<27} {'BAD':>4} {'default':>11}" + "".join(
        f" {order[0]}{n:>4}      " for order in ("random", "queue") for n in SIZES)
    print(header)
    fit_seconds, reached = [], {}
    panel = annotators(m, pool)
    for name, truth in panel.items():
        said = truth ^ (rng.random(len(truth)) < NOISE)  # what the annotator answers (held-out truth stays clean)
        from sklearn.metrics import balanced_accuracy_score, roc_auc_score
        good_held = ~truth[held]
        line = (f"{name:<27} {truth[held].mean():>4.0%} "
                f"{balanced_accuracy_score(good_held, is_good(proxy_p[held], predictor.thresholds.quality)):.2f}/"
                f"{roc_auc_score(good_held, proxy_p[held]):.2f}")
        for order in ("random", "queue"):
            order_rng = np.random.default_rng(a.seed + 1)
            human = np.full(len(m), -1)
            asked: list[int] = []
            for n in SIZES:
                while len(asked) < n:
                    open_ = np.setdiff1d(pool, asked)
                    if order == "random":
                        batch = order_rng.choice(open_, n - len(asked), replace=False)
                    else:
                        head = (fit_human_quality(feats[pool], m.iloc[pool], human[pool], rooms=rooms[pool]) if asked
                                else None)
                        if head is None:  # the page's first photos: drawn at random
                            batch = order_rng.choice(open_, BATCH, replace=False)
                        else:
                            batch = active_queue(head.p_good(feats, m, rooms), head.threshold, feats, open_, BATCH,
                                                 a.seed)
                    batch = batch[:n - len(asked)]
                    human[batch] = (~said[batch]).astype(int)
                    asked += [int(i) for i in batch]
                started = time.monotonic()
                head = fit_human_quality(feats[pool], m.iloc[pool], human[pool], rooms=rooms[pool])
                fit_seconds.append(time.monotonic() - started)
                if head is None:
                    line += f" {'too few':>10}"
                    continue
                ba, auc = scores(head, feats, m, rooms, truth, held)
                if ba >= 0.85 and (name, order) not in reached:
                    reached[(name, order)] = n
                flags = ("r" if head.uses_rules else "") + ("k" if head.uses_rooms else "")
                line += f" {ba:.2f}/{auc:.2f}{flags:<2}"
        print(line)
    print("(r: the head also reads the refitted proxy rules; k: it learned a standard per room; both chosen by "
          "cross-validation on the human labels)")
    for name in panel:
        r, q = reached.get((name, "random")), reached.get((name, "queue"))
        print(f"  {name}: balanced accuracy 0.85 reached with {r or '>400'} random labels, "
              f"{q or '>400'} in queue order")
    print(f"refit time: median {np.median(fit_seconds):.1f} s, max {max(fit_seconds):.1f} s per retraining "
          f"(quality head, {feats.shape[1]} features, this CPU)")

    from scipy.stats import spearmanr
    print(f"\n{'aesthetic rater':<27} {'default':>8}" + "".join(f" {n:>6}" for n in SIZES) +
          "   (Spearman correlation with the rater on held-out photos; random labelling)")
    for name, score in raters(m, rng).items():
        line = f"{name:<27} {spearmanr(proxy_aes[held], score[held]).statistic:>8.2f}"
        for n in SIZES:
            rated = np.full(len(m), np.nan)
            chosen = np.random.default_rng(a.seed + 2).choice(pool, n, replace=False)
            rated[chosen] = score[chosen]
            head = fit_human_aesthetic(feats[pool], rated[pool])
            line += f" {spearmanr(head.score(feats[held]), score[held]).statistic:>6.2f}"
        print(line)


if __name__ == "__main__":
    main()
