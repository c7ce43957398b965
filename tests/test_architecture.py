"""The import graph reads top-down and has no cycle; pages hold layout only."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "roomvision"
# Lower layers never import higher ones; `learning.` is the learning loop's subpackage.
LAYERS = [
    {"config", "images", "decisions", "preprocess", "modelinfo", "devices", "calibration", "reports", "quality",
     "robustness", "tables", "learning.scope"},
    {"data", "model", "losses", "transforms", "versions", "learning.stores", "learning.heads", "learning.jobs",
     "learning.market"},
    {"engine", "samples", "learning.collection", "learning.finetune", "learning.thumbnails"},
    {"inference", "train"},
    {"photocache"},
    {"features", "evaluate"},
    {"quantize", "learning.retraining", "learning.label_issues", "learning.queue"},
    {"api", "score", "webapp"},
    {"cli", "__main__"},
]


def module_name(path: Path) -> str:
    """`learning.stores` for roomvision/learning/stores.py."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def package_imports(path: Path) -> set[str]:
    """Modules of this package that a file imports (at any depth), by `module_name`."""
    here = module_name(path).split(".")[:-1]  # the file's subpackage
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                if node.module:
                    found.add(".".join([*base, node.module]))
                else:
                    found.update(".".join([*base, a.name]) for a in node.names)
            elif node.module and node.module.startswith("roomvision."):
                found.add(node.module.removeprefix("roomvision."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("roomvision.") for a in node.names if a.name.startswith("roomvision."))
    return {m for m in found if not m.endswith("__init__") and m != "learning"}


GRAPH = {module_name(p): package_imports(p) for p in PACKAGE.rglob("*.py") if p.stem != "__init__"}


def test_the_learning_loop_lives_in_its_subpackage():
    """Stores, queues, heads learned from people, retraining, collections and jobs are modules of
    roomvision.learning; the subpackage's __init__ imports nothing (each module is imported by name)."""
    learning = {m for m in GRAPH if m.startswith("learning.")}
    assert {"learning.stores", "learning.queue", "learning.heads", "learning.retraining", "learning.scope",
            "learning.jobs", "learning.collection", "learning.market"} <= learning
    init = ast.parse((PACKAGE / "learning" / "__init__.py").read_text())
    assert not [n for n in init.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_every_module_has_a_layer():
    assert set(GRAPH) == set().union(*LAYERS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_layers(module):
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = {m for m in GRAPH[module] if level[m] > level[module]}
    assert not upward, f"{module} imports higher layers: {upward}"


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in GRAPH[m]:
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("page", sorted((ROOT / "pages").glob("*.py")), ids=lambda p: p.name)
def test_pages_import_no_ml_library(page):
    banned = {"torch", "torchvision", "timm", "onnxruntime", "sklearn", "cv2", "scipy"}
    names = set()
    for node in ast.walk(ast.parse(page.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & banned, f"{page.name} imports {names & banned}"


@pytest.mark.parametrize("page", sorted([*(ROOT / "pages").glob("*.py"), ROOT / "app.py"]), ids=lambda p: p.name)
def test_pages_import_the_app_layer_only(page):
    """Pages are layout: what they show or call comes from roomvision.webapp, never from the modules behind it."""
    imported = {node.module for node in ast.walk(ast.parse(page.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("roomvision")}
    imported |= {alias.name for node in ast.walk(ast.parse(page.read_text())) if isinstance(node, ast.Import)
                 for alias in node.names if alias.name.startswith("roomvision")}
    assert imported <= {"roomvision.webapp"}, imported


def test_readme_code_layout_matches_the_tree():
    """Every module of the package has its row in README's code layout, and every place a row names exists."""
    import re
    section = (ROOT / "README.md").read_text().split("## Code layout", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in re.findall(r"^\| (.+?) \|", section, flags=re.M):
        places = re.findall(r"`([^`]+)`", row)
        folder = ""
        for place in places:
            if "/" in place.rstrip("/"):
                folder = place.rsplit("/", 1)[0]
                named.add(place)
            else:  # a bare name: beside the row's first place, else at the top
                beside = f"{folder}/{place}"
                named.add(beside if folder and (ROOT / beside).exists() or (PACKAGE / beside).exists() else place)
    named = {f"roomvision/{n}" if n.startswith("learning/") else n for n in named}
    missing = [n for n in named if not (ROOT / n).exists()]
    assert not missing, f"README's code layout names what does not exist: {missing}"
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__")}
    assert modules <= named, f"modules without a row in README's code layout: {sorted(modules - named)}"
