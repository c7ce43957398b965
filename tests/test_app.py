"""Every page through Streamlit's AppTest, on a tiny checkpoint and a generated dataset."""
import io
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from roomvision.data import prepare
from roomvision.reports import report_paths
from roomvision.webapp import PHOTOS_PER_PAGE

from conftest import write_failures

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def app_env(tmp_path, tiny_dataset, tiny_checkpoint, monkeypatch):
    weights = tmp_path / "weights" / "tiny.pt"
    weights.parent.mkdir()
    shutil.copy(tiny_checkpoint, weights)
    manifest = tmp_path / "manifest.csv"
    prepare([tiny_dataset], manifest, workers=1)
    monkeypatch.setenv("ROOMVISION_WEIGHTS", str(weights))
    monkeypatch.setenv("ROOMVISION_MANIFEST", str(manifest))
    monkeypatch.setenv("ROOMVISION_RELABELS", str(tmp_path / "labels" / "relabels.csv"))
    monkeypatch.setenv("ROOMVISION_ROOM_RELABELS", str(tmp_path / "labels" / "room.csv"))
    monkeypatch.setenv("ROOMVISION_DATA_ROOT", str(tiny_dataset))
    return {"weights": weights, "manifest": manifest, "relabels": tmp_path / "labels" / "relabels.csv",
            "root": tiny_dataset}


