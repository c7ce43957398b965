"""End to end in a real browser: Debian's chromium driven by Playwright against `streamlit run app.py`."""
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from roomvision.data import prepare
from roomvision.learning.stores import LabelStore

from conftest import write_failures

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PROJECT = Path(__file__).resolve().parent.parent
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]

REQUIRED = os.environ.get("ROOMVISION_REQUIRE_BROWSER") or os.environ.get("CI", "").lower() == "true"
if not os.path.exists(CHROMIUM):
    if REQUIRED:
        pytest.fail(f"{CHROMIUM} missing but the browser tests are required here (CI or ROOMVISION_REQUIRE_BROWSER)")
    pytest.skip("Debian chromium not installed (apt-get install chromium chromium-driver)", allow_module_level=True)
if REQUIRED:
    from playwright import sync_api  # a missing Playwright is an error here, never a skip
else:
    sync_api = pytest.importorskip("playwright.sync_api")
# What a page must never show: an exception box, an object's documentation (a bare expression echoed by
# Streamlit's magic), or an object's repr.
UNEXPECTED = ('[data-testid="stException"]', '[data-testid="stHelp"]', '[data-testid="stDocstring"]',
              'text=/DeltaGenerator|object at 0x[0-9a-f]+/')


@contextlib.contextmanager
def chromium_page():
    """A page of Debian's Chromium (headless, no network extras), patient with a slow first model load."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        yield page
        browser.close()


def sign_in(page, button) -> None:
    """Type the annotator name and wait until `button` (disabled without a name) is enabled."""
    page.get_by_label("Your name").fill("ana")
    page.get_by_label("Your name").press("Enter")
    for _ in range(120):
        if button.is_enabled():
            break
        page.wait_for_timeout(500)
    assert button.is_enabled()


def assert_clean(page) -> None:
    """Once the app has finished running, the page shows nothing of `UNEXPECTED`."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=60_000)
    for selector in UNEXPECTED:
        found = page.locator(selector)
        assert found.count() == 0, f"unexpected {selector} on {page.url}: {found.first.inner_text()[:300]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(tmp_path, tiny_dataset, model: Path):
    """`streamlit run app.py` on a copy of `model`, the tiny dataset's manifest and label files of its own."""
    weights = tmp_path / "weights" / model.name
    weights.parent.mkdir()
    shutil.copy(model, weights)
    manifest = tmp_path / "manifest.csv"
    prepare([tiny_dataset], manifest, workers=1)
    relabels = tmp_path / "labels" / "relabels.csv"
    port = free_port()
    room_relabels = tmp_path / "labels" / "room_relabels.csv"
    env = {**os.environ, "ROOMVISION_WEIGHTS": str(weights), "ROOMVISION_MANIFEST": str(manifest),
           "ROOMVISION_RELABELS": str(relabels), "ROOMVISION_DATA_ROOT": str(tiny_dataset),
           "ROOMVISION_ROOM_RELABELS": str(room_relabels),
           "ROOMVISION_COLLECTIONS_DIR": str(tmp_path / "collections"),
           "ROOMVISION_VERSIONS_DIR": str(tmp_path / "versions"), "ROOMVISION_UPLOADS_DIR": str(tmp_path / "uploads")}
    log = tmp_path / "app.log"
    with open(log, "wb") as out:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false"], cwd=PROJECT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + log.read_text()[-2000:])
    try:
        yield {"url": url, "relabels": relabels, "root": tiny_dataset, "weights": weights, "manifest": manifest,
               "room_relabels": room_relabels, "log": log, "env": env}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def server(tmp_path, tiny_dataset, tiny_checkpoint):
    with app_server(tmp_path, tiny_dataset, tiny_checkpoint) as running:
        yield running


def assert_quiet_log(log: Path) -> None:
    """The app's own log holds no progress bars or tracebacks after a session of use."""
    text = log.read_text(errors="replace")
    assert "\r" not in text and not re.search(r"\d+%\|", text), text[-2000:]
    assert "Traceback" not in text, text[-4000:]


