"""Packaging: a serving install needs no PyTorch; the extras hold what training, Ray and tests add."""
import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from roomvision.config import DEFAULT_WEIGHTS
from roomvision.inference import shipped_onnx

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DISTRIBUTION = {"PIL": "pillow", "cv2": "opencv-python-headless", "sklearn": "scikit-learn", "yaml": "pyyaml",
                "multipart": "python-multipart", "pillow_heif": "pillow-heif"}
TRAINING_ONLY = {"model", "engine", "train", "samples", "losses", "transforms", "quantize", "finetune",
                 "thumbnails"}  # import PyTorch at the top


def requirement_names(requirements: list[str]) -> set[str]:
    import re
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def third_party_imports(path: Path) -> set[str]:
    """Top-level (module-level) imports of a file that are neither stdlib nor this package."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("roomvision", "__future__")}


SERVING_FILES = sorted([p for p in (ROOT / "roomvision").rglob("*.py") if p.stem not in TRAINING_ONLY]
                       + list((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"])


@pytest.mark.parametrize("path", SERVING_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_serving_code_imports_only_base_dependencies(path):
    base = requirement_names(PYPROJECT["project"]["dependencies"])
    missing = {m for m in third_party_imports(path) if DISTRIBUTION.get(m, m).lower() not in base}
    assert not missing, f"{path.name} imports {missing}, which a serving install (no extras) lacks"


def test_extras_and_console_script():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"train", "ray", "dev"} <= set(extras) and "torch" in requirement_names(extras["train"])
    assert "torch" not in requirement_names(PYPROJECT["project"]["dependencies"])
    module, func = PYPROJECT["project"]["scripts"]["roomvision"].split(":")
    assert module == "roomvision.cli" and callable(getattr(__import__(module, fromlist=[func]), func))


def test_the_shipped_onnx_export_belongs_to_the_committed_weights():
    """Fails when the default weights change without `export-onnx --out weights/roomvision-default.onnx`."""
    assert shipped_onnx(DEFAULT_WEIGHTS) == DEFAULT_WEIGHTS.with_suffix(".onnx")


def test_serving_runs_without_pytorch(tmp_path, make_room):
    """A process where importing torch fails still predicts with the default model (from the shipped export)."""
    photo = tmp_path / "room.jpg"
    make_room(3).save(photo)
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
            "            raise ImportError(f'{name} is not installed here')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from roomvision.inference import Predictor\n"
            f"row = Predictor(device='cpu').predict_paths([{str(photo)!r}])[0]\n"
            "assert not row['error'] and 'torch' not in sys.modules, row\n"
            "print(row['room'], round(row['in_scope_prob'], 3))")
    env = {**os.environ, "ROOMVISION_CACHE_DIR": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "empty-cache" / "onnx").exists()  # nothing had to be exported


def test_learning_without_pytorch_says_which_extra_to_install(tmp_path, tiny_dataset):
    """`retrain-heads` in a process without PyTorch ends in one line naming the install, never a traceback."""
    from roomvision.data import prepare
    from roomvision.learning.stores import LabelStore
    manifest = tmp_path / "manifest.csv"
    prepare([tiny_dataset], manifest, workers=1)
    store = LabelStore(tmp_path / "relabels.csv")
    for i, row in enumerate(pd.read_csv(manifest).head(12).itertuples()):
        store.append(row.path, "GOOD" if i % 2 else "BAD", sha256=row.sha256, annotator="ana")
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from roomvision.cli import main\n"
            f"sys.exit(main(['retrain-heads', '--manifest', {str(manifest)!r}, '--data-root', {str(tiny_dataset)!r},"
            f" '--relabels', {str(store.path)!r}, '--out', {str(tmp_path / 'out.pt')!r}]))")
    env = {**os.environ, "ROOMVISION_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: this needs PyTorch" in done.stderr and "pip install -e '.[train]'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out.pt").exists()


def test_runtime_state_stays_in_git_ignored_places(monkeypatch):
    """Labels, claims, learned versions, caches and job logs never show up as untracked files."""
    from roomvision.config import DEFAULT_RELABELS, DEFAULT_ROOM_RELABELS, settings
    from roomvision.learning.stores import ClaimBoard
    from roomvision.learning.retraining import output_path
    monkeypatch.delenv("ROOMVISION_VERSIONS_DIR", raising=False)
    monkeypatch.delenv("ROOMVISION_CACHE_DIR", raising=False)
    settings.cache_clear()
    version = output_path(DEFAULT_WEIGHTS)
    assert version.parent == settings().versions_dir and version.parent != DEFAULT_WEIGHTS.parent
    state = [DEFAULT_RELABELS, DEFAULT_ROOM_RELABELS, ClaimBoard(DEFAULT_RELABELS).path,
             ClaimBoard(DEFAULT_ROOM_RELABELS).path, version, settings().cache_dir / "jobs" / "learn.log"]
    for path in state:
        done = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(ROOT))], cwd=ROOT)
        assert done.returncode == 0, f"{path} would be an untracked file"