def jpeg_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def run_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page != "pages/predict.py":
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_predict_page_scores_uploads_and_sliders_change_decisions(app_env, monkeypatch):
    """On the committed model: sliders one step either side of the photo's own probabilities flip the decisions."""
    from skimage import data as skdata
    from PIL import Image
    from roomvision.config import DEFAULT_WEIGHTS, CLASSES
    from roomvision.decisions import OUT_OF_SCOPE
    from roomvision.inference import Predictor
    monkeypatch.setenv("ROOMVISION_WEIGHTS", str(DEFAULT_WEIGHTS))
    photo = jpeg_bytes(Image.fromarray(skdata.coffee()))
    (row, _), = Predictor(DEFAULT_WEIGHTS, device="cpu").predict_named([("coffee.jpg", photo)])
    p, conf = row["quality_prob_good"], max(row[f"prob_{c}"] for c in CLASSES)
    at = run_page("pages/predict.py")
    assert len(at.slider) == 4 and at.file_uploader
    at.file_uploader[0].set_value([("coffee.jpg", photo, "image/jpeg"),
                                   ("junk.jpg", b"definitely not an image", "image/jpeg"),
                                   ("coffee.jpg", photo, "image/jpeg")])  # the same name twice
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("junk.jpg" in e.value and "not an image" in e.value for e in at.error)
    assert len([m for m in at.metric if m.label == "Quality"]) == 2

    def decisions(label):
        return {m.value for m in at.metric if m.label == label}

    at.slider(key="thr_quality").set_value(math.floor(p * 100) / 100).run()
    assert decisions("Quality") == {"GOOD"}
    at.slider(key="thr_quality").set_value(math.ceil(p * 100) / 100).run()
    assert decisions("Quality") == {"BAD"}
    at.slider(key="thr_scope").set_value(math.ceil(row["in_scope_prob"] * 100) / 100).run()
    assert decisions("Room") == {"Out of scope"}  # a headline that fits the card
    deltas = {m.delta for m in at.metric if m.label == "Room"}
    assert len(deltas) == 1 and "confident" not in deltas.pop()
    assert any("2 scored, 1 unreadable · 2 not one of the five rooms" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert (table[table["error"] == ""]["room_decision"] == OUT_OF_SCOPE).all()
    at.slider(key="thr_scope").set_value(math.floor(row["in_scope_prob"] * 100) / 100).run()
    at.slider(key="thr_room").set_value(math.floor(conf * 100) / 100).run()
    assert decisions("Room") == {row["room"]}
    at.slider(key="thr_room").set_value(math.ceil(conf * 100) / 100).run()
    assert decisions("Room") == {"uncertain"}
    at.pills(key="show_only").set_value(["not one of the five rooms"]).run()  # in scope at this threshold
    assert decisions("Room") == set() and not any("junk.jpg" in e.value for e in at.error)
    at.pills(key="show_only").set_value(["room uncertain"]).run()
    assert decisions("Room") == {"uncertain"}
    at.pills(key="show_only").set_value(["unreadable"]).run()
    assert decisions("Quality") == set() and any("junk.jpg" in e.value for e in at.error)
    at.pills(key="show_only").set_value([]).run()
    at.button(key="thr-reset").click().run()  # reset to defaults
    calibrated = Predictor(DEFAULT_WEIGHTS, device="cpu").thresholds.quality
    assert at.slider(key="thr_quality").value == pytest.approx(calibrated)
    assert at.dataframe and at.get("download_button")
    version = Predictor(DEFAULT_WEIGHTS, device="cpu").version
    assert any(f"Model **{version}**" in c.value and f"P(GOOD) ≥ {calibrated:.4g}" in c.value for c in at.caption)
    assert set(at.dataframe[0].value["model_version"]) == {version}  # every row, the unreadable one too
    at.toggle(key="show_cam").set_value(True).run()
    assert not at.exception, [e.message for e in at.exception]
    captions = [i.caption for el in at.get("image") for i in el.proto.imgs]
    assert any(c.startswith("coffee.jpg — Grad-CAM for ") for c in captions), captions


def test_predict_page_draws_a_page_of_photos_at_a_time(app_env):
    """A large batch is drawn twelve cards at a time (so a threshold step redraws one page); every photo is reachable
    through the page number, and the summary table still holds the whole batch."""
    from PIL import Image
    n = PHOTOS_PER_PAGE + 3
    uploads = [(f"p{i:02d}.jpg", jpeg_bytes(Image.new("RGB", (64, 48), (10 * i, 120, 200 - 10 * i))), "image/jpeg")
               for i in range(n)]
    at = run_page("pages/predict.py")
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception, [e.message for e in at.exception]

    def shown():
        return [i.caption for el in at.get("image") for i in el.proto.imgs]

    assert shown() == [name for name, *_ in uploads[:PHOTOS_PER_PAGE]]
    assert any(f"Photos 1–{PHOTOS_PER_PAGE} of {n}" in c.value for c in at.caption)
    at.number_input(key="gallery_page_of_2").set_value(2).run()
    assert shown() == [name for name, *_ in uploads[PHOTOS_PER_PAGE:]]
    assert any(f"Photos {PHOTOS_PER_PAGE + 1}–{n} of {n}" in c.value for c in at.caption)
    assert len(at.dataframe[0].value) == n


def test_label_issues_view_corrects_room_labels(app_env):
    """Keys per class, ambiguous / not a room, undo, auto-advance and grid mode, all into the room relabels CSV."""
    from roomvision.features import build_feature_cache
    from roomvision.inference import Predictor
    from roomvision.features import cache_path
    from roomvision.learning.stores import NOT_A_ROOM, ROOM, LabelStore
    cache_path(app_env["weights"], app_env["manifest"]).unlink(missing_ok=True)  # another test may have built it
    at = run_page("pages/mistakes.py")
    at.segmented_control(key="mistakes_view").set_value("Label issues").run()
    assert any("python -m roomvision cache-features" in i.value for i in at.info)
    build_feature_cache(Predictor(app_env["weights"], device="cpu"), app_env["manifest"], [app_env["root"]],
                        progress=False)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    at.selectbox(key="issues_show").set_value("All photos, most suspect first").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.button(key="room-Kitchen").disabled, [i.value for i in at.info] + [e.value for e in at.error]  # no name yet
    assert any("Enter your name" in i.value for i in at.info), [i.value for i in at.info]
    at.text_input(key="annotator").set_value("ana").run()
    first = at.metric[0].value
    at.button(key="room-Kitchen").click().run()
    store = LabelStore(app_env["relabels"].parent / "room.csv", ROOM)
    rows = store.read_raw()
    assert rows.iloc[-1][["human_label", "annotator", "given_label"]].tolist() == ["Kitchen", "ana", first]
    at.button(key="room-not-a-room").click().run()
    assert store.read_raw().iloc[-1]["human_label"] == NOT_A_ROOM
    at.button(key="room-undo").click().run()
    assert store.read_raw().iloc[-1]["human_label"] == "UNDO" and len(store.merged()) == 1
    at.toggle[0].set_value(True).run()  # grid mode
    picks = [c for c in at.checkbox if c.key and c.key.startswith("pick-")][:2]
    for c in picks:
        c.check()
    at.run()
    at.selectbox(key="grid_target").set_value("AMBIGUOUS").run()
    at.button(key="room-apply").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert (store.merged()["human_label"] == "AMBIGUOUS").sum() == 2 and len(store.merged()) == 3


def test_mistakes_page_explains_missing_evaluation(app_env):
    at = run_page("pages/mistakes.py")
    assert any("python -m roomvision evaluate" in i.value for i in at.info)


def test_mistakes_page_filters_failures(app_env):
    write_failures(app_env["weights"], pd.read_csv(app_env["manifest"]).head(3), ["Kitchen", "Kitchen", "Bedroom"],
                   ["Dining", "Bedroom", "Dining"])
    at = run_page("pages/mistakes.py")
    assert any("3 of 3" in c.value for c in at.caption)
    at.selectbox[0].set_value("Kitchen").run()
    assert any("2 of 3" in c.value for c in at.caption)
    at.selectbox[1].set_value("Dining").run()
    assert any("1 of 3" in c.value for c in at.caption)


def test_mistakes_page_lists_failures_without_the_dataset_folders(app_env, monkeypatch, tmp_path):
    write_failures(app_env["weights"], {"path": ["Kitchen/a.jpg"], "source": ["rooms"]}, ["Kitchen"], ["Dining"])
    monkeypatch.setenv("ROOMVISION_DATA_ROOT", str(tmp_path / "not-here"))
    at = run_page("pages/mistakes.py")
    assert any("without thumbnails" in i.value and "not-here" in i.value for i in at.info)
    assert any("1 of 1" in c.value for c in at.caption) and any("(no thumbnail)" in c.value for c in at.caption)


def test_relabel_page_writes_a_row_and_undo_appends(app_env):
    at = run_page("pages/relabel.py")
    at.text_input(key="annotator").set_value("ana").run()
    at.button(key="btn-bad").click().run()
    assert not at.exception, [e.message for e in at.exception]
    rows = pd.read_csv(app_env["relabels"], keep_default_na=False)
    assert len(rows) == 1 and rows.loc[0, "human_label"] == "BAD" and rows.loc[0, "annotator"] == "ana"
    assert not rows.loc[0, "path"].startswith("/") and len(rows.loc[0, "sha256"]) == 64
    at.button(key="btn-undo").click().run()
    rows = pd.read_csv(app_env["relabels"], keep_default_na=False)
    assert list(rows["human_label"]) == ["BAD", "UNDO"]


def relabel_as_ana() -> tuple[AppTest, callable]:
    """The Relabel page signed in as 'ana', and a function naming the photo it shows."""
    at = run_page("pages/relabel.py")
    at.text_input(key="annotator").set_value("ana").run()
    return at, lambda: at.image[0].proto.imgs[0].caption


def test_relabel_previous_and_next(app_env):
    from roomvision.learning.stores import LabelStore
    at, shown = relabel_as_ana()
    a = shown()
    at.button(key="btn-bad").click().run()
    b = shown()
    assert b != a
    at.button(key="btn-previous").click().run()  # back to the photo just decided
    assert not at.exception, [e.message for e in at.exception]
    assert shown() == a and any("decided earlier (your decision: **BAD**)" in i.value for i in at.info)
    at.button(key="btn-good").click().run()  # change the decision
    assert shown() == b
    assert LabelStore(app_env["relabels"]).merged().set_index("path")["human_label"].tolist() == ["GOOD"]
    at.button(key="btn-next").click().run()  # skip without a decision
    c = shown()
    assert c not in (a, b) and len(LabelStore(app_env["relabels"]).read_raw()) == 2
    at.button(key="btn-previous").click().run()
    assert shown() == b


def test_relabel_undo_after_next_shows_the_undone_photo_and_history_counts_right(app_env):
    from roomvision.learning.stores import LabelStore
    at, shown = relabel_as_ana()
    a = shown()
    at.button(key="btn-bad").click().run()
    at.button(key="btn-next").click().run()
    assert shown() != a
    at.button(key="btn-undo").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert shown() == a and any("(no decision now)" in i.value for i in at.info)
    labels = [e.label for e in at.expander]
    assert "History of this photo (2 decisions)" in labels, labels
    at.button(key="btn-good").click().run()
    assert LabelStore(app_env["relabels"]).merged()["human_label"].tolist() == ["GOOD"]
    assert not at.get("subheader") or all("Agreement" not in h.value for h in at.subheader)


def test_relabel_grid_mode_and_two_annotators_get_different_photos(app_env):
    ana = run_page("pages/relabel.py")
    ana.text_input(key="annotator").set_value("ana").run()
    ben = run_page("pages/relabel.py")
    ben.text_input(key="annotator").set_value("ben").run()
    shown = [at.image[0].proto.imgs[0].caption for at in (ana, ben)]
    assert shown[0] != shown[1]  # ana's photo is claimed while she looks at it
    ana.toggle(key="relabel_grid").set_value(True).run()
    for box in [c for c in ana.checkbox if c.key and c.key.startswith("pick-")][:3]:
        box.check()
    ana.run()
    ana.button(key="grid-bad").click().run()
    assert not ana.exception, [e.message for e in ana.exception]
    rows = pd.read_csv(app_env["relabels"], keep_default_na=False)
    assert list(rows["human_label"]) == ["BAD"] * 3 and set(rows["annotator"]) == {"ana"}
    ana.button(key="grid-undo").click().run()
    rows = pd.read_csv(app_env["relabels"], keep_default_na=False)
    assert list(rows["human_label"]) == ["BAD"] * 3 + ["UNDO"] * 3
    ben.toggle(key="relabel_grid").set_value(True).run()
    ana.run()

    def on_screen(at):
        return {c.key for c in at.checkbox if c.key and c.key.startswith("pick-")}
    assert len(on_screen(ana)) == 12 and len(on_screen(ben)) == 12
    assert not on_screen(ana) & on_screen(ben)  # grid mode claims every photo it shows
    boxes = [c for c in ben.checkbox if c.key and c.key.startswith("pick-")]
    assert all(".jpg · proxy " in c.label and "sharpness" in c.label for c in boxes), boxes[0].label
    ben.button(key="grid-select-all").click().run()
    assert all(c.value for c in ben.checkbox if c.key and c.key.startswith("pick-"))
    assert ben.button(key="grid-good").proto.label == "GOOD for 12 selected"
    ben.button(key="grid-good").click().run()
    rows = pd.read_csv(app_env["relabels"], keep_default_na=False)
    assert (rows["annotator"] == "ben").sum() == 12
    assert not any("Agreement" in h.value for h in ben.subheader)  # ana and ben share no photo: no table yet


def test_label_issues_grid_mode_shows_two_annotators_different_photos(app_env):
    from roomvision.features import build_feature_cache
    from roomvision.inference import Predictor
    build_feature_cache(Predictor(app_env["weights"], device="cpu"), app_env["manifest"], [app_env["root"]],
                        progress=False)
    pages = []
    for name in ("ana", "ben"):
        at = run_page("pages/mistakes.py")
        at.segmented_control(key="mistakes_view").set_value("Label issues").run()
        at.selectbox(key="issues_show").set_value("All photos, most suspect first").run()
        at.text_input(key="annotator").set_value(name).run()
        at.toggle[0].set_value(True).run()
        assert not at.exception, [e.message for e in at.exception]
        pages.append(at)
    shown = [{c.key for c in at.checkbox if c.key and c.key.startswith("pick-")} for at in pages]
    assert len(shown[0]) == len(shown[1]) == 12 and not shown[0] & shown[1]


def test_relabel_page_says_clearly_when_the_label_file_cannot_be_written(app_env, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ROOMVISION_RELABELS", str(blocker / "labels.csv"))
    at = run_page("pages/relabel.py")
    at.text_input(key="annotator").set_value("ana").run()
    at.button(key="btn-good").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Not saved: cannot write the label file" in e.value and "ROOMVISION_RELABELS" in e.value
               for e in at.error)


def test_model_page_lists_versions(app_env):
    at = run_page("pages/model.py")
    assert any("tiny.pt" in str(df.value) for df in at.dataframe)
    learn = [b for b in at.button if b.label == "Learn from people now"]
    assert len(learn) == 1 and learn[0].disabled  # no human labels yet: disabled, with the reason
    assert any("label at least 3 GOOD and 3 BAD photos" in c.value for c in at.caption)


def test_model_page_counts_room_corrections_and_enables_learning(app_env):
    from roomvision.learning.stores import ROOM, LabelStore
    manifest = pd.read_csv(app_env["manifest"], keep_default_na=False)
    store = LabelStore(app_env["relabels"].parent / "room.csv", ROOM)
    for _, row in manifest.head(2).iterrows():
        store.append(row["path"], "Kitchen", sha256=row["sha256"], given_label=row["class"])
    at = run_page("pages/model.py")
    assert any("holds 2 room corrections (Mistakes page): Kitchen 2" in m.value for m in at.markdown)
    learn = [b for b in at.button if b.label == "Learn from people now"]
    assert len(learn) == 1 and not learn[0].disabled


def test_streamlit_upload_limit_matches_the_decoder():
    import tomllib
    from roomvision.config import MAX_UPLOAD_BYTES
    config = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 1024 * 1024 == MAX_UPLOAD_BYTES
    assert config["client"]["showErrorLinks"] is False


def test_model_page_shows_the_committed_model_per_test_set(app_env, monkeypatch):
    import json
    from roomvision.config import DEFAULT_WEIGHTS
    monkeypatch.setenv("ROOMVISION_WEIGHTS", str(DEFAULT_WEIGHTS))
    at = run_page("pages/model.py")
    assert any("Not one of the five rooms" in c.value and "AUROC" in c.value for c in at.caption)
    for name, tag in (("House Rooms", "test-house-rooms"), ("Places365 rooms", "test-places365-rooms")):
        at.segmented_control(key="model_test_set").set_value(name).run()
        expected = json.loads(report_paths(DEFAULT_WEIGHTS, tag)["metrics"].read_text())
        shown = {m.label: m for m in at.metric}
        assert shown["Room accuracy"].value == f"{expected['room']['accuracy']:.3f}"
        ece = shown["ECE after scaling (lower is better)"]
        assert ece.delta.startswith("-")  # scaling lowered the error, shown in green (inverse colours)


def test_model_page_switches_to_the_learned_version_and_back(app_env):
    from roomvision.learning.jobs import status_file, write_status
    from roomvision.learning.retraining import save_version
    new = app_env["weights"].with_name("tiny-people-1.pt")
    save_version(app_env["weights"], new, {}, None, {"human_labels": 0})
    job = status_file("learn-from-people")
    write_status(job, state="done", pid=0, started=0, message="done",
                 result={"out": str(new), "human_labels": 0, "human_ratings": 0, "seconds": 1.0})
    try:
        at = run_page("pages/model.py")

        def version():
            return next(c.value.split("**")[1] for c in at.caption if c.value.startswith("**"))

        before = version()
        at.button(key="use-new-version").click().run()
        assert not at.exception, [e.message for e in at.exception]
        assert version() == "tiny-people-1" != before
        assert any("has not been evaluated on the test photos" in i.value for i in at.info)
        assert not at.get("json") and any(m.label == "Validation room accuracy" for m in at.metric)  # words, no JSON
        at.button(key="restore-previous-version").click().run()
        assert version() == before
    finally:
        job.unlink(missing_ok=True)


def test_a_version_with_a_refitted_room_head_opens_the_relabel_page_without_rescoring(app_env, monkeypatch):
    """A version whose room head people's corrections refitted reads its base model's scored manifest: the Relabel
    page ranks by it at once instead of asking to score every photo again."""
    import numpy as np
    from roomvision.features import build_feature_cache
    from roomvision.inference import Predictor
    from roomvision.model import Checkpoint
    from roomvision.learning.retraining import save_version
    build_feature_cache(Predictor(app_env["weights"], device="cpu"), app_env["manifest"], [app_env["root"]],
                        progress=False)
    state = Checkpoint.load(app_env["weights"]).state_dict
    weight, bias = (state[f"room_head.{k}"].float().numpy() for k in ("weight", "bias"))
    new = app_env["weights"].with_name("tiny-people-rooms.pt")
    save_version(app_env["weights"], new, {}, None, {"human_labels": 0},
                 {"room_head.weight": weight[::-1].copy(), "room_head.bias": bias[::-1].copy()})
    monkeypatch.setenv("ROOMVISION_WEIGHTS", str(new))
    at = run_page("pages/relabel.py")
    assert not any("has not scored the manifest yet" in w.value for w in at.warning)
    assert Predictor(new).refitted_room is not None and np.any(weight[::-1] != weight)