def test_app_in_chromium(server, tmp_path, make_room):
    ARTIFACTS.mkdir(exist_ok=True)
    photo = tmp_path / "living.jpg"
    make_room(7, (640, 480)).save(photo)
    with chromium_page() as page:
        page.goto(server["url"])
        page.get_by_text("Listing photos").wait_for()
        page.locator("input[type=file]").set_input_files(str(photo))
        quality = page.locator('[data-testid="stMetric"]').filter(has_text="Quality")
        quality.wait_for()
        assert page.locator('[data-testid="stMetric"]').filter(has_text="Room").count() == 1
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "predict.png"), full_page=True)

        slider = page.get_by_role("slider").first
        slider.focus()
        slider.press("Home")  # threshold 0: everything is GOOD
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMetric]')]"
                               ".some(m => m.innerText.includes('Quality') && m.innerText.includes('GOOD'))")
        slider.press("End")  # threshold 1: everything is BAD
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMetric]')]"
                               ".some(m => m.innerText.includes('Quality') && m.innerText.includes('BAD'))")
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "predict-threshold-1.png"), full_page=True)
        page.get_by_text("Grad-CAM overlay").click()
        page.get_by_text("living.jpg — Grad-CAM for").wait_for()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "predict-gradcam.png"), full_page=True)
        page.get_by_role("button", name="unreadable").click()  # "Show only": no photo here is unreadable
        page.get_by_text("No photo matches.").wait_for()
        page.wait_for_function("() => ![...document.querySelectorAll('[data-testid=stMetric]')]"
                               ".some(m => m.innerText.includes('Quality'))")  # the last run's cards are gone
        page.get_by_role("button", name="BAD", exact=True).click()  # any of the chosen: the BAD photo is back
        quality.wait_for()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "predict-show-only.png"), full_page=True)

        page.goto(server["url"] + "/relabel")
        page.get_by_role("button", name="GOOD").wait_for()
        assert page.get_by_role("button", name="GOOD").is_disabled()  # no decisions without a name
        sign_in(page, page.get_by_role("button", name="GOOD"))
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "relabel-named.png"), full_page=True)
        page.get_by_role("heading", name="Relabel photo quality").click()  # keyboard focus off the text box
        page.keyboard.press("b")
        store = LabelStore(server["relabels"])  # the store's reader: a file caught mid-append is not an error
        for _ in range(60):
            if len(store.read_raw()) >= 1:
                break
            time.sleep(0.5)
        rows = store.read_raw()
        assert list(rows["human_label"]) == ["BAD"]
        assert (server["root"] / rows.loc[0, "path"]).is_file()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "relabel.png"), full_page=True)
        page.get_by_text("Grid mode (label many at once)").click()
        page.get_by_role("button", name=re.compile("^GOOD for .* selected")).wait_for()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "relabel-grid.png"), full_page=True)

        page.goto(server["url"] + "/model")
        page.get_by_role("heading", name="Model", exact=True).wait_for()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "model.png"), full_page=True)

        page.goto(server["url"] + "/mistakes")
        page.get_by_text("python -m roomvision evaluate").first.wait_for()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "mistakes.png"), full_page=True)
    assert_quiet_log(server["log"])


