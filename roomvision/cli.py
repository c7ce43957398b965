"""Command line: `python -m roomvision {prepare,train,evaluate,predict,…} --help`."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from . import config
from .config import CLASSES, TrainConfig, missing_extra, settings
from .modelinfo import CheckpointError
from .versions import current_default


WEIGHTS_HELP = "model checkpoint (.pt; default: $ROOMVISION_WEIGHTS, else the committed default model)"
DEVICE_HELP = "auto (a CUDA GPU when present, else the CPU), cpu or cuda"
BATCH_HELP = "photos per forward pass (default: %(default)s)"
MANIFEST_HELP = f"manifest CSV (default: ${config.ENV_MANIFEST} or data/manifest.csv)"
ROOM_RELABELS_HELP = f"room corrections CSV (default: ${config.ENV_ROOM_RELABELS} or data/labels/room_relabels.csv)"
RELABELS_HELP = f"human quality labels CSV (default: ${config.ENV_RELABELS} or data/labels/quality_relabels.csv)"


def _add_roots(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, action="append", dest="data_roots", metavar="DIR",
                   help="dataset root(s), matched to manifest sources by folder name "
                        f"(default: ${config.ENV_DATA_ROOT} or the manifest's sidecar)")


def cmd_prepare(a: argparse.Namespace) -> int:
    from .data import prepare, summarise
    df, report = prepare(a.roots, a.out, seed=a.seed, resplit=a.resplit, workers=a.workers)
    print(summarise(df, report))
    print(f"manifest written: {a.out}")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from .data import summarise
    from .learning.collection import get_collection, import_photos
    df, report = import_photos(a.dirs, a.collection, a.rooms_from_folders, a.groups, a.group_column, a.seed,
                               a.workers)
    print(summarise(df, report))
    print(f"collection {a.collection!r}: {len(df)} photos in {get_collection(a.collection).manifest}")
    return 0


def cmd_collections(a: argparse.Namespace) -> int:
    import pandas as pd
    from .learning.collection import list_collections
    table = pd.DataFrame([c.summary() for c in list_collections()])
    print(table.to_string(index=False))
    return 0


def cmd_versions(a: argparse.Namespace) -> int:
    from .versions import current_default, version_files, versions_table
    table = versions_table(version_files(), current_default())
    print(table.drop(columns="path").to_string(index=False))
    return 0


def cmd_use(a: argparse.Namespace) -> int:
    from .versions import find_version, rollback_team_default, set_team_default
    if a.rollback == bool(a.version):
        raise ValueError("name a version to use, or --rollback (not both)")
    pointer = rollback_team_default(a.by) if a.rollback else set_team_default(find_version(a.version), a.by)
    print(f"team default: {pointer['weights'] or 'the committed model'} (previous: "
          f"{pointer['previous'] or 'the committed model'})")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    """Train; then, when people have labelled photos, learn from them the way `retrain-heads` does."""
    from .data import load_manifest
    from .learning.retraining import any_human_labels, human_targets, retrain_heads
    from .train import train
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in TrainConfig.__dataclass_fields__})
    out = train(cfg)
    manifest, relabels = cfg.manifest or settings().manifest, cfg.relabels or settings().relabels
    if any_human_labels(*human_targets(load_manifest(manifest), relabels)):
        result = retrain_heads(out, manifest, relabels, cfg.data_roots, out=out, replace_default=True,
                               room_relabels=None)  # training itself already learned the room corrections
        print(f"learned from {result['human_labels']} human labels and {result['human_ratings']} ratings")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate_cli
    return evaluate_cli(a)


def _threshold_values(a: argparse.Namespace) -> dict:
    """The decision thresholds given on the command line (None: the model's calibrated one)."""
    return dict(quality=a.quality_threshold, min_room_confidence=a.min_room_confidence,
                listing_ready_min_aesthetic=a.min_aesthetic, min_in_scope=a.min_in_scope)


def cmd_predict(a: argparse.Namespace) -> int:
    from .inference import Predictor, check_output, write_results
    from .images import find_images
    check_output(a.out)
    files = find_images(a.paths)
    if not files:
        print("no image files found in the given paths", file=sys.stderr)
        return 2
    predictor = Predictor(a.weights, device=a.device, profile=_profile(a))
    results = predictor.predict_paths(files, batch_size=a.batch_size, progress=not a.quiet)
    write_results(results, a.out, predictor.classes, predictor.thresholds.with_values(**_threshold_values(a)))
    errors = [r for r in results if r["error"]]
    for r in errors:
        print(f"error: {r['path']}: {r['error']}", file=sys.stderr)
    print(f"{len(results) - len(errors)} scored, {len(errors)} failed" + (f"; written to {a.out}" if a.out else ""),
          file=sys.stderr)
    return 1 if errors else 0


def cmd_cache_features(a: argparse.Namespace) -> int:
    from .features import build_feature_cache
    from .inference import Predictor
    out = build_feature_cache(Predictor(a.weights, device=a.device), a.manifest or settings().manifest, a.data_roots,
                              a.batch_size)
    print(f"written: {out}")
    return 0


def cmd_retrain_heads(a: argparse.Namespace) -> int:
    import json
    from .learning.retraining import adapt_to_collection, retrain_heads
    for flag, on in (("--fine-tune", a.fine_tune), ("--imagenet-features", a.imagenet_features)):
        if on and not a.collection:
            raise ValueError(f"{flag} adapts to a collection: give --collection NAME")
    if a.collection:
        result = adapt_to_collection(a.collection, a.weights, a.out, a.data_roots, fine_tune=a.fine_tune,
                                     imagenet_features=a.imagenet_features)
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}, indent=2))
        return 0
    result = retrain_heads(a.weights or current_default(), a.manifest or settings().manifest,
                           a.relabels or settings().relabels, a.data_roots, a.out,
                           room_relabels=a.room_relabels or settings().room_relabels)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}, indent=2))
    return 0


