"""A team's own photos: import into collections, outputs cached per photo, per-collection labels, adapting the
room decision to a market."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from roomvision.learning.collection import get_collection, import_photos, list_collections
from roomvision.learning.stores import ROOM, LabelStore


@pytest.fixture
def collections(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOMVISION_COLLECTIONS_DIR", str(tmp_path / "collections"))
    return tmp_path / "collections"


@pytest.fixture
def team_photos(tmp_path, make_room):
    """A team's export: listings as folders, a flat photo, a nested one, a duplicate, a broken file, a hidden one."""
    root = tmp_path / "agency"
    for listing in range(6):
        (root / f"listing-{listing}").mkdir(parents=True)
        for i in range(4):
            make_room(listing * 10 + i).save(root / f"listing-{listing}" / f"{i}.jpg", quality=90)
    (root / "listing-5" / "deep" / "deeper").mkdir(parents=True)
    make_room(500).save(root / "listing-5" / "deep" / "deeper" / "x.png")
    make_room(600).save(root / "loose.jpg")
    shutil.copy(root / "listing-0" / "0.jpg", root / "listing-1" / "copy-of-0.jpg")
    (root / "listing-2" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / ".thumbs").mkdir()
    make_room(700).save(root / ".thumbs" / "t.jpg")
    return root


def test_import_any_layout_cleans_and_splits_by_listing(collections, team_photos):
    df, report = import_photos([team_photos], "agency-a", workers=1)
    assert len(df) == 26  # 24 + nested + loose; the copy dropped, the broken file listed, the hidden folder skipped
    assert [w for w, _ in report.exact_duplicates] == ["agency/listing-1/copy-of-0.jpg"]
    assert report.unreadable and report.unreadable[0][0] == "agency/listing-2/broken.jpg"
    assert "not" in report.unreadable[0][1].lower()
    assert (df["class"] == "").all() and set(df["split"]) <= {"train", "val", "test"}
    assert df.groupby("group")["split"].nunique().max() == 1  # a listing never spans two splits
    assert "agency/listing-5/deep/deeper" in set(df["group"].str.replace(":", "/"))
    folder = collections / "agency-a"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.csv", "manifest.json"]  # no photo copied
    assert get_collection("agency-a").photos()["path"].tolist() == df["path"].tolist()


def test_reimport_keeps_splits_and_adds_only_new_photos(collections, team_photos, make_room):
    first, _ = import_photos([team_photos], "agency-a", workers=1)
    make_room(999).save(team_photos / "listing-9.jpg")
    again, report = import_photos([team_photos], "agency-a", workers=1)
    assert len(again) == len(first) + 1
    assert [w for w, _ in report.exact_duplicates] == ["agency/listing-1/copy-of-0.jpg"]
    merged = again.set_index("sha256")["split"]
    assert all(merged[h] == s for h, s in zip(first["sha256"], first["split"]))