def test_room_correction_in_chromium_teaches_a_retrained_model(server, tmp_path):
    """Label issues view: a name, one key press; the correction lands in the CSV and a model retrained with it
    predicts the corrected room for that photo."""
    from roomvision.cli import main
    from roomvision.config import CLASSES
    from roomvision.features import build_feature_cache
    from roomvision.inference import Predictor
    from roomvision.learning.stores import ROOM
    build_feature_cache(Predictor(server["weights"], device="cpu"), server["manifest"], [server["root"]],
                        progress=False)
    with chromium_page() as page:
        page.goto(server["url"] + "/mistakes")  # a bookmarked page as the first URL after the server starts
        page.get_by_role("link", name="Predict").wait_for()  # app.py's navigation, not the pages/ file list
        page.get_by_role("link", name="mistakes", exact=True).wait_for(state="detached", timeout=20_000)
        page.get_by_text("Label issues", exact=True).click()
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Show").click()
        page.get_by_role("option", name="All photos, most suspect first").click()
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Split").click()
        page.get_by_role("option", name="train", exact=True).click()  # training photos teach the room head
        sign_in(page, page.get_by_role("button", name=re.compile("^Kitchen")))
        page.screenshot(path=str(ARTIFACTS / "label-issues.png"), full_page=True)
        page.get_by_role("heading", name="Mistakes").click()  # keyboard focus off the text box
        page.keyboard.press(str(CLASSES.index("Kitchen") + 1))
        store = LabelStore(server["room_relabels"], ROOM)
        for _ in range(60):
            if len(store.read_raw()) >= 1:
                break
            time.sleep(0.5)
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "label-issues-saved.png"), full_page=True)
    assert_quiet_log(server["log"])
    rows = store.read_raw()
    assert list(rows["human_label"]) == ["Kitchen"] and list(rows["annotator"]) == ["ana"]
    photo = server["root"] / rows.loc[0, "path"]
    out = tmp_path / "people.pt"
    assert main(["retrain-heads", "--weights", str(server["weights"]), "--manifest", str(server["manifest"]),
                 "--data-root", str(server["root"]), "--room-relabels", str(store.path), "--out", str(out)]) == 0
    assert pd.read_csv(server["manifest"]).set_index("path").loc[rows.loc[0, "path"], "split"] == "train"
    assert Predictor(out, device="cpu").predict_paths([photo])[0]["room"] == "Kitchen"


@pytest.mark.parametrize("path,heading", [("relabel", "Relabel photo quality"), ("model", "Model"),
                                          ("predict", "Predict")])
def test_bookmarked_page_as_first_url_opens_in_the_app_navigation(server, path, heading):
    """Streamlit's legacy pages/ mode must not take over when a page URL is the first request after start."""
    with chromium_page() as page:
        page.goto(f"{server['url']}/{path}")
        page.get_by_role("heading", name=heading, exact=True).wait_for()
        page.get_by_role("link", name="Mistakes", exact=True).wait_for()
        page.get_by_role("link", name=path, exact=True).wait_for(state="detached", timeout=20_000)
        assert page.get_by_role("link", name="app", exact=True).count() == 0
        page.screenshot(path=str(ARTIFACTS / f"first-url-{path}.png"), full_page=True)


def test_confusion_matrix_cell_click_filters_the_mistakes(server):
    """Clicking a confusion-matrix cell in Chromium narrows the misclassified photos to that true → predicted pair."""
    from roomvision.config import CLASSES
    write_failures(server["weights"], pd.read_csv(server["manifest"]).head(3), ["Kitchen", "Kitchen", "Bedroom"],
                   ["Dining", "Bedroom", "Dining"])
    with chromium_page() as page:
        page.goto(server["url"] + "/mistakes")
        page.get_by_text("3 of 3 misclassified test photos match").wait_for()
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        plot.wait_for()
        box = plot.bounding_box()
        n = len(CLASSES)  # rows: true classes top to bottom; columns: predicted classes left to right
        col, row = CLASSES.index("Dining"), CLASSES.index("Kitchen")
        page.mouse.click(box["x"] + box["width"] * (col + 0.5) / n, box["y"] + box["height"] * (row + 0.5) / n)
        page.get_by_text("1 of 3 misclassified test photos match").wait_for()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "mistakes-cell.png"), full_page=True)


