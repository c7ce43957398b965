"""Batch scoring: streamed journal, resume, Parquet, and Ray giving the same rows as one process."""
import pandas as pd
import pytest

from roomvision.cli import main
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
    assert "7 images: 6 scored, 1 errors" in capsys.readouterr().out
    assert not journal_path(out).exists()


def test_resume_skips_rows_already_in_the_journal(folder, tmp_path, tiny_checkpoint):
    out = tmp_path / "r.parquet"
    full = score_local(sorted(folder.rglob("*.jpg")), tmp_path / "full.csv", tiny_checkpoint, "cpu", 4,
                       progress=False)
    journal = journal_path(out)
    full.head(3).assign(room="SENTINEL").to_csv(journal, index=False)  # as if a crash followed 3 rows
    df = score_local(sorted(folder.rglob("*.jpg")), out, tiny_checkpoint, "cpu", 4, resume=True, progress=False)
    assert len(df) == 7 and (df["room"] == "SENTINEL").sum() == 3  # resumed rows were not scored again
    assert len(pd.read_parquet(out)) == 7


def test_ray_engine_matches_single_process(folder, tmp_path, tiny_checkpoint):
    pytest.importorskip("ray")
    local, ray_out = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main(["score", str(folder), "--out", str(local), "--weights", str(tiny_checkpoint),
                 "--device", "cpu"]) == 0
    assert main(["score", str(folder), "--out", str(ray_out), "--weights", str(tiny_checkpoint),
                 "--device", "cpu", "--engine", "ray"]) == 0
    a = pd.read_csv(local, keep_default_na=False).sort_values("path").reset_index(drop=True)
    b = pd.read_csv(ray_out, keep_default_na=False).sort_values("path").reset_index(drop=True)
    b["path"] = a["path"]  # Ray reports resolved absolute paths
    assert list(a["room"]) == list(b["room"]) and list(a["error"] != "") == list(b["error"] != "")
    pd.testing.assert_frame_equal(a.select_dtypes("number"), b.select_dtypes("number"), atol=1e-4)