def cmd_label_issues(a: argparse.Namespace) -> int:
    from .features import build_feature_cache
    from .inference import Predictor
    from .learning.label_issues import find_room_label_issues
    from .tables import neutralise_formulas
    manifest = a.manifest or settings().manifest
    predictor = Predictor(a.weights, device="cpu")
    cache = build_feature_cache(predictor, manifest, a.data_roots)
    issues = find_room_label_issues(manifest, cache, predictor, a.split,
                                    a.room_relabels or settings().room_relabels)
    table = neutralise_formulas(issues[["source", "path", "split", "given", "suggested", "score", "issue",
                                        *[c for c in issues if c.startswith("prob_")]]])
    if a.out:
        table.to_csv(a.out, index=False)
        print(f"{len(table)} photos ranked ({int(table['issue'].sum())} flagged as label issues); written to {a.out}",
              file=sys.stderr)
    else:
        table.head(a.top).to_csv(sys.stdout, index=False)
    return 0


def cmd_fit_scope(a: argparse.Namespace) -> int:
    import json
    from .learning.retraining import fit_scope
    weights = a.weights or current_default()
    out = a.out or Path(weights).with_name(Path(weights).stem + "-scope.pt")
    result = fit_scope(weights, a.manifest or settings().manifest, a.out_of_scope_root or settings().out_of_scope_root,
                       out, a.data_roots, a.room_relabels or settings().room_relabels)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}, indent=2))
    return 0


def cmd_train_thumbnail_features(a: argparse.Namespace) -> int:
    import json
    from .data import load_manifest, manifest_roots, resolve_paths
    from .learning.thumbnails import save_thumbnail_stages, train_thumbnail_stages
    from .modelinfo import read_model_info
    manifest_path = a.manifest or settings().manifest
    manifest = load_manifest(manifest_path)
    roots = manifest_roots(manifest_path, a.data_roots)
    splits = {}
    for split in ("train", "val"):
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        splits[split] = (resolve_paths(rows, roots), rows["class"].map(CLASSES.index).to_numpy())

    def report(done, total, message):  # a line per epoch; rendering progress overwrites itself
        print(f"\r{message}", end="\n" if done == total or message.startswith("epoch") else "", file=sys.stderr,
              flush=True)
    tensors, metrics = train_thumbnail_stages(splits["train"], splits["val"],
                                              read_model_info(current_default()).preprocess,
                                              epochs=a.epochs, seed=a.seed, on_progress=report)
    save_thumbnail_stages(a.out, tensors, metrics)
    print(json.dumps({"out": str(a.out), **metrics}, indent=2))
    return 0