def grey_market(folder: Path, listings: int = 6) -> Path:
    """A team's grey listing thumbnails, one folder per listing: bathrooms with bright vertical tiles, kitchens with
    dark horizontal stripes (the folder name tells the simulated annotator the room, never the import)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for k, room in enumerate(("Bathroom", "Kitchen")):
        for listing in range(listings):
            (folder / f"{room}-{listing}").mkdir(parents=True)
            for i in range(3):
                stripes = np.sin(np.arange(128) / (3 + 2 * rng.random()))[None, :] * 60
                pixels = (150 - 70 * k) + (stripes if k == 0 else stripes.T) + rng.normal(0, 12, (128, 128))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB").save(
                    folder / f"{room}-{listing}" / f"{i}.jpg")
    return folder


def test_a_team_adapts_the_model_to_its_market_in_the_browser(tmp_path, tiny_dataset, monkeypatch):
    """Import a folder of the team's photos, score them, confirm rooms with the keyboard, adapt, see before -> after
    beside House Rooms / Places365, use the market version, and score a new photo of that market with it."""
    import numpy as np
    from PIL import Image
    from roomvision.config import CLASSES, DEFAULT_WEIGHTS
    from roomvision.learning.stores import ROOM
    market = grey_market(tmp_path / "market")
    with app_server(tmp_path, tiny_dataset, DEFAULT_WEIGHTS) as server, chromium_page() as page:
        page.goto(server["url"] + "/collections")
        page.get_by_role("textbox", name="Folders on this server (one per line)").fill(str(market))
        page.get_by_role("textbox", name="Collection name").fill("grey-market")
        page.get_by_role("button", name="Import").click()
        page.get_by_text("Collection grey-market: 36 photos").wait_for()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "collections-imported.png"), full_page=True)

        page.goto(server["url"] + "/relabel")
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Collection").click()
        page.get_by_role("option", name="grey-market").click()
        score = page.get_by_role("button", name=re.compile("^Score all manifest photos now"))
        score.click()
        score.wait_for(state="detached", timeout=300_000)  # scored: the queue can rank by the model now
        assert_clean(page)

        page.get_by_role("link", name="Mistakes").click()  # the app's navigation: the same session, the same collection
        page.get_by_text("Label issues", exact=True).click()
        sign_in(page, page.get_by_role("button", name=re.compile("^Kitchen")))
        page.screenshot(path=str(ARTIFACTS / "collections-label-issues.png"), full_page=True)
        page.get_by_text("0 of 36 reviewed").wait_for()  # every photo of the collection, none confirmed yet
        assert page.locator('[data-testid="stMetric"]').filter(has_text="Model's room").count() == 1
        for _ in range(14):
            caption = page.locator('[data-testid="stImage"] [data-testid="stImageCaption"]').first.inner_text()
            room = caption.split("/")[1].split("-")[0]  # the annotator reads the listing's folder
            page.get_by_role("heading", name="Mistakes").click()  # keyboard focus off the text box
            page.keyboard.press(str(CLASSES.index(room) + 1))
            page.wait_for_function("c => !document.body.innerText.includes(c)", arg=caption, timeout=60_000)
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "collections-rooms-confirmed.png"), full_page=True)

        page.get_by_role("link", name="Collections").click()
        page.get_by_text("Also fine-tune the model's last stage on the corrected photos").click()
        page.get_by_text(re.compile("^Also read a second backbone's features")).click()
        page.get_by_role("button", name=re.compile("^Adapt .* to grey-market")).click()
        page.get_by_text(re.compile("^Saved .*grey-market.*: 1[0-9] corrections .*last stage fine-tuned, Lite2 "
                                    "features")).wait_for(timeout=300_000)
        page.locator('[data-testid="stMetric"]').filter(has_text="held-out photos of grey-market").wait_for()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "collections-adapted.png"), full_page=True)
        page.get_by_role("button", name=re.compile("in this session$")).click()
        page.get_by_text(re.compile("is in use in this session")).wait_for()

        photo = tmp_path / "new-kitchen.jpg"
        rng = np.random.default_rng(7)
        pixels = 80 + np.sin(np.arange(128) / 4)[:, None] * 60 + rng.normal(0, 12, (128, 128))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB").save(photo)
        page.get_by_role("link", name="Predict").click()
        page.get_by_role("heading", name="Predict").wait_for()
        page.screenshot(path=str(ARTIFACTS / "collections-predict.png"), full_page=True)
        page.locator("input[type=file]").set_input_files(str(photo))
        room = page.locator('[data-testid="stMetric"]').filter(has_text="Room")
        room.wait_for()
        page.get_by_text(re.compile("^Model .*grey-market")).first.wait_for()  # the market version serves
        assert "Kitchen" in room.inner_text()
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "collections-market-version.png"), full_page=True)
        assert_quiet_log(server["log"])
        corrections = LabelStore(tmp_path / "collections" / "grey-market" / "room_relabels.csv", ROOM).merged()
    assert len(corrections) == 14 and set(corrections["annotator"]) == {"ana"}
