"""The REST API with FastAPI's TestClient, and once against a real uvicorn on localhost."""
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fastapi.testclient import TestClient

from roomvision.api import MAX_FILES, create_app, fetch_image_url
from roomvision.config import CLASSES


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    with TestClient(create_app(tiny_checkpoint, device="cpu")) as c:
        yield c


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model_version"] == "tiny" and body["device"] == "cpu"


def test_predict_probabilities_and_per_image_errors(client, make_room):
    files = [("files", ("a.jpg", jpeg(make_room(1)), "image/jpeg")), ("files", ("bad.png", b"nope", "image/png")),
             ("files", ("b.jpg", jpeg(make_room(2)), "image/jpeg"))]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200
    body = r.json()
    results = body["results"]
    assert [x["filename"] for x in results] == ["a.jpg", "bad.png", "b.jpg"]
    assert "not an image" in results[1]["error"] and results[1]["room"] is None
    assert body["thresholds"]["quality"] == pytest.approx(0.4)  # the checkpoint's calibrated default
    for x in (results[0], results[2]):
        assert abs(sum(x["probabilities"].values()) - 1) < 1e-5 and set(x["probabilities"]) == set(CLASSES)
        assert x["quality_label"] in ("GOOD", "BAD") and isinstance(x["listing_ready"], bool)


def test_clear_client_errors(client, make_room):
    assert client.post("/v1/predict").status_code == 400
    r = client.post("/v1/predict", files=[("files", ("a.jpg", b"x", "image/jpeg"))], data={"quality_threshold": "2"})
    assert r.status_code == 422
    many = [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(MAX_FILES + 1)]
    assert client.post("/v1/predict", files=many).status_code == 413
    r = client.post("/v1/predict", data={"image_url": "http://example.com/a.jpg"})
    assert r.status_code == 400 and "disabled" in r.json()["detail"]
    r = client.post("/v1/predict", content=b"x", headers={"content-length": str(10**10)})
    assert r.status_code == 413


@pytest.mark.parametrize("url", ["http://127.0.0.1/a.jpg", "http://localhost/a.jpg", "http://10.1.2.3/a.jpg",
                                 "http://169.254.169.254/latest", "ftp://example.com/a.jpg", "file:///etc/passwd"])
def test_image_urls_to_private_hosts_or_other_schemes_are_refused(url):
    from fastapi import HTTPException
    with pytest.raises(HTTPException) as exc:
        fetch_image_url(url)
    assert exc.value.status_code == 400


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_real_uvicorn_on_localhost(tiny_checkpoint, make_room):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "roomvision", "serve", "--port", str(port), "--weights",
                             str(tiny_checkpoint), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read())
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not start")
        assert health["status"] == "ok"
        import httpx
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict",
                       files=[("files", ("a.jpg", jpeg(make_room(4)), "image/jpeg"))], timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["room"] in (*CLASSES, "uncertain")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