def cmd_export_onnx(a: argparse.Namespace) -> int:
    import json
    from .engine import export_onnx
    from .inference import onnx_path, onnx_provenance
    weights = a.weights or current_default()
    out = export_onnx(weights, a.out or onnx_path(weights))
    if a.out:  # an export to ship: the sidecar lets installs without PyTorch trust it for these weights only
        Path(str(out) + ".json").write_text(json.dumps(onnx_provenance(weights)) + "\n")
    print(f"written: {out}")
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    import json
    import pandas as pd
    from .inference import int8_onnx
    from .quantize import (QATConfig, compare_profiles, export_int8, integer_kernels, load_qat, run_qat, sensitivity,
                           validation_batch)
    weights = Path(a.weights or current_default())
    cfg = QATConfig(weights=str(weights), run_dir=str(a.run_dir), epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                    keep_fp32=tuple(a.keep_fp32), limit=a.limit, threads=a.threads or 0, input_size=a.input_size)
    model, cfg = load_qat(run_qat(cfg, resume=a.resume))
    if a.sensitivity:
        table = sensitivity(model, validation_batch(weights, a.sensitivity, cfg.input_size))
        table = pd.concat([table[table["tensor"] == "(none)"], table[table["tensor"] != "(none)"].head(10)])
        print(f"on {a.sensitivity} validation photos, all tensors INT8 ('(none)') and all but the one named, "
              f"best first:\n{table.to_string(index=False)}")
    out = a.out or weights.with_suffix(".int8.onnx")
    export_int8(model, weights, out, cfg)
    kernels = integer_kernels(out)
    print(f"written: {out} (ONNX Runtime runs {', '.join(f'{n} {k}' for k, n in kernels.items())})")
    try:
        served = int8_onnx(weights).resolve() == out.resolve()
    except ValueError:
        served = False
    if served:
        table = compare_profiles(weights)
        print(table.to_string(index=False))
        sidecar = out.with_suffix(".onnx.json")
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**meta, "agreement": table.round(4).to_dict("records")}, indent=2) + "\n")
    else:
        print(f"not compared with fp32: the fast profile serves {weights.name} from <weights>.int8.onnx")
    return 0


def cmd_app(a: argparse.Namespace) -> int:
    """Start the Streamlit app, under jemalloc when the system has it (much faster CPU inference).

    The default model's ONNX export is prepared first, so the app process itself never needs PyTorch.
    """
    import os
    from .inference import ensure_onnx
    weights = current_default()
    if weights.is_file():
        ensure_onnx(weights)
    env = dict(os.environ)
    if os.path.exists(config.JEMALLOC) and "jemalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(filter(None, [config.JEMALLOC, env.get("LD_PRELOAD")]))
        env.setdefault("MALLOC_CONF", "dirty_decay_ms:-1,muzzy_decay_ms:-1")
    cmd = [sys.executable, "-m", "streamlit", "run", str(config.PROJECT_ROOT / "app.py"),
           "--server.port", str(a.port), "--server.address", a.host, "--browser.gatherUsageStats", "false"]
    os.execvpe(cmd[0], cmd, env)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .api import create_app, serve
    serve(create_app(a.weights, a.device, a.allow_image_urls, profile=_profile(a)), a.host, a.port)
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from .score import read_inputs, score_local, score_ray, summary
    paths = read_inputs(a.source)
    if not paths:
        raise ValueError(f"no image files in {a.source}")
    if a.out.suffix.lower() not in (".csv", ".parquet"):
        raise ValueError("--out must end in .csv or .parquet")
    thresholds = _threshold_values(a)
    if a.fast and a.fp32:
        raise ValueError("choose --fast or --fp32, not both")
    profile = _profile(a)
    if profile == "fast":
        print("scoring with the INT8 model (fast profile; --fp32 for the fp32 model)", file=sys.stderr)
    if a.engine == "ray":
        df = score_ray(paths, a.out, a.weights, a.device, a.batch_size, a.address, a.resume, thresholds=thresholds,
                       profile=profile)
    else:
        df = score_local(paths, a.out, a.weights, a.device, a.batch_size, a.workers, a.resume,
                         thresholds=thresholds, profile=profile)
    print(summary(df))
    print(f"written: {a.out}")
    return 0


FAST_HELP = ("serve the INT8 model (ONNX Runtime integer kernels on the CPU; made by `quantize`): several times the "
             "throughput, ~99%% of decisions unchanged (README: Fast profile)")


