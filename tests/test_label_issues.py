"""Wrong room labels: the room corrections store, the ranking, the CLI and the Mistakes page's label-issues view."""
import numpy as np
import pandas as pd
import pytest

from roomvision.cli import main
from roomvision.config import CLASSES
from roomvision.data import prepare
from roomvision.learning.label_issues import out_of_fold_probabilities, rank_label_issues
from roomvision.learning.stores import AMBIGUOUS, NOT_A_ROOM, ROOM, LabelError, LabelStore, room_corrections


def test_room_store_keeps_the_label_guarantees(tmp_path):
    store = LabelStore(tmp_path / "room.csv", ROOM)
    store.append("Kitchen/a.jpg", "dining", sha256="a" * 64, given_label="Kitchen", annotator="ana")
    store.append("Kitchen/a.jpg", "Livingroom", sha256="a" * 64, given_label="Kitchen", annotator="ben")
    store.append("Dining/b.jpg", "ambiguous", sha256="b" * 64, given_label="Dining", annotator="ana")
    store.append("Dining/c.jpg", NOT_A_ROOM, sha256="c" * 64, given_label="Dining", annotator="ana")
    store.append("Dining/c.jpg", "UNDO", sha256="c" * 64, annotator="ana")
    with pytest.raises(LabelError, match="label must be one of Bathroom, Bedroom"):
        store.append("Dining/d.jpg", "Garage")
    with pytest.raises(LabelError, match="stay inside it"):
        store.append("../etc/passwd", "Kitchen")
    with pytest.raises(LabelError, match="line breaks"):
        store.append("Dining/d.jpg", "Kitchen", given_label="Dining\nDining/x.jpg,Kitchen")
    merged = store.merged().set_index("sha256")
    assert merged.loc["a" * 64, "human_label"] == "Livingroom"  # the latest decision wins
    assert merged.loc["b" * 64, "human_label"] == AMBIGUOUS and "c" * 64 not in merged.index  # undone
    manifest = pd.DataFrame({"path": ["Kitchen/a.jpg", "Dining/b.jpg", "Dining/c.jpg"],
                             "sha256": ["a" * 64, "b" * 64, "c" * 64]})
    assert room_corrections(manifest, store.path).fillna("").tolist() == ["Livingroom", AMBIGUOUS, ""]
    assert store.read_raw().columns.tolist()[:4] == ["path", "sha256", "given_label", "human_label"]


