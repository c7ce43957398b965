"""Batch scoring: streamed journal, resume, Parquet, and Ray giving the same rows as one process."""
import pandas as pd
import pytest

from roomvision.cli import main
from roomvision.config import DEFAULT_WEIGHTS
from roomvision.score import journal_path, score_local


@pytest.fixture
def folder(tmp_path, make_room):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for i in range(6):
        make_room(i).save(d / ("sub" if i % 2 else "") / f"{i}.jpg")
    (d / "broken.jpg").write_bytes(b"garbage")
    return d


def test_score_csv_with_summary(folder, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "r.csv"
    assert main(["score", str(folder), "--out", str(out), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--batch-size", "4"]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 7 and (df["error"] != "").sum() == 1
    printed = capsys.readouterr().out
    assert "7 images: 6 scored, 1 errors" in printed and "listing-ready" in printed
    assert not journal_path(out).exists()


def test_resume_skips_rows_already_in_the_journal(folder, tmp_path, tiny_checkpoint):
    out = tmp_path / "r.parquet"
    full = score_local(sorted(folder.rglob("*.jpg")), tmp_path / "full.csv", tiny_checkpoint, "cpu", 4,
                       progress=False)
    journal = journal_path(out)
    full.head(3).assign(room_decision="SENTINEL").to_csv(journal, index=False)  # as if a crash followed 3 rows
    with open(journal, "a") as f:
        f.write(str(full["path"].iloc[3]) + ",Kitch")  # and a torn fourth row, cut mid-write
    df = score_local(sorted(folder.rglob("*.jpg")), out, tiny_checkpoint, "cpu", 4, resume=True, progress=False)
    assert len(df) == 7 and (df["room_decision"] == "SENTINEL").sum() == 3  # resumed rows were not scored again
    assert df.set_index("path").loc[str(full["path"].iloc[3]), "room_decision"] != "Kitch"  # torn row re-scored
    assert len(pd.read_parquet(out)) == 7


def test_ray_engine_matches_single_process_on_the_committed_model(folder, tmp_path, monkeypatch):
    """Relative inputs; Ray reports the paths as given, the same rows and numbers as one process, and resumes."""
    pytest.importorskip("ray")
    monkeypatch.chdir(folder.parent)
    local, ray_out = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main(["score", folder.name, "--out", str(local), "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu"]) == 0
    a = pd.read_csv(local, keep_default_na=False).sort_values("path").reset_index(drop=True)
    pd.concat([a.head(2).assign(room_decision="SENTINEL"), a.head(0)]).to_csv(journal_path(ray_out), index=False)
    assert main(["score", folder.name, "--out", str(ray_out), "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu",
                 "--engine", "ray", "--resume"]) == 0
    b = pd.read_csv(ray_out, keep_default_na=False).sort_values("path").reset_index(drop=True)
    assert list(b["path"]) == list(a["path"]) and not b["path"].str.startswith("/").any()
    assert (b["room_decision"] == "SENTINEL").sum() == 2  # resume skipped the rows already journalled
    scored = (b["room_decision"] != "SENTINEL") & (b["error"] == "")
    assert scored.sum() == 4 and list(a["error"] != "") == list(b["error"] != "")
    assert list(a["room_decision"][scored]) == list(b["room_decision"][scored])
    numbers = [c for c in a.columns if c.startswith("prob_")] + ["quality_prob_good", "aesthetic_score"]
    x, y = a.loc[scored, numbers].astype(float), b.loc[scored, numbers].astype(float)
    assert x["quality_prob_good"].between(0.001, 0.999).all()
    pd.testing.assert_frame_equal(x, y, rtol=1e-3, atol=1e-4)


def test_a_file_name_that_is_not_utf8_gets_an_error_row_and_the_run_goes_on(folder, tmp_path, tiny_checkpoint,
                                                                            make_room):
    import os
    odd = os.path.join(os.fsencode(folder), b"latin1-\xe9.jpg")
    make_room(9).save(odd, "JPEG")
    (folder / "new\nline.jpg").write_bytes((folder / "0.jpg").read_bytes())
    out = tmp_path / "r.parquet"
    assert main(["score", str(folder), "--out", str(out), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--batch-size", "4"]) == 0
    df = pd.read_parquet(out).set_index("path")
    assert len(df) == 9 and (df["error"] == "").sum() == 6
    assert "not valid UTF-8" in df.loc[f"{folder}/latin1-\\xe9.jpg", "error"]
    assert "line break" in df.loc[f"{folder}/new\\nline.jpg", "error"]
    again = score_local(sorted(folder.rglob("*.jpg")), tmp_path / "again.csv", tiny_checkpoint, "cpu", 4,
                        progress=False)
    assert len(again) == 9
    journal_path(out).write_text(again.head(2).to_csv(index=False))  # resume over the odd names works too
    assert len(score_local(sorted(folder.rglob("*.jpg")), out, tiny_checkpoint, "cpu", 4, resume=True,
                           progress=False)) == 9
    rows = main(["predict", os.fsdecode(odd), "--weights", str(tiny_checkpoint), "--out", str(tmp_path / "p.csv")])
    assert rows == 1 and "not valid UTF-8" in pd.read_csv(tmp_path / "p.csv", keep_default_na=False)["error"][0]


def test_paths_keep_their_exact_text_in_parquet_and_come_back_from_csv(tmp_path, tiny_checkpoint, make_room,
                                                                      monkeypatch):
    """Formula neutralisation only in the CSV a spreadsheet opens, and read_scores undoes it."""
    from roomvision.score import read_scores
    names = ["-dash.jpg", "=sum.jpg", "'quoted.jpg", "+plus.jpg", "@at.jpg", "plain.jpg"]
    for i, name in enumerate(names):
        make_room(i).save(tmp_path / name)
    os_paths = [tmp_path / n for n in names]
    monkeypatch.chdir(tmp_path)
    rel = [type(p)(p.name) for p in os_paths]
    parquet = score_local(rel, tmp_path / "r.parquet", tiny_checkpoint, "cpu", 4, progress=False)
    assert sorted(pd.read_parquet(tmp_path / "r.parquet")["path"]) == sorted(names) == sorted(parquet["path"])
    score_local(rel, tmp_path / "r.csv", tiny_checkpoint, "cpu", 4, progress=False)
    raw = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)["path"]
    assert set(raw) == {"'-dash.jpg", "'=sum.jpg", "''quoted.jpg", "'+plus.jpg", "'@at.jpg", "plain.jpg"}
    assert sorted(read_scores(tmp_path / "r.csv")["path"]) == sorted(names)