def _profile(a: argparse.Namespace) -> str:
    """The chosen profile; batch scoring (`score`, which has --fp32) serves the INT8 model by default on the CPU
    when the weights have one, since it keeps the decisions (README: Fast profile)."""
    if a.fast or not hasattr(a, "fp32"):
        return "fast" if a.fast else "default"
    from .inference import batch_profile
    return "default" if a.fp32 else batch_profile(a.weights or current_default(), a.device)


def _add_dataclass_options(p: argparse.ArgumentParser, cls) -> None:
    """One option per documented field of a config dataclass, with its default and help from the field."""
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", default=f.default, help=f.metadata["help"])
            continue
        kind = {"int": int, "float": float, "str": str}.get(str(f.type), Path)
        p.add_argument(flag, type=kind, default=f.default,
                       help=f.metadata["help"] + ("" if f.default is None else " (default: %(default)s)"))


def _add_model_and_manifest(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    p.add_argument("--manifest", type=Path, default=None, help=MANIFEST_HELP)
    _add_roots(p)


def _add_threshold_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quality-threshold", type=float, default=None,
                   help="P(GOOD) at or above which a photo is GOOD (default: the model's calibrated threshold)")
    p.add_argument("--min-room-confidence", type=float, default=None,
                   help=f"below this the room is 'uncertain' (default: {config.MIN_ROOM_CONFIDENCE})")
    p.add_argument("--min-aesthetic", type=float, default=None,
                   help=f"minimum aesthetic score for listing-ready (default: {config.LISTING_READY_MIN_AESTHETIC})")
    p.add_argument("--min-in-scope", type=float, default=None,
                   help="below this P(one of the five rooms) a photo is 'not one of the five rooms' "
                        "(default: the model's calibrated threshold)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m roomvision",
                                     description="Room type, photo quality and aesthetic score for listing photos.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="import class folders into a cleaned, split manifest with proxy labels")
    p.add_argument("roots", type=Path, nargs="+", help="dataset roots, each with one sub-folder per class")
    p.add_argument("--out", type=Path, default=config.DEFAULT_MANIFEST, help="manifest CSV (default: %(default)s)")
    p.add_argument("--seed", type=int, default=config.SPLIT_SEED,
                   help="seed of the train/val/test split (default: %(default)s)")
    p.add_argument("--resplit", action="store_true", help="draw the split anew instead of keeping the existing one")
    p.add_argument("--workers", type=int, default=2, help="processes that read and measure photos (default: 2)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("import", help="add a team's own photos (any folder layout, no labels needed) to a named "
                                      "collection: cleaned like prepare, split by listing, never copied")
    p.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="folders of photos (searched recursively)")
    p.add_argument("--collection", required=True, help="collection name (created when new; lower-case letters, "
                                                       "digits, '-' and '_')")
    p.add_argument("--rooms-from-folders", action="store_true",
                   help="a photo's first folder names its room where it matches one (Kitchen, bath, …)")
    p.add_argument("--groups", type=Path, default=None,
                   help="CSV naming each photo's listing (columns path or file, and --group-column); default: "
                        "the photo's folder is its listing")
    p.add_argument("--group-column", default="listing_group", help="listing column of --groups (default: %(default)s)")
    p.add_argument("--seed", type=int, default=config.SPLIT_SEED,
                   help="seed of the train/val/test split (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="processes that read and measure photos (default: 2)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("collections", help="list the collections with their photos, room corrections and quality "
                                           "decisions")
    p.set_defaults(func=cmd_collections)

    p = sub.add_parser("versions", help="list the model versions (shipped, learned from people, adapted to a "
                                        "market) and which one is the team default")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("use", help="make a version the team-wide default (app, CLI, API, batch scoring), or roll "
                                   "back the last change")
    p.add_argument("version", nargs="?", default="", help="version name (file name or stem; see `versions`)")
    p.add_argument("--rollback", action="store_true", help="back to the default the last change replaced")
    p.add_argument("--by", default="", help="who made the change (kept in the pointer)")
    p.set_defaults(func=cmd_use)

    p = sub.add_parser("train", help="fine-tune the multi-task model and write a self-describing checkpoint")
    _add_dataclass_options(p, TrainConfig)
    _add_roots(p)
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random initialisation instead of packaged ImageNet weights")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics on the test split or on a folder of class sub-folders")
    p.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    p.add_argument("--manifest", type=Path, default=None, help=MANIFEST_HELP)
    _add_roots(p)
    p.add_argument("--folder", type=Path, default=None, help="evaluate on this folder of class sub-folders instead")
    p.add_argument("--source", default=None, help="only manifest rows of this source (e.g. house-rooms)")
    p.add_argument("--split", default="test", help="manifest split to evaluate (train, val, test; default: test)")
    p.add_argument("--relabels", type=Path, default=None, help=RELABELS_HELP)
    p.add_argument("--room-relabels", type=Path, default=None, help=ROOM_RELABELS_HELP + "; with corrections of "
                   "the evaluated photos, metrics against the corrected labels are reported beside the original ones")
    p.add_argument("--out-dir", type=Path, default=None, help="where metrics JSON, confusion matrix and failures go")
    p.add_argument("--robustness", action="store_true",
                   help="room accuracy per source as photos are and under listing-style changes (thumbnail, "
                        "grayscale, watermark, caption, JPEG, letterbox, aspect), side by side with --compare")
    p.add_argument("--compare", type=Path, action="append", default=[], metavar="WEIGHTS",
                   help="other model(s) for the robustness report")
    p.add_argument("--batch-size", type=int, default=64, help=BATCH_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score image files or folders; CSV or JSON out")
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    p.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    p.add_argument("--out", type=Path, default=None, help=".csv, .json or .parquet (default: CSV on stdout)")
    p.add_argument("--batch-size", type=int, default=32, help=BATCH_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threshold_options(p)
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cache-features", help="run the model once over the manifest; cache the quality features "
                                              "that the relabel queue and learning from people read")
    p.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    p.add_argument("--manifest", type=Path, default=None, help=MANIFEST_HELP)
    _add_roots(p)
    p.add_argument("--batch-size", type=int, default=64, help=BATCH_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    p.set_defaults(func=cmd_cache_features)

    p = sub.add_parser("retrain-heads", help="learn GOOD/BAD and aesthetic scores from the human labels (refitted "
                                             "rules, heads on cached quality features, threshold calibrated on "
                                             "held-out human labels); saves a new version, never the default file")
    _add_model_and_manifest(p)
    p.add_argument("--relabels", type=Path, default=None, help=RELABELS_HELP)
    p.add_argument("--room-relabels", type=Path, default=None, help=ROOM_RELABELS_HELP)
    p.add_argument("--collection", default=None,
                   help="adapt the room decision to this collection's market from its room corrections (a version "
                        "for that market; the default model is unchanged)")
    p.add_argument("--fine-tune", action="store_true",
                   help="with --collection: also fine-tune the backbone's last stage on the corrected photos, run "
                        "beside the default one (PyTorch; a minute or two on a CPU)")
    p.add_argument("--imagenet-features", action="store_true",
                   help="with --collection: the market head also reads the features of EfficientNet-Lite2 as "
                        "ImageNet left it and of its last stages tuned on grey thumbnails, run beside the served "
                        "backbone (better on a market unlike the training photos; the version computes a second "
                        "backbone for each photo)")
    p.add_argument("--out", type=Path, default=None,
                   help="default: data/versions/<name>-people-<UTC time>.pt (or <name>-<collection>-<UTC time>.pt)")
    p.set_defaults(func=cmd_retrain_heads)

    p = sub.add_parser("label-issues", help="rank manifest photos by how likely their room label is wrong "
                                            "(confident learning on out-of-fold probabilities from cached features)")
    _add_model_and_manifest(p)
    p.add_argument("--split", default="all", choices=["train", "val", "test", "all"],
                   help="rank the photos of one split only (default: all)")
    p.add_argument("--room-relabels", type=Path, default=None, help=ROOM_RELABELS_HELP)
    p.add_argument("--out", type=Path, default=None, help="CSV of every ranked photo (default: the top ones on stdout)")
    p.add_argument("--top", type=int, default=30, help="rows printed without --out")
    p.set_defaults(func=cmd_label_issues)

    p = sub.add_parser("fit-scope", help="fit the 'not one of the five rooms' decision on cached features "
                                         "(training rooms vs photos of none of them, plus a training-free "
                                         "distance to the rooms) and save the model with it")
    _add_model_and_manifest(p)
    p.add_argument("--out-of-scope-root", type=Path, default=None,
                   help="folder of non-room photos with a manifest.csv (default: $ROOMVISION_OUT_OF_SCOPE_ROOT or "
                        "../shared/datasets/out-of-scope)")
    p.add_argument("--room-relabels", type=Path, default=None,
                   help=ROOM_RELABELS_HELP + "; photos people marked not a room join the non-room examples")
    p.add_argument("--out", type=Path, default=None, help="default: <weights>-scope.pt next to the weights")
    p.set_defaults(func=cmd_fit_scope)

    p = sub.add_parser("train-thumbnail-features",
                       help="fine-tune Lite2's last stages on the manifest's training photos rendered as grey 128 px "
                            "thumbnails (features a market head reads)")
    p.add_argument("--out", type=Path, default=config.THUMBNAIL_STAGES,
                   help="file for the tuned tensors (default: %(default)s, what versions adapted with "
                        "--imagenet-features read)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training photos (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="JPEG qualities, order and flips (default: %(default)s)")
    p.add_argument("--manifest", type=Path, default=None, help=MANIFEST_HELP)
    _add_roots(p)
    p.set_defaults(func=cmd_train_thumbnail_features)

    p = sub.add_parser("export-onnx", help="export a checkpoint for ONNX Runtime (done automatically on first use)")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the default model)")
    p.add_argument("--out", type=Path, default=None,
                   help="ONNX file to ship, with a .json sidecar naming the weights it was made from (default: the "
                        "cache the predictor reads); weights/NAME.onnx beside weights/NAME.pt is served without "
                        "PyTorch")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("quantize", help="INT8 model for the fast profile: quantisation-aware fine-tune (checkpointed, "
                                        "--resume), then a QDQ ONNX export ONNX Runtime runs with integer kernels")
    p.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    p.add_argument("--out", type=Path, default=None, help="default: <weights>.int8.onnx beside the weights")
    p.add_argument("--run-dir", type=Path, default=Path("data/qat/default"),
                   help="where the fine-tune keeps its state and log (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=1.0,
                   help="passes over the photos; 0 only calibrates the ranges (post-training quantisation; "
                        "default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="use the first N train/validation photos (default: all)")
    p.add_argument("--batch-size", type=int, default=32, help="photos per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-5, help="Adam learning rate, cosine decay (default: %(default)s)")
    p.add_argument("--keep-fp32", nargs="*", default=[], metavar="CONV",
                   help="convolutions (backbone module names, e.g. conv_stem) left in fp32")
    p.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: all cores)")
    p.add_argument("--input-size", type=int, default=0,
                   help="fine-tune and serve at this input size, e.g. 192 (default: the model's own)")
    p.add_argument("--resume", action="store_true", help="continue the fine-tune saved in --run-dir")
    p.add_argument("--sensitivity", type=int, default=0, metavar="N",
                   help="before exporting, show on N validation photos which tensors lose room predictions in INT8")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("app", help="start the Streamlit app (uses jemalloc when installed)")
    p.add_argument("--host", default="localhost",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 serves colleagues "
                        "on the network)")
    p.add_argument("--port", type=int, default=8501, help="port (default: %(default)s)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("serve", help="REST API: GET /health, POST /v1/predict (docs at /docs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    p.add_argument("--allow-image-urls", action="store_true",
                   help="accept image_url inputs (public http(s) hosts only, with timeout and size limit)")
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("score", help="batch-score a folder or a .txt list of paths to CSV or Parquet")
    p.add_argument("source", type=Path, help="folder (recursive) or .txt file with one image path per line")
    p.add_argument("--out", type=Path, required=True, help="results.csv or results.parquet")
    p.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, default=64, help=BATCH_HELP)
    p.add_argument("--workers", type=int, default=None,
                   help="decoding threads (local engine; default: 2)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its journal")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="one process (default) or Ray Data (needs the ray extra)")
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: start Ray locally)")
    _add_threshold_options(p)
    p.add_argument("--fast", action="store_true", help=FAST_HELP + "; the default on the CPU when the weights have one")
    p.add_argument("--fp32", action="store_true", help="score with the fp32 model even where an INT8 one exists")
    p.set_defaults(func=cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"error: {missing_extra(exc)}", file=sys.stderr)
        return 2