def test_flipped_labels_rank_first():
    """Five overlapping classes, 5% of labels flipped: most flipped labels are within the top 10% most suspect."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (5, 40))
    truth = rng.integers(0, 5, 2000)
    features = centres[truth] + rng.normal(0, 1.2, (2000, 40))
    given = truth.copy()
    flipped = rng.random(2000) < 0.05
    given[flipped] = (truth[flipped] + rng.integers(1, 5, flipped.sum())) % 5
    score, issue = rank_label_issues(given, out_of_fold_probabilities(features, given))
    top = np.argsort(-score)[:200]
    assert flipped[top].sum() / flipped.sum() >= 0.8
    assert flipped[issue].mean() > 0.5  # most flagged photos are flipped ones
    unflipped_score = rank_label_issues(truth, out_of_fold_probabilities(features, truth))[0]
    assert np.median(score[flipped]) > np.quantile(unflipped_score, 0.9)


@pytest.fixture
def issues_env(tmp_path, tiny_dataset, tiny_checkpoint, monkeypatch):
    manifest = tmp_path / "manifest.csv"
    prepare([tiny_dataset], manifest, workers=1)
    monkeypatch.setenv("ROOMVISION_ROOM_RELABELS", str(tmp_path / "labels" / "room.csv"))
    monkeypatch.setenv("ROOMVISION_CACHE_DIR", str(tmp_path / "cache"))  # rankings kept by one test only
    return manifest, tiny_checkpoint, tiny_dataset


def test_label_issues_cli_ranks_and_leaves_out_corrected_photos(issues_env, tmp_path, capsys):
    from roomvision.config import settings
    manifest, weights, root = issues_env
    out = tmp_path / "issues.csv"
    args = ["label-issues", "--manifest", str(manifest), "--weights", str(weights), "--data-root", str(root)]
    assert main([*args, "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table.columns.tolist()[:7] == ["source", "path", "split", "given", "suggested", "score", "issue"]
    assert table["score"].is_monotonic_decreasing and set(table["suggested"]) <= set(CLASSES)
    assert len(table) == len(pd.read_csv(manifest))
    first = table.iloc[0]
    sha = pd.read_csv(manifest).set_index("path").loc[first["path"], "sha256"]
    settings.cache_clear()
    LabelStore(settings().room_relabels, ROOM).append(first["path"], first["suggested"], sha256=sha,
                                                       given_label=first["given"])
    assert main([*args, "--split", "all", "--out", str(out)]) == 0
    assert first["path"] not in set(pd.read_csv(out)["path"])
    assert main([*args, "--split", "test", "--top", "3"]) == 0
    printed = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert len(printed) <= 3 and set(printed["split"]) <= {"test"}


def test_too_few_photos_of_a_class_is_a_clear_error():
    labels = np.r_[np.zeros(10, int), np.ones(10, int), np.full(10, 2), np.full(10, 3), np.full(3, 4)]
    with pytest.raises(ValueError, match="at least 5 photos of each class .*Livingroom 3"):
        out_of_fold_probabilities(np.random.default_rng(0).normal(size=(len(labels), 8)), labels)


def test_the_ranking_is_kept_per_model_and_corrections_and_reports_progress(issues_env, tmp_path, monkeypatch):
    """A second ask with the same cache and corrections reads the stored ranking (no classifier is fitted); a new
    correction ranks again; every fold reports its progress."""
    import roomvision.learning.label_issues as li
    from roomvision.features import build_feature_cache
    from roomvision.inference import Predictor
    manifest, weights, root = issues_env
    predictor = Predictor(weights, device="cpu")
    cache = build_feature_cache(predictor, manifest, [root], progress=False)
    relabels = tmp_path / "labels" / "room.csv"
    steps = []
    first = li.find_room_label_issues(manifest, cache, predictor, room_relabels=relabels,
                                      on_progress=lambda d, t, m: steps.append((d, t)))
    assert steps == [(k, li.FOLDS) for k in range(1, li.FOLDS + 1)]

    def no_fit(*args, **kwargs):
        raise AssertionError("the stored ranking should have been read")
    monkeypatch.setattr(li, "out_of_fold_probabilities", no_fit)
    again = li.find_room_label_issues(manifest, cache, predictor, room_relabels=relabels)
    pd.testing.assert_frame_equal(first, again)
    row = first.iloc[0]
    LabelStore(relabels, ROOM).append(row["path"], row["suggested"], sha256=row["sha256"], given_label=row["given"])
    with pytest.raises(AssertionError, match="stored ranking"):
        li.find_room_label_issues(manifest, cache, predictor, room_relabels=relabels)  # new labels: ranked anew


def test_rooms_to_confirm_rank_by_the_corrections_so_far(issues_env, tmp_path):
    """The model's room stays the starting point; the order follows a head fitted on the corrections once they name
    two rooms, and the corrected photos leave the list."""
    from roomvision.features import build_feature_cache, load_feature_cache
    from roomvision.inference import Predictor
    from roomvision.learning.label_issues import rooms_to_confirm
    from roomvision.learning.market import MIN_CORRECTIONS, market_inputs
    from roomvision.learning.queue import room_queue, room_ranking
    manifest, weights, root = issues_env
    predictor = Predictor(weights, device="cpu")
    cache = build_feature_cache(predictor, manifest, [root], progress=False)
    data = load_feature_cache(cache)
    readable = np.flatnonzero(~np.isnan(data["room"][:, 0]))
    probs = np.full((len(data["room"]), len(CLASSES)), 0.2)
    probs[readable] = predictor.scores({k: data[k][readable].astype(np.float32) for k in
                                        ("room", "quality", "aesthetic", "quality_features", "features")})["probs"]
    relabels = tmp_path / "labels" / "room.csv"
    before = rooms_to_confirm(manifest, cache, predictor, relabels)
    assert before["sha256"].tolist() == data["sha256"][room_queue(probs, readable, len(readable))].tolist()
    df = pd.read_csv(manifest)
    taught = [i for i in readable if df["class"][i] in ("Bathroom", "Kitchen")][:MIN_CORRECTIONS]
    store = LabelStore(relabels, ROOM)
    for i in taught:
        store.append(df["path"][i], df["class"][i], sha256=df["sha256"][i], annotator="ana")
    after = rooms_to_confirm(manifest, cache, predictor, relabels)
    left = np.setdiff1d(readable, taught)
    x = market_inputs(data)[readable]
    ranking = room_ranking(x, probs[readable], np.searchsorted(readable, taught),
                           np.array([CLASSES.index(df["class"][i]) for i in taught]))
    expected = np.full_like(probs, np.nan)
    expected[readable] = ranking
    assert after["sha256"].tolist() == data["sha256"][room_queue(expected, left, len(left))].tolist()
    assert after["sha256"].tolist() != [h for h in before["sha256"] if h not in set(df["sha256"][taught])]
    assert after.set_index("sha256")["suggested"].to_dict() == {
        h: s for h, s in before.set_index("sha256")["suggested"].items() if h in set(after["sha256"])}