def test_rooms_from_folders_and_caller_given_listings(collections, tiny_dataset, tmp_path):
    groups = tmp_path / "groups.csv"
    files = sorted(p.relative_to(tiny_dataset).as_posix() for p in tiny_dataset.rglob("*.jpg"))
    pd.DataFrame({"file": files, "listing_group": [i // 3 for i in range(len(files))]}).to_csv(groups, index=False)
    df, _ = import_photos([tiny_dataset], "rooms", rooms_from_folders=True, groups=groups, workers=1)
    by_folder = df.groupby(df["path"].str.split("/").str[0])["class"].first().to_dict()
    assert by_folder == {"Bedroom": "Bedroom", "Dinning": "Dining", "Garage": "", "Living room": "Livingroom",
                         "bathroom": "Bathroom", "kitchen": "Kitchen"}
    listing = df["path"].map(dict(zip(files, [str(i // 3) for i in range(len(files))])))
    assert df.groupby(listing)["split"].nunique().max() == 1


@pytest.mark.parametrize("name", ["", "Has Space", "../escape", "x" * 65, "house-rooms"])
def test_bad_collection_names_are_refused(collections, team_photos, name):
    with pytest.raises(ValueError, match="collection name|built-in"):
        import_photos([team_photos], name, workers=1)


def test_registry_lists_built_in_and_imported_collections_with_counts(collections, team_photos):
    import_photos([team_photos], "agency-a", workers=1)
    names = [c.name for c in list_collections()]
    assert names[:2] == ["house-rooms", "places365-rooms"] and names[2:] == ["agency-a"]
    with pytest.raises(ValueError, match="no collection named 'nope'.*known: house-rooms, places365-rooms, agency-a"):
        get_collection("nope")


def test_corrections_of_one_collection_never_change_another(collections, team_photos):
    """The same photos in two collections: a correction in one is not a label in the other."""
    import_photos([team_photos], "agency-a", workers=1)
    import_photos([team_photos], "agency-b", workers=1)
    a, b = get_collection("agency-a"), get_collection("agency-b")
    row = a.photos().iloc[0]
    LabelStore(a.room_relabels, ROOM).append(row["path"], "Kitchen", sha256=row["sha256"], annotator="ana")
    assert a.summary()["room corrections"] == 1 and b.summary()["room corrections"] == 0
    assert LabelStore(b.room_relabels, ROOM).merged().empty


class CountingPredictor:
    """Wraps a predictor and counts the photos its backend runs."""

    def __init__(self, predictor):
        self.inner, self.photos = predictor, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, x, outputs):
        self.photos += len(x)
        return self.inner.run(x, outputs)


def test_outputs_are_cached_per_photo_and_scoring_resumes(collections, team_photos, tiny_checkpoint):
    from roomvision.data import manifest_roots, resolve_paths
    from roomvision.inference import Predictor
    from roomvision.photocache import PhotoCache, score_photos
    df, _ = import_photos([team_photos], "agency-a", workers=1)
    files = resolve_paths(df, manifest_roots(get_collection("agency-a").manifest))
    predictor = CountingPredictor(Predictor(tiny_checkpoint, device="cpu"))
    with pytest.raises(InterruptedError):
        score_photos(predictor, files, df["sha256"].tolist(), batch_size=8, cancel=lambda: True)
    assert predictor.photos == 8  # one batch, saved
    out = score_photos(predictor, files, df["sha256"].tolist(), batch_size=8)
    assert predictor.photos == len(df)  # the rest, never the first batch again
    again = score_photos(predictor, files[:5], df["sha256"].tolist()[:5])
    assert predictor.photos == len(df)  # all cached
    np.testing.assert_array_equal(again["room"], out["room"][:5])
    direct = Predictor(tiny_checkpoint, device="cpu").run(
        np.stack([predictor.transform(predictor.decode(f)) for f in files[:3]]), ("room",))["room"]
    np.testing.assert_allclose(out["room"][:3], direct, atol=1e-5)
    assert PhotoCache(tiny_checkpoint).dir != PhotoCache(Path(__file__).parent.parent / "weights" /
                                                         "roomvision-default.pt").dir


def _market_data(rng, n, shift):
    x = rng.normal(0, 1, (n, 16)).astype(np.float32)
    x[:, 0] += shift  # where the photo comes from
    y = rng.integers(0, 2, n) * 3  # Bathroom (0) or Kitchen (3), which another feature shows
    x[:, 1] += np.where(y == 3, 2.0, -2.0)
    return x, y


def test_the_market_head_learns_the_market_and_leaves_other_photos_alone():
    from roomvision.learning.market import fit_gate, fit_market_head
    rng = np.random.default_rng(0)
    xm, ym = _market_data(rng, 300, 8.0)
    xb, _ = _market_data(rng, 300, -8.0)
    head = fit_market_head("m", xm[:200], ym[:200], fit_gate(xm, xb))
    base = np.full((100, 5), 0.1)
    base[:, 2] = 0.6  # the default model says Dining for everything
    blended = head.blend(xm[200:], base)
    assert np.mean(blended.argmax(1) == ym[200:]) > 0.9 and (blended.argmax(1) != 2).all()  # no Dining here
    assert head.market_share(xm[200:]).mean() > 0.9 and head.market_share(xb).mean() < 0.1
    np.testing.assert_allclose(head.blend(xb[:100], base), base, atol=0.02)  # unlike the market: unchanged
    np.testing.assert_allclose(blended.sum(1), 1, atol=1e-6)
    restored = type(head).from_dict(head.to_dict())
    np.testing.assert_allclose(restored.blend(xm[200:], base), blended, atol=1e-6)
    with pytest.raises(ValueError, match="too few corrections"):
        fit_market_head("m", xm[:5], ym[:5], fit_gate(xm, xb))


def test_a_market_head_reads_the_imagenet_features_where_the_room_shows_only_there():
    """With the ImageNet features given, the head learns from them (here only they tell the rooms apart) and needs
    them to answer; the gate still reads the served inputs alone."""
    from roomvision.learning.market import fit_gate, fit_market_head
    from roomvision.learning.scope import _unpack
    rng = np.random.default_rng(2)
    xm, ym = _market_data(rng, 300, 8.0)
    xm[:, 1] = rng.normal(0, 1, 300)  # the served inputs no longer show the room
    reference = rng.normal(0, 1, (300, 8)).astype(np.float32)
    reference[:, 3] += np.where(ym == 3, 2.0, -2.0)
    xb, _ = _market_data(rng, 300, -8.0)
    gate = fit_gate(xm, xb)
    plain = fit_market_head("m", xm[:200], ym[:200], gate)
    both = fit_market_head("m", xm[:200], ym[:200], gate, reference=reference[:200])
    assert both.reference == "tf_efficientnet_lite2+thumbnails" and plain.reference == ""
    assert _unpack(both.weight).shape == (2, 16 + 8)
    assert np.mean(both.market_probs(xm[200:], 5, reference=reference[200:]).argmax(1) == ym[200:]) > 0.9
    assert np.mean(plain.market_probs(xm[200:], 5).argmax(1) == ym[200:]) < 0.7
    np.testing.assert_allclose(both.market_share(xm), plain.market_share(xm))  # the same gate
    with pytest.raises(ValueError, match="'m' version's room probabilities need the ImageNet features"):
        both.market_probs(xm[200:], 5)


def test_a_market_stage_is_averaged_with_the_market_head():
    """A version with a fine-tuned stage answers with the mean of the head's and the stage's room probabilities,
    over the market's rooms only; without the stage's outputs it says what is missing."""
    from dataclasses import replace

    from roomvision.learning.market import fit_gate, fit_market_head
    rng = np.random.default_rng(1)
    xm, ym = _market_data(rng, 300, 8.0)
    xb, _ = _market_data(rng, 300, -8.0)
    head = fit_market_head("m", xm[:200], ym[:200], fit_gate(xm, xb))
    staged = replace(head, stage=True)
    stage_probs = np.tile([0.9, 0.1], (100, 1))  # the stage says Bathroom wherever the head says Kitchen
    probs = staged.market_probs(xm[200:], 5, np.log(stage_probs))
    np.testing.assert_allclose(probs[:, [0, 3]], (head.market_probs(xm[200:], 5)[:, [0, 3]] + stage_probs) / 2,
                               atol=1e-9)
    assert (probs[:, [1, 2, 4]] == 0).all()
    kitchens = ym[200:] == 3
    assert (probs[kitchens, 3] < head.market_probs(xm[200:], 5)[kitchens, 3]).all()
    with pytest.raises(ValueError, match="'m' version's room probabilities need its market stage's outputs"):
        staged.market_probs(xm[200:], 5)


@pytest.mark.parametrize("fine_tune, imagenet", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["head", "fine-tuned stage", "imagenet features", "stage and imagenet features"])
def test_adapting_to_a_collection_end_to_end(collections, tiny_dataset, tmp_path, monkeypatch, make_room, fine_tune,
                                             imagenet):
    """Import grey listing photos without labels, correct some, `retrain-heads --collection [--fine-tune]
    [--imagenet-features]`: the version answers the corrected rooms for that market, leaves the project's photos as
    they were, and the default is unchanged; a fine-tuned stage or the second backbone is served from the
    version's own graph while the outputs it shares with its base model stay in the base model's cache."""
    from PIL import Image, ImageOps
    from roomvision.cli import main
    from roomvision.config import DEFAULT_WEIGHTS, settings
    from roomvision.data import prepare
    from roomvision.inference import Predictor
    from roomvision.modelinfo import read_model_info
    from roomvision.modelinfo import MARKET_OUTPUT, REFERENCE_OUTPUT
    from roomvision.photocache import PhotoCache, model_key
    manifest = tmp_path / "manifest.csv"
    prepare([tiny_dataset], manifest, workers=1)
    monkeypatch.setenv("ROOMVISION_MANIFEST", str(manifest))
    monkeypatch.setenv("ROOMVISION_DATA_ROOT", str(tiny_dataset))
    monkeypatch.setenv("ROOMVISION_VERSIONS_DIR", str(tmp_path / "versions"))
    monkeypatch.setattr("roomvision.learning.retraining.BASE_SAMPLE", 5)
    settings.cache_clear()
    market = tmp_path / "market"
    rng = np.random.default_rng(0)
    for k, room in enumerate(("Bathroom", "Kitchen")):  # grey thumbnails: bright vertical tiles / dark wood stripes
        for listing in range(8):
            (market / f"{room}-{listing}").mkdir(parents=True)
            for i in range(3):
                stripes = np.sin(np.arange(128) / (3 + 2 * rng.random()))[None, :] * 60
                grid = stripes if k == 0 else stripes.T
                pixels = (150 - 70 * k) + grid + rng.normal(0, 12, (128, 128))
                img = ImageOps.grayscale(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))).convert("RGB")
                img.save(market / f"{room}-{listing}" / f"{i}.jpg")
    assert main(["import", str(market), "--collection", "grey-market"]) == 0
    col = get_collection("grey-market")
    photos = col.photos()
    store = LabelStore(col.room_relabels, ROOM)
    for row in photos[photos["split"] != "test"].itertuples():  # the annotator reads the listing's folder
        store.append(row.path, row.path.split("-")[0], sha256=row.sha256, annotator="ana")
    for row in photos[photos["split"] == "test"].itertuples():  # held out: labelled, never learned from
        store.append(row.path, row.path.split("-")[0], sha256=row.sha256, annotator="ana")
    out = tmp_path / "versions" / "grey.pt"
    assert main(["retrain-heads", "--collection", "grey-market", "--weights", str(DEFAULT_WEIGHTS),
                 "--out", str(out)] + (["--fine-tune"] if fine_tune else [])
                + (["--imagenet-features"] if imagenet else [])) == 0
    info = read_model_info(out)
    report = info.metrics["adapted_to_market"]
    assert report["corrections_used"] == int((photos["split"] != "test").sum())
    assert report["held_out_accuracy_after"] == 1.0 and report["fine_tuned"] is fine_tune
    assert report["imagenet_features"] is imagenet
    assert info.market["reference"] == ("tf_efficientnet_lite2+thumbnails" if imagenet else "")
    assert sorted(p.name for p in out.parent.iterdir() if p.name.endswith((".pt", ".partial"))) == [out.name]
    assert model_key(out) == model_key(DEFAULT_WEIGHTS)  # the version shares its base model's photo cache
    version, default = Predictor(out, device="cpu"), Predictor(DEFAULT_WEIGHTS, device="cpu")
    assert (MARKET_OUTPUT in version.head_outputs) is fine_tune
    assert (REFERENCE_OUTPUT in version.head_outputs) is imagenet
    own_graph = fine_tune or imagenet
    assert (version.graph.path == DEFAULT_WEIGHTS.with_suffix(".onnx")) is not own_graph  # heads only: shipped graph
    if own_graph:
        assert PhotoCache(out, market=True).dir != PhotoCache(out).dir == PhotoCache(DEFAULT_WEIGHTS).dir
        assert any(PhotoCache(out, market=True).dir.glob("part-*.npz"))  # scored while measuring the version
        stored = np.concatenate([np.load(p)["sha256"] for p in PhotoCache(out).dir.glob("part-*.npz")])
        assert len(stored) == len(set(stored))  # the shared outputs were not stored a second time
        with pytest.raises(ValueError, match="for the 'grey-market' market .*; the fast profile serves only the"):
            Predictor(out, profile="fast")
    from roomvision.versions import versions_table
    shown = versions_table([out]).iloc[0]
    extras = {(False, False): "", (True, False): " (fine-tuned stage)", (False, True): " (Lite2 features)",
              (True, True): " (fine-tuned stage, Lite2 features)"}
    assert shown["market"] == "grey-market" + extras[fine_tune, imagenet] and shown["error"] == ""
    test = photos[photos["split"] == "test"]
    files = [market / p for p in test["path"]]
    assert [r["room"] for r in version.predict_paths(files)] == [p.split("-")[0] for p in test["path"]]
    colour = [make_room(5000 + i) for i in range(3)]
    for a, b in zip(version.predict_images(colour), default.predict_images(colour)):
        assert a["room"] == b["room"] and abs(a["quality_prob_good"] - b["quality_prob_good"]) < 1e-6
    assert read_model_info(DEFAULT_WEIGHTS).market == {}
    shown = {c.name: c.summary() for c in list_collections()}
    assert shown["grey-market"]["room corrections"] == len(photos)


def test_api_feedback_models_and_model_field(collections, tmp_path, monkeypatch, tiny_checkpoint, make_room):
    """A platform sends corrections for photos it had scored; lists the versions; picks one per request."""
    import io
    from fastapi.testclient import TestClient
    from roomvision.api import create_app
    from roomvision.config import DEFAULT_WEIGHTS, settings
    monkeypatch.setenv("ROOMVISION_UPLOADS_DIR", str(tmp_path / "uploads"))
    monkeypatch.setenv("ROOMVISION_VERSIONS_DIR", str(tmp_path / "versions"))
    (tmp_path / "versions").mkdir()
    shutil.copy(tiny_checkpoint, tmp_path / "versions" / "tiny-market.pt")
    settings.cache_clear()
    buf = io.BytesIO()
    make_room(3).save(buf, "JPEG")
    photo = buf.getvalue()
    with TestClient(create_app(DEFAULT_WEIGHTS, device="cpu")) as client:
        listed = client.get("/v1/models").json()
        assert {"roomvision-default.pt", "tiny-market.pt"} <= {m["file"] for m in listed["models"]}
        r = client.post("/v1/predict", files=[("files", ("a.jpg", photo, "image/jpeg"))], data={"model": "tiny-market"})
        assert r.status_code == 200 and r.json()["model_version"] == "tiny"
        r = client.post("/v1/predict", files=[("files", ("a.jpg", photo, "image/jpeg"))], data={"model": "nope"})
        assert r.status_code == 422 and "no model version 'nope'" in r.json()["detail"]
        r = client.post("/v1/feedback", files=[("image", ("a.jpg", photo, "image/jpeg"))],
                        data={"room": "Kitchen", "quality": "BAD", "annotator": "platform-7"})
        assert r.status_code == 200, r.text
        sha = r.json()["sha256"]
        assert [s["human_label"] for s in r.json()["saved"]] == ["Kitchen", "BAD"]
        r = client.post("/v1/feedback", data={"sha256": sha, "room": "Dining", "annotator": "platform-7"})
        assert r.status_code == 200  # by hash: the photo was sent before
        r = client.post("/v1/feedback", files=[("image", ("again.jpg", photo, "image/jpeg"))],
                        data={"quality": "GOOD", "annotator": "x"})
        assert r.status_code == 200
        assert len(list((tmp_path / "uploads").rglob("*.jpg"))) == 1  # stored once, by content
        for data, status, message in [
                ({"sha256": sha, "room": "Garage", "annotator": "x"}, 422, "label must be one of"),
                ({"sha256": sha, "room": "Kitchen"}, 400, "an annotator name is required"),
                ({"sha256": "0" * 64, "room": "Kitchen", "annotator": "x"}, 400, "no photo with sha256"),
                ({"room": "Kitchen", "annotator": "x"}, 400, "send the photo as multipart field 'image'"),
                ({"sha256": sha, "annotator": "x"}, 400, "give a room and/or a quality decision"),
                ({"sha256": sha, "quality": "MAYBE", "annotator": "x"}, 400, "quality must be GOOD or BAD")]:
            r = client.post("/v1/feedback", data=data)
            assert r.status_code == status and message in r.json()["detail"], (data, r.text)
        r = client.post("/v1/feedback", files=[("image", ("junk.jpg", b"not an image", "image/jpeg"))],
                        data={"room": "Kitchen", "annotator": "x"})
        assert r.status_code == 400 and "junk.jpg" in r.json()["detail"]
    uploads = get_collection("uploads")
    assert uploads.summary()["photos"] == 1
    room = LabelStore(uploads.room_relabels, ROOM).merged()
    assert room["human_label"].tolist() == ["Dining"] and room["annotator"].tolist() == ["platform-7"]


def test_two_builders_of_one_feature_cache_at_once(tmp_path, tiny_dataset, tiny_checkpoint):
    """Two processes build the same cache at the same moment: both finish with the same file, neither dies on the
    other's temporary files."""
    import subprocess
    import sys
    from roomvision.data import prepare
    manifest = tmp_path / "manifest.csv"
    prepare([tiny_dataset], manifest, workers=1)
    code = ("import sys; from pathlib import Path; from roomvision.features import build_feature_cache; "
            "from roomvision.inference import Predictor; "
            f"print(build_feature_cache(Predictor({str(tiny_checkpoint)!r}, device='cpu'), Path({str(manifest)!r}), "
            f"[Path({str(tiny_dataset)!r})], batch_size=4, progress=False))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
    assert outs[0][0] == outs[1][0] and Path(outs[0][0].strip()).is_file()


def test_the_room_queue_ranks_by_a_head_fitted_on_the_corrections_once_they_name_two_rooms(monkeypatch):
    import roomvision.learning.queue as queue
    from roomvision.learning.market import MIN_CORRECTIONS
    from roomvision.learning.queue import room_queue, room_ranking
    x, y = _market_data(np.random.default_rng(0), 300, 0.0)
    served = np.full((300, 5), 0.1)
    served[:, 2] = 0.6  # the served model says Dining for everything
    first = np.arange(MIN_CORRECTIONS)
    assert set(y[first]) == {0, 3}
    assert room_ranking(x, served, first[:-1], y[first[:-1]]) is served  # one correction short: the served model
    kitchens = np.flatnonzero(y == 3)[:MIN_CORRECTIONS + 5]
    assert room_ranking(x, served, kitchens, y[kitchens]) is served  # one room only
    ranked = room_ranking(x, served, first, y[first])
    rest = np.arange(MIN_CORRECTIONS, 300)
    assert np.mean(ranked[rest].argmax(1) == y[rest]) > 0.7 and (ranked[:, [1, 2, 4]] == 0).all()  # served: 0
    monkeypatch.setattr(queue, "RANDOM_SHARE", 0.0)  # the uncertain half of the queue alone
    margin = np.abs(ranked[rest, 0] - ranked[rest, 3])
    assert room_queue(ranked, rest, 20).tolist() == rest[np.argsort(margin)[:20]].tolist()
