"""The team-wide default model: a pointer with one-step rollback that the CLI, API, batch scoring and app follow."""
import shutil

import pytest

from roomvision.cli import main
from roomvision.config import DEFAULT_WEIGHTS


@pytest.fixture
def versions(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.setenv("ROOMVISION_VERSIONS_DIR", str(tmp_path / "versions"))
    monkeypatch.delenv("ROOMVISION_WEIGHTS", raising=False)
    (tmp_path / "versions").mkdir()
    learned = tmp_path / "versions" / "tiny-people-1.pt"
    shutil.copy(tiny_checkpoint, learned)
    return learned


def test_use_points_every_surface_at_a_version_and_rollback_restores(versions, tmp_path, make_room, capsys):
    from fastapi.testclient import TestClient
    from roomvision.api import create_app
    from roomvision.inference import Predictor
    from roomvision.score import score_local
    from roomvision.versions import current_default, pointer_file
    assert current_default() == DEFAULT_WEIGHTS
    assert main(["use", "tiny-people-1", "--by", "ana"]) == 0
    assert current_default() == versions.resolve() and versions.is_file()
    assert list(pointer_file().parent.glob("*.pt")) == [versions]  # a pointer, never a copy of weights
    photo = tmp_path / "a.jpg"
    make_room(1).save(photo)
    assert Predictor(device="cpu").version == "tiny"  # the header's version of the copied tiny checkpoint
    with TestClient(create_app(device="cpu")) as client:
        assert client.get("/health").json()["model_version"] == "tiny"
    assert set(score_local([photo], tmp_path / "s.csv", progress=False)["model_version"]) == {"tiny"}
    assert main(["versions"]) == 0
    listed = capsys.readouterr().out
    assert "tiny-people-1.pt" in listed and "roomvision-default.pt" in listed
    assert main(["use", "--rollback"]) == 0
    assert current_default() == DEFAULT_WEIGHTS
    assert main(["use", "--rollback"]) == 0  # and forward again: rollback swaps the last change
    assert current_default() == versions.resolve()


def test_use_refuses_unknown_and_damaged_versions(versions, capsys):
    assert main(["use", "nope"]) == 2
    assert "no model version 'nope'; available: roomvision-default" in capsys.readouterr().err
    versions.write_bytes(b"garbage")
    assert main(["use", "tiny-people-1"]) == 2
    assert "not a readable roomvision checkpoint" in capsys.readouterr().err
    assert main(["use"]) == 2 and "name a version to use, or --rollback" in capsys.readouterr().err
