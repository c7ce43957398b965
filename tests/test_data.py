import numpy as np
import pandas as pd
import pytest

from roomvision.config import normalise_class_name
from roomvision.data import assign_splits, load_manifest, near_duplicate_groups, prepare, scan_root


@pytest.mark.parametrize("name,expected", [("Dinning", "Dining"), ("Living room", "Livingroom"),
                                           ("living_room", "Livingroom"), ("BATHROOM", "Bathroom"),
                                           ("garage", None)])
def test_class_names_match_case_insensitively_with_aliases(name, expected):
    assert normalise_class_name(name) == expected


def test_scan_reports_unknown_folders(tiny_dataset):
    items, unknown = scan_root(tiny_dataset)
    assert {c for _, c in items} == {"Bathroom", "Bedroom", "Dining", "Kitchen", "Livingroom"}
    assert [u.split("/")[-1] for u in unknown] == ["Garage"]


def test_prepare_cleans_and_labels(tiny_dataset, tmp_path, make_room):
    make_room(0).save(tiny_dataset / "bathroom" / "copy.png")  # same pixels as bathroom/0 but new bytes
    (tiny_dataset / "bathroom" / "exact.jpg").write_bytes((tiny_dataset / "bathroom" / "0.jpg").read_bytes())
    out = tmp_path / "m.csv"
    df, report = prepare([tiny_dataset], out, workers=1)
    assert ("rooms/kitchen/broken.jpg" in [u for u, _ in report.unreadable])
    assert report.exact_duplicates == [("rooms/bathroom/exact.jpg", "rooms/bathroom/0.jpg")]
    assert len(df) == 41  # 40 photos + the near-duplicate png; corrupt file and exact copy left out
    assert set(df["quality_label"]) <= {"GOOD", "BAD"}
    assert not df["path"].str.startswith("/").any()
    assert df.groupby("path").size().max() == 1
    near = df[df["path"].isin(["bathroom/0.jpg", "bathroom/copy.png"])]
    assert near["dup_group"].nunique() == 1 and near["split"].nunique() == 1
    loaded = load_manifest(out)
    assert list(loaded["sha256"]) == list(df["sha256"])


def test_split_is_deterministic_stratified_and_group_safe():
    rng = np.random.default_rng(0)
    n = 600
    df = pd.DataFrame({"class": rng.choice(list("ABCDE"), n), "sha256": [f"{i:064x}" for i in range(n)],
                       "dup_group": np.arange(n)})
    df.loc[10:19, "dup_group"] = 10  # a group of ten near-duplicates
    df.loc[10:19, "class"] = "A"
    a, b = assign_splits(df, seed=1), assign_splits(df, seed=1)
    assert a.equals(b)
    assert a[10:20].nunique() == 1
    share = a.value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.03) and share["test"] == pytest.approx(0.15, abs=0.03)
    for _, part in df.assign(split=a).groupby("class"):
        assert part["split"].value_counts(normalize=True)["train"] == pytest.approx(0.7, abs=0.08)
    assert not assign_splits(df, seed=2).equals(a)


def test_existing_split_is_kept_when_data_is_added(tiny_dataset, tmp_path, make_room):
    out = tmp_path / "m.csv"
    first, _ = prepare([tiny_dataset], out, workers=1)
    make_room(4242).save(tiny_dataset / "kitchen" / "new.jpg")
    second, _ = prepare([tiny_dataset], out, seed=999, workers=1)
    old = dict(zip(first["sha256"], first["split"]))
    assert all(second.set_index("sha256").loc[h, "split"] == s for h, s in old.items())
    assert len(second) == len(first) + 1


def test_near_duplicate_grouping_by_hamming_distance():
    hashes = ["0000000000000000", "0000000000000003", "ffffffffffffffff", "00000000000000ff"]
    g = near_duplicate_groups(hashes, max_bits=4)
    assert g[0] == g[1] and g[0] != g[2] and g[0] != g[3]


def test_prepare_without_class_folders_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        prepare([tmp_path / "empty"], tmp_path / "m.csv", workers=1)


def test_load_manifest_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="roomvision prepare"):
        load_manifest(tmp_path / "missing.csv")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a roomvision manifest"):
        load_manifest(tmp_path / "x.csv")
